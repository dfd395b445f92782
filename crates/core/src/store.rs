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

    /// Whether an object exists.
    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.list(key).await?.iter().any(|o| o.key == key))
    }

    /// The local file that holds an object, when the store is a local folder (readers can then
    /// open it directly; writers can rename into it).
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }

    /// Writes a small object whole.
    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<()> {
        let mut w = self.create(key).await?;
        if let Err(e) = w.write(bytes).await {
            w.abort().await;
            return Err(e);
        }
        w.finish().await
    }

    /// Writes an object only if none exists under `key`; `false` when one did. Stores that can
    /// do it atomically (a folder's exclusive create, S3's `If-None-Match: *`) override this;
    /// the default checks first, so two writers racing within a moment could both succeed.
    async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        if self.exists(key).await? {
            return Ok(false);
        }
        self.put_bytes(key, bytes).await?;
        Ok(true)
    }

    /// Writes a small object whole unless one exists under `key` already; `false` when one
    /// did. For content-addressed objects (the same key always holds the same bytes), where two
    /// writers racing both succeed harmlessly. The default checks, then writes; stores that
    /// can do both in one step override it.
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool> {
        if self.exists(key).await? {
            return Ok(false);
        }
        self.put_bytes(key, bytes).await?;
        Ok(true)
    }

    /// Reads a small object whole (at most `limit` bytes, else an error).
    async fn get_bytes(&self, key: &str, limit: usize) -> Result<Vec<u8>> {
        use futures::StreamExt;
        let mut stream = self.read(key, 0).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(crate::Error::permanent(format!(
                    "{}/{key} is larger than {limit} bytes",
                    self.uri()
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Moves a local file into the store under `key` (the file is gone afterwards). The
    /// default uploads it and deletes it; a folder store on the same filesystem renames it.
    async fn adopt_file(&self, key: &str, file: &std::path::Path) -> Result<()> {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| crate::Error::permanent(format!("cannot read {}: {e}", file.display())))?;
        let mut w = self.create(key).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    w.abort().await;
                    return Err(crate::Error::permanent(format!(
                        "cannot read {}: {e}",
                        file.display()
                    )));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = w.write(Bytes::copy_from_slice(&buf[..n])).await {
                w.abort().await;
                return Err(e);
            }
        }
        w.finish().await?;
        let _ = tokio::fs::remove_file(file).await;
        Ok(())
    }
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
