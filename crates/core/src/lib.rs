//! ferry's core: what every connector and every archive format shares.
//!
//! The data flows in one direction:
//! [`Connector`] (lists [`Item`]s, opens each as a byte stream) → [`pipeline`] (bounded
//! concurrency, the shared [`RetryPolicy`], source-checksum checks) → [`Sink`] (an archive
//! writer) → [`RunReport`] (archived / skipped / failed, with reasons).
//!
//! Connectors know nothing of archives and archives know nothing of clouds; both only speak the
//! types in this crate.

pub mod buffers;
pub mod checksum;
pub mod connector;
pub mod error;
#[cfg(target_os = "linux")]
pub mod folders;
pub mod hash;
pub mod item;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod retry;
pub mod sink;
pub mod store;
pub mod writeback;

pub use buffers::BufferPool;
pub use checksum::QuickXorHash;
pub use connector::{
    listing_channel, send_listing, send_listing_failure, ByteStream, Connector, ItemUpdate,
    Listing, ListingSender, ListingStream, Opened, SourceInfo, Trailer,
};
pub use error::{Error, ErrorKind, Result};
pub use hash::{DigestAlgorithm, Digests, MultiHasher};
pub use item::{ChecksumAlgorithm, Item, ItemKind, SourceChecksum, SourceRef};
pub use pipeline::{Pipeline, PipelineOptions, LARGE_ITEM};
pub use progress::{NoProgress, Progress};
pub use report::{ChecksumCheck, ContainerCounts, Failure, Outcome, RunReport, Skipped};
pub use retry::RetryPolicy;
pub use sink::{ItemWriter, Sink, StoredItem};
pub use store::{ObjectStore, ObjectWriter, StoredObject};
