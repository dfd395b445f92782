//! `ferry bag --repo … --run … --to BAG`: a repository run as a self-contained BagIt bag.
//!
//! The run's state is read as a source ([`RepoConnector`]) and goes through the same pipeline
//! and bag writer as `ferry export`: every blob is checked against its SHA-256 on its way into
//! the bag, every item keeps the provenance it was backed up with, and an interrupted bag is
//! resumed by the same command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_archive::writer::{BagOptions, BagSummary, BagTarget, BagWriter};
use ferry_core::{Connector, PipelineOptions, RetryPolicy, RunReport, Sink};
use ferry_repo::format::{job_of, safe_job};
use ferry_repo::restore::Glob;
use ferry_repo::source::RepoConnector;
use ferry_repo::{Repository, StoredRun};
use indicatif::HumanBytes;
use serde::Serialize;

use super::exit;
use super::export::{bag_info_labels, default_work_dir, unique_digests};
use crate::cli::{BagArgs, Cli};

/// Blobs copied at once: a local disk or an object store both keep up with this many.
const CONCURRENCY: usize = 8;

/// The `--json` summary of `ferry bag`.
#[derive(Debug, Serialize)]
struct BagCommandSummary {
    /// `complete`, `completed_with_failures`, `interrupted` or `error`.
    status: &'static str,
    exit_code: i32,
    repository: String,
    run: Option<String>,
    job: Option<String>,
    /// The source the run backed up.
    source: Option<String>,
    bag: String,
    resumed: bool,
    listed_items: u64,
    archived_items: u64,
    archived_bytes: u64,
    resumed_items: u64,
    skipped_items: u64,
    failed_items: u64,
    payload_files: Option<u64>,
    payload_bytes: Option<u64>,
    elapsed_seconds: f64,
    failures: Vec<ferry_core::Failure>,
    error: Option<String>,
}

/// Writes the bag; returns the exit code.
pub async fn run(cli: &Cli, args: &BagArgs) -> Result<i32> {
    let started = Instant::now();
    let repo = super::backup::open_repo(&args.repo, &args.s3, false).await?;
    let run = pick_run(&repo, &args.run, args.job.as_deref()).await?;
    if !args.paths.is_empty() && !any_match(&repo, &run.record.id, &args.paths).await? {
        anyhow::bail!(
            "no item of run {} matches the given --path; `ferry restore` takes the same globs, and keys look like fs/share/reports/q1.pdf",
            run.record.id
        );
    }
    let connector: Arc<dyn Connector> =
        Arc::new(RepoConnector::new(repo.clone(), run.clone(), &args.paths));
    let to = args.to.to_string_lossy().into_owned();
    let options = bag_options(args, &repo, &run);
    let (writer, resume) = if to.starts_with("s3://") {
        let store = crate::source::s3_store(&to, &args.s3, RetryPolicy::default(), 8 << 20, None)?;
        let work = default_work_dir("exports", &store.uri());
        BagWriter::open_store(store, work, vec![connector.info()], options).await?
    } else {
        // A bag inside a folder repository would be taken for leftovers of an interrupted run.
        let root = repo
            .store()
            .local_path(ferry_repo::format::REPOSITORY_FILE)
            .and_then(|f| f.parent().and_then(|p| p.canonicalize().ok()));
        if let Some(root) = root {
            let bag = std::path::absolute(&args.to).unwrap_or_else(|_| args.to.clone());
            let bag = match (
                bag.parent().and_then(|p| p.canonicalize().ok()),
                bag.file_name(),
            ) {
                (Some(parent), Some(name)) => parent.join(name),
                _ => bag,
            };
            if bag.starts_with(&root) {
                anyhow::bail!(
                    "the bag {} would be inside the repository; choose a place outside it",
                    args.to.display()
                );
            }
        }
        BagWriter::open(
            BagTarget::from_path(&args.to),
            vec![connector.info()],
            options,
        )?
    };
    if resume.resumed {
        tracing::info!(
            "resuming the interrupted bag {}: {} items ({}) already stored",
            to,
            resume.items,
            HumanBytes(resume.bytes)
        );
    }
    let sink: Arc<dyn Sink> = Arc::new(writer.clone());
    let ran = super::run::run_pipeline(
        cli,
        connector.clone(),
        sink,
        PipelineOptions {
            concurrency: CONCURRENCY,
            large_concurrency: CONCURRENCY,
            // A blob that does not match its name is damaged in the repository, not in transit:
            // one more read tells a broken read from damage without reading it five times.
            // (Reads that break off resume where they stopped, and the S3 store retries requests.)
            retry: RetryPolicy {
                max_attempts: 2,
                ..RetryPolicy::default()
            },
            ..PipelineOptions::default()
        },
    )
    .await;
    let (report, status, code, bag, error) = super::run::finish_bag(
        ran,
        writer,
        "the bag was not finished; fix the problem and rerun the same command to resume it",
        &format!("interrupted; rerun the same command to resume the bag {to}"),
    )
    .await;
    let summary = summarize(
        &repo,
        &run,
        &to,
        &report,
        bag.as_ref(),
        status,
        code,
        error,
        resume.resumed,
        started.elapsed(),
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !cli.quiet || code != exit::OK {
        print_human(&summary);
    }
    Ok(code)
}

/// The run `spec` names. Without a job, `latest` or a date is ambiguous in a repository of
/// several jobs: the newest run of any job is rarely what a deposit means, so ask.
async fn pick_run(repo: &Repository, spec: &str, job: Option<&str>) -> Result<StoredRun> {
    let ids = repo.run_ids().await?;
    if job.is_none() && !ids.iter().any(|id| id == spec) {
        let mut jobs: Vec<&str> = ids.iter().map(|id| job_of(id)).collect();
        jobs.sort_unstable();
        jobs.dedup();
        if jobs.len() > 1 {
            anyhow::bail!(
                "{} holds runs of several jobs ({}); say which with --job, or give a run id (`ferry runs` lists them)",
                repo.store().uri(),
                jobs.join(", ")
            );
        }
    }
    Ok(repo.resolve(spec, job.map(safe_job).as_deref()).await?)
}

/// Whether any entry of `run`'s state matches one of `patterns` (reads only until the first).
async fn any_match(repo: &Repository, run: &str, patterns: &[String]) -> Result<bool> {
    let globs: Vec<Glob> = patterns.iter().map(|p| Glob::new(p)).collect();
    let mut state = repo.state(run).await?;
    tokio::task::block_in_place(|| {
        for e in state.entries.by_ref() {
            let key = e?.key;
            if globs.iter().any(|g| g.matches(&key)) {
                return Ok(true);
            }
        }
        Ok(false)
    })
}

fn bag_options(args: &BagArgs, repo: &Repository, run: &StoredRun) -> BagOptions {
    let digests = unique_digests(&args.digests);
    let mut run_options = serde_json::Map::new();
    run_options.insert(
        "digests".into(),
        digests.iter().map(|d| d.name()).collect::<Vec<_>>().into(),
    );
    run_options.insert("repository".into(), repo.store().uri().into());
    run_options.insert("run".into(), run.record.id.clone().into());
    if !args.paths.is_empty() {
        run_options.insert("paths".into(), args.paths.clone().into());
    }
    BagOptions {
        digests,
        bag_info: bag_info_labels(&args.bag_info),
        run_options,
        checkpoint_interval: Duration::from_secs(10),
        ..BagOptions::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    repo: &Repository,
    run: &StoredRun,
    to: &str,
    report: &RunReport,
    bag: Option<&BagSummary>,
    status: &'static str,
    exit_code: i32,
    error: Option<String>,
    resumed: bool,
    elapsed: Duration,
) -> BagCommandSummary {
    BagCommandSummary {
        status,
        exit_code,
        repository: repo.store().uri(),
        run: Some(run.record.id.clone()),
        job: Some(run.record.job.clone()),
        source: Some(run.record.source.clone()),
        bag: to.to_string(),
        resumed,
        listed_items: report.listed_items,
        archived_items: report.archived_items,
        archived_bytes: report.archived_bytes,
        resumed_items: report.resumed_items,
        skipped_items: report.skipped_items,
        failed_items: report.failed_items,
        payload_files: bag.map(|b| b.payload_files),
        payload_bytes: bag.map(|b| b.payload_bytes),
        elapsed_seconds: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        failures: report.failures.clone(),
        error,
    }
}

fn print_human(s: &BagCommandSummary) {
    let head = match s.status {
        "complete" => "Bag complete",
        "completed_with_failures" => "Bag finished WITH FAILURES (not a complete copy of the run)",
        "interrupted" => "Bag interrupted (rerun the same command to resume)",
        _ => "Bag stopped by an error (rerun the same command to resume once it is fixed)",
    };
    println!(
        "{head}: run {} of {} → {}",
        s.run.as_deref().unwrap_or("?"),
        s.repository,
        s.bag
    );
    println!(
        "  {} items stored ({}) in {:.1} s",
        s.archived_items,
        HumanBytes(s.archived_bytes),
        s.elapsed_seconds
    );
    if s.resumed_items > 0 {
        println!(
            "  {} items were already stored by the interrupted run",
            s.resumed_items
        );
    }
    if s.skipped_items > 0 {
        println!(
            "  {} items recorded without content (links, empty folders, shortcuts; see items.jsonl)",
            s.skipped_items
        );
    }
    if s.failed_items > 0 {
        println!(
            "  {} items FAILED (listed in ferry/failures.jsonl); content that does not match its digest is damaged in the repository (`ferry verify {}` checks all of it):",
            s.failed_items, s.repository
        );
        for f in s.failures.iter().take(10) {
            println!("    {}: {}", f.name, f.error);
        }
        if s.failed_items > 10 {
            println!("    … and {} more", s.failed_items - 10);
        }
    }
    if let (Some(files), Some(bytes)) = (s.payload_files, s.payload_bytes) {
        println!(
            "  bag: {} payload files, {}; check it any time with `ferry verify {}`",
            files,
            HumanBytes(bytes),
            s.bag
        );
    }
    if let Some(e) = &s.error {
        println!("  {e}");
    }
}
