//! Runs a connector into a sink: bounded concurrency, the shared retry policy, every byte
//! hashed on the way through, every source-stated checksum and size checked, every outcome
//! counted.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checksum::ChecksumSet;
use crate::connector::{ByteStream, Connector, ItemUpdate, Listing, Opened};
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
    /// Of those, items larger than [`LARGE_ITEM`] (or of unknown size) transferred at once.
    /// Small items are bound by round trips and gain from many requests in flight; large ones
    /// fill the link with a few, and each holds buffers (read-ahead, the HTTP client's, a zip
    /// bag's while it waits for the archive), so many at once would only add memory.
    pub large_concurrency: usize,
    /// How transfers are retried.
    pub retry: RetryPolicy,
    /// A transfer that delivers no bytes for this long is abandoned (and retried).
    pub idle_timeout: Duration,
    /// What to do when the bytes received do not match a checksum the source states. `false`
    /// (the default): the transfer is retried, then the item fails. `true`: for sources whose
    /// stated checksums are not digests of the content they serve (an S3-compatible store
    /// whose ETags are not MD5s), the item is downloaded again and kept when two downloads
    /// agree, flagged (the check is recorded with `verified: false` and what the bytes gave,
    /// and counted in [`RunReport::mismatched_items`]); downloads that disagree still fail.
    pub keep_mismatched: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            concurrency: 8,
            large_concurrency: 8,
            retry: RetryPolicy::default(),
            idle_timeout: Duration::from_secs(300),
            keep_mismatched: false,
        }
    }
}

/// How the error of an item that failed on a source checksum begins.
const MISMATCH: &str = "checksum mismatch";
/// What that error says when the item failed outright (not when, with
/// [`PipelineOptions::keep_mismatched`], its downloads disagreed).
const RECEIVED: &str = "the bytes received have";

impl Failure {
    /// Whether the item failed because its bytes did not match a checksum the source states,
    /// on every download, without [`PipelineOptions::keep_mismatched`]: what a source whose
    /// checksums are not digests of its content (an S3 store whose ETags are not MD5s) causes.
    pub fn is_checksum_mismatch(&self) -> bool {
        self.error.starts_with(MISMATCH) && self.error.contains(RECEIVED)
    }
}

/// Items above this size count against [`PipelineOptions::large_concurrency`].
pub const LARGE_ITEM: u64 = 1 << 20;

/// Moves items from a connector into a sink.
pub struct Pipeline {
    options: PipelineOptions,
}

/// Counts an item's outcome under its account and container.
fn count_in_container(report: &mut RunReport, item: &Item, outcome: &Outcome) {
    let key = (
        item.source.account.clone().unwrap_or_default(),
        item.source.container.clone().unwrap_or_default(),
    );
    let counts = report.containers.entry(key).or_default();
    counts.listed += 1;
    counts.add(outcome);
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
    ///
    /// The caller checks the source first ([`Connector::check`]), before it creates the sink's
    /// archive: the pipeline does not check it again.
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
        if fatal.is_none() && !cancel.is_cancelled() {
            report.source_details = connector.run_details(&report.containers);
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
        let concurrency = self.options.concurrency.max(1);
        let large_at_once = self
            .options
            .large_concurrency
            .min(sink.large_items_at_once().unwrap_or(usize::MAX))
            .clamp(1, concurrency);
        let large = Arc::new(tokio::sync::Semaphore::new(large_at_once));
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
                    count_in_container(report, &done.item, &done.outcome);
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
                        Some(Ok(Listing::Removed(source))) => {
                            if let Err(e) = sink.record_removed(&source).await {
                                return Some(self.stop(running, e).await);
                            }
                        }
                        Some(Ok(Listing::Complete { system, account, container })) => {
                            if let Err(e) = sink
                                .record_complete(&system, account.as_deref(), container.as_deref())
                                .await
                            {
                                return Some(self.stop(running, e).await);
                            }
                        }
                        Some(Ok(Listing::Failed(f))) => {
                            if let Err(e) = sink.record_failure(&f).await {
                                return Some(self.stop(running, e).await);
                            }
                            report.add(&Outcome::Failed(Box::new(f)), None);
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
                                count_in_container(report, &item, &outcome);
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
                                    let outcome = Outcome::Failed(Box::new(f));
                                    count_in_container(report, &item, &outcome);
                                    report.add(&outcome, None);
                                    progress.finished(&item, &outcome);
                                }
                                Ok(Placement::AlreadyStored) => {
                                    let outcome = Outcome::AlreadyArchived;
                                    count_in_container(report, &item, &outcome);
                                    report.add(&outcome, item.size);
                                    progress.finished(&item, &outcome);
                                }
                                Ok(Placement::New(path)) => {
                                    let transfer = Transfer {
                                        connector: connector.clone(),
                                        sink: sink.clone(),
                                        progress: progress.clone(),
                                        options: self.options.clone(),
                                        large: large.clone(),
                                    };
                                    // Boxed here: the transfer's future is some KiB,
                                    // and spawning moves it through several calls;
                                    // a box moves as a pointer.
                                    running.spawn(Box::pin(transfer.run(item, path)));
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

/// Items larger than this are read ahead of hashing and writing.
const READ_AHEAD_MIN: u64 = 4 << 20;
/// How many chunks a read-ahead holds (each at most a connector's chunk size).
const READ_AHEAD_CHUNKS: usize = 4;

/// Pulls a stream on its own task, up to `depth` chunks ahead of the consumer, so that the
/// source's latency overlaps with hashing and writing. Small items skip this: for them the
/// extra hand-off costs more than it saves.
fn read_ahead(mut stream: ByteStream, depth: usize) -> ByteStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel(depth);
    tokio::spawn(async move {
        while let Some(chunk) = stream.next().await {
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// One item's transfer, with retries.
struct Transfer {
    connector: Arc<dyn Connector>,
    sink: Arc<dyn Sink>,
    progress: Arc<dyn Progress>,
    options: PipelineOptions,
    /// Places for large items (see [`PipelineOptions::large_concurrency`]).
    large: Arc<tokio::sync::Semaphore>,
}

impl Transfer {
    /// Ok(Done) for every per-item outcome; Err only for fatal errors that stop the run.
    async fn run(self, item: Item, path: String) -> Result<Done> {
        // A large item waits for its place before it opens anything, so waiting costs no
        // buffers; it keeps the place through its retries.
        let _place =
            if item.size.is_none_or(|size| size > LARGE_ITEM) {
                Some(
                    self.large.clone().acquire_owned().await.map_err(|_| {
                        Error::fatal("internal error: the pipeline's places closed")
                    })?,
                )
            } else {
                None
            };
        let policy = self.options.retry;
        let mut attempt = 1;
        let mut retries = 0;
        // What the last attempt's bytes gave for advisory checksums they did not match.
        let mut advisory_seen: Vec<String> = Vec::new();
        loop {
            let mut stage = "download";
            let last_try = attempt >= policy.max_attempts;
            match self
                .attempt(&item, &path, &mut stage, &mut advisory_seen, last_try)
                .await
            {
                Ok(stored) => {
                    let outcome = Outcome::Archived {
                        mismatched: stored.checks.iter().any(|c| !c.verified),
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
                    let outcome = Outcome::Failed(Box::new(failure(&item, stage, &e, attempt)));
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
        listed: &Item,
        path: &str,
        stage: &mut &'static str,
        advisory_seen: &mut Vec<String>,
        last_try: bool,
    ) -> Result<StoredItem> {
        *stage = "download";
        let Opened {
            bytes: mut stream,
            update,
            trailer,
        } = self.connector.open(listed, 0).await?;
        // What opening told (content type, metadata, checksums stated only on a GET) joins
        // what the listing said. Most sources add nothing; then the listed item is used as is.
        let mut item_now = std::borrow::Cow::Borrowed(listed);
        if update != ItemUpdate::default() {
            update.apply(item_now.to_mut());
        }
        let item: &Item = &item_now;
        if item.size.is_none_or(|size| size > READ_AHEAD_MIN) {
            stream = read_ahead(stream, READ_AHEAD_CHUNKS);
        }
        let sink_algorithms = self.sink.digest_algorithms();
        let mut checksums = ChecksumSet::new(&item.source_checksums);
        let mut hasher = MultiHasher::new(
            sink_algorithms
                .iter()
                .copied()
                .chain(checksums.shared_digests()),
        );
        *stage = "write";
        let mut writer = self.sink.create(item, path).await?;
        let policy = self.options.retry;
        let mut resumes = 0;
        loop {
            *stage = "download";
            let next = match tokio::time::timeout(self.options.idle_timeout, stream.next()).await {
                Ok(next) => next,
                Err(_) => Some(Err(Error::transient(format!(
                    "no data for {} s; the transfer stalled",
                    self.options.idle_timeout.as_secs()
                )))),
            };
            let chunk = match next {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    // A transfer that broke off goes on where it stopped, when the source can
                    // start at an offset: what was received is kept, hashed and written.
                    let received = hasher.len();
                    let resumable = e.is_transient() && received > 0 && self.connector.resumable();
                    if resumable && policy.should_retry(&e, resumes + 1) {
                        resumes += 1;
                        let delay = policy.delay(resumes, e.retry_after());
                        tracing::debug!(item = %item.display_name(), error = %e, received, "resuming by range");
                        self.progress.retrying(item, &e, delay);
                        // Let go of the broken answer first: it may hold a slot the new
                        // request needs (a mailbox allows 4 requests at once).
                        drop(std::mem::replace(
                            &mut stream,
                            futures::stream::empty().boxed(),
                        ));
                        tokio::time::sleep(delay).await;
                        match self.connector.open(item, received).await {
                            Ok(opened) => {
                                stream = opened.bytes;
                                continue;
                            }
                            Err(e) => {
                                writer.abort().await;
                                return Err(e);
                            }
                        }
                    }
                    writer.abort().await;
                    return Err(e);
                }
            };
            checksums.update_with(&mut hasher, &chunk);
            self.progress.bytes(chunk.len() as u64);
            *stage = "write";
            if let Err(e) = writer.write(chunk).await {
                writer.abort().await;
                return Err(e);
            }
        }
        *stage = "check";
        // Metadata that came with the bytes (see `Opened::trailer`); a dropped sender means
        // there was nothing more to say.
        let item_later;
        let item: &Item = match trailer {
            Some(rx) => match rx.await {
                Ok(late) => {
                    let mut copy = item.clone();
                    late.apply(&mut copy);
                    item_later = copy;
                    &item_later
                }
                Err(_) => item,
            },
            None => item,
        };
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
        for (stated, computed) in checksums.finish(&digests) {
            let matches = computed.eq_ignore_ascii_case(&stated.value);
            let advisory = stated.advisory || self.options.keep_mismatched;
            if !matches && !advisory {
                writer.abort().await;
                return Err(Error::transient(format!(
                    "{MISMATCH}: the source states {:?} {}, {RECEIVED} {}",
                    stated.algorithm, stated.value, computed
                )));
            }
            if !matches && !advisory_seen.contains(&computed) {
                // A source that rewrites files on download, or states checksums that are not
                // of the content, serves the same other bytes every time; a broken transfer
                // does not. Keep the bytes only when two downloads agree; a checksum the
                // connector marked advisory keeps the last try's bytes even so (SharePoint
                // rewrites Office files; a mismatch there is expected, not a fault).
                if last_try && !stated.advisory {
                    writer.abort().await;
                    return Err(Error::transient(format!(
                        "{MISMATCH}: the source states {:?} {}, and no two downloads gave the same bytes (the last had {})",
                        stated.algorithm, stated.value, computed
                    )));
                }
                if !last_try {
                    advisory_seen.push(computed.clone());
                    writer.abort().await;
                    return Err(Error::transient(format!(
                        "the bytes received differ from the {:?} the source lists; downloading again to tell a rewrite by the source from a damaged transfer",
                        stated.algorithm
                    )).with_retry_after(Some(std::time::Duration::ZERO)));
                }
            }
            if !matches {
                tracing::warn!(
                    "{}: the bytes served differ from the {:?} the source lists ({} listed, {} received); kept and flagged in items.jsonl",
                    item.display_name(),
                    stated.algorithm,
                    stated.value,
                    computed
                );
            }
            checks.push(ChecksumCheck {
                algorithm: stated.algorithm,
                value: stated.value,
                verified: matches,
                observed: (!matches).then_some(computed),
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

#[cfg(test)]
mod tests {
    //! The pipeline against a scripted in-memory connector and sink: retries, Retry-After,
    //! truncation, checksum mismatches, permanent and fatal errors, the concurrency bound.

    use super::*;
    use crate::connector::SourceInfo;
    use crate::item::{ChecksumAlgorithm, SourceChecksum, SourceRef};
    use crate::progress::NoProgress;
    use crate::sink::ItemWriter;
    use async_trait::async_trait;
    use bytes::Bytes;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// What an item's `open` does on each attempt.
    #[derive(Clone)]
    enum Script {
        Ok,
        /// Fail with a transient error (and this Retry-After) the first n attempts.
        FailFirst(u32, Option<Duration>),
        /// Deliver only half the bytes the first n attempts.
        TruncateFirst(u32),
        /// Deliver different bytes than the checksum says, always.
        Corrupt,
        /// Deliver different bytes than the checksum says, and other ones on every attempt.
        CorruptDifferently,
        Permanent,
        Fatal,
        /// The first attempt breaks off after the first chunk; later opens honour the offset.
        BreakOnce,
    }

    struct TestConnector {
        items: Vec<(Item, Vec<u8>, Script)>,
        attempts: Mutex<HashMap<String, u32>>,
        offsets: Mutex<Vec<u64>>,
    }

    fn item(id: &str, data: &[u8], md5: Option<&str>) -> Item {
        let mut it = Item::file(
            SourceRef {
                system: "test".into(),
                account: None,
                container: None,
                id: id.into(),
                version: None,
                original_name: None,
                original_path: Some(id.into()),
            },
            vec![id.into()],
        );
        it.size = Some(data.len() as u64);
        if let Some(v) = md5 {
            it.source_checksums
                .push(SourceChecksum::new(ChecksumAlgorithm::Md5, v));
        }
        it
    }

    fn md5_hex(data: &[u8]) -> String {
        let mut h = MultiHasher::new([crate::DigestAlgorithm::Md5]);
        h.update(data);
        h.finish().remove(&crate::DigestAlgorithm::Md5).unwrap()
    }

    #[async_trait]
    impl Connector for TestConnector {
        fn info(&self) -> SourceInfo {
            SourceInfo {
                uri: "test:".into(),
                system: "test".into(),
                connector: "test".into(),
                options: Default::default(),
            }
        }
        fn list(&self) -> crate::connector::ListingStream<'_> {
            futures::stream::iter(
                self.items
                    .iter()
                    .map(|(i, _, _)| Ok(Listing::Item(i.clone()))),
            )
            .boxed()
        }
        fn resumable(&self) -> bool {
            true
        }
        async fn open(&self, item: &Item, offset: u64) -> Result<Opened> {
            let (_, data, script) = self
                .items
                .iter()
                .find(|(i, _, _)| i.source.id == item.source.id)
                .unwrap();
            let attempt = {
                let mut a = self.attempts.lock().unwrap();
                let n = a.entry(item.source.id.clone()).or_default();
                *n += 1;
                *n
            };
            let data = data.clone();
            let bytes = match script {
                Script::Ok => data,
                Script::FailFirst(n, after) if attempt <= *n => {
                    return Err(Error::transient("503 SlowDown").with_retry_after(*after))
                }
                Script::FailFirst(..) => data,
                Script::TruncateFirst(n) if attempt <= *n => data[..data.len() / 2].to_vec(),
                Script::TruncateFirst(_) => data,
                Script::Corrupt => data.iter().map(|b| b ^ 1).collect(),
                Script::CorruptDifferently => data.iter().map(|b| b ^ attempt as u8).collect(),
                Script::Permanent => return Err(Error::permanent("404 Not Found")),
                Script::Fatal => return Err(Error::fatal("401 bad credentials")),
                Script::BreakOnce if attempt == 1 => {
                    let first = Bytes::copy_from_slice(&data[..data.len() / 3]);
                    let chunks = vec![Ok(first), Err(Error::transient("connection reset by peer"))];
                    return Ok(Opened::bytes(futures::stream::iter(chunks).boxed()));
                }
                Script::BreakOnce => {
                    self.offsets.lock().unwrap().push(offset);
                    data[offset as usize..].to_vec()
                }
            };
            // Two chunks, so writers see more than one write.
            let mid = bytes.len() / 2;
            let chunks = vec![
                Ok(Bytes::copy_from_slice(&bytes[..mid])),
                Ok(Bytes::copy_from_slice(&bytes[mid..])),
            ];
            Ok(Opened::bytes(futures::stream::iter(chunks).boxed()))
        }
    }

    #[derive(Default)]
    struct TestSink {
        stored: Mutex<HashMap<String, (Vec<u8>, StoredItem)>>,
        failures: Mutex<Vec<Failure>>,
        open: AtomicUsize,
        max_open: AtomicUsize,
        open_large: AtomicUsize,
        max_open_large: AtomicUsize,
        aborted: AtomicUsize,
    }

    struct TestWriter {
        sink: Arc<TestSink>,
        data: Vec<u8>,
        large: bool,
    }

    impl TestWriter {
        fn close(&self) {
            self.sink.open.fetch_sub(1, Ordering::SeqCst);
            if self.large {
                self.sink.open_large.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    #[async_trait]
    impl ItemWriter for TestWriter {
        async fn write(&mut self, chunk: Bytes) -> Result<()> {
            self.data.extend_from_slice(&chunk);
            tokio::task::yield_now().await;
            Ok(())
        }
        async fn commit(self: Box<Self>, item: &Item, stored: StoredItem) -> Result<()> {
            self.close();
            self.sink
                .stored
                .lock()
                .unwrap()
                .insert(item.source.id.clone(), (self.data.clone(), stored));
            Ok(())
        }
        async fn abort(self: Box<Self>) {
            self.close();
            self.sink.aborted.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct SinkHandle(Arc<TestSink>);

    #[async_trait]
    impl Sink for SinkHandle {
        fn digest_algorithms(&self) -> &[crate::DigestAlgorithm] {
            &[crate::DigestAlgorithm::Sha256]
        }
        fn place(&self, item: &Item) -> Result<Placement> {
            Ok(Placement::New(item.source.id.clone()))
        }
        async fn create(&self, item: &Item, _path: &str) -> Result<Box<dyn ItemWriter>> {
            let now = self.0.open.fetch_add(1, Ordering::SeqCst) + 1;
            self.0.max_open.fetch_max(now, Ordering::SeqCst);
            let large = item.size.is_none_or(|s| s > LARGE_ITEM);
            if large {
                let now = self.0.open_large.fetch_add(1, Ordering::SeqCst) + 1;
                self.0.max_open_large.fetch_max(now, Ordering::SeqCst);
            }
            // Hold the slot a moment so concurrent transfers overlap.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(Box::new(TestWriter {
                sink: self.0.clone(),
                data: Vec::new(),
                large,
            }))
        }
        async fn record_skipped(&self, _item: &Item, _reason: &str) -> Result<()> {
            Ok(())
        }
        async fn record_failure(&self, failure: &Failure) -> Result<()> {
            self.0.failures.lock().unwrap().push(failure.clone());
            Ok(())
        }
    }

    fn fast_retries(max_attempts: u32) -> PipelineOptions {
        PipelineOptions {
            concurrency: 3,
            large_concurrency: 3,
            retry: RetryPolicy {
                max_attempts,
                initial_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
                ..Default::default()
            },
            idle_timeout: Duration::from_secs(5),
            keep_mismatched: false,
        }
    }

    async fn run(
        items: Vec<(Item, Vec<u8>, Script)>,
        options: PipelineOptions,
    ) -> (RunReport, Option<Error>, Arc<TestSink>) {
        let connector = Arc::new(TestConnector {
            items,
            attempts: Mutex::new(HashMap::new()),
            offsets: Mutex::new(Vec::new()),
        });
        let sink = Arc::new(TestSink::default());
        let (report, fatal) = Pipeline::new(options)
            .run(
                connector,
                Arc::new(SinkHandle(sink.clone())),
                Arc::new(NoProgress),
                CancellationToken::new(),
            )
            .await;
        (report, fatal, sink)
    }

    #[tokio::test]
    async fn every_item_is_archived_or_failed_with_a_reason() {
        let data = |i: u8| vec![i; 1000 + i as usize];
        let items = vec![
            (
                item("ok", &data(1), Some(&md5_hex(&data(1)))),
                data(1),
                Script::Ok,
            ),
            (
                item("flaky", &data(2), None),
                data(2),
                Script::FailFirst(2, None),
            ),
            (
                item("truncated-once", &data(3), None),
                data(3),
                Script::TruncateFirst(1),
            ),
            (
                item("corrupt", &data(4), Some(&md5_hex(&data(4)))),
                data(4),
                Script::Corrupt,
            ),
            (item("gone", &data(5), None), data(5), Script::Permanent),
            (
                item("always-truncated", &data(6), None),
                data(6),
                Script::TruncateFirst(99),
            ),
        ];
        let (report, fatal, sink) = run(items, fast_retries(4)).await;
        assert!(fatal.is_none());
        assert_eq!(report.listed_items, 6);
        assert_eq!(report.archived_items, 3);
        assert_eq!(report.failed_items, 3);
        let stored = sink.stored.lock().unwrap();
        assert_eq!(stored["ok"].0, data(1));
        assert_eq!(stored["ok"].1.checks.len(), 1);
        assert!(stored["ok"].1.checks[0].verified);
        assert_eq!(stored["flaky"].0, data(2));
        assert_eq!(stored["truncated-once"].0, data(3));
        let failures = sink.failures.lock().unwrap();
        let why = |id: &str| {
            failures
                .iter()
                .find(|f| f.source.as_ref().unwrap().id == id)
                .unwrap()
                .clone()
        };
        assert!(
            why("corrupt").error.contains("checksum mismatch"),
            "{}",
            why("corrupt").error
        );
        assert_eq!(why("corrupt").attempts, 4, "mismatches are retried");
        assert!(why("corrupt").is_checksum_mismatch());
        assert!(!why("always-truncated").is_checksum_mismatch());
        assert_eq!(why("corrupt").stage, "check");
        assert_eq!(why("gone").attempts, 1, "permanent errors are not retried");
        assert!(why("always-truncated").error.contains("truncated"));
        assert_eq!(report.retries, 2 + 1 + 3 + 3);
        assert!(
            sink.aborted.load(Ordering::SeqCst) >= 1 + 3 + 3,
            "failed attempts discard what they wrote"
        );
        assert_eq!(
            stored["ok"].1.digests.len(),
            1,
            "only the sink's digests are passed on"
        );
    }

    /// `keep_mismatched`: a source that serves the same bytes every time, whatever its
    /// checksum says, is kept and flagged; one whose downloads differ still fails; without the
    /// option both fail.
    #[tokio::test]
    async fn mismatched_items_are_kept_only_when_asked_and_when_two_downloads_agree() {
        let data = |i: u8| vec![i; 3000];
        let items = || {
            vec![
                (
                    item("stable", &data(1), Some(&md5_hex(&data(1)))),
                    data(1),
                    Script::Corrupt,
                ),
                (
                    item("unstable", &data(2), Some(&md5_hex(&data(2)))),
                    data(2),
                    Script::CorruptDifferently,
                ),
                (
                    item("fine", &data(3), Some(&md5_hex(&data(3)))),
                    data(3),
                    Script::Ok,
                ),
            ]
        };
        let (report, _, _) = run(items(), fast_retries(4)).await;
        assert_eq!((report.archived_items, report.failed_items), (1, 2));
        assert_eq!(report.mismatched_items, 0);

        let keep = PipelineOptions {
            keep_mismatched: true,
            ..fast_retries(4)
        };
        let (report, fatal, sink) = run(items(), keep).await;
        assert!(fatal.is_none());
        assert_eq!((report.archived_items, report.failed_items), (2, 1));
        assert_eq!(report.mismatched_items, 1);
        let stored = sink.stored.lock().unwrap();
        let served: Vec<u8> = data(1).iter().map(|b| b ^ 1).collect();
        assert_eq!(stored["stable"].0, served);
        let check = &stored["stable"].1.checks[0];
        assert!(!check.verified);
        assert_eq!(check.value, md5_hex(&data(1)));
        assert_eq!(check.observed.as_deref(), Some(md5_hex(&served).as_str()));
        assert!(stored["fine"].1.checks[0].verified);
        let failures = sink.failures.lock().unwrap();
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0]
                .error
                .contains("no two downloads gave the same bytes"),
            "{}",
            failures[0].error
        );
        assert_eq!(failures[0].attempts, 4);
        assert!(
            !failures[0].is_checksum_mismatch(),
            "downloads that disagreed are not what --on-checksum-mismatch keep is for"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured() {
        let d = vec![9u8; 10];
        let items = vec![(
            item("throttled", &d, None),
            d.clone(),
            Script::FailFirst(1, Some(Duration::from_secs(30))),
        )];
        let start = tokio::time::Instant::now();
        let (report, _, _) = run(items, fast_retries(3)).await;
        assert_eq!(report.archived_items, 1);
        assert!(
            start.elapsed() >= Duration::from_secs(30),
            "waited {:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let items: Vec<_> = (0..40u8)
            .map(|i| {
                (
                    item(&format!("i{i}"), &[i; 64], None),
                    vec![i; 64],
                    Script::Ok,
                )
            })
            .collect();
        let (report, _, sink) = run(items, fast_retries(1)).await;
        assert_eq!(report.archived_items, 40);
        let max = sink.max_open.load(Ordering::SeqCst);
        assert!((2..=3).contains(&max), "max concurrent transfers {max}");
    }

    #[tokio::test]
    async fn large_items_have_a_bound_of_their_own() {
        let big = vec![7u8; LARGE_ITEM as usize + 1];
        let items: Vec<_> = (0..24u8)
            .map(|i| {
                let data = if i % 2 == 0 { big.clone() } else { vec![i; 64] };
                (item(&format!("i{i}"), &data, None), data, Script::Ok)
            })
            .collect();
        let options = PipelineOptions {
            concurrency: 6,
            large_concurrency: 2,
            ..fast_retries(1)
        };
        let (report, _, sink) = run(items, options).await;
        assert_eq!(report.archived_items, 24);
        let large = sink.max_open_large.load(Ordering::SeqCst);
        let all = sink.max_open.load(Ordering::SeqCst);
        assert_eq!(large, 2, "large items at once");
        assert!(
            all > large,
            "small items still run beside them ({all} at most)"
        );
    }

    #[tokio::test]
    async fn a_fatal_error_stops_the_run() {
        let d = vec![1u8; 10];
        let mut items: Vec<_> = (0..5)
            .map(|i| (item(&format!("a{i}"), &d, None), d.clone(), Script::Ok))
            .collect();
        items.push((item("auth", &d, None), d.clone(), Script::Fatal));
        items.extend((0..50).map(|i| (item(&format!("b{i}"), &d, None), d.clone(), Script::Ok)));
        let (report, fatal, _) = run(items, fast_retries(3)).await;
        let fatal = fatal.expect("fatal error reported");
        assert!(fatal.to_string().contains("bad credentials"));
        assert!(report.stopped.is_some());
        assert!(report.archived_items < 55);
    }

    #[tokio::test]
    async fn cancel_stops_the_run() {
        let d = vec![1u8; 10];
        let items: Vec<_> = (0..20)
            .map(|i| {
                (
                    item(&format!("a{i}"), &d, None),
                    d.clone(),
                    Script::FailFirst(100, Some(Duration::from_secs(3600))),
                )
            })
            .collect();
        let connector = Arc::new(TestConnector {
            items,
            attempts: Mutex::new(HashMap::new()),
            offsets: Mutex::new(Vec::new()),
        });
        let sink = Arc::new(TestSink::default());
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c2.cancel();
        });
        let mut options = fast_retries(5);
        options.retry.max_retry_after = Duration::from_secs(7200);
        let (report, fatal) = tokio::time::timeout(
            Duration::from_secs(10),
            Pipeline::new(options).run(
                connector,
                Arc::new(SinkHandle(sink)),
                Arc::new(NoProgress),
                cancel,
            ),
        )
        .await
        .expect("cancel ends the run promptly");
        assert!(fatal.is_none());
        assert_eq!(report.stopped.as_deref(), Some("interrupted"));
    }

    #[tokio::test]
    async fn a_broken_transfer_resumes_by_range() {
        let data: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
        let items = vec![(
            item("big", &data, Some(&md5_hex(&data))),
            data.clone(),
            Script::BreakOnce,
        )];
        let connector = Arc::new(TestConnector {
            items,
            attempts: Mutex::new(HashMap::new()),
            offsets: Mutex::new(Vec::new()),
        });
        let sink = Arc::new(TestSink::default());
        let (report, fatal) = Pipeline::new(fast_retries(3))
            .run(
                connector.clone(),
                Arc::new(SinkHandle(sink.clone())),
                Arc::new(NoProgress),
                CancellationToken::new(),
            )
            .await;
        assert!(fatal.is_none());
        assert_eq!(report.archived_items, 1, "{:?}", report.failures);
        assert_eq!(
            sink.stored.lock().unwrap()["big"].0,
            data,
            "the resumed bytes join the first ones"
        );
        assert_eq!(
            *connector.offsets.lock().unwrap(),
            vec![10_000],
            "reopened where it broke off"
        );
        assert_eq!(
            sink.aborted.load(Ordering::SeqCst),
            0,
            "nothing was thrown away"
        );
    }
}
