//! `ferry backup`, `ferry runs`, `ferry restore`: incremental backups into a repository.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use ferry_core::{ObjectStore, Sink};
use ferry_repo::restore::Glob;
use ferry_repo::{Backup, BackupOptions, BackupSink, FolderStore, Repository};
use indicatif::HumanBytes;
use serde::Serialize;

use super::exit;
use crate::cli::{BackupArgs, Cli, RepoArgs, RestoreArgs, RunsArgs, S3ConnectionArgs};

/// Opens the repository `args` names; with `create`, makes it on first use.
pub(crate) async fn open_repo(
    args: &RepoArgs,
    conn: &S3ConnectionArgs,
    create: bool,
) -> Result<Arc<Repository>> {
    let store: Arc<dyn ObjectStore> = if args.repo.starts_with("s3://") {
        crate::source::s3_store(
            &args.repo,
            conn,
            ferry_core::RetryPolicy::default(),
            8 << 20,
            None,
        )?
    } else {
        let path = std::path::PathBuf::from(&args.repo);
        if create {
            std::fs::create_dir_all(&path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the repository folder {}: {e}",
                    path.display()
                )
            })?;
        }
        Arc::new(FolderStore::new(path))
    };
    store.check().await?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| super::export::default_work_dir("repos", &store.uri()));
    Ok(Arc::new(Repository::open(store, &work, create).await?))
}

/// A job name from a source: the folder's or bucket's name, the tenant, the domain.
pub(crate) fn default_job(source: &str) -> String {
    let body = source
        .split_once(':')
        .map_or(source, |(_, rest)| rest)
        .trim_start_matches('/')
        .trim_end_matches('/');
    let name = body.rsplit('/').next().unwrap_or(body);
    if name.is_empty() {
        "backup".into()
    } else {
        ferry_repo::format::safe_job(name)
    }
}

/// The `--json` summary of a backup run.
#[derive(Debug, Serialize)]
struct BackupSummary {
    status: &'static str,
    exit_code: i32,
    job: String,
    source: String,
    repository: String,
    run: Option<String>,
    counts: Option<ferry_repo::format::RunCounts>,
    /// Items stored although a checksum the source states did not match (see
    /// `--on-checksum-mismatch`).
    mismatched_items: u64,
    elapsed_seconds: f64,
    failures: Vec<ferry_core::Failure>,
    error: Option<String>,
}

/// Runs `ferry backup`; returns the exit code.
pub async fn run(cli: &Cli, args: &BackupArgs) -> Result<i32> {
    if let Some(config) = &args.config {
        return super::backup_config::run(cli, args, config).await;
    }
    let (Some(source), Some(repo)) = (args.source.as_deref(), args.repo.as_deref()) else {
        anyhow::bail!("ferry backup needs a SOURCE and --repo, or --config FILE");
    };
    let job = args.job.clone().unwrap_or_else(|| default_job(source));
    let started = time::OffsetDateTime::now_utc();
    let result = run_one(cli, args, source, repo).await;
    crate::metrics::after_job(args, repo, &job, started, result).await
}

/// One backup run of `source` into `repo_uri`; returns the exit code.
pub(crate) async fn run_one(
    cli: &Cli,
    args: &BackupArgs,
    source: &str,
    repo_uri: &str,
) -> Result<i32> {
    let started = Instant::now();
    let repo_args = RepoArgs {
        repo: repo_uri.to_string(),
        work_dir: args.work_dir.clone(),
    };
    let job = args.job.clone().unwrap_or_else(|| default_job(source));
    // Sources that can list only what changed start from the job's last run's cursors. A
    // repository that does not exist yet is made only once the source answered, so a mistyped
    // source leaves nothing behind.
    let existing = open_repo(&repo_args, &args.src.s3.conn, false).await.ok();
    let since = match &existing {
        Some(repo) => match repo.latest_of_job(&job).await? {
            Some(previous) => Some(repo.run(&previous).await?.record.cursors),
            None => None,
        },
        None => None,
    };
    let incremental = source.starts_with("m365:") || source.starts_with("google:");
    let connector = crate::source::connector_for(source, &args.src, repo_uri, since)?;
    connector.check().await?;
    let repo = match existing {
        Some(repo) => repo,
        None => open_repo(&repo_args, &args.src.s3.conn, true).await?,
    };
    let info = connector.info();
    let backup = Backup::start(
        repo.clone(),
        BackupOptions {
            job: job.clone(),
            source: info.uri.clone(),
            options: info.options.clone(),
            // An incremental source says itself what is gone (deltas' deletions, containers
            // listed whole); the others list everything, so what they no longer list is gone.
            full_listing: !incremental,
            // With --versions an overwritten object's older version gets a name of its own;
            // its content is the one stored before.
            moves: source.starts_with("s3://") && args.src.s3.versions,
        },
    )
    .await?;
    let sink: Arc<dyn Sink> = Arc::new(BackupSink(backup.clone()));
    let ran = super::run::run_pipeline(
        cli,
        connector.clone(),
        sink,
        crate::source::pipeline_options(&args.src, source),
    )
    .await;
    let (report, fatal) = (ran.report, ran.fatal);
    let mut summary = BackupSummary {
        status: "error",
        exit_code: exit::ERROR,
        job: job.clone(),
        source: source.to_string(),
        repository: repo.store().uri(),
        run: Some(backup.id().to_string()),
        counts: None,
        mismatched_items: report.mismatched_items,
        elapsed_seconds: 0.0,
        failures: report.failures.clone(),
        error: None,
    };
    if let Some(e) = fatal {
        tracing::error!("{e}");
        backup.abandon().await;
        summary.error = Some(e.to_string());
        summary.run = None;
    } else if ran.cancelled {
        tracing::warn!("interrupted; the run is not recorded, and the next run reads again what it had not stored");
        backup.abandon().await;
        summary.status = "interrupted";
        summary.exit_code = exit::INTERRUPTED;
        summary.run = None;
    } else {
        let cursors = serde_json::Value::Object(report.source_details.clone());
        match backup.finish(&report, cursors).await {
            Ok(stored) => {
                let r = &stored.record;
                summary.status = if r.complete() {
                    "completed"
                } else {
                    "completed_with_failures"
                };
                summary.exit_code = if r.complete() {
                    exit::OK
                } else {
                    exit::PROBLEMS
                };
                summary.counts = Some(r.counts.clone());
            }
            Err(e) => {
                tracing::error!("{e}");
                summary.error = Some(e.to_string());
                summary.run = None;
            }
        }
    }
    summary.elapsed_seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !cli.quiet || summary.exit_code != exit::OK {
        print_backup(&summary);
    }
    Ok(summary.exit_code)
}

fn print_backup(s: &BackupSummary) {
    let head = match s.status {
        "completed" => "Backup complete",
        "completed_with_failures" => "Backup finished WITH FAILURES",
        "interrupted" => "Backup interrupted (run it again: what was stored is reused)",
        _ => "Backup stopped by an error (nothing of this run was recorded)",
    };
    println!("{head}: {} → {}", s.source, s.repository);
    if let (Some(run), Some(c)) = (&s.run, &s.counts) {
        println!(
            "  run {run}: {} listed, {} added, {} changed, {} removed, {} unchanged (not read again), {} failed",
            c.listed, c.added, c.changed, c.removed, c.unchanged, c.failed
        );
        println!(
            "  read {}, wrote {} ({} new contents) in {:.1} s; the state holds {} items, {}",
            HumanBytes(c.bytes_read),
            HumanBytes(c.bytes_written),
            c.blobs_written,
            s.elapsed_seconds,
            c.state_entries,
            HumanBytes(c.state_bytes)
        );
    }
    if s.mismatched_items > 0 {
        println!(
            "  {} items kept although they do not match a checksum the source states (two downloads agreed; flagged `verified: false` in their records)",
            s.mismatched_items
        );
    }
    for f in s.failures.iter().take(10) {
        println!("  FAILED {}: {}", f.name, f.error);
    }
    if let Some(hint) = super::export::mismatch_hint(&s.failures) {
        println!("  {hint}");
    }
    if let Some(e) = &s.error {
        println!("  {e}");
    }
}

/// `ferry runs`.
pub async fn runs(_cli: &Cli, args: &RunsArgs) -> Result<i32> {
    let repo = open_repo(&args.repo, &args.s3, false).await?;
    let job = args.job.as_deref().map(ferry_repo::format::safe_job);
    let runs = repo.runs().await?;
    // States prune wrote into kept runs are not in their records.
    let full_states: std::collections::HashSet<String> = repo
        .runs_holding(ferry_repo::format::STATE_FILE)
        .await?
        .into_iter()
        .collect();
    for r in runs.iter().filter(|r| {
        job.as_deref()
            .is_none_or(|j| ferry_repo::format::safe_job(&r.record.job) == j)
    }) {
        let rec = &r.record;
        if args.json {
            println!("{}", serde_json::to_string(rec)?);
            continue;
        }
        let c = &rec.counts;
        println!(
            "{}  {:<23} {:>7} items {:>9}  +{} ~{} -{}  {}  {}",
            rec.id,
            rec.status,
            c.state_entries,
            HumanBytes(c.state_bytes).to_string(),
            c.added,
            c.changed,
            c.removed,
            rec.source,
            if rec.files.contains_key(ferry_repo::format::STATE_FILE) {
                "(full state)"
            } else if full_states.contains(&rec.id) {
                "(full state, written by prune)"
            } else {
                ""
            }
        );
    }
    Ok(exit::OK)
}

/// `ferry restore`.
pub async fn restore(cli: &Cli, args: &RestoreArgs) -> Result<i32> {
    let started = Instant::now();
    let repo = open_repo(&args.repo, &args.s3, false).await?;
    let run = repo.resolve(&args.run, args.job.as_deref()).await?;
    let globs: Vec<Glob> = args.paths.iter().map(|p| Glob::new(p)).collect();
    let summary = ferry_repo::restore::restore(&repo, &run.record.id, &globs, &args.to).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "run": run.record.id,
                "to": args.to,
                "files": summary.files,
                "bytes": summary.bytes,
                "without_content": summary.without_content,
                "renamed": summary.renamed,
                "elapsed_seconds": started.elapsed().as_secs_f64(),
            }))?
        );
    } else if !cli.quiet {
        println!(
            "Restored run {} into {}: {} files, {} in {:.1} s{}",
            run.record.id,
            args.to.display(),
            summary.files,
            HumanBytes(summary.bytes),
            started.elapsed().as_secs_f64(),
            if summary.without_content > 0 {
                format!(
                    "; {} items without content (links, shortcuts) not written",
                    summary.without_content
                )
            } else {
                String::new()
            }
        );
        for (key, path) in summary.renamed.iter().take(20) {
            println!("  {key} → {path}");
        }
    }
    if summary.files == 0 && !args.paths.is_empty() {
        tracing::warn!("no item of run {} matches the given --path", run.record.id);
        return Ok(exit::PROBLEMS);
    }
    Ok(exit::OK)
}
