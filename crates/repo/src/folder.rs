//! A local folder as an [`ObjectStore`]: keys are relative paths. An object is written to a
//! temporary file under `tmp/`, flushed to disk and renamed into place, so it exists whole or
//! not at all; creating an object only if it is absent uses an exclusive create.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::writeback::{Offloaded, WritebackFile};
use ferry_core::{ByteStream, Error, ObjectStore, ObjectWriter, Result, StoredObject};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

/// A folder as an object store.
#[derive(Clone)]
pub struct FolderStore {
    root: PathBuf,
    counter: Arc<AtomicU64>,
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> Error {
    move |e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            Error::fatal(format!(
                "{what}: the disk is full; free space and run again (the repository stays as it was before this run)"
            ))
        } else {
            Error::permanent(format!("{what}: {e}"))
        }
    }
}

impl FolderStore {
    /// The store at `root` (created when first written to).
    pub fn new(root: impl Into<PathBuf>) -> FolderStore {
        FolderStore {
            root: root.into(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        // Keys are made by ferry, but a repository may be edited by hand: never leave the root.
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
            || key.starts_with('/')
        {
            return Err(Error::permanent(format!("not a repository key: {key:?}")));
        }
        Ok(self.root.join(key))
    }

    /// A new temporary file's path under `tmp/` (same filesystem, so renames are atomic).
    pub fn temp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}.part", std::process::id()))
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<StoredObject>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else if ft.is_file() {
            out.push(StoredObject {
                key,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FolderStore {
    fn uri(&self) -> String {
        self.root.display().to_string()
    }

    async fn check(&self) -> Result<()> {
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Error::fatal(format!(
                "{} is not a folder",
                self.root.display()
            ))),
            Err(e) => Err(Error::fatal(format!("{}: {e}", self.root.display()))),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>> {
        // Walk only the folder the prefix names (its part up to the last `/`).
        let (dir, rel) = match prefix.rfind('/') {
            Some(i) => (self.root.join(&prefix[..i]), prefix[..i].to_string()),
            None => (self.root.clone(), String::new()),
        };
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&dir, &rel, &mut out).map_err(io_err(format!("listing {}", root.display())))?;
            out.retain(|o| o.key.starts_with(&prefix) && !o.key.starts_with("tmp/"));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| Error::fatal(format!("listing task failed: {e}")))?
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let target = self.path(key)?;
        let tmp = self.temp_path();
        if let Some(parent) = tmp.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io_err(format!("creating {}", tmp.display())))?
            .into_std()
            .await;
        Ok(Box::new(FolderWriter {
            file: Some(Offloaded::Idle(WritebackFile::new(file))),
            tmp,
            target,
        }))
    }

    async fn read(&self, key: &str, offset: u64) -> Result<ByteStream> {
        use tokio::io::AsyncSeekExt;
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::permanent(format!("{} is missing", path.display()))
            } else {
                Error::permanent(format!("{}: {e}", path.display()))
            }
        })?;
        if offset > 0 {
            file.seek(io::SeekFrom::Start(offset))
                .await
                .map_err(io_err(format!("reading {}", path.display())))?;
        }
        let what = path.display().to_string();
        Ok(tokio_util_stream(file)
            .map(move |r| r.map_err(|e| Error::permanent(format!("reading {what}: {e}"))))
            .boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                // Leave no empty folders behind (blob fan-out folders, run folders).
                let mut dir = path.parent();
                while let Some(d) = dir {
                    if d == self.root || std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::permanent(format!(
                "deleting {}: {e}",
                path.display()
            ))),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.path(key)?)
            .await
            .unwrap_or(false))
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        let path = self.path(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let mut f = match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err(format!("creating {}", path.display()))(e)),
        };
        f.write_all(&bytes)
            .await
            .map_err(io_err(format!("writing {}", path.display())))?;
        f.sync_all()
            .await
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(true)
    }

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<()> {
        // What `create`, `write` and `finish` do in five trips to the blocking pool, in one:
        // small objects (the blobs of small files) are most of what a backup writes.
        let target = self.path(key)?;
        let tmp = self.temp_path();
        tokio::task::spawn_blocking(move || put_file(&tmp, &target, &bytes))
            .await
            .map_err(|e| Error::fatal(format!("writing task failed: {e}")))?
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool> {
        // The check and the write in the same trip to the blocking pool.
        let target = self.path(key)?;
        let tmp = self.temp_path();
        tokio::task::spawn_blocking(move || {
            if target.try_exists().unwrap_or(false) {
                return Ok(false);
            }
            put_file(&tmp, &target, &bytes).map(|()| true)
        })
        .await
        .map_err(|e| Error::fatal(format!("writing task failed: {e}")))?
    }

    async fn adopt_file(&self, key: &str, file: &Path) -> Result<()> {
        let target = self.path(key)?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        match tokio::fs::rename(file, &target).await {
            Ok(()) => Ok(()),
            // Another filesystem: copy through the default way.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut w = self.create(key).await?;
                let bytes = tokio::fs::read(file)
                    .await
                    .map_err(io_err(format!("reading {}", file.display())))?;
                w.write(Bytes::from(bytes)).await?;
                w.finish().await?;
                let _ = tokio::fs::remove_file(file).await;
                Ok(())
            }
            Err(e) => Err(io_err(format!(
                "moving {} into the repository",
                file.display()
            ))(e)),
        }
    }
}

/// Writes `bytes` to `tmp`, flushes it and renames it to `target`: the object exists whole or
/// not at all. `tmp` is removed on an error.
fn put_file(tmp: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let written = (|| {
        if let Some(parent) = tmp.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = WritebackFile::new(std::fs::File::create(tmp)?);
        f.write_all(bytes)?;
        Ok(f)
    })();
    match written {
        Ok(f) => flush_and_place(f, tmp, target),
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            Err(io_err(format!("writing {}", tmp.display()))(e))
        }
    }
}

/// Flushes `file`, written at `tmp`, and renames it to `target`. `tmp` is removed on an error.
fn flush_and_place(file: WritebackFile, tmp: &Path, target: &Path) -> Result<()> {
    if let Err(e) = file.finish().sync_all() {
        let _ = std::fs::remove_file(tmp);
        return Err(io_err(format!("writing {}", tmp.display()))(e));
    }
    let placed = (|| {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(tmp, target)
    })();
    placed.map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        io_err(format!("moving {} into place", target.display()))(e)
    })
}

/// A file as a stream of chunks.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send {
    futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

struct FolderWriter {
    /// Written on the blocking pool, one chunk behind; on its way to disk while it is written,
    /// so that the flush at the end has little left to do (see [`WritebackFile`]).
    file: Option<Offloaded<WritebackFile>>,
    tmp: PathBuf,
    target: PathBuf,
}

#[async_trait]
impl ObjectWriter for FolderWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let f = self.file.as_mut().expect("open until finished");
        f.write_all(chunk)
            .await
            .map_err(io_err(format!("writing {}", self.tmp.display())))
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let f = self.file.take().expect("open until finished");
        let f = f
            .into_inner()
            .await
            .map_err(io_err(format!("writing {}", self.tmp.display())))?;
        let (tmp, target) = (self.tmp.clone(), self.target.clone());
        tokio::task::spawn_blocking(move || flush_and_place(f, &tmp, &target))
            .await
            .map_err(|e| Error::fatal(format!("flushing task failed: {e}")))?
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl Drop for FolderWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_if_absent_writes_once_whole_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path().join("repo"));
        let key = "blobs/sha256/ab/abcdef";
        assert!(store
            .put_if_absent(key, Bytes::from_static(b"first"))
            .await
            .unwrap());
        assert!(!store
            .put_if_absent(key, Bytes::from_static(b"second"))
            .await
            .unwrap());
        assert_eq!(
            std::fs::read(dir.path().join("repo").join(key)).unwrap(),
            b"first"
        );
        store
            .put_bytes("records/r.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("repo/records/r.json")).unwrap(),
            b"{}"
        );
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("repo/tmp"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(tmp.is_empty(), "{tmp:?}");
    }
}
