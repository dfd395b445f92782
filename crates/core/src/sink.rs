//! The interface archive writers implement, so the pipeline can feed any archive format.

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::error::Result;
use crate::hash::{DigestAlgorithm, Digests};
use crate::item::Item;
use crate::report::{ChecksumCheck, Failure};

/// Where an item goes in an archive, decided before its bytes are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Store it at this path (relative to the archive root, e.g. `data/fs/share/a.txt`).
    New(String),
    /// An earlier, interrupted attempt of this export already stored it: nothing to do.
    AlreadyStored,
}

/// What the pipeline knows about an item's bytes once they have all passed through.
#[derive(Debug, Clone)]
pub struct StoredItem {
    /// The path the sink assigned.
    pub path: String,
    /// Bytes received.
    pub size: u64,
    /// Digests of the bytes, for every algorithm the sink asked for.
    pub digests: Digests,
    /// Source-stated checksums and whether they matched.
    pub checks: Vec<ChecksumCheck>,
    /// When the transfer ended.
    pub retrieved_at: OffsetDateTime,
}

/// An archive being written.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Digests the sink records for each item; the pipeline computes them while streaming.
    fn digest_algorithms(&self) -> &[DigestAlgorithm];

    /// Decides where an item goes. Called once per item, in listing order, one at a time, so
    /// that name mapping (and twin disambiguation) is deterministic.
    fn place(&self, item: &Item) -> Result<Placement>;

    /// How many items larger than [`crate::LARGE_ITEM`] (or of unknown size) the sink can
    /// take at once, when it has a limit of its own. A sink that writes large items one after
    /// the other (a zip: one archive stream) says 1: large items waiting for it would hold
    /// what they fetched ahead, and with it the download budget the item being written needs
    /// to finish (an S3 source's ranged parts): a deadlock, not just memory.
    fn large_items_at_once(&self) -> Option<usize> {
        None
    }

    /// Starts writing an item's bytes at a path from [`Sink::place`].
    async fn create(&self, item: &Item, path: &str) -> Result<Box<dyn ItemWriter>>;

    /// Records an item that has no bytes to archive (a link, an empty folder, a special file).
    async fn record_skipped(&self, item: &Item, reason: &str) -> Result<()>;

    /// Records an item or a part of the listing that failed.
    async fn record_failure(&self, failure: &Failure) -> Result<()>;

    /// Records that an item is gone from the source (incremental listings). Archives that
    /// hold one run ignore it.
    async fn record_removed(&self, _source: &crate::item::SourceRef) -> Result<()> {
        Ok(())
    }

    /// Records that a container was listed whole (see [`crate::Listing::Complete`]).
    async fn record_complete(
        &self,
        _system: &str,
        _account: Option<&str>,
        _container: Option<&str>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Receives one item's bytes. Nothing written becomes visible in the archive until
/// [`ItemWriter::commit`]; dropping the writer or calling [`ItemWriter::abort`] discards it.
#[async_trait]
pub trait ItemWriter: Send {
    /// Appends bytes. Takes the chunk by value (a cheap reference-counted handle) so a writer
    /// can hand it to another thread and return before it is written.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Makes the item part of the archive, with its provenance record.
    async fn commit(self: Box<Self>, item: &Item, stored: StoredItem) -> Result<()>;
    /// Discards what was written.
    async fn abort(self: Box<Self>);
}
