//! Reading bags: a folder or a zip, written by ferry or by any other tool.
//!
//! [`BagReader::open`] lists every file of the bag once (relative path and size) and keeps the
//! listing compact, so a bag of a million files costs tens of megabytes, not gigabytes. Files
//! are then opened by their place in that listing, never by a name taken from a manifest: a path
//! the listing does not hold (`../../etc/passwd`, a symlink target) can never be opened.
//!
//! Zip bags are read with positioned reads on one shared file handle, so many threads can stream
//! different entries at once without re-parsing the central directory or sharing a file cursor.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::record::ITEMS_JSONL;

/// The largest tag file [`BagReader::read_tag_file`] reads whole. Tag files are small; one
/// larger than this is either not a tag file or an attempt to exhaust memory.
pub const MAX_TAG_FILE_BYTES: u64 = 256 << 20;

/// The longest line [`BagReader::item_records`] accepts in `ferry/items.jsonl`.
pub const MAX_ITEMS_LINE_BYTES: u64 = 16 << 20;

/// Where a bag is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BagLocation {
    /// A bag in a folder; `root` holds `bagit.txt` and `data/`.
    Folder {
        /// The bag's folder.
        root: PathBuf,
    },
    /// A bag stored as objects in an object store (`s3://bucket/prefix`).
    Store {
        /// The store's root as a URI.
        uri: String,
    },
    /// A serialised bag: a zip that unpacks to one top folder.
    Zip {
        /// The zip file.
        archive: PathBuf,
        /// The folder inside the zip that is the bag (empty when the bag's files sit at the top
        /// level of the zip, which is itself reported as a [`ReadIssueKind::ZipLayout`] issue).
        top: String,
    },
}

/// Something about the bag's storage the reader noticed while listing it. The verifier turns
/// these into problems (or, for [`ReadIssueKind::ZipFolderName`], a warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadIssueKind {
    /// A symbolic link inside a folder bag or a zip. It is not followed and not listed.
    Symlink,
    /// A FIFO, socket or device inside a folder bag. Not listed.
    SpecialFile,
    /// A file or folder name that is not valid UTF-8; manifests cannot name it. Not listed.
    NonUtf8Name,
    /// A folder that could not be read; its contents are missing from the listing.
    UnreadableFolder,
    /// A zip entry whose name is absolute, has a `..` component or a drive letter, or contains a
    /// NUL byte. Never opened, not listed.
    UnsafeZipEntry,
    /// The zip does not unpack to exactly one top folder (several top folders, or files at the
    /// top level). Entries outside the chosen top folder are not listed.
    ZipLayout,
    /// The zip's top folder is not named like the zip file (a convention, so only a warning).
    ZipFolderName,
    /// An encrypted zip entry, or one compressed with a method other than stored or deflate.
    /// Not listed.
    UnsupportedZipEntry,
    /// Two zip entries with the same name; only the first is listed.
    DuplicateZipEntry,
}

/// One [`ReadIssueKind`] with the path it concerns (relative to the bag, or the raw zip entry
/// name) and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadIssue {
    /// What kind of issue.
    pub kind: ReadIssueKind,
    /// The file concerned.
    pub path: String,
    /// What is wrong, in words.
    pub detail: String,
}

impl ReadIssue {
    /// True for issues that are conventions rather than errors.
    pub fn is_warning(&self) -> bool {
        self.kind == ReadIssueKind::ZipFolderName
    }
}

/// Why a bag (or a file in it) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path does not exist.
    #[error("{}: no such file or folder", .0.display())]
    NotFound(PathBuf),
    /// An I/O error on the bag itself.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The path is a file but not a readable zip archive.
    #[error("{}: not a zip archive ({detail})", path.display())]
    NotAZip {
        /// The file.
        path: PathBuf,
        /// What the zip parser said.
        detail: String,
    },
    /// The bag has no such file (or it was not listed because it is unsafe).
    #[error("{0}: no such file in the bag")]
    NoSuchFile(String),
    /// A tag file larger than [`MAX_TAG_FILE_BYTES`].
    #[error("{path}: {size} bytes is too large for a tag file (limit {limit} bytes)")]
    TooLarge {
        /// The file, relative to the bag.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading a file inside the bag failed.
    #[error("{path}: {source}")]
    File {
        /// The file, relative to the bag.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The error a zip entry's reader returns at its end when the bytes read do not match the
/// entry's CRC-32 or size. Callers that hash the bytes anyway (the verifier) can recognise it
/// with `io::Error::get_ref()` and `downcast_ref::<ZipEntryCorrupt>()`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("zip entry is corrupt: {0}")]
pub struct ZipEntryCorrupt(pub String);

/// A file's index in the bag's listing. Listings are sorted by path, so ids follow path order.
pub type FileId = usize;

/// One listed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BagFile<'a> {
    /// Its index in the listing.
    pub id: FileId,
    /// Its path relative to the bag, `/`-separated (`data/…`, `bagit.txt`).
    pub path: &'a str,
    /// Its size in bytes (uncompressed, for zip entries).
    pub size: u64,
}

/// An open bag: its location, the listing of its files and a way to read each of them.
///
/// Cloning is cheap (the listing is shared), and the reader is `Send + Sync`: threads may open
/// and read different files at the same time.
#[derive(Clone)]
pub struct BagReader {
    inner: Arc<Inner>,
}

struct Inner {
    location: BagLocation,
    /// Every path, concatenated; `files[i]` points into it. One allocation instead of one per
    /// file keeps a million-file listing small.
    names: String,
    /// Sorted by path.
    files: Vec<FileRec>,
    /// Folders at the top of the bag (`data`, `ferry`, `.ferry-partial`, …), sorted.
    top_dirs: Vec<String>,
    issues: Vec<ReadIssue>,
    backend: Backend,
}

#[derive(Clone, Copy)]
struct FileRec {
    start: usize,
    len: u32,
    size: u64,
    /// Index into `Backend::Zip::entries` (unused for folders).
    zip: u32,
}

enum Backend {
    Folder,
    /// Objects read through an async store; reads block the calling (non-runtime) thread.
    Store {
        store: Arc<dyn ferry_core::ObjectStore>,
        runtime: tokio::runtime::Handle,
    },
    Zip {
        file: Arc<File>,
        file_len: u64,
        entries: Vec<ZipEntry>,
    },
}

#[derive(Clone, Copy)]
struct ZipEntry {
    header_start: u64,
    compressed_size: u64,
    crc32: u32,
    deflated: bool,
}

/// Builds the compact listing.
#[derive(Default)]
struct ListingBuilder {
    names: String,
    files: Vec<FileRec>,
    top_dirs: Vec<String>,
}

impl ListingBuilder {
    fn push(&mut self, path: &str, size: u64, zip: u32) {
        let start = self.names.len();
        self.names.push_str(path);
        self.files.push(FileRec {
            start,
            // A single path longer than 4 GiB cannot come from a file system or a zip.
            len: u32::try_from(path.len()).unwrap_or(u32::MAX),
            size,
            zip,
        });
    }

    fn top_dir(&mut self, name: &str) {
        if !self.top_dirs.iter().any(|d| d == name) {
            self.top_dirs.push(name.to_string());
        }
    }

    fn finish(mut self, location: BagLocation, issues: Vec<ReadIssue>, backend: Backend) -> Inner {
        let names = &self.names;
        self.files.sort_unstable_by(|a, b| {
            names[a.start..a.start + a.len as usize].cmp(&names[b.start..b.start + b.len as usize])
        });
        self.top_dirs.sort();
        self.names.shrink_to_fit();
        self.files.shrink_to_fit();
        Inner {
            location,
            names: self.names,
            files: self.files,
            top_dirs: self.top_dirs,
            issues,
            backend,
        }
    }
}

impl BagReader {
    /// Opens a bag kept in an object store. Must be called outside the async runtime's own
    /// threads (the listing and every read block on `runtime`).
    pub fn open_store(
        store: Arc<dyn ferry_core::ObjectStore>,
        runtime: tokio::runtime::Handle,
    ) -> Result<BagReader, ReadError> {
        let uri = store.uri();
        let objects = runtime
            .block_on(store.list(""))
            .map_err(|e| ReadError::Io {
                path: PathBuf::from(&uri),
                source: io::Error::other(e.to_string()),
            })?;
        if objects.is_empty() {
            return Err(ReadError::NotFound(PathBuf::from(&uri)));
        }
        let mut list = ListingBuilder::default();
        let mut issues = Vec::new();
        for o in &objects {
            if let Some(reason) = unsafe_path_reason(&o.key) {
                issues.push(ReadIssue {
                    kind: ReadIssueKind::UnsafeZipEntry,
                    path: o.key.clone(),
                    detail: format!("object key {reason}; not read"),
                });
                continue;
            }
            if let Some((top, _)) = o.key.split_once('/') {
                list.top_dir(top);
            }
            list.push(&o.key, o.size, 0);
        }
        let location = BagLocation::Store { uri };
        Ok(BagReader {
            inner: Arc::new(list.finish(location, issues, Backend::Store { store, runtime })),
        })
    }

    /// Opens a bag: a folder, or a `.zip` file (any file that is not a folder is read as a zip).
    ///
    /// The folder need not be a valid bag (it may lack `bagit.txt`); the verifier reports that.
    /// Symlinks, special files, unsafe zip entries and layout problems are collected as
    /// [`issues`](Self::issues) instead of failing the open.
    pub fn open(path: &Path) -> Result<BagReader, ReadError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ReadError::NotFound(path.to_path_buf())
            } else {
                ReadError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        let inner = if meta.is_dir() {
            open_folder(path)?
        } else {
            open_zip(path)?
        };
        Ok(BagReader {
            inner: Arc::new(inner),
        })
    }

    /// Where the bag is.
    pub fn location(&self) -> &BagLocation {
        &self.inner.location
    }

    /// Issues found while listing (symlinks, unsafe zip entries, …).
    pub fn issues(&self) -> &[ReadIssue] {
        &self.inner.issues
    }

    /// Number of listed files.
    pub fn len(&self) -> usize {
        self.inner.files.len()
    }

    /// True when the bag lists no files at all.
    pub fn is_empty(&self) -> bool {
        self.inner.files.is_empty()
    }

    /// The path of file `id`, relative to the bag.
    ///
    /// # Panics
    /// If `id` is not below [`len`](Self::len).
    pub fn path(&self, id: FileId) -> &str {
        let rec = &self.inner.files[id];
        &self.inner.names[rec.start..rec.start + rec.len as usize]
    }

    /// The size of file `id` in bytes.
    ///
    /// # Panics
    /// If `id` is not below [`len`](Self::len).
    pub fn size(&self, id: FileId) -> u64 {
        self.inner.files[id].size
    }

    /// Every listed file, sorted by path.
    pub fn files(&self) -> impl Iterator<Item = BagFile<'_>> + '_ {
        (0..self.len()).map(|id| self.file(id))
    }

    /// File `id` as a [`BagFile`].
    ///
    /// # Panics
    /// If `id` is not below [`len`](Self::len).
    pub fn file(&self, id: FileId) -> BagFile<'_> {
        BagFile {
            id,
            path: self.path(id),
            size: self.size(id),
        }
    }

    /// The id of the file at exactly `path` (relative, `/`-separated), if listed.
    pub fn find(&self, path: &str) -> Option<FileId> {
        self.inner
            .files
            .binary_search_by(|rec| {
                self.inner.names[rec.start..rec.start + rec.len as usize].cmp(path)
            })
            .ok()
    }

    /// The ids of all files whose path starts with `prefix` (e.g. `data/`): a contiguous range,
    /// since the listing is sorted.
    pub fn ids_with_prefix(&self, prefix: &str) -> Range<FileId> {
        let files = &self.inner.files;
        let name = |rec: &FileRec| &self.inner.names[rec.start..rec.start + rec.len as usize];
        let start = files.partition_point(|rec| name(rec) < prefix);
        let end = start + files[start..].partition_point(|rec| name(rec).starts_with(prefix));
        start..end
    }

    /// Whether the bag has a folder called `name` at its top (`data`, `.ferry-partial`, …),
    /// even an empty one.
    pub fn has_top_dir(&self, name: &str) -> bool {
        self.inner
            .top_dirs
            .binary_search_by(|d| d.as_str().cmp(name))
            .is_ok()
    }

    /// Opens file `id` for a streaming read. Zip entries are inflated on the fly and their
    /// CRC-32 is checked at the end (a mismatch is an `InvalidData` error carrying
    /// [`ZipEntryCorrupt`], returned only after every byte has been delivered).
    ///
    /// # Panics
    /// If `id` is not below [`len`](Self::len).
    pub fn open_file(&self, id: FileId) -> io::Result<Box<dyn Read + Send>> {
        let rec = self.inner.files[id];
        match (&self.inner.backend, &self.inner.location) {
            (Backend::Folder, BagLocation::Folder { root }) => {
                let full = root.join(self.path(id));
                // O_NOFOLLOW: should a file have been swapped for a symlink since the listing,
                // the open fails instead of reading outside the bag.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(full)?;
                if rec.size >= 1 << 20 {
                    use std::os::fd::AsRawFd;
                    // Tells the kernel to read ahead aggressively; only worth the syscall on
                    // big files. Advisory, so a failure changes nothing.
                    // SAFETY: plain syscall on a valid, open file descriptor.
                    unsafe {
                        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
                    }
                }
                Ok(Box::new(file))
            }
            (
                Backend::Zip {
                    file,
                    file_len,
                    entries,
                },
                _,
            ) => {
                let entry = entries[rec.zip as usize];
                let data_start = zip_data_start(file, entry.header_start)?;
                let end = data_start
                    .checked_add(entry.compressed_size)
                    .filter(|end| end <= file_len)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            ZipEntryCorrupt("entry data runs past the end of the archive".into()),
                        )
                    })?;
                let raw = PosReader {
                    file: Arc::clone(file),
                    pos: data_start,
                    end,
                };
                if entry.deflated {
                    let inflate = flate2::read::DeflateDecoder::new(raw);
                    Ok(Box::new(CrcReader::new(inflate, entry.crc32, rec.size)))
                } else {
                    Ok(Box::new(CrcReader::new(raw, entry.crc32, rec.size)))
                }
            }
            (Backend::Store { store, runtime }, _) => {
                let stream = runtime
                    .block_on(store.read(self.path(id), 0))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                Ok(Box::new(StoreRead {
                    stream,
                    runtime: runtime.clone(),
                    current: bytes::Bytes::new(),
                }))
            }
            (Backend::Folder, _) => {
                unreachable!("folder backend is only built for folder bags")
            }
        }
    }

    /// Opens the file at `path` for a streaming read; see [`open_file`](Self::open_file).
    pub fn open_path(&self, path: &str) -> Result<Box<dyn Read + Send>, ReadError> {
        let id = self
            .find(path)
            .ok_or_else(|| ReadError::NoSuchFile(path.to_string()))?;
        self.open_file(id).map_err(|source| ReadError::File {
            path: path.to_string(),
            source,
        })
    }

    /// Reads a tag file whole, refusing files over [`MAX_TAG_FILE_BYTES`].
    pub fn read_tag_file(&self, path: &str) -> Result<Vec<u8>, ReadError> {
        let id = self
            .find(path)
            .ok_or_else(|| ReadError::NoSuchFile(path.to_string()))?;
        let size = self.size(id);
        if size > MAX_TAG_FILE_BYTES {
            return Err(ReadError::TooLarge {
                path: path.to_string(),
                size,
                limit: MAX_TAG_FILE_BYTES,
            });
        }
        let file_err = |source| ReadError::File {
            path: path.to_string(),
            source,
        };
        let mut out = Vec::with_capacity(size as usize);
        // The listing's size could be stale (a folder bag changing under us): the `take` keeps
        // the limit true whatever the file has become.
        self.open_file(id)
            .map_err(file_err)?
            .take(MAX_TAG_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(file_err)?;
        if out.len() as u64 > MAX_TAG_FILE_BYTES {
            return Err(ReadError::TooLarge {
                path: path.to_string(),
                size: out.len() as u64,
                limit: MAX_TAG_FILE_BYTES,
            });
        }
        Ok(out)
    }

    /// Streams the records of `ferry/items.jsonl`, one JSON value per line, without loading the
    /// file whole. `Ok(None)` when the bag has no such file (it was not written by ferry).
    pub fn item_records(&self) -> Result<Option<ItemRecords>, ReadError> {
        if self.find(ITEMS_JSONL).is_none() {
            return Ok(None);
        }
        let read = self.open_path(ITEMS_JSONL)?;
        Ok(Some(ItemRecords {
            input: BufReader::with_capacity(256 << 10, read),
            line: 0,
            buf: Vec::new(),
            done: false,
        }))
    }
}

impl std::fmt::Debug for BagReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BagReader")
            .field("location", &self.inner.location)
            .field("files", &self.inner.files.len())
            .field("issues", &self.inner.issues.len())
            .finish()
    }
}

/// One line of `ferry/items.jsonl` that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemLineError {
    /// 1-based line number (0 when the file itself could not be read).
    pub line: usize,
    /// What is wrong.
    pub detail: String,
}

/// Iterator over the records of `ferry/items.jsonl`: `(line number, value)` per non-blank line,
/// or an [`ItemLineError`] for a line that is not JSON, too long or not UTF-8. A read error
/// ends the iteration after yielding it.
pub struct ItemRecords {
    input: BufReader<Box<dyn Read + Send>>,
    line: usize,
    buf: Vec<u8>,
    done: bool,
}

impl Iterator for ItemRecords {
    type Item = Result<(usize, serde_json::Value), ItemLineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            self.buf.clear();
            self.line += 1;
            let line = self.line;
            // `take` bounds one line's memory; an over-long line is skipped to its end.
            let read = (&mut self.input)
                .take(MAX_ITEMS_LINE_BYTES + 1)
                .read_until(b'\n', &mut self.buf);
            match read {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(ItemLineError {
                        line,
                        detail: format!("read error: {e}"),
                    }));
                }
            }
            if self.buf.len() as u64 > MAX_ITEMS_LINE_BYTES && self.buf.last() != Some(&b'\n') {
                if let Err(e) = skip_line(&mut self.input) {
                    self.done = true;
                    return Some(Err(ItemLineError {
                        line,
                        detail: format!("read error: {e}"),
                    }));
                }
                return Some(Err(ItemLineError {
                    line,
                    detail: format!("line longer than {MAX_ITEMS_LINE_BYTES} bytes"),
                }));
            }
            let text = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(
                serde_json::from_slice(text)
                    .map(|v| (line, v))
                    .map_err(|e| ItemLineError {
                        line,
                        detail: format!("not valid JSON: {e}"),
                    }),
            );
        }
    }
}

fn skip_line(input: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            input.consume(pos + 1);
            return Ok(());
        }
        let n = buf.len();
        input.consume(n);
    }
}

/// Why a path from a manifest, a zip entry or `fetch.txt` must never be opened: absolute, a
/// home-directory or drive-letter prefix, a `..` component (with `/` or `\` as separator, so a
/// Windows-style name cannot escape either), or a NUL byte. `None` when it is safe to look up.
pub fn unsafe_path_reason(path: &str) -> Option<&'static str> {
    let b = path.as_bytes();
    if path.is_empty() {
        Some("empty path")
    } else if path.contains('\0') {
        Some("contains a NUL byte")
    } else if b[0] == b'/' || b[0] == b'\\' {
        Some("absolute path")
    } else if b[0] == b'~' {
        Some("starts with ~ (a home folder)")
    } else if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        Some("starts with a drive letter")
    } else if path.split(['/', '\\']).any(|c| c == "..") {
        Some("contains a .. component")
    } else {
        None
    }
}

fn open_folder(root: &Path) -> Result<Inner, ReadError> {
    let mut list = ListingBuilder::default();
    let mut issues = Vec::new();
    // Iterative walk (no recursion limit on deep trees). `file_type()` comes from the directory
    // entry and never follows symlinks, so a link is reported and never descended into or read.
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if prefix.is_empty() => {
                return Err(ReadError::Io {
                    path: root.to_path_buf(),
                    source: e,
                })
            }
            Err(e) => {
                issues.push(ReadIssue {
                    kind: ReadIssueKind::UnreadableFolder,
                    path: prefix.trim_end_matches('/').to_string(),
                    detail: format!("cannot list folder: {e}"),
                });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    issues.push(ReadIssue {
                        kind: ReadIssueKind::UnreadableFolder,
                        path: prefix.trim_end_matches('/').to_string(),
                        detail: format!("cannot list folder: {e}"),
                    });
                    break;
                }
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                issues.push(ReadIssue {
                    kind: ReadIssueKind::NonUtf8Name,
                    path: format!("{prefix}{}", name.to_string_lossy()),
                    detail: "name is not valid UTF-8; no manifest can list it".into(),
                });
                continue;
            };
            let rel = format!("{prefix}{name}");
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    issues.push(ReadIssue {
                        kind: ReadIssueKind::UnreadableFolder,
                        path: rel,
                        detail: format!("cannot stat: {e}"),
                    });
                    continue;
                }
            };
            if file_type.is_dir() {
                if prefix.is_empty() {
                    list.top_dir(name);
                }
                stack.push((entry.path(), format!("{rel}/")));
            } else if file_type.is_file() {
                match entry.metadata() {
                    Ok(meta) => list.push(&rel, meta.len(), 0),
                    Err(e) => issues.push(ReadIssue {
                        kind: ReadIssueKind::UnreadableFolder,
                        path: rel,
                        detail: format!("cannot stat: {e}"),
                    }),
                }
            } else if file_type.is_symlink() {
                // Reading the link itself tells the user where it points; the target is never
                // opened.
                let target = std::fs::read_link(entry.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                issues.push(ReadIssue {
                    kind: ReadIssueKind::Symlink,
                    path: rel,
                    detail: format!("symbolic link to {target}; not followed"),
                });
            } else {
                issues.push(ReadIssue {
                    kind: ReadIssueKind::SpecialFile,
                    path: rel,
                    detail: "not a regular file (FIFO, socket or device); not read".into(),
                });
            }
        }
    }
    let location = BagLocation::Folder {
        root: root.to_path_buf(),
    };
    Ok(list.finish(location, issues, Backend::Folder))
}

/// One usable zip entry before the top folder is known.
struct RawZipEntry {
    /// Name split on `/`, without empty and `.` components.
    parts: Vec<String>,
    size: u64,
    is_dir: bool,
    entry: ZipEntry,
}

fn open_zip(path: &Path) -> Result<Inner, ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let not_zip = |e: zip::result::ZipError| ReadError::NotAZip {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut issues = Vec::new();
    let mut raw: Vec<RawZipEntry> = Vec::new();
    {
        // The zip crate parses the central directory (zip64 included); the entries' offsets are
        // copied out and the archive dropped, so its per-entry metadata does not stay in memory.
        let archive = zip::ZipArchive::new(BufReader::new(&file)).map_err(not_zip)?;
        for i in 0..archive.len() {
            let e = archive.by_index_data(i).map_err(not_zip)?;
            let name = match e.name() {
                Ok(name) => name.into_owned(),
                Err(err) => {
                    issues.push(ReadIssue {
                        kind: ReadIssueKind::UnsafeZipEntry,
                        path: String::from_utf8_lossy(e.name_raw()).into_owned(),
                        detail: format!("undecodable name: {err}"),
                    });
                    continue;
                }
            };
            if let Some(reason) = unsafe_path_reason(&name) {
                issues.push(ReadIssue {
                    kind: ReadIssueKind::UnsafeZipEntry,
                    path: name,
                    detail: format!("unsafe entry name ({reason}); never opened"),
                });
                continue;
            }
            let parts: Vec<String> = name
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
                .collect();
            if parts.is_empty() {
                continue;
            }
            let is_dir = e.is_dir();
            if !is_dir {
                if e.is_symlink() {
                    issues.push(ReadIssue {
                        kind: ReadIssueKind::Symlink,
                        path: name,
                        detail: "symbolic link entry; not followed".into(),
                    });
                    continue;
                }
                if e.encrypted() {
                    issues.push(ReadIssue {
                        kind: ReadIssueKind::UnsupportedZipEntry,
                        path: name,
                        detail: "encrypted entry; cannot be read".into(),
                    });
                    continue;
                }
            }
            let deflated = match e.compression() {
                zip::CompressionMethod::Stored => false,
                zip::CompressionMethod::Deflated => true,
                other if !is_dir => {
                    issues.push(ReadIssue {
                        kind: ReadIssueKind::UnsupportedZipEntry,
                        path: name,
                        detail: format!("compression method {other:?} is not supported (only stored and deflate)"),
                    });
                    continue;
                }
                _ => false,
            };
            raw.push(RawZipEntry {
                parts,
                size: e.size(),
                is_dir,
                entry: ZipEntry {
                    header_start: e.header_start(),
                    compressed_size: e.compressed_size(),
                    crc32: e.crc32(),
                    deflated,
                },
            });
        }
    }

    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = match stem.len().checked_sub(4) {
        Some(cut) if stem.is_char_boundary(cut) && stem[cut..].eq_ignore_ascii_case(".zip") => {
            stem[..cut].to_string()
        }
        _ => stem,
    };

    // Top-level names: folders (anything with a child, or a directory entry) and loose files.
    let mut top_folders: Vec<&str> = Vec::new();
    let mut top_files: Vec<&str> = Vec::new();
    for r in &raw {
        if r.parts.len() > 1 || r.is_dir {
            if !top_folders.contains(&r.parts[0].as_str()) {
                top_folders.push(&r.parts[0]);
            }
        } else {
            top_files.push(&r.parts[0]);
        }
    }
    top_folders.sort_unstable();
    let with_bagit = |f: &str| {
        raw.iter()
            .any(|r| r.parts.len() == 2 && r.parts[0] == f && r.parts[1] == "bagit.txt")
    };
    // A bag zipped from inside its folder: bagit.txt or data/ at the top level, and no top
    // folder that holds a bagit.txt of its own.
    let flat = (top_files.contains(&"bagit.txt") || top_folders.contains(&"data"))
        && !top_folders.iter().any(|f| with_bagit(f));
    let top: Option<String> = match top_folders.as_slice() {
        _ if flat => None,
        [] => None,
        [one] => Some(one.to_string()),
        many => {
            // Pick the folder that looks like the bag: named like the zip, else one holding
            // bagit.txt, else the first. The others are reported, not listed.
            let chosen = many
                .iter()
                .find(|f| **f == stem)
                .or_else(|| many.iter().find(|f| with_bagit(f)))
                .unwrap_or(&many[0])
                .to_string();
            let others: Vec<&str> = many.iter().copied().filter(|f| *f != chosen).collect();
            issues.push(ReadIssue {
                kind: ReadIssueKind::ZipLayout,
                path: format!("{}", path.display()),
                detail: format!(
                    "zip has {} top folders; reading {chosen:?} as the bag and ignoring {}",
                    many.len(),
                    summarise(&others)
                ),
            });
            Some(chosen)
        }
    };
    match &top {
        Some(top) if !top_files.is_empty() => issues.push(ReadIssue {
            kind: ReadIssueKind::ZipLayout,
            path: format!("{}", path.display()),
            detail: format!("files at the top level of the zip, outside the bag folder {top:?}, are ignored: {}", summarise(&top_files)),
        }),
        None if !top_files.is_empty() || flat => issues.push(ReadIssue {
            kind: ReadIssueKind::ZipLayout,
            path: format!("{}", path.display()),
            detail: "the bag's files sit at the top level of the zip instead of in one top folder; reading them as the bag".into(),
        }),
        Some(top) if *top != stem => issues.push(ReadIssue {
            kind: ReadIssueKind::ZipFolderName,
            path: format!("{}", path.display()),
            detail: format!("top folder {top:?} is not named like the zip file ({stem:?})"),
        }),
        _ => {}
    }

    let mut list = ListingBuilder::default();
    let mut entries = Vec::new();
    for r in &raw {
        let parts: &[String] = match &top {
            Some(top) if r.parts[0] == *top => &r.parts[1..],
            Some(_) => continue,
            None => &r.parts,
        };
        if parts.is_empty() {
            continue;
        }
        if r.is_dir || parts.len() > 1 {
            list.top_dir(&parts[0]);
        }
        if r.is_dir {
            continue;
        }
        let rel = parts.join("/");
        list.push(
            &rel,
            r.size,
            u32::try_from(entries.len()).unwrap_or(u32::MAX),
        );
        entries.push(r.entry);
    }
    drop(raw);
    let location = BagLocation::Zip {
        archive: path.to_path_buf(),
        top: top.unwrap_or_default(),
    };
    let backend = Backend::Zip {
        file: Arc::new(file),
        file_len,
        entries,
    };
    let mut inner = list.finish(location, issues, backend);
    // Duplicate names: keep the first (the lowest zip index), report the others.
    let mut dup_issues = Vec::new();
    let mut kept: Vec<FileRec> = Vec::with_capacity(inner.files.len());
    for rec in inner.files.iter().copied() {
        let name = &inner.names[rec.start..rec.start + rec.len as usize];
        if let Some(prev) = kept.last_mut() {
            if &inner.names[prev.start..prev.start + prev.len as usize] == name {
                dup_issues.push(ReadIssue {
                    kind: ReadIssueKind::DuplicateZipEntry,
                    path: name.to_string(),
                    detail: "the zip holds this name more than once; only the first entry is read"
                        .into(),
                });
                if rec.zip < prev.zip {
                    *prev = rec;
                }
                continue;
            }
        }
        kept.push(rec);
    }
    inner.files = kept;
    inner.issues.extend(dup_issues);
    Ok(inner)
}

fn summarise(names: &[&str]) -> String {
    const SHOW: usize = 5;
    let mut s = names
        .iter()
        .take(SHOW)
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOW {
        s.push_str(&format!(" and {} more", names.len() - SHOW));
    }
    s
}

/// Where an entry's data starts: after its local header, whose name and extra field lengths may
/// differ from the central directory's, so they are read from the header itself.
fn zip_data_start(file: &File, header_start: u64) -> io::Result<u64> {
    let mut header = [0u8; 30];
    file.read_exact_at(&mut header, header_start)?;
    if header[..4] != [0x50, 0x4b, 0x03, 0x04] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            ZipEntryCorrupt("no local file header at the entry's offset".into()),
        ));
    }
    let name_len = u64::from(u16::from_le_bytes([header[26], header[27]]));
    let extra_len = u64::from(u16::from_le_bytes([header[28], header[29]]));
    Ok(header_start + 30 + name_len + extra_len)
}

/// Reads `pos..end` of a shared file with positioned reads: no shared cursor, so any number of
/// these can read the same file from different threads.
struct PosReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for PosReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "zip archive ends inside an entry",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Checks a zip entry's CRC-32 and size as its bytes stream past.
struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    expected_crc: u32,
    expected_size: u64,
    count: u64,
}

impl<R> CrcReader<R> {
    fn new(inner: R, expected_crc: u32, expected_size: u64) -> Self {
        CrcReader {
            inner,
            hasher: crc32fast::Hasher::new(),
            expected_crc,
            expected_size,
            count: 0,
        }
    }
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if self.count != self.expected_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    ZipEntryCorrupt(format!(
                        "{} bytes inflated, the directory says {}",
                        self.count, self.expected_size
                    )),
                ));
            }
            let crc = self.hasher.clone().finalize();
            if crc != self.expected_crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    ZipEntryCorrupt(format!(
                        "CRC-32 {crc:08x}, the directory says {:08x}",
                        self.expected_crc
                    )),
                ));
            }
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A blocking reader over an object's byte stream.
struct StoreRead {
    stream: ferry_core::ByteStream,
    runtime: tokio::runtime::Handle,
    current: bytes::Bytes,
}

impl Read for StoreRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use futures::StreamExt;
        while self.current.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(io::Error::other(e.to_string())),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths() {
        for p in [
            "",
            "/etc/passwd",
            "\\server\\share",
            "~/x",
            "~root/x",
            "C:/x",
            "c:x",
            "data/../../x",
            "..",
            "data\\..\\..\\x",
            "data/a\0b",
        ] {
            assert!(unsafe_path_reason(p).is_some(), "{p:?}");
        }
        for p in [
            "data/a.txt",
            "data/..hidden",
            "data/a..b",
            "data/~x",
            "data/C:x",
            "bagit.txt",
        ] {
            assert_eq!(unsafe_path_reason(p), None, "{p:?}");
        }
    }

    #[test]
    fn folder_listing_is_sorted_with_prefix_ranges() {
        let tmp = tempfile::tempdir().unwrap();
        for rel in [
            "data/b",
            "data/a/x",
            "data0",
            "bagit.txt",
            "ferry/items.jsonl",
            "datа/cyrillic",
        ] {
            let p = tmp.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, rel).unwrap();
        }
        std::fs::create_dir(tmp.path().join(".ferry-partial")).unwrap();
        let r = BagReader::open(tmp.path()).unwrap();
        let paths: Vec<&str> = r.files().map(|f| f.path).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        let data: Vec<&str> = r.ids_with_prefix("data/").map(|id| r.path(id)).collect();
        assert_eq!(data, ["data/a/x", "data/b"]);
        assert_eq!(r.find("data/b").map(|id| r.size(id)), Some(6));
        assert_eq!(r.find("data"), None);
        assert!(
            r.has_top_dir("data") && r.has_top_dir(".ferry-partial") && !r.has_top_dir("data0")
        );
        assert!(r.ids_with_prefix("nothing/").is_empty());
        assert!(matches!(
            BagReader::open(&tmp.path().join("missing")),
            Err(ReadError::NotFound(_))
        ));
    }
}
