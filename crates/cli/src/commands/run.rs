//! Running the pipeline for a command: progress (a bar on a terminal, a status line every
//! ten seconds otherwise), and Ctrl-C or SIGTERM stopping it cleanly.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Connector, Pipeline, PipelineOptions, Progress, RunReport, Sink};
use tokio_util::sync::CancellationToken;

use crate::cli::Cli;
use crate::commands::exit;
use crate::progress::ExportProgress;

/// What a pipeline run ended with.
pub(crate) struct Ran {
    /// Outcomes.
    pub report: RunReport,
    /// The error that stopped it, if one did.
    pub fatal: Option<ferry_core::Error>,
    /// Stopped by Ctrl-C or SIGTERM.
    pub cancelled: bool,
}

/// How a run into a bag ended: status, exit code, the bag's summary, the error. The bag is
/// finished (its manifests written) only when the run was neither stopped nor interrupted;
/// `stopped` and `interrupted` are what to tell the user then.
pub(crate) async fn finish_bag(
    ran: Ran,
    writer: ferry_archive::writer::BagWriter,
    stopped: &str,
    interrupted: &str,
) -> (
    RunReport,
    &'static str,
    i32,
    Option<ferry_archive::writer::BagSummary>,
    Option<String>,
) {
    let Ran {
        report,
        fatal,
        cancelled,
    } = ran;
    if let Some(e) = fatal {
        tracing::error!("{e}");
        tracing::error!("{stopped}");
        return (report, "error", exit::ERROR, None, Some(e.to_string()));
    }
    if cancelled {
        tracing::warn!("{interrupted}");
        let e = Some("interrupted".to_string());
        return (report, "interrupted", exit::INTERRUPTED, None, e);
    }
    let (status, code, bag, error) = match writer.finish(&report).await {
        Ok(bag) if bag.failed_items == 0 => ("complete", exit::OK, Some(bag), None),
        Ok(bag) => ("completed_with_failures", exit::PROBLEMS, Some(bag), None),
        Err(e) => {
            tracing::error!("{e}");
            ("error", exit::ERROR, None, Some(e.to_string()))
        }
    };
    (report, status, code, bag, error)
}

/// Feeds `connector`'s items into `sink` with `options`.
pub(crate) async fn run_pipeline(
    cli: &Cli,
    connector: Arc<dyn Connector>,
    sink: Arc<dyn Sink>,
    options: PipelineOptions,
) -> Ran {
    let progress = Arc::new(ExportProgress::new(!cli.no_progress && !cli.quiet));
    let ticker = status_ticker(&progress, cli.quiet);
    let cancel = CancellationToken::new();
    let on_signal = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            interrupted().await;
            cancel.cancel();
        })
    };
    let (report, fatal) = Pipeline::new(options)
        .run(
            connector,
            sink,
            progress.clone() as Arc<dyn Progress>,
            cancel.clone(),
        )
        .await;
    on_signal.abort();
    if let Some(t) = ticker {
        t.abort();
    }
    progress.finish();
    Ran {
        report,
        fatal,
        cancelled: cancel.is_cancelled(),
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Logs a status line every 10 seconds when no progress bar is drawn.
fn status_ticker(
    progress: &Arc<ExportProgress>,
    quiet: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    (!progress.has_bar() && !quiet).then(|| {
        let p = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tick.tick().await;
                tracing::info!("{}", p.status_line());
            }
        })
    })
}
