//! `ferry export SOURCE --to BAG`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_archive::writer::{BagOptions, BagSummary, BagTarget, BagWriter};
use ferry_core::{DigestAlgorithm, RunReport, Sink};
use ferry_s3::ObjectLock;
use indicatif::HumanBytes;
use serde::Serialize;

use super::exit;
use crate::cli::{BagInfoArgs, Cli, ExportArgs};

/// The `--json` summary of an export.
#[derive(Debug, Serialize)]
pub struct ExportSummary {
    /// `complete`, `completed_with_failures`, `interrupted` or `error`.
    pub status: &'static str,
    /// The exit code ferry returns.
    pub exit_code: i32,
    /// The source, as given.
    pub source: String,
    /// The bag.
    pub bag: String,
    /// True if this run resumed an interrupted one.
    pub resumed: bool,
    /// Items found by the listing.
    pub listed_items: u64,
    /// Items stored by this run.
    pub archived_items: u64,
    /// Bytes stored by this run.
    pub archived_bytes: u64,
    /// Items already stored by the interrupted run this one resumed.
    pub resumed_items: u64,
    /// Items recorded without content (links, empty folders, special files).
    pub skipped_items: u64,
    /// Of the items stored, those kept although a checksum the source states did not match
    /// (`--on-checksum-mismatch keep`, or a source known to rewrite what it serves; each
    /// flagged in items.jsonl).
    pub mismatched_items: u64,
    /// Items that could not be archived (all listed in ferry/failures.jsonl).
    pub failed_items: u64,
    /// Transfers retried.
    pub retries: u64,
    /// Payload files and bytes in the finished bag.
    pub payload_files: Option<u64>,
    /// Payload bytes in the finished bag.
    pub payload_bytes: Option<u64>,
    /// Wall-clock seconds.
    pub elapsed_seconds: f64,
    /// Bytes stored per second.
    pub bytes_per_second: f64,
    /// The first failures.
    pub failures: Vec<ferry_core::Failure>,
    /// What stopped the run, if anything.
    pub error: Option<String>,
}

/// The bag-info.txt labels the user gave, in order (shared with `ferry bag`).
pub(crate) fn bag_info_labels(b: &BagInfoArgs) -> Vec<(String, String)> {
    let mut info = Vec::new();
    for (label, value) in [
        ("Source-Organization", &b.source_organization),
        ("Contact-Name", &b.contact_name),
        ("Contact-Phone", &b.contact_phone),
        ("Contact-Email", &b.contact_email),
        ("External-Identifier", &b.external_identifier),
        ("External-Description", &b.external_description),
    ] {
        if let Some(v) = value {
            info.push((label.to_string(), v.clone()));
        }
    }
    info.extend(b.extra.iter().cloned());
    info
}

/// The digest algorithms given, each once, in order (shared with `ferry bag`).
pub(crate) fn unique_digests(given: &[DigestAlgorithm]) -> Vec<DigestAlgorithm> {
    let mut digests = Vec::new();
    for d in given {
        if !digests.contains(d) {
            digests.push(*d);
        }
    }
    digests
}

/// What the items gathered in memory for a zip bag may take together (see
/// `BagOptions::zip_buffer`).
const ZIP_BUFFERS: usize = 32 << 20;

fn bag_options(args: &ExportArgs) -> BagOptions {
    let info = bag_info_labels(&args.bag_info);
    let mut run_options = serde_json::Map::new();
    run_options.insert(
        "digests".into(),
        args.digests
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .into(),
    );
    let concurrency = args.src.concurrency_for(&args.source);
    run_options.insert("concurrency".into(), concurrency.into());
    run_options.insert("retries".into(), args.src.retries.into());
    run_options.insert(
        "on_checksum_mismatch".into(),
        args.src.on_checksum_mismatch.clone().into(),
    );
    run_options.insert("compress".into(), args.compress.into());
    run_options.insert("follow_symlinks".into(), args.src.follow_symlinks.into());
    BagOptions {
        digests: unique_digests(&args.digests),
        bag_info: info,
        deflate: args.compress,
        run_options,
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval),
        // Every transfer may hold one item this size in memory while the zip is busy with
        // another: together they stay within ZIP_BUFFERS.
        zip_buffer: (ZIP_BUFFERS / concurrency as usize).clamp(64 << 10, 1 << 20),
        ..BagOptions::default()
    }
}

/// A local work folder for `uri` (the journal of an export into an object store, a
/// repository's downloads): under the user's cache folder, one folder per URI.
pub(crate) fn default_work_dir(kind: &str, uri: &str) -> std::path::PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let mut h = ferry_core::MultiHasher::new([ferry_core::DigestAlgorithm::Sha256]);
    h.update(uri.as_bytes());
    let digest = h
        .finish()
        .remove(&ferry_core::DigestAlgorithm::Sha256)
        .unwrap_or_default();
    base.join("ferry").join(kind).join(&digest[..16])
}

use crate::source::retry_policy;

/// Runs the export; returns the exit code.
pub async fn run(cli: &Cli, args: &ExportArgs) -> Result<i32> {
    let started = Instant::now();
    let connector =
        crate::source::connector_for(&args.source, &args.src, &args.to.to_string_lossy(), None)?;
    // Fail on a wrong source before anything is created at the destination.
    connector.check().await?;
    let to = args.to.to_string_lossy().into_owned();
    let (writer, resume) = if to.starts_with("s3://") {
        let lock = args.object_lock_days.map(|days| ObjectLock {
            compliance: args.object_lock_mode == "compliance",
            days,
        });
        let store = crate::source::s3_store(
            &to,
            &args.src.s3.conn,
            retry_policy(&args.src),
            args.src.s3.part_size,
            lock,
        )?;
        let work = args
            .work_dir
            .clone()
            .unwrap_or_else(|| default_work_dir("exports", &store.uri()));
        BagWriter::open_store(store, work, vec![connector.info()], bag_options(args)).await?
    } else {
        if args.object_lock_days.is_some() {
            anyhow::bail!("--object-lock-days needs a bag in S3 (--to s3://BUCKET/PREFIX)");
        }
        BagWriter::open(
            BagTarget::from_path(&args.to),
            vec![connector.info()],
            bag_options(args),
        )?
    };
    if resume.resumed {
        tracing::info!(
            "resuming the interrupted export into {}: {} items ({}) already stored{}",
            args.to.display(),
            resume.items,
            HumanBytes(resume.bytes),
            if resume.dropped > 0 {
                format!(
                    ", {} written after the last checkpoint will be redone",
                    resume.dropped
                )
            } else {
                String::new()
            }
        );
    }
    let sink: Arc<dyn Sink> = Arc::new(writer.clone());
    let ran = super::run::run_pipeline(
        cli,
        connector.clone(),
        sink,
        crate::source::pipeline_options(&args.src, &args.source),
    )
    .await;
    let (report, status, code, bag, error) = super::run::finish_bag(
        ran,
        writer,
        "the export stopped; fix the problem and rerun the same command to resume it",
        &format!(
            "interrupted; rerun the same command to resume the export into {}",
            args.to.display()
        ),
    )
    .await;
    let summary = summarize(
        args,
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

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &ExportArgs,
    report: &RunReport,
    bag: Option<&BagSummary>,
    status: &'static str,
    exit_code: i32,
    error: Option<String>,
    resumed: bool,
    elapsed: Duration,
) -> ExportSummary {
    let secs = elapsed.as_secs_f64();
    ExportSummary {
        status,
        exit_code,
        source: args.source.clone(),
        bag: args.to.display().to_string(),
        resumed,
        listed_items: report.listed_items,
        archived_items: report.archived_items,
        archived_bytes: report.archived_bytes,
        resumed_items: report.resumed_items,
        skipped_items: report.skipped_items,
        mismatched_items: report.mismatched_items,
        failed_items: report.failed_items,
        retries: report.retries,
        payload_files: bag.map(|b| b.payload_files),
        payload_bytes: bag.map(|b| b.payload_bytes),
        elapsed_seconds: (secs * 1000.0).round() / 1000.0,
        bytes_per_second: if secs > 0.0 {
            (report.archived_bytes as f64 / secs).round()
        } else {
            0.0
        },
        failures: report.failures.clone(),
        error,
    }
}

/// Advice for a run whose failures include checksum mismatches: what they may mean, and the
/// option for a source whose checksums are not of its content (shared with `ferry backup`).
pub(crate) fn mismatch_hint(failures: &[ferry_core::Failure]) -> Option<String> {
    let n = failures.iter().filter(|f| f.is_checksum_mismatch()).count();
    (n > 0).then(|| {
        format!(
            "{n} of these did not match a checksum the source states, on every download. Either the source holds other bytes than its checksum says (damaged at the source, or changed behind its back), or its checksums are not digests of the content (an S3-compatible store whose ETags are not MD5s); for the latter, rerun with --on-checksum-mismatch keep (items are kept when two downloads agree, flagged in items.jsonl)."
        )
    })
}

fn print_human(s: &ExportSummary) {
    let head = match s.status {
        "complete" => "Export complete",
        "completed_with_failures" => "Export finished WITH FAILURES",
        "interrupted" => "Export interrupted (rerun the same command to resume)",
        _ => "Export stopped by an error (rerun the same command to resume once it is fixed)",
    };
    println!("{head}: {} → {}", s.source, s.bag);
    println!(
        "  {} items stored ({}) in {:.1} s, {}/s",
        s.archived_items,
        HumanBytes(s.archived_bytes),
        s.elapsed_seconds,
        HumanBytes(s.bytes_per_second as u64)
    );
    if s.resumed_items > 0 {
        println!(
            "  {} items were already stored by the interrupted run",
            s.resumed_items
        );
    }
    if s.skipped_items > 0 {
        println!("  {} items recorded without content (links, empty folders, special files; see items.jsonl)", s.skipped_items);
    }
    if s.retries > 0 {
        println!("  {} transfers retried", s.retries);
    }
    if s.mismatched_items > 0 {
        println!(
            "  {} items kept although they do not match a checksum the source states (two downloads agreed; flagged `verified: false` in items.jsonl)",
            s.mismatched_items
        );
    }
    if s.failed_items > 0 {
        println!(
            "  {} items FAILED (listed in ferry/failures.jsonl):",
            s.failed_items
        );
        for f in s.failures.iter().take(10) {
            println!("    {}: {}", f.name, f.error);
        }
        if s.failed_items > 10 {
            println!("    … and {} more", s.failed_items - 10);
        }
        if let Some(hint) = mismatch_hint(&s.failures) {
            println!("  {hint}");
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
}
