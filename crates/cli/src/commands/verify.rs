//! `ferry verify BAG` and `ferry verify REPO`: a folder or S3 prefix holding
//! `ferry-repository.json` is checked as a repository, anything else as a bag.

use anyhow::Result;
use ferry_archive::reader::BagReader;
use ferry_archive::verify::{
    verify, verify_reader, Status, VerifyError, VerifyMode, VerifyOptions,
};

use super::exit;
use crate::cli::{Cli, RepoArgs, VerifyArgs};

/// Verifies a bag or a repository; returns the exit code (0 valid, 1 invalid or incomplete,
/// 2 cannot read).
pub async fn run(cli: &Cli, args: &VerifyArgs) -> Result<i32> {
    let uri = args.bag.to_string_lossy().into_owned();
    if is_repository(&uri, args).await {
        return verify_repository(cli, args, &uri).await;
    }
    if args.sample.is_some() {
        anyhow::bail!(
            "--sample is for repositories, and {uri} holds no ferry-repository.json; verify a bag without it"
        );
    }
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

/// Whether `uri` is a repository: a folder or S3 prefix that holds `ferry-repository.json`.
async fn is_repository(uri: &str, args: &VerifyArgs) -> bool {
    if uri.starts_with("s3://") {
        // A store that cannot be reached is left to the bag path, which says why.
        match crate::source::s3_store(
            uri,
            &args.s3,
            ferry_core::RetryPolicy::default(),
            8 << 20,
            None,
        ) {
            Ok(store) => store
                .exists(ferry_repo::format::REPOSITORY_FILE)
                .await
                .unwrap_or(false),
            Err(_) => false,
        }
    } else {
        args.bag.is_dir() && args.bag.join(ferry_repo::format::REPOSITORY_FILE).is_file()
    }
}

/// `ferry verify REPO [--sample N%]`.
async fn verify_repository(cli: &Cli, args: &VerifyArgs, uri: &str) -> Result<i32> {
    if args.fast || args.completeness_only {
        anyhow::bail!(
            "--fast and --completeness-only are for bags; verify the repository {uri} without them, or with --sample N% for a quicker check"
        );
    }
    let sample = args
        .sample
        .as_deref()
        .map(ferry_repo::verify::parse_sample)
        .transpose()?;
    let options = ferry_repo::verify::VerifyOptions {
        sample_percent: sample,
        threads: args.threads.unwrap_or_default(),
    };
    let repo_args = RepoArgs {
        repo: uri.to_string(),
        work_dir: None,
    };
    let result = async {
        let repo = super::backup::open_repo(&repo_args, &args.s3, false).await?;
        Ok::<_, anyhow::Error>(ferry_repo::verify::verify(&repo, &options).await?)
    }
    .await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"status": "error", "repository": uri, "error": e.to_string()})
                );
            }
            anyhow::bail!("cannot verify the repository {uri}: {e}");
        }
    };
    let code = match report.status {
        ferry_repo::verify::Status::Valid => exit::OK,
        ferry_repo::verify::Status::Invalid => exit::PROBLEMS,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.quiet || code != exit::OK {
        println!("{report}");
    }
    Ok(code)
}
