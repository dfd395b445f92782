//! `ferry verify BAG`.

use anyhow::Result;
use ferry_archive::reader::BagReader;
use ferry_archive::verify::{
    verify, verify_reader, Status, VerifyError, VerifyMode, VerifyOptions,
};

use super::exit;
use crate::cli::{Cli, VerifyArgs};

/// Verifies a bag; returns the exit code (0 valid, 1 invalid or incomplete, 2 cannot read).
pub async fn run(cli: &Cli, args: &VerifyArgs) -> Result<i32> {
    let mode = if args.fast {
        VerifyMode::Fast
    } else if args.completeness_only {
        VerifyMode::CompletenessOnly
    } else {
        VerifyMode::Full
    };
    let options = VerifyOptions {
        mode,
        threads: args.threads.unwrap_or_default(),
    };
    let path = args.bag.clone();
    let uri = path.to_string_lossy().into_owned();
    // Hashing runs on its own threads; keep the async runtime out of its way.
    let report = if uri.starts_with("s3://") {
        let store = crate::source::s3_bag_to_read(&uri, &args.s3).await?;
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            BagReader::open_store(store, runtime)
                .map(|reader| verify_reader(&reader, &path, &options))
                .map_err(VerifyError::from)
        })
        .await?
    } else {
        tokio::task::spawn_blocking(move || verify(&path, &options)).await?
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"status": "error", "path": args.bag.display().to_string(), "error": e.to_string()})
                );
            }
            anyhow::bail!("cannot verify {}: {e}", args.bag.display());
        }
    };
    let code = match report.status {
        Status::Valid => exit::OK,
        Status::Invalid | Status::Incomplete => exit::PROBLEMS,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet || code != exit::OK {
        println!("{report}");
        if report.status == Status::Incomplete {
            println!("The bag is not complete yet; if it is an interrupted ferry export, rerun the same export command to finish it.");
        }
    }
    Ok(code)
}
