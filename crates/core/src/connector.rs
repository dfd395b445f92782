//! The one interface every source implements.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::error::Result;
use crate::item::Item;
use crate::report::{ContainerCounts, Failure};
use std::collections::BTreeMap;

/// An item's content as a stream of byte chunks.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What the source says about an item when it is opened, beyond what the listing said: many
/// APIs state content type, user metadata or checksums only on a GET.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ItemUpdate {
    /// The size the source now states (a transfer of another length is an error).
    pub size: Option<u64>,
    /// The media type, if the source states one.
    pub media_type: Option<String>,
    /// More source-specific metadata, merged into the item's `extra`.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// More checksums to check the bytes against.
    pub source_checksums: Vec<crate::item::SourceChecksum>,
    /// The creation time, if the source states it.
    pub created: Option<time::OffsetDateTime>,
    /// The modification time, if the source states it.
    pub modified: Option<time::OffsetDateTime>,
}

impl ItemUpdate {
    /// Applies the update to an item.
    pub fn apply(self, item: &mut Item) {
        if self.size.is_some() {
            item.size = self.size;
        }
        if self.media_type.is_some() {
            item.media_type = self.media_type;
        }
        if self.created.is_some() {
            item.created = self.created;
        }
        if self.modified.is_some() {
            item.modified = self.modified;
        }
        item.extra.extend(self.extra);
        for c in self.source_checksums {
            // The same checksum stated again replaces the listed one (a connector may learn on
            // opening that a listed checksum is only advisory); a new one is added.
            match item.source_checksums.iter_mut().find(|e| {
                e.algorithm == c.algorithm && e.value == c.value && e.part_size == c.part_size
            }) {
                Some(existing) => *existing = c,
                None => item.source_checksums.push(c),
            }
        }
    }
}

/// An opened item: its bytes, and what opening it told about it.
pub struct Opened {
    /// The content, from the offset asked for.
    pub bytes: ByteStream,
    /// Metadata learnt on opening.
    pub update: ItemUpdate,
    /// Metadata that arrives with or after the bytes (Gmail sends a message's history id and
    /// date after its raw content in one JSON answer), applied before the item is recorded.
    /// The sender is dropped without sending when there is nothing more to say.
    pub trailer: Option<Trailer>,
}

/// Receives metadata learnt while the bytes streamed; see [`Opened::trailer`].
pub type Trailer = tokio::sync::oneshot::Receiver<ItemUpdate>;

impl Opened {
    /// Just bytes, nothing more to say.
    pub fn bytes(bytes: ByteStream) -> Self {
        Opened {
            bytes,
            update: ItemUpdate::default(),
            trailer: None,
        }
    }
}

/// What a listing yields: items, and failures to list part of the source.
///
/// A listing failure (an unreadable folder, a page that keeps failing) is not fatal: it is
/// recorded and the rest of the source is still listed. A fatal error is an `Err` in the stream.
#[derive(Debug)]
pub enum Listing {
    /// An item found at the source.
    Item(Item),
    /// Part of the source could not be listed.
    Failed(Failure),
    /// An item that is gone from the source since the cursor the listing started from (a
    /// delta listing's deletion). Only incremental runs receive these.
    Removed(crate::item::SourceRef),
    /// One container (a mail folder, a drive) was listed whole, not from a cursor: an item of
    /// it that an earlier run saw and this listing did not is gone from the source.
    Complete {
        /// The source system.
        system: String,
        /// The account.
        account: Option<String>,
        /// The container.
        container: Option<String>,
    },
}

/// A stream of listing entries; an `Err` stops the run (wrong credentials, missing source).
pub type ListingStream<'a> = BoxStream<'a, Result<Listing>>;

/// Where listing tasks send their entries (see [`listing_channel`]).
pub type ListingSender = tokio::sync::mpsc::Sender<Result<Listing>>;

/// A listing produced by tasks running beside the pipeline (several mailboxes or drives listed
/// at once): the sender for the tasks, and the stream the pipeline reads. At most `capacity`
/// entries wait, so a listing that runs ahead of the transfers holds bounded memory.
pub fn listing_channel<'a>(capacity: usize) -> (ListingSender, ListingStream<'a>) {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed();
    (tx, stream)
}

/// Sends a listing entry; a fatal error once the run has stopped reading (stop listing).
pub async fn send_listing(tx: &ListingSender, entry: Listing) -> Result<()> {
    tx.send(Ok(entry))
        .await
        .map_err(|_| crate::Error::fatal("the run stopped"))
}

/// Records that part of the source (`name`) could not be listed, so the run reports it and
/// goes on; a fatal error is returned instead, to stop the run.
pub async fn send_listing_failure(tx: &ListingSender, name: &str, e: crate::Error) -> Result<()> {
    if e.is_fatal() {
        return Err(e);
    }
    let failure = Failure {
        source: None,
        name: name.to_string(),
        stage: "list".into(),
        error: e.message().to_string(),
        attempts: 1,
        at: time::OffsetDateTime::now_utc(),
    };
    send_listing(tx, Listing::Failed(failure)).await
}

/// What a connector says about the source it reads, for run records.
#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    /// The source as the user named it, with any secrets removed (`fs:/srv/share`).
    pub uri: String,
    /// The source system (`fs`, `s3`, …).
    pub system: String,
    /// Connector name and version, e.g. `ferry-fs 0.1.0`.
    pub connector: String,
    /// Options that change what is listed or how (no secrets).
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// A source of items: lists what is there and opens each item as a stream of bytes.
///
/// Implementations handle their API's paging, cursors and throttling and nothing else: hashing,
/// retries of whole transfers, concurrency and archiving are the pipeline's and the sink's.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Describes the source for run records.
    fn info(&self) -> SourceInfo;

    /// Checks before anything is written that the source exists and can be read, so that wrong
    /// credentials or a mistyped name fail fast with a [`Fatal`](crate::ErrorKind::Fatal) error.
    async fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Lists every item, in a deterministic order where the source allows.
    fn list(&self) -> ListingStream<'_>;

    /// Opens an item's content, starting at byte `offset` (0 for the whole item).
    async fn open(&self, item: &Item, offset: u64) -> Result<Opened>;

    /// Whether [`Connector::open`] can start at an offset, so a transfer that broke off can go
    /// on where it stopped instead of starting again.
    fn resumable(&self) -> bool {
        false
    }

    /// Called after an item's bytes were read in full: lets a connector notice that the item
    /// changed at the source while it was being read (a transient error retries it).
    async fn confirm(&self, _item: &Item) -> Result<()> {
        Ok(())
    }

    /// What the run record should say about the source once the listing is over and every
    /// item has an outcome: reconciliation of what was archived against the source's own counts
    /// (`outcomes` are keyed by each item's account and container), cursors for the next
    /// incremental run. Recorded in run.json under the source's `details`.
    fn run_details(
        &self,
        _outcomes: &BTreeMap<(String, String), ContainerCounts>,
    ) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}
