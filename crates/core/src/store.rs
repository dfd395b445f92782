//! Where a bag goes when it does not go to a local disk: an object store, such as an
//! S3-compatible bucket. Archive writers and readers use this interface; the connector crates
//! implement it, so archives stay free of cloud APIs.

use async_trait::async_trait;
use bytes::Bytes;

use crate::connector::ByteStream;
use crate::error::Result;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Its key, relative to the store's root (`data/fs/a.txt`).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A flat namespace of objects under a root (`s3://bucket/prefix/`).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The store's root as a URI, for messages and records (`s3://bucket/prefix`).
    fn uri(&self) -> String;

    /// Checks that the store exists and answers, so wrong settings fail before any work.
    async fn check(&self) -> Result<()>;

    /// Every object whose key starts with `prefix` (relative to the root), in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>>;

    /// Starts writing an object. It becomes visible, whole, only on
    /// [`ObjectWriter::finish`]; an aborted or dropped writer leaves nothing behind.
    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;

    /// Reads an object from byte `offset`.
    async fn read(&self, key: &str, offset: u64) -> Result<ByteStream>;

    /// Deletes an object; a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// An object being written.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Completes the object.
    async fn finish(self: Box<Self>) -> Result<()>;
    /// Gives up; nothing of the object remains.
    async fn abort(self: Box<Self>);
}
