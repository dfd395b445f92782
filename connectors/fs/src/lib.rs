//! The `fs:` source: a local folder (or a single file).
//!
//! - Walks in a deterministic order (names sorted bytewise), so reruns map names the same way.
//! - Symbolic links are recorded with their target and not followed, unless asked; followed
//!   links never loop (folders already on the current path are not entered again).
//! - FIFOs, sockets and devices are recorded as skipped, with what they are.
//! - A folder or file that cannot be read becomes a failure; the rest is still archived.
//! - Records mode, owner, inode and times; a file that changes while it is read is retried
//!   and, if it keeps changing, reported as failed.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::{
    BufferPool, Connector, Error, Failure, Item, ItemKind, Listing, ListingStream, Opened, Result,
    SourceInfo, SourceRef,
};
use futures::StreamExt;
use time::OffsetDateTime;

mod folders;
mod meta;
use folders::FileOpener;
use meta::{EntryMeta, EntryType};

/// Bytes read from a file at a time.
const CHUNK: usize = 256 << 10;

/// Files up to this size are read in one go without a trip to the blocking thread pool.
const INLINE_READ_MAX: u64 = 64 << 10;

/// Options of the fs connector.
#[derive(Debug, Clone, Default)]
pub struct FsOptions {
    /// Follow symbolic links (to files and folders) instead of recording them.
    pub follow_symlinks: bool,
}

/// Reads a local folder.
pub struct FsConnector {
    root: PathBuf,
    /// `root` as text, as items record it.
    root_text: String,
    root_name: String,
    host: Option<String>,
    options: FsOptions,
    /// Buffers of whole chunks already hashed and written, for the next reads.
    spare: BufferPool,
    /// Folders whose files are being read, kept open.
    folders: Arc<FileOpener>,
}

/// How many spare chunk buffers are kept (4 MiB).
const SPARE_CHUNKS: usize = 16;

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn to_time(t: std::io::Result<std::time::SystemTime>) -> Option<OffsetDateTime> {
    t.ok().map(OffsetDateTime::from)
}

fn lossy(name: &std::ffi::OsStr) -> (String, bool) {
    match name.to_str() {
        Some(s) => (s.to_string(), true),
        None => (name.to_string_lossy().into_owned(), false),
    }
}

impl FsConnector {
    /// A connector for `root` (a folder or a file).
    pub fn new(root: impl Into<PathBuf>, options: FsOptions) -> Self {
        let root = root.into();
        let absolute = std::path::absolute(&root).unwrap_or_else(|_| root.clone());
        let root_name = absolute
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".to_string());
        FsConnector {
            root_text: absolute.to_string_lossy().into_owned(),
            root: absolute,
            root_name,
            host: hostname(),
            options,
            spare: BufferPool::new(SPARE_CHUNKS),
            folders: Arc::new(FileOpener::new()),
        }
    }

    /// The item for the entry `name` in the folder `parent` (both relative to the root; no
    /// name for the root itself).
    fn item_for(
        &self,
        parent: &[OsString],
        name: Option<&OsStr>,
        meta: &EntryMeta,
        kind: ItemKind,
    ) -> Item {
        // Called once per entry of the tree: built with as few allocations as it takes.
        let rel = || parent.iter().map(OsString::as_os_str).chain(name);
        let mut components = Vec::with_capacity(parent.len() + 2);
        components.push(self.root_name.clone());
        let mut utf8 = true;
        let mut rel_path: Vec<u8> = Vec::with_capacity(rel().map(|c| c.len() + 1).sum::<usize>());
        for (i, c) in rel().enumerate() {
            let (s, ok) = lossy(c);
            utf8 &= ok;
            components.push(s);
            if i > 0 {
                rel_path.push(b'/');
            }
            rel_path.extend_from_slice(c.as_bytes());
        }
        // A name that is not UTF-8 keeps its exact bytes (in hex) so nothing is lost.
        let (rel_string, bytes_hex) = if utf8 {
            let text = String::from_utf8(rel_path).expect("UTF-8 checked per component");
            (text, None)
        } else {
            let text = String::from_utf8_lossy(&rel_path).into_owned();
            (text, Some(hex::encode(&rel_path)))
        };
        let original_name = components.last().cloned();
        let mut item = Item::file(
            SourceRef {
                system: "fs".into(),
                account: self.host.clone(),
                container: Some(self.root_text.clone()),
                id: rel_string.clone(),
                version: None,
                original_name,
                original_path: Some(rel_string),
            },
            components,
        );
        item.extra = serde_json::Map::with_capacity(7);
        item.kind = kind;
        item.modified = meta.modified;
        item.created = meta.created;
        if matches!(item.kind, ItemKind::File) {
            item.size = Some(meta.len);
        }
        let extra = &mut item.extra;
        extra.insert("mode".into(), format!("{:o}", meta.mode & 0o7777).into());
        extra.insert("uid".into(), meta.uid.into());
        extra.insert("gid".into(), meta.gid.into());
        extra.insert("inode".into(), meta.ino.into());
        extra.insert("nlink".into(), meta.nlink.into());
        if let Ok(changed) = OffsetDateTime::from_unix_timestamp_nanos(meta.ctime_nanos) {
            let text = changed
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            extra.insert("ctime".into(), text.into());
        }
        if let Some(hex) = bytes_hex {
            extra.insert("original_path_bytes_hex".into(), hex.into());
        }
        item
    }

    fn path_of(&self, item: &Item) -> PathBuf {
        if let Some(hex) = item
            .extra
            .get("original_path_bytes_hex")
            .and_then(|v| v.as_str())
        {
            if let Ok(bytes) = hex::decode(hex) {
                return self.root.join(PathBuf::from(OsString::from_vec(bytes)));
            }
        }
        if item.source.id.is_empty() {
            self.root.clone()
        } else {
            self.root.join(&item.source.id)
        }
    }

    fn failure(&self, parent: &[OsString], name: &OsStr, error: &std::io::Error) -> Failure {
        let shown: Vec<String> = parent
            .iter()
            .map(OsString::as_os_str)
            .chain([name])
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let name = format!("fs:{}", self.root.join(shown.join("/")).display());
        Failure {
            source: None,
            name: name.clone(),
            stage: "list".into(),
            error: format!("cannot read {name}: {error}"),
            attempts: 1,
            at: OffsetDateTime::now_utc(),
        }
    }

    /// Walks the tree on a blocking thread, sending entries (in batches) as it finds them.
    fn walk(&self, tx: &mut Batches) {
        let root_meta = match std::fs::symlink_metadata(&self.root) {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.send(Err(root_error(&self.root, &e)));
                return;
            }
        };
        let root_meta = if root_meta.file_type().is_symlink() {
            // The root itself is always followed: the user named it.
            match std::fs::metadata(&self.root) {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.send(Err(root_error(&self.root, &e)));
                    return;
                }
            }
        } else {
            root_meta
        };
        let root_meta = EntryMeta::from(&root_meta);
        if !root_meta.is_dir() {
            let kind = kind_of(&root_meta, &self.root);
            let _ = tx.send(Ok(Listing::Item(self.item_for(
                &[],
                None,
                &root_meta,
                kind,
            ))));
            return;
        }
        // Depth-first, names sorted, with the chain of (device, inode) of open folders so that
        // followed links cannot loop.
        struct Frame {
            /// The folder, relative to the root, and its full path.
            rel: Vec<OsString>,
            dir: PathBuf,
            /// The folder opened `O_PATH`, to look its entries up by name (see `meta`); none
            /// deeper than [`OPEN_LEVELS`], so a deep tree does not use up descriptors.
            fd: Option<OwnedFd>,
            entries: VecDeque<OsString>,
            id: (u64, u64),
        }
        let read_sorted = |dir: &Path| -> std::io::Result<VecDeque<OsString>> {
            let mut names: Vec<OsString> = std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            Ok(names.into())
        };
        let entries = match read_sorted(&self.root) {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.send(Err(root_error(&self.root, &e)));
                return;
            }
        };
        let mut stack = vec![Frame {
            rel: Vec::new(),
            dir: self.root.clone(),
            entries,
            fd: open_folder(&self.root, 0),
            id: (root_meta.dev, root_meta.ino),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.entries.pop_front() else {
                stack.pop();
                continue;
            };
            let frame = &*frame;
            // A file's entry borrows its folder's path; only a folder gets a path of its own.
            let path = || frame.dir.join(&name);
            let looked_up = match &frame.fd {
                Some(fd) => lookup_at(fd, &name),
                None => None,
            };
            let meta = match looked_up {
                Some(meta) => meta,
                None => match std::fs::symlink_metadata(path()) {
                    Ok(m) => EntryMeta::from(&m),
                    Err(e) => {
                        let failed = self.failure(&frame.rel, &name, &e);
                        if tx.send(Ok(Listing::Failed(failed))).is_err() {
                            return;
                        }
                        continue;
                    }
                },
            };
            let meta = if meta.kind == EntryType::Symlink && self.options.follow_symlinks {
                match std::fs::metadata(path()) {
                    Ok(target) => EntryMeta::from(&target),
                    // A dangling link is recorded as a link.
                    Err(_) => meta,
                }
            } else {
                meta
            };
            if !meta.is_dir() {
                let kind = if meta.kind == EntryType::File {
                    ItemKind::File
                } else {
                    kind_of(&meta, &path())
                };
                let item = self.item_for(&frame.rel, Some(&name), &meta, kind);
                if tx.send(Ok(Listing::Item(item))).is_err() {
                    return;
                }
                continue;
            }
            let path = path();
            let id = (meta.dev, meta.ino);
            if stack.iter().any(|f| f.id == id) {
                let frame = stack.last().expect("the folder being listed");
                let item = self.item_for(
                    &frame.rel,
                    Some(&name),
                    &meta,
                    ItemKind::Other {
                        what: "link to a folder it is inside of (loop)".into(),
                    },
                );
                if tx.send(Ok(Listing::Item(item))).is_err() {
                    return;
                }
                continue;
            }
            let frame = stack.last().expect("the folder being listed");
            match read_sorted(&path) {
                Ok(entries) if entries.is_empty() => {
                    let item =
                        self.item_for(&frame.rel, Some(&name), &meta, ItemKind::EmptyDirectory);
                    if tx.send(Ok(Listing::Item(item))).is_err() {
                        return;
                    }
                }
                Ok(entries) => {
                    let mut rel = frame.rel.clone();
                    rel.push(name);
                    let fd = open_folder(&path, stack.len());
                    stack.push(Frame {
                        rel,
                        dir: path,
                        fd,
                        entries,
                        id,
                    });
                }
                Err(e) => {
                    let failed = self.failure(&frame.rel, &name, &e);
                    if tx.send(Ok(Listing::Failed(failed))).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Listing entries handed over at a time, and how long the walker may gather them first.
const BATCH: usize = 256;
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
/// Batches the walker may run ahead of the transfers.
const BATCHES_AHEAD: usize = 8;

/// The walker's side of the listing channel. Entries go over in batches: the walker is faster
/// than the transfers, so the channel is full, and handing over one entry at a time woke the
/// waiting walker thread for every entry taken out (a futex wake-up and two context switches,
/// which cost more than listing the entry). A batch also leaves after [`BATCH_WAIT`], so a
/// slow disk or network filesystem does not hold the first entries back.
struct Batches {
    tx: tokio::sync::mpsc::Sender<Vec<Result<Listing>>>,
    batch: Vec<Result<Listing>>,
    started: std::time::Instant,
}

/// The receiving side is gone (the run stopped): stop walking.
struct Closed;

impl Batches {
    fn send(&mut self, entry: Result<Listing>) -> std::result::Result<(), Closed> {
        if self.batch.is_empty() {
            self.started = std::time::Instant::now();
        }
        self.batch.push(entry);
        if self.batch.len() >= BATCH || self.started.elapsed() >= BATCH_WAIT {
            return self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), Closed> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.tx.blocking_send(batch).map_err(|_| Closed)
    }
}

fn root_error(root: &Path, e: &std::io::Error) -> Error {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or folder; check the path",
        std::io::ErrorKind::PermissionDenied => "permission denied; run as a user who can read it",
        _ => "cannot read it",
    };
    Error::fatal(format!("fs:{}: {hint} ({e})", root.display()))
}

fn kind_of(meta: &EntryMeta, path: &Path) -> ItemKind {
    let what = match meta.kind {
        EntryType::File => return ItemKind::File,
        EntryType::Symlink => {
            let target = std::fs::read_link(path)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            return ItemKind::Symlink { target };
        }
        EntryType::Fifo => "named pipe (FIFO)",
        EntryType::Socket => "socket",
        EntryType::BlockDevice => "block device",
        EntryType::CharDevice => "character device",
        // A folder is never an item of its own kind; listed here only for completeness.
        EntryType::Dir | EntryType::Unknown => "unknown file type",
    };
    ItemKind::Other { what: what.into() }
}

/// How many levels of folders the walker keeps open (one descriptor each) to look entries up
/// by name; deeper ones are looked up by path.
const OPEN_LEVELS: usize = 32;

/// `dir` opened `O_PATH` for looking its entries up, at `depth` levels below the root; `None`
/// where that is not done (too deep, other systems) or not possible.
fn open_folder(dir: &Path, depth: usize) -> Option<OwnedFd> {
    #[cfg(target_os = "linux")]
    if depth < OPEN_LEVELS {
        return ferry_core::folders::open_folder(dir).ok();
    }
    let _ = (dir, depth);
    None
}

/// The metadata of `name` looked up in its folder's descriptor; `None` when that failed, and
/// the path (which also gives the error to report) is asked instead.
fn lookup_at(folder: &OwnedFd, name: &OsStr) -> Option<EntryMeta> {
    #[cfg(target_os = "linux")]
    return meta::stat_at(folder, name).ok();
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (folder, name);
        None
    }
}

/// What the listing said of a file, to tell whether it changed before it was read through.
struct Listed {
    size: Option<u64>,
    modified: Option<OffsetDateTime>,
}

impl Listed {
    fn of(item: &Item) -> Self {
        Listed {
            size: item.size,
            modified: item.modified,
        }
    }

    fn changed(&self, meta: &Metadata) -> Option<String> {
        if self.size != Some(meta.len()) {
            return Some(format!(
                "its size changed from {} to {} bytes",
                self.size.unwrap_or(0),
                meta.len()
            ));
        }
        if self.modified != to_time(meta.modified()) {
            return Some("its modification time changed".into());
        }
        None
    }
}

#[async_trait]
impl Connector for FsConnector {
    fn info(&self) -> SourceInfo {
        let mut options = serde_json::Map::new();
        options.insert(
            "follow_symlinks".into(),
            self.options.follow_symlinks.into(),
        );
        SourceInfo {
            uri: format!("fs:{}", self.root.display()),
            system: "fs".into(),
            connector: format!("ferry-fs {}", env!("CARGO_PKG_VERSION")),
            options,
        }
    }

    async fn check(&self) -> Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || match std::fs::metadata(&root) {
            Ok(_) => Ok(()),
            Err(e) => Err(root_error(&root, &e)),
        })
        .await
        .map_err(|e| Error::fatal(format!("internal error: {e}")))?
    }

    fn list(&self) -> ListingStream<'_> {
        let (tx, rx) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
        let walker = FsConnector {
            root: self.root.clone(),
            root_text: self.root_text.clone(),
            root_name: self.root_name.clone(),
            host: self.host.clone(),
            options: self.options.clone(),
            spare: self.spare.clone(),
            folders: self.folders.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let mut batches = Batches {
                tx,
                batch: Vec::new(),
                started: std::time::Instant::now(),
            };
            walker.walk(&mut batches);
            let _ = batches.flush();
        });
        tokio_stream(rx).flat_map(futures::stream::iter).boxed()
    }

    async fn open(&self, item: &Item, offset: u64) -> Result<Opened> {
        let path = self.path_of(item);
        let mut reader = FileReader {
            path,
            listed: Listed::of(item),
            file: None,
            offset,
            done: false,
            spare: self.spare.clone(),
            folders: self.folders.clone(),
        };
        if item.size.is_some_and(|s| s <= INLINE_READ_MAX) {
            // A small file is read right here: from the page cache that takes a few
            // microseconds, less than handing it to the blocking pool and back, which dominated
            // exports of many small files.
            let chunk = reader.next_chunk()?;
            return Ok(Opened::bytes(futures::stream::iter(chunk.map(Ok)).boxed()));
        }
        // Each step (open + first chunk, then each further chunk) is one trip to the blocking
        // pool: small files cost a single trip.
        let stream = futures::stream::unfold(Some(reader), |state| async move {
            let mut reader = state?;
            let step = tokio::task::spawn_blocking(move || {
                let chunk = reader.next_chunk();
                (chunk, reader)
            })
            .await;
            match step {
                Ok((Ok(Some(bytes)), reader)) => {
                    let more = !reader.done;
                    Some((Ok(bytes), more.then_some(reader)))
                }
                Ok((Ok(None), _)) => None,
                Ok((Err(e), _)) => Some((Err(e), None)),
                Err(e) => Some((Err(Error::fatal(format!("internal error: {e}"))), None)),
            }
        });
        Ok(Opened::bytes(stream.boxed()))
    }

    fn resumable(&self) -> bool {
        true
    }
}

/// Reads one file in chunks on the blocking pool, and checks at the end that it did not change
/// while it was read (size and modification time as listed).
struct FileReader {
    path: PathBuf,
    listed: Listed,
    file: Option<File>,
    offset: u64,
    done: bool,
    spare: BufferPool,
    folders: Arc<FileOpener>,
}

impl FileReader {
    fn open(&mut self) -> Result<()> {
        let path = &self.path;
        let mut file = self
            .folders
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        // No check of the size here: the check after the last read catches any change since
        // the listing as well, for one system call less per file.
        if self.offset > 0 {
            file.seek(SeekFrom::Start(self.offset))
                .map_err(|e| Error::io(format!("seeking in {}", path.display()), e))?;
        }
        self.file = Some(file);
        Ok(())
    }

    /// The next chunk, or `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.file.is_none() {
            self.open()?;
        }
        let file = self.file.as_mut().expect("open file");
        // Size the buffer to what is left, so small files do not pay for zeroing a whole chunk.
        // When the listed size is reached the file is checked with fstat instead of one more
        // read: a file that grew, shrank or was rewritten shows a different size or mtime.
        let expected = self.listed.size;
        let left = expected.unwrap_or(u64::MAX).saturating_sub(self.offset);
        let cap = left.clamp(1, CHUNK as u64) as usize;
        // Whole chunks come from (and go back to) the spares; the last, shorter piece of a
        // file is sized to what is left.
        let mut buf = if cap == CHUNK {
            self.spare.take()
        } else {
            Vec::new()
        };
        buf.resize(cap, 0);
        let mut filled = 0;
        let mut eof = false;
        while filled < cap {
            match file.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("reading {}", self.path.display()), e)),
            }
        }
        self.offset += filled as u64;
        if eof || expected.is_some_and(|size| self.offset >= size) {
            self.done = true;
            let meta = file
                .metadata()
                .map_err(|e| Error::io(format!("checking {}", self.path.display()), e))?;
            if let Some(what) = self.listed.changed(&meta) {
                // If its folder was replaced since it was opened, the retry goes by the path.
                if let Some(dir) = self.path.parent() {
                    self.folders.forget(dir);
                }
                return Err(Error::transient(format!(
                    "{} changed while it was read: {what}",
                    self.path.display()
                )));
            }
            if self.offset < meta.len() {
                return Err(Error::transient(format!(
                    "{} changed while it was read: it grew",
                    self.path.display()
                )));
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        if buf.len() < CHUNK {
            buf.truncate(filled);
            return Ok(Some(Bytes::from(buf)));
        }
        Ok(Some(self.spare.bytes(buf, filled)))
    }
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_all(c: &FsConnector) -> Vec<Listing> {
        c.list().map(|l| l.unwrap()).collect().await
    }

    async fn read_all(c: &FsConnector, item: &Item) -> Result<Vec<u8>> {
        let mut s = c.open(item, 0).await?.bytes;
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn items(listing: Vec<Listing>) -> Vec<Item> {
        listing
            .into_iter()
            .filter_map(|l| match l {
                Listing::Item(i) => Some(i),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn reused_chunk_buffers_never_change_bytes_still_held() {
        let dir = tempfile::tempdir().unwrap();
        let len = 4 * CHUNK + 123;
        let a: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..len).map(|i| (i % 241) as u8 ^ 0x5A).collect();
        std::fs::write(dir.path().join("a"), &a).unwrap();
        std::fs::write(dir.path().join("b"), &b).unwrap();
        let c = FsConnector::new(dir.path(), FsOptions::default());
        let listed = items(list_all(&c).await);
        let chunks = |i: usize| {
            let c = &c;
            let item = listed[i].clone();
            async move {
                let stream = c.open(&item, 0).await.unwrap().bytes;
                stream.map(|r| r.unwrap()).collect::<Vec<Bytes>>().await
            }
        };
        // Hold every chunk of a while b is read (new buffers), then read a again while b's
        // chunks are dropped one by one (their buffers reused underneath).
        let held_a = chunks(0).await;
        let held_b = chunks(1).await;
        assert!(held_a.concat() == a && held_b.concat() == b);
        drop(held_b);
        let again = chunks(0).await;
        assert!(again.concat() == a);
        assert!(held_a.concat() == a, "bytes held across reuse stay as read");
        drop(again);
        assert_eq!(c.spare.spare(), 4, "whole chunks' buffers come back");
    }

    #[tokio::test]
    async fn lists_in_byte_order_with_paths_below_the_root_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("share");
        for p in ["b/2.txt", "a.txt", "B.txt", "b/1.txt"] {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, p).unwrap();
        }
        let c = FsConnector::new(&root, FsOptions::default());
        let ids: Vec<String> = items(list_all(&c).await)
            .into_iter()
            .map(|i| i.source.id)
            .collect();
        assert_eq!(ids, ["B.txt", "a.txt", "b/1.txt", "b/2.txt"]);
        let first = &items(list_all(&c).await)[0];
        assert_eq!(first.path, ["share", "B.txt"]);
        assert_eq!(read_all(&c, first).await.unwrap(), b"B.txt");
    }

    #[tokio::test]
    async fn a_listing_of_several_batches_arrives_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let n = BATCH * 3 + 7;
        for i in 0..n {
            std::fs::write(dir.path().join(format!("f{i:05}")), b"x").unwrap();
        }
        let c = FsConnector::new(dir.path(), FsOptions::default());
        let ids: Vec<String> = items(list_all(&c).await)
            .into_iter()
            .map(|i| i.source.id)
            .collect();
        let expected: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
        assert_eq!(ids, expected);
        // A consumer that stops early ends the walk (the walker sees the channel closed).
        let first: Vec<_> = c.list().take(3).collect().await;
        assert_eq!(first.len(), 3);
    }

    #[tokio::test]
    async fn large_files_stream_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(CHUNK * 3 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big"), &data).unwrap();
        let c = FsConnector::new(dir.path(), FsOptions::default());
        let item = items(list_all(&c).await).remove(0);
        let mut s = c.open(&item, 0).await.unwrap().bytes;
        let mut chunks = 0;
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK);
            out.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert_eq!(out, data);
        assert_eq!(chunks, 4);
        // Reading from an offset (resume by range) gives the rest.
        let mut s = c.open(&item, CHUNK as u64 + 5).await.unwrap().bytes;
        let mut rest = Vec::new();
        while let Some(chunk) = s.next().await {
            rest.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(rest, data[CHUNK + 5..]);
    }

    #[tokio::test]
    async fn a_file_changed_after_listing_is_a_transient_error() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.txt");
        let big = dir.path().join("big.bin");
        std::fs::write(&small, b"before").unwrap();
        std::fs::write(&big, vec![1u8; CHUNK * 2]).unwrap();
        let c = FsConnector::new(dir.path(), FsOptions::default());
        let listed = items(list_all(&c).await);
        std::fs::write(&small, b"after, and longer").unwrap();
        std::fs::write(&big, vec![2u8; CHUNK * 2 + 1]).unwrap();
        for item in &listed {
            let err = read_all(&c, item).await.unwrap_err();
            assert!(err.is_transient(), "{err}");
            assert!(err.to_string().contains("changed"), "{err}");
        }
        // Same size, new mtime: still noticed.
        let listed = items(list_all(&c).await);
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&small)
            .unwrap()
            .set_modified(when)
            .unwrap();
        let small_item = listed.iter().find(|i| i.source.id == "small.txt").unwrap();
        assert!(read_all(&c, small_item)
            .await
            .unwrap_err()
            .to_string()
            .contains("modification time"));
    }

    #[tokio::test]
    async fn a_missing_root_is_fatal() {
        let c = FsConnector::new("/definitely/not/here", FsOptions::default());
        let err = c.check().await.unwrap_err();
        assert!(err.is_fatal());
        assert!(err.to_string().contains("no such file or folder"), "{err}");
        let first = c.list().next().await.unwrap();
        assert!(first.is_err());
    }

    #[tokio::test]
    async fn non_utf8_names_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(dir.path().join(name), b"latin-1 name").unwrap();
        let c = FsConnector::new(dir.path(), FsOptions::default());
        let item = items(list_all(&c).await).remove(0);
        assert_eq!(item.extra["original_path_bytes_hex"], "636166e92e747874");
        assert_eq!(read_all(&c, &item).await.unwrap(), b"latin-1 name");
    }
}
