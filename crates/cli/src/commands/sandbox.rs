//! `ferry sandbox s3 ROOT`, `ferry sandbox m365` and `ferry sandbox google`: a local
//! S3-compatible store, a local Microsoft Graph and a local Google Workspace to try ferry
//! against.

use anyhow::{Context, Result};
use ferry_sandbox::{
    GoogleConfig, GoogleFaults, GoogleServer, GraphConfig, GraphFaults, GraphServer, S3Server,
    GRAPH_CLIENT_ID, GRAPH_CLIENT_SECRET, S3_ACCESS_KEY, S3_SECRET_KEY,
};

use super::exit;
use crate::cli::{Cli, SandboxCommand};

/// Serves until Ctrl-C; returns the exit code.
pub async fn run(_cli: &Cli, cmd: &SandboxCommand) -> Result<i32> {
    match cmd {
        SandboxCommand::S3(args) => {
            let faults = ferry_sandbox::Faults {
                slow_down_every: args.slow_down_every,
                deny_read_prefix: args.deny_read_prefix.clone(),
                latency: std::time::Duration::from_millis(args.latency_ms),
                ..Default::default()
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
        SandboxCommand::M365(args) => {
            let config = GraphConfig {
                seed: args.seed,
                users: args.users,
                messages_per_user: args.messages,
                files_per_user: args.files,
                sites: args.sites,
                mail_latency: std::time::Duration::from_millis(args.mail_latency_ms),
                large_file_bytes: args.large_file_mb * 1024 * 1024,
                mailbox_concurrency: args.mailbox_concurrency,
                mailbox_requests_per_10min: args.mailbox_requests_per_10min,
                faults: GraphFaults {
                    throttle_every: args.throttle_every,
                    ..GraphFaults::default()
                },
                ..GraphConfig::default()
            };
            let tenant = config.tenant.clone();
            let mut server = GraphServer::start(config, args.port)
                .await
                .with_context(|| format!("cannot serve on port {}", args.port))?;
            println!(
                "Serving a Microsoft 365 tenant {tenant} ({} users) as Microsoft Graph at {}. Ctrl-C to stop.",
                args.users,
                server.graph_endpoint()
            );
            println!(
                "  limits per mailbox: {} concurrent, {} requests per 10 minutes; counters: GET http://{}/_sandbox/stats",
                args.mailbox_concurrency,
                if args.mailbox_requests_per_10min == 0 {
                    "unlimited".to_string()
                } else {
                    args.mailbox_requests_per_10min.to_string()
                },
                server.addr()
            );
            println!("  export FERRY_M365_CLIENT_SECRET={GRAPH_CLIENT_SECRET}");
            println!(
                "  ferry export m365:{tenant} --client-id {GRAPH_CLIENT_ID} --graph-endpoint {} --login-endpoint {} --to ./m365-bag",
                server.graph_endpoint(),
                server.login_endpoint()
            );
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = server.serve_forever() => {}
            }
            Ok(exit::OK)
        }
        SandboxCommand::Google(args) => {
            let config = GoogleConfig {
                seed: args.seed,
                users: args.users,
                messages_per_user: args.messages,
                files_per_user: args.files,
                shared_drives: args.shared_drives,
                large_file_bytes: args.large_file_mb * 1024 * 1024,
                user_concurrency: args.user_concurrency,
                api_latency: std::time::Duration::from_millis(args.latency_ms),
                faults: GoogleFaults {
                    throttle_every: args.throttle_every,
                    ..GoogleFaults::default()
                },
                ..GoogleConfig::default()
            };
            let domain = config.domain.clone();
            let mut server = GoogleServer::start(config, args.port)
                .await
                .with_context(|| format!("cannot serve on port {}", args.port))?;
            std::fs::write(&args.key_file, server.service_account_key_json())
                .with_context(|| format!("cannot write {}", args.key_file.display()))?;
            println!(
                "Serving a Google Workspace domain {domain} ({} users, one more suspended) at {}. Ctrl-C to stop.",
                args.users,
                server.endpoint()
            );
            println!(
                "  service-account key (a test key, not a secret): {}; counters: GET {}/_sandbox/stats",
                args.key_file.display(),
                server.endpoint()
            );
            println!(
                "  ferry export google:{domain} --service-account {} --admin {} --google-endpoint {} --to ./google-bag",
                args.key_file.display(),
                server.admin_email(),
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
