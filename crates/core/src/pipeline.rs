//! Runs a connector into a sink: bounded concurrency, the shared retry policy, every byte
//! hashed on the way through, every source-stated checksum and size checked, every outcome
//! counted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connector::{Connector, Listing};
use crate::error::{Error, Result};
use crate::hash::MultiHasher;
use crate::item::{Item, ItemKind};
use crate::progress::Progress;
use crate::report::{ChecksumCheck, Failure, Outcome, RunReport};
use crate::retry::RetryPolicy;
use crate::sink::{Placement, Sink, StoredItem};

/// How a pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Items transferred at once.
    pub concurrency: usize,
    /// How transfers are retried.
    pub retry: RetryPolicy,
    /// A transfer that delivers no bytes for this long is abandoned (and retried).
    pub idle_timeout: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            concurrency: 8,
            retry: RetryPolicy::default(),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Moves items from a connector into a sink.
pub struct Pipeline {
    options: PipelineOptions,
}

/// Why an item was recorded but not archived.
pub fn skip_reason(kind: &ItemKind) -> Option<String> {
    match kind {
        ItemKind::File => None,
        ItemKind::Symlink { .. } => Some("symbolic link: recorded, not followed".into()),
        ItemKind::EmptyDirectory => Some("empty folder: recorded".into()),
        ItemKind::Other { what } => Some(format!("{what}: no content to archive")),
    }
}

struct Done {
    outcome: Outcome,
    size_hint: Option<u64>,
    retries: u64,
    item: Item,
}

impl Pipeline {
    /// A pipeline with these options.
    pub fn new(options: PipelineOptions) -> Self {
        Pipeline { options }
    }

    /// Runs to the end of the listing, or until `cancel` fires or a fatal error occurs.
    ///
    /// Returns the report and, if the run had to stop, the error that stopped it. Failed items
    /// do not stop a run: they are recorded with the sink and counted.
    pub async fn run(
        &self,
        connector: Arc<dyn Connector>,
        sink: Arc<dyn Sink>,
        progress: Arc<dyn Progress>,
        cancel: CancellationToken,
    ) -> (RunReport, Option<Error>) {
        let mut report = RunReport::start();
        let fatal = self
            .drive(&connector, &sink, &progress, &cancel, &mut report)
            .await;
        if let Some(e) = &fatal {
            report.stopped = Some(e.to_string());
        } else if cancel.is_cancelled() {
            report.stopped = Some("interrupted".into());
        }
        report.finished = Some(OffsetDateTime::now_utc());
        (report, fatal)
    }

    async fn drive(
        &self,
        connector: &Arc<dyn Connector>,
        sink: &Arc<dyn Sink>,
        progress: &Arc<dyn Progress>,
        cancel: &CancellationToken,
        report: &mut RunReport,
    ) -> Option<Error> {
        if let Err(e) = connector.check().await {
            return Some(e);
        }
        let concurrency = self.options.concurrency.max(1);
        let mut listing = connector.list();
        let mut listing_done = false;
        let mut running: JoinSet<Result<Done>> = JoinSet::new();
        loop {
            if listing_done && running.is_empty() {
                return None;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    return None;
                }
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    let done = match joined {
                        Ok(Ok(done)) => done,
                        Ok(Err(fatal)) => return Some(self.stop(running, fatal).await),
                        Err(join) => return Some(self.stop(running, Error::fatal(format!("internal error: a transfer task panicked: {join}"))).await),
                    };
                    if let Outcome::Failed(f) = &done.outcome {
                        if let Err(e) = sink.record_failure(f).await {
                            return Some(self.stop(running, e).await);
                        }
                    }
                    report.retries += done.retries;
                    report.add(&done.outcome, done.size_hint);
                    progress.finished(&done.item, &done.outcome);
                }
                entry = listing.next(), if !listing_done && running.len() < concurrency => {
                    match entry {
                        None => {
                            listing_done = true;
                            progress.listing_done();
                        }
                        Some(Err(e)) => return Some(self.stop(running, e).await),
                        Some(Ok(Listing::Failed(f))) => {
                            if let Err(e) = sink.record_failure(&f).await {
                                return Some(self.stop(running, e).await);
                            }
                            report.add(&Outcome::Failed(f), None);
                        }
                        Some(Ok(Listing::Item(item))) => {
                            report.listed_items += 1;
                            report.listed_bytes += item.size.unwrap_or(0);
                            progress.listed(&item);
                            if let Some(reason) = skip_reason(&item.kind) {
                                if let Err(e) = sink.record_skipped(&item, &reason).await {
                                    return Some(self.stop(running, e).await);
                                }
                                let outcome = Outcome::Skipped(reason);
                                report.add(&outcome, None);
                                progress.finished(&item, &outcome);
                                continue;
                            }
                            match sink.place(&item) {
                                Err(e) if e.is_fatal() => return Some(self.stop(running, e).await),
                                Err(e) => {
                                    let f = failure(&item, "write", &e, 1);
                                    if let Err(e) = sink.record_failure(&f).await {
                                        return Some(self.stop(running, e).await);
                                    }
                                    let outcome = Outcome::Failed(f);
                                    report.add(&outcome, None);
                                    progress.finished(&item, &outcome);
                                }
                                Ok(Placement::AlreadyStored) => {
                                    let outcome = Outcome::AlreadyArchived;
                                    report.add(&outcome, item.size);
                                    progress.finished(&item, &outcome);
                                }
                                Ok(Placement::New(path)) => {
                                    let transfer = Transfer {
                                        connector: connector.clone(),
                                        sink: sink.clone(),
                                        progress: progress.clone(),
                                        options: self.options.clone(),
                                    };
                                    running.spawn(async move { transfer.run(item, path).await });
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    async fn stop(&self, mut running: JoinSet<Result<Done>>, error: Error) -> Error {
        running.abort_all();
        while running.join_next().await.is_some() {}
        error
    }
}

fn failure(item: &Item, stage: &str, error: &Error, attempts: u32) -> Failure {
    Failure {
        source: Some(item.source.clone()),
        name: item.display_name(),
        stage: stage.into(),
        error: error.to_string(),
        attempts,
        at: OffsetDateTime::now_utc(),
    }
}

/// One item's transfer, with retries.
struct Transfer {
    connector: Arc<dyn Connector>,
    sink: Arc<dyn Sink>,
    progress: Arc<dyn Progress>,
    options: PipelineOptions,
}

impl Transfer {
    /// Ok(Done) for every per-item outcome; Err only for fatal errors that stop the run.
    async fn run(self, item: Item, path: String) -> Result<Done> {
        let policy = self.options.retry;
        let mut attempt = 1;
        let mut retries = 0;
        loop {
            let mut stage = "download";
            match self.attempt(&item, &path, &mut stage).await {
                Ok(stored) => {
                    let outcome = Outcome::Archived {
                        path: stored.path,
                        size: stored.size,
                    };
                    return Ok(Done {
                        outcome,
                        size_hint: item.size,
                        retries,
                        item,
                    });
                }
                Err(e) if e.is_fatal() => return Err(e.context(item.display_name())),
                Err(e) if policy.should_retry(&e, attempt) => {
                    let delay = policy.delay(attempt, e.retry_after());
                    tracing::debug!(item = %item.display_name(), error = %e, ?delay, "retrying");
                    self.progress.retrying(&item, &e, delay);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    retries += 1;
                }
                Err(e) => {
                    let outcome = Outcome::Failed(failure(&item, stage, &e, attempt));
                    return Ok(Done {
                        outcome,
                        size_hint: item.size,
                        retries,
                        item,
                    });
                }
            }
        }
    }

    async fn attempt(
        &self,
        item: &Item,
        path: &str,
        stage: &mut &'static str,
    ) -> Result<StoredItem> {
        let sink_algorithms = self.sink.digest_algorithms();
        let mut hasher = MultiHasher::new(
            sink_algorithms
                .iter()
                .copied()
                .chain(item.source_checksums.iter().map(|c| c.algorithm.digest())),
        );
        *stage = "download";
        let mut stream = self.connector.open(item, 0).await?;
        *stage = "write";
        let mut writer = self.sink.create(item, path).await?;
        loop {
            *stage = "download";
            let next = match tokio::time::timeout(self.options.idle_timeout, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    writer.abort().await;
                    return Err(Error::transient(format!(
                        "no data for {} s; the transfer stalled",
                        self.options.idle_timeout.as_secs()
                    )));
                }
            };
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    writer.abort().await;
                    return Err(e);
                }
            };
            hasher.update(&chunk);
            self.progress.bytes(chunk.len() as u64);
            *stage = "write";
            if let Err(e) = writer.write(&chunk).await {
                writer.abort().await;
                return Err(e);
            }
        }
        *stage = "check";
        let received = hasher.len();
        if let Some(expected) = item.size {
            if received != expected {
                writer.abort().await;
                let what = if received < expected {
                    "truncated"
                } else {
                    "longer than stated"
                };
                return Err(Error::transient(format!(
                    "{what}: received {received} bytes, the source stated {expected}"
                )));
            }
        }
        if let Err(e) = self.connector.confirm(item).await {
            writer.abort().await;
            return Err(e);
        }
        let mut digests = hasher.finish();
        let mut checks = Vec::with_capacity(item.source_checksums.len());
        for stated in &item.source_checksums {
            let actual = digests
                .get(&stated.algorithm.digest())
                .cloned()
                .unwrap_or_default();
            if !actual.eq_ignore_ascii_case(&stated.value) {
                writer.abort().await;
                return Err(Error::transient(format!(
                    "checksum mismatch: the source states {:?} {}, the bytes received have {}",
                    stated.algorithm, stated.value, actual
                )));
            }
            checks.push(ChecksumCheck {
                algorithm: stated.algorithm,
                value: stated.value.clone(),
                verified: true,
            });
        }
        digests.retain(|alg, _| sink_algorithms.contains(alg));
        *stage = "write";
        let stored = StoredItem {
            path: path.to_string(),
            size: received,
            digests,
            checks,
            retrieved_at: OffsetDateTime::now_utc(),
        };
        writer.commit(item, stored.clone()).await?;
        Ok(stored)
    }
}
