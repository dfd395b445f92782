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
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use ferry_core::{
    ByteStream, Connector, Error, Failure, Item, ItemKind, Listing, ListingStream, Result,
    SourceInfo, SourceRef,
};
use futures::StreamExt;
use time::OffsetDateTime;

/// Bytes read from a file at a time.
const CHUNK: usize = 256 << 10;

/// Options of the fs connector.
#[derive(Debug, Clone, Default)]
pub struct FsOptions {
    /// Follow symbolic links (to files and folders) instead of recording them.
    pub follow_symlinks: bool,
}

/// Reads a local folder.
pub struct FsConnector {
    root: PathBuf,
    root_name: String,
    host: Option<String>,
    options: FsOptions,
}

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
            root: absolute,
            root_name,
            host: hostname(),
            options,
        }
    }

    fn item_for(&self, rel: &[OsString], meta: &Metadata, kind: ItemKind) -> Item {
        let mut components = Vec::with_capacity(rel.len() + 1);
        components.push(self.root_name.clone());
        let mut utf8 = true;
        for c in rel {
            let (s, ok) = lossy(c);
            utf8 &= ok;
            components.push(s);
        }
        let rel_path: Vec<u8> = rel
            .iter()
            .map(|c| c.as_bytes())
            .collect::<Vec<_>>()
            .join(&b'/');
        let rel_string = String::from_utf8_lossy(&rel_path).into_owned();
        let original_name = rel
            .last()
            .map(|n| lossy(n).0)
            .or_else(|| Some(self.root_name.clone()));
        let mut item = Item::file(
            SourceRef {
                system: "fs".into(),
                account: self.host.clone(),
                container: Some(self.root.to_string_lossy().into_owned()),
                id: rel_string.clone(),
                version: None,
                original_name,
                original_path: Some(rel_string),
            },
            components,
        );
        item.kind = kind;
        item.modified = to_time(meta.modified());
        item.created = to_time(meta.created());
        if matches!(item.kind, ItemKind::File) {
            item.size = Some(meta.len());
        }
        let extra = &mut item.extra;
        extra.insert("mode".into(), format!("{:o}", meta.mode() & 0o7777).into());
        extra.insert("uid".into(), meta.uid().into());
        extra.insert("gid".into(), meta.gid().into());
        extra.insert("inode".into(), meta.ino().into());
        extra.insert("nlink".into(), meta.nlink().into());
        if let Some(changed) = OffsetDateTime::from_unix_timestamp(meta.ctime()).ok() {
            extra.insert(
                "ctime".into(),
                changed
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
                    .into(),
            );
        }
        if !utf8 {
            // The name is not UTF-8: keep its exact bytes so nothing is lost.
            extra.insert(
                "original_path_bytes_hex".into(),
                hex::encode(&rel_path).into(),
            );
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

    fn failure(&self, rel: &[OsString], error: &std::io::Error) -> Failure {
        let shown: Vec<String> = rel
            .iter()
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

    /// Walks the tree on a blocking thread, sending entries as it finds them.
    fn walk(&self, tx: tokio::sync::mpsc::Sender<Result<Listing>>) {
        let root_meta = match std::fs::symlink_metadata(&self.root) {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.blocking_send(Err(root_error(&self.root, &e)));
                return;
            }
        };
        let root_meta = if root_meta.file_type().is_symlink() {
            // The root itself is always followed: the user named it.
            match std::fs::metadata(&self.root) {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.blocking_send(Err(root_error(&self.root, &e)));
                    return;
                }
            }
        } else {
            root_meta
        };
        if !root_meta.is_dir() {
            let kind = kind_of(&root_meta, &self.root);
            let _ = tx.blocking_send(Ok(Listing::Item(self.item_for(&[], &root_meta, kind))));
            return;
        }
        // Depth-first, names sorted, with the chain of (device, inode) of open folders so that
        // followed links cannot loop.
        struct Frame {
            rel: Vec<OsString>,
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
                let _ = tx.blocking_send(Err(root_error(&self.root, &e)));
                return;
            }
        };
        let mut stack = vec![Frame {
            rel: Vec::new(),
            entries,
            id: (root_meta.dev(), root_meta.ino()),
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.entries.pop_front() else {
                stack.pop();
                continue;
            };
            let mut rel = frame.rel.clone();
            rel.push(name);
            let path = self.root.join(rel.iter().collect::<PathBuf>());
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    if tx
                        .blocking_send(Ok(Listing::Failed(self.failure(&rel, &e))))
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            let meta = if meta.file_type().is_symlink() && self.options.follow_symlinks {
                match std::fs::metadata(&path) {
                    Ok(target) => target,
                    // A dangling link is recorded as a link.
                    Err(_) => meta,
                }
            } else {
                meta
            };
            if meta.is_dir() {
                let id = (meta.dev(), meta.ino());
                if stack.iter().any(|f| f.id == id) {
                    let item = self.item_for(
                        &rel,
                        &meta,
                        ItemKind::Other {
                            what: "link to a folder it is inside of (loop)".into(),
                        },
                    );
                    if tx.blocking_send(Ok(Listing::Item(item))).is_err() {
                        return;
                    }
                    continue;
                }
                match read_sorted(&path) {
                    Ok(entries) if entries.is_empty() => {
                        let item = self.item_for(&rel, &meta, ItemKind::EmptyDirectory);
                        if tx.blocking_send(Ok(Listing::Item(item))).is_err() {
                            return;
                        }
                    }
                    Ok(entries) => stack.push(Frame { rel, entries, id }),
                    Err(e) => {
                        if tx
                            .blocking_send(Ok(Listing::Failed(self.failure(&rel, &e))))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                continue;
            }
            let kind = kind_of(&meta, &path);
            if tx
                .blocking_send(Ok(Listing::Item(self.item_for(&rel, &meta, kind))))
                .is_err()
            {
                return;
            }
        }
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

fn kind_of(meta: &Metadata, path: &Path) -> ItemKind {
    let t = meta.file_type();
    if t.is_file() {
        ItemKind::File
    } else if t.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        ItemKind::Symlink { target }
    } else if t.is_fifo() {
        ItemKind::Other {
            what: "named pipe (FIFO)".into(),
        }
    } else if t.is_socket() {
        ItemKind::Other {
            what: "socket".into(),
        }
    } else if t.is_block_device() {
        ItemKind::Other {
            what: "block device".into(),
        }
    } else if t.is_char_device() {
        ItemKind::Other {
            what: "character device".into(),
        }
    } else {
        ItemKind::Other {
            what: "unknown file type".into(),
        }
    }
}

fn changed(item: &Item, meta: &Metadata) -> Option<String> {
    if item.size != Some(meta.len()) {
        return Some(format!(
            "its size changed from {} to {} bytes",
            item.size.unwrap_or(0),
            meta.len()
        ));
    }
    if item.modified != to_time(meta.modified()) {
        return Some("its modification time changed".into());
    }
    None
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
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let walker = FsConnector {
            root: self.root.clone(),
            root_name: self.root_name.clone(),
            host: self.host.clone(),
            options: self.options.clone(),
        };
        tokio::task::spawn_blocking(move || walker.walk(tx));
        tokio_stream(rx).boxed()
    }

    async fn open(&self, item: &Item, offset: u64) -> Result<ByteStream> {
        let path = self.path_of(item);
        let item = item.clone();
        let display = path.display().to_string();
        let file = tokio::task::spawn_blocking(move || -> Result<File> {
            let mut file = File::open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let meta = file
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if let Some(what) = changed(&item, &meta) {
                return Err(Error::transient(format!(
                    "{} changed since it was listed: {what}",
                    path.display()
                )));
            }
            if offset > 0 {
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io(format!("seeking in {}", path.display()), e))?;
            }
            Ok(file)
        })
        .await
        .map_err(|e| Error::fatal(format!("internal error: {e}")))??;
        let stream = futures::stream::unfold(Some((file, display)), |state| async move {
            let (mut file, display) = state?;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = BytesMut::zeroed(CHUNK);
                let mut filled = 0;
                // Fill whole chunks: fewer, larger writes downstream.
                while filled < CHUNK {
                    match file.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return (
                                Err(Error::io(format!("reading {display}"), e)),
                                file,
                                display,
                            )
                        }
                    }
                }
                buf.truncate(filled);
                (Ok(buf.freeze()), file, display)
            })
            .await;
            match read {
                Ok((Ok(bytes), _, _)) if bytes.is_empty() => None,
                Ok((Ok(bytes), file, display)) => {
                    let full = bytes.len() == CHUNK;
                    Some((Ok(bytes), full.then_some((file, display))))
                }
                Ok((Err(e), _, _)) => Some((Err(e), None)),
                Err(e) => Some((Err(Error::fatal(format!("internal error: {e}"))), None)),
            }
        });
        Ok(stream.boxed())
    }

    async fn confirm(&self, item: &Item) -> Result<()> {
        let path = self.path_of(item);
        let item = item.clone();
        tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&path)
                .map_err(|e| Error::io(format!("checking {}", path.display()), e))?;
            match changed(&item, &meta) {
                Some(what) => Err(Error::transient(format!(
                    "{} changed while it was read: {what}",
                    path.display()
                ))),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| Error::fatal(format!("internal error: {e}")))?
    }
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Reads a whole stream into memory (tests only need it; never used on real data).
#[doc(hidden)]
pub async fn collect_for_tests(mut s: ByteStream) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[allow(dead_code)]
fn _assert_bytes(_: Bytes) {}
