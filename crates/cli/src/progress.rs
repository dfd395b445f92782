//! Progress for humans: an indicatif bar on a terminal, a log line every few seconds otherwise.
//! Log lines printed while a bar is drawn are printed above it, never through it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_core::{Error, Item, Outcome, Progress};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

static BAR: OnceLock<Mutex<Option<ProgressBar>>> = OnceLock::new();

fn current_bar() -> Option<ProgressBar> {
    BAR.get().and_then(|m| m.lock().ok()?.clone())
}

/// Sets up logging to stderr: `-q` errors only, default info, `-v` debug, `-vv` trace.
pub fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,aws_config=error,aws_runtime=error,aws_smithy_runtime=error,ferry={level},ferry_core={level},ferry_archive={level},ferry_fs={level},ferry_s3={level}"
        ))
    });
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| SuspendingStderr)
        .with_ansi(ansi)
        .with_target(verbose > 1)
        .without_time()
        .init();
}

/// Writes to stderr, hiding the progress bar while it does.
struct SuspendingStderr;
impl Write for SuspendingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match current_bar() {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Progress of an export.
pub struct ExportProgress {
    bar: Option<ProgressBar>,
    listed: AtomicU64,
    listed_bytes: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    listing_done: AtomicBool,
    start: Instant,
}

impl ExportProgress {
    /// A bar when stderr is a terminal and bars are allowed; plain log lines otherwise.
    pub fn new(allow_bar: bool) -> Self {
        let bar = (allow_bar && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.green} {elapsed_precise} [{wide_bar:.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let _ = BAR.set(Mutex::new(bar.clone()));
        if let Some(m) = BAR.get() {
            *m.lock().expect("bar lock") = bar.clone();
        }
        ExportProgress {
            bar,
            listed: AtomicU64::new(0),
            listed_bytes: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            listing_done: AtomicBool::new(false),
            start: Instant::now(),
        }
    }

    fn message(&self) -> String {
        let listed = self.listed.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        let more = if self.listing_done.load(Ordering::Relaxed) {
            ""
        } else {
            "+ (listing)"
        };
        let failed = if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        };
        format!("{done}/{listed}{more} items{failed}")
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.message());
        }
    }

    /// One plain status line (for logs when there is no bar).
    pub fn status_line(&self) -> String {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        format!(
            "{}, {} of {} read ({}/s)",
            self.message(),
            HumanBytes(bytes),
            HumanBytes(self.listed_bytes.load(Ordering::Relaxed)),
            HumanBytes((bytes as f64 / secs) as u64)
        )
    }

    /// Whether a bar is drawn (else the caller prints [`ExportProgress::status_line`] now and then).
    pub fn has_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some(m) = BAR.get() {
            *m.lock().expect("bar lock") = None;
        }
    }
}

impl Progress for ExportProgress {
    fn listed(&self, item: &Item) {
        self.listed.fetch_add(1, Ordering::Relaxed);
        if item.has_content() {
            let size = item.size.unwrap_or(0);
            self.listed_bytes.fetch_add(size, Ordering::Relaxed);
            if let Some(bar) = &self.bar {
                bar.inc_length(size);
            }
        }
        self.refresh();
    }

    fn listing_done(&self) {
        self.listing_done.store(true, Ordering::Relaxed);
        self.refresh();
    }

    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn retrying(&self, item: &Item, error: &Error, delay: Duration) {
        tracing::debug!(
            "retrying {} in {:.1} s: {error}",
            item.display_name(),
            delay.as_secs_f64()
        );
    }

    fn finished(&self, item: &Item, outcome: &Outcome) {
        self.done.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Failed(f) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("failed: {}: {}", f.name, f.error);
            }
            Outcome::Skipped(reason) => tracing::debug!(
                "recorded without content: {}: {reason}",
                item.display_name()
            ),
            Outcome::AlreadyArchived => {
                if let Some(bar) = &self.bar {
                    bar.inc(item.size.unwrap_or(0));
                }
            }
            Outcome::Archived { .. } => {}
        }
        self.refresh();
    }
}
