//! `ferry sandbox s3 ROOT`: a local S3-compatible store to try ferry against.

use anyhow::{Context, Result};
use ferry_sandbox::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

use super::exit;
use crate::cli::{Cli, SandboxCommand};

/// Serves until Ctrl-C; returns the exit code.
pub async fn run(_cli: &Cli, cmd: &SandboxCommand) -> Result<i32> {
    match cmd {
        SandboxCommand::S3(args) => {
            let faults = ferry_sandbox::Faults {
                slow_down_every: args.slow_down_every,
                deny_read_prefix: args.deny_read_prefix.clone(),
            };
            let mut server = S3Server::start_with(&args.root, args.port, faults)
                .await
                .with_context(|| {
                    format!("cannot serve {} on port {}", args.root.display(), args.port)
                })?;
            println!(
                "Serving {} as S3 at {} (each folder is a bucket). Ctrl-C to stop.",
                args.root.display(),
                server.endpoint()
            );
            println!("  export AWS_ACCESS_KEY_ID={S3_ACCESS_KEY} AWS_SECRET_ACCESS_KEY={S3_SECRET_KEY} AWS_REGION=us-east-1");
            println!(
                "  ferry export s3://BUCKET --endpoint-url {} --to ./bag",
                server.endpoint()
            );
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = server.serve_forever() => {}
            }
            Ok(exit::OK)
        }
    }
}
