//! Writes a BagIt 1.0 bag, as a folder or as one zip, item by item as they stream in.
//!
//! Crash safety and resume rest on one rule: **nothing is listed before it is safely stored,
//! and the manifests are written last.** While an export runs, a work area (`.ferry-partial/`
//! inside a folder bag; `NAME.zip.ferry-partial/` beside a zip, which is written as
//! `NAME.zip.partial`) holds:
//! - `state.json`: the source and options, to refuse resuming into a different export;
//! - `journal.jsonl`: one line per stored item (its items.jsonl record plus its source path),
//!   appended only after the item's bytes are in place;
//! - `checkpoint.json`: how much of the journal (and of the zip) is known to be on stable
//!   storage — written after `syncfs`/`fsync`, every few seconds or hundreds of MiB;
//! - `skipped.jsonl`, `failures.jsonl` of the current attempt, and for zips `cd.spool`, the
//!   central directory so far.
//!
//! A rerun after a kill or power loss keeps what the checkpoint covers, deletes anything
//! written after it, and carries on; at most one checkpoint interval of work is redone. Only
//! when every item is stored are the tag files written (items.jsonl, manifests, bag-info,
//! run.json, tag manifests), and only then is the work area removed (folder) or the zip renamed
//! into place. `ferry verify` reports a bag with a work area as incomplete.
//!
//! Payload files are not fsynced one by one: a folder bag is flushed with one `syncfs` per
//! checkpoint instead, which costs the same durability at a fraction of the time (see
//! `docs/decisions/0002-batched-durability.md`).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::sink::Placement;
use ferry_core::writeback::{Offloaded, WritebackFile};
use ferry_core::{
    DigestAlgorithm, Digests, Error, Failure, Item, ItemWriter, MultiHasher, Result, RunReport,
    Sink, SourceInfo, SourceRef, StoredItem,
};
use ferry_core::{ObjectStore, ObjectWriter};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use time::OffsetDateTime;

use crate::newfile::{NewFiles, Pending};
use crate::pathmap::PathMapper;
use crate::record::{
    ItemRecord, RunCounts, RunRecord, SourceInfoRecord, SourceTotals, FAILURES_JSONL, ITEMS_JSONL,
    RECORD_FORMAT, RUN_JSON,
};
use crate::tagfiles::{bag_size, encode_manifest_path, payload_oxum, BagInfo, BAGIT_TXT};
use crate::zipwrite::{EntryMeta, PreparedEntry, StreamEntry, ZipBuilder};

/// Name of the work area inside a folder bag while an export runs.
pub const FOLDER_WORK_DIR: &str = ".ferry-partial";
/// Suffix of a zip bag while it is written.
pub const ZIP_PARTIAL_SUFFIX: &str = ".partial";
/// Suffix of a zip bag's work area (a sibling folder).
pub const ZIP_WORK_SUFFIX: &str = ".ferry-partial";
/// The BagIt profile ferry bags follow (see `manifests/bagit-profile.json`).
pub const PROFILE_IDENTIFIER: &str = "https://ferry.invalid/profiles/ferry-bag-v1.json";

/// Where a bag goes.
#[derive(Clone)]
pub enum BagTarget {
    /// A folder (the bag's root).
    Folder(PathBuf),
    /// A zip file holding one top folder named like the file.
    Zip(PathBuf),
    /// Objects in an object store (`s3://bucket/prefix`: the prefix is the bag's root). The
    /// journal that makes a rerun resume lives in the local folder `work`.
    Store {
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// A local work folder for this bag.
        work: PathBuf,
    },
}

impl std::fmt::Debug for BagTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl BagTarget {
    /// `.zip` (any case) means a zip; anything else a folder.
    pub fn from_path(path: &Path) -> Self {
        let is_zip = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
        if is_zip {
            BagTarget::Zip(path.to_path_buf())
        } else {
            BagTarget::Folder(path.to_path_buf())
        }
    }

    /// The bag's final path on disk (for a store, its work folder).
    pub fn path(&self) -> &Path {
        match self {
            BagTarget::Folder(p) | BagTarget::Zip(p) => p,
            BagTarget::Store { work, .. } => work,
        }
    }

    /// Where the bag is, for people: a path or a URI.
    pub fn describe(&self) -> String {
        match self {
            BagTarget::Folder(p) | BagTarget::Zip(p) => p.display().to_string(),
            BagTarget::Store { store, .. } => store.uri(),
        }
    }

    fn work_dir(&self) -> PathBuf {
        match self {
            BagTarget::Folder(p) => p.join(FOLDER_WORK_DIR),
            BagTarget::Zip(p) => with_suffix(p, ZIP_WORK_SUFFIX),
            BagTarget::Store { work, .. } => work.clone(),
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// How the bag is written.
#[derive(Debug, Clone)]
pub struct BagOptions {
    /// Payload (and tag) manifest algorithms; every manifest lists every file.
    pub digests: Vec<DigestAlgorithm>,
    /// bag-info.txt labels from the user (Source-Organization, Contact-*, External-*, …), in
    /// order; ferry adds Bagging-Date, Payload-Oxum, Bag-Size, BagIt-Profile-Identifier and
    /// Bag-Software-Agent itself.
    pub bag_info: Vec<(String, String)>,
    /// Deflate zip entries (stored by default: most payload is already compressed).
    pub deflate: bool,
    /// Zip only: an item up to this size is gathered in memory and written in one go, so
    /// parallel transfers do not wait for each other; larger ones stream straight in.
    pub zip_buffer: usize,
    /// Longest time between resume checkpoints.
    pub checkpoint_interval: Duration,
    /// Bytes stored between resume checkpoints at most.
    pub checkpoint_bytes: u64,
    /// Options of the run, recorded in run.json.
    pub run_options: serde_json::Map<String, serde_json::Value>,
    /// `ferry <version>`, recorded in bag-info.txt and run.json.
    pub tool: String,
}

impl Default for BagOptions {
    fn default() -> Self {
        BagOptions {
            digests: vec![DigestAlgorithm::Sha256],
            bag_info: Vec::new(),
            deflate: false,
            zip_buffer: 1 << 20,
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_bytes: 256 << 20,
            run_options: serde_json::Map::new(),
            tool: format!("ferry {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// What a finished bag holds.
#[derive(Debug, Clone, Serialize)]
pub struct BagSummary {
    /// Where it is (a path or a URI).
    pub path: String,
    /// Payload files.
    pub payload_files: u64,
    /// Payload bytes.
    pub payload_bytes: u64,
    /// Items recorded without bytes.
    pub skipped_items: u64,
    /// Items listed in ferry/failures.jsonl.
    pub failed_items: u64,
    /// How many attempts the export took (1 = no resume).
    pub attempts: u32,
}

/// What an earlier attempt left for this one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResumeInfo {
    /// True when this run continues an interrupted export.
    pub resumed: bool,
    /// Items already stored.
    pub items: u64,
    /// Bytes already stored.
    pub bytes: u64,
    /// Journal entries written after the last checkpoint, dropped and redone.
    pub dropped: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkState {
    format: String,
    sources: Vec<String>,
    digests: Vec<DigestAlgorithm>,
    zip: bool,
    deflate: bool,
    #[serde(with = "time::serde::rfc3339")]
    started: OffsetDateTime,
    attempts: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Journal bytes on stable storage.
    journal_bytes: u64,
    /// Journal lines within them (= zip entries, for a zip).
    journal_lines: u64,
}

/// One journal line, read back.
///
/// Written as `HEADER<TAB>RECORD` (see [`journal_line`]): the header is a small JSON object
/// with the logical path and what the manifests need ([`JournalHeader`]), the record is the
/// items.jsonl line as it will appear. JSON never holds a raw tab, so the first tab splits
/// them, and the end of an export copies each record without parsing it. Lines of earlier
/// versions are one object, `{"logical":…,"record":…}`, and are still read.
#[derive(Deserialize)]
struct JournalLine {
    logical: Vec<String>,
    record: ItemRecord,
}

#[derive(Deserialize)]
struct JournalHeader {
    logical: Vec<String>,
    path: Option<String>,
    size: Option<u64>,
    digests: std::collections::BTreeMap<String, String>,
}

/// Just what the manifest passes need of a journal line.
#[derive(Deserialize)]
struct RecordDigests {
    path: Option<String>,
    size: Option<u64>,
    digests: std::collections::BTreeMap<String, String>,
}

/// An earlier version's journal line whose record is copied to items.jsonl as it is.
#[derive(Deserialize)]
struct RawJournalLine<'a> {
    #[serde(borrow)]
    record: &'a serde_json::value::RawValue,
}

/// A journal line's header (lines of this version) and the JSON text of its record.
fn split_journal_line(line: &str) -> (Option<&str>, &str) {
    match line.split_once('\t') {
        Some((header, record)) => (Some(header), record),
        None => (None, line),
    }
}

impl JournalLine {
    fn parse(line: &str) -> serde_json::Result<Self> {
        match split_journal_line(line) {
            (Some(header), record) => Ok(JournalLine {
                logical: serde_json::from_str::<JournalHeader>(header)?.logical,
                record: serde_json::from_str(record)?,
            }),
            (None, whole) => serde_json::from_str(whole),
        }
    }
}

impl RecordDigests {
    /// What the manifests need of a journal line, and its record's JSON text.
    fn parse(line: &str) -> serde_json::Result<(Self, &str)> {
        match split_journal_line(line) {
            (Some(header), record) => {
                let header: JournalHeader = serde_json::from_str(header)?;
                let lite = RecordDigests {
                    path: header.path,
                    size: header.size,
                    digests: header.digests,
                };
                Ok((lite, record.trim_end()))
            }
            (None, whole) => {
                let record = serde_json::from_str::<RawJournalLine>(whole)?.record.get();
                Ok((serde_json::from_str(record)?, record))
            }
        }
    }
}

struct Done {
    path: String,
    size: Option<u64>,
    modified: Option<OffsetDateTime>,
    line: u64,
}

/// What identifies an item across attempts: its source reference, and for a conversion the
/// format it was converted to (one Google Doc is exported as ODF and PDF: two items).
fn source_key(s: &SourceRef, conversion: Option<&serde_json::Value>) -> u128 {
    let mut h = sha2::Sha256::new();
    let converted_to = conversion
        .and_then(|c| c.get("to"))
        .and_then(|t| t.as_str())
        .map(str::to_string);
    for part in [
        Some(&s.system),
        s.account.as_ref(),
        s.container.as_ref(),
        Some(&s.id),
        s.version.as_ref(),
        converted_to.as_ref(),
    ] {
        match part {
            Some(p) => {
                h.update([1]);
                h.update((p.len() as u64).to_le_bytes());
                h.update(p.as_bytes());
            }
            None => h.update([0]),
        }
    }
    u128::from_le_bytes(h.finalize()[..16].try_into().expect("16 bytes"))
}

fn path_key(p: &str) -> u128 {
    u128::from_le_bytes(
        sha2::Sha256::digest(p.as_bytes())[..16]
            .try_into()
            .expect("16 bytes"),
    )
}

/// An append-only JSON-lines file that knows its length in bytes and lines.
struct Journal {
    file: BufWriter<WritebackFile>,
    bytes: u64,
    lines: u64,
}

impl Journal {
    fn open(path: &Path, keep_bytes: u64, lines: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        file.set_len(keep_bytes)?;
        let mut file = file;
        io::Seek::seek(&mut file, io::SeekFrom::Start(keep_bytes))?;
        let file = BufWriter::with_capacity(256 << 10, WritebackFile::at(file, keep_bytes));
        Ok(Journal {
            file,
            bytes: keep_bytes,
            lines,
        })
    }
    fn append(&mut self, value: &impl Serialize) -> io::Result<()> {
        let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
        line.push(b'\n');
        self.append_line(&line)
    }
    /// Appends one serialised line (ending in a newline).
    fn append_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.file.write_all(line)?;
        self.bytes += line.len() as u64;
        self.lines += 1;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().get_ref().sync_data()
    }
}

/// State behind one lock: name mapping and the resume index. Held only briefly.
struct Places {
    mapper: PathMapper,
    done: HashMap<u128, Done>,
    /// Journal lines replaced by a newer copy of the same item (left out at the end).
    superseded: HashSet<u64>,
    /// Payload paths being stored again, with the journal line they will replace on commit.
    replacing: HashMap<String, u64>,
}

/// Where the stored items are recorded: for a folder bag the journal alone; for a zip the
/// journal together with the archive, so both advance in the same order.
struct Store {
    journal: Journal,
    zip: Option<ZipBuilder>,
    last_checkpoint: Instant,
    bytes_since_checkpoint: u64,
    /// items.jsonl records and manifest lines staged as items are stored (see [`Staged`]);
    /// `None` when the export resumed or staging failed: then finish reads the journal.
    staged: Option<Staged>,
}

/// What finish would otherwise make from the journal, written as items are stored: their
/// items.jsonl records and payload manifest lines, in journal order (both are written under
/// the archive lock), hashed as they are written. Finishing a bag runs alone after every
/// transfer, on one core; with this a folder bag's finish moves two files into place instead
/// of reading the whole journal again and copying and hashing what it made. Only for exports
/// that did not resume (a resumed export's earlier lines come first, from the journal); never
/// needed for a resume, so never flushed to disk before finish.
struct Staged {
    items: StagedWriter,
    manifests: Vec<(DigestAlgorithm, StagedWriter)>,
    files: u64,
    bytes: u64,
}

/// A staged tag file: buffered, and hashed with the bag's algorithms as the buffer is written
/// out (in large pieces, which hash faster than a line at a time).
type StagedWriter = BufWriter<HashingWriter<WritebackFile>>;

/// A staged tag file, complete: where it is, the open file, and its digests.
struct StagedFile {
    path: PathBuf,
    file: File,
    digests: Digests,
}

impl Staged {
    fn items_path(work: &Path) -> PathBuf {
        work.join("items.staged")
    }

    fn manifest_path(work: &Path, alg: DigestAlgorithm) -> PathBuf {
        work.join(format!("manifest-{}.staged", alg.name()))
    }

    fn create(work: &Path, algs: &[DigestAlgorithm]) -> io::Result<Self> {
        let open = |p: PathBuf| {
            File::create(p).map(|inner| {
                BufWriter::with_capacity(
                    256 << 10,
                    HashingWriter {
                        inner: WritebackFile::new(inner),
                        hasher: MultiHasher::new(algs.iter().copied()),
                    },
                )
            })
        };
        Ok(Staged {
            items: open(Self::items_path(work))?,
            manifests: algs
                .iter()
                .map(|alg| Ok((*alg, open(Self::manifest_path(work, *alg))?)))
                .collect::<io::Result<_>>()?,
            files: 0,
            bytes: 0,
        })
    }

    /// Adds one stored item: its items.jsonl record (without the newline), and a manifest
    /// line for its payload `path` with each digest `digest` gives by algorithm.
    fn add<'a>(
        &mut self,
        record: &[u8],
        path: &str,
        size: u64,
        digest: impl Fn(DigestAlgorithm) -> Option<&'a str>,
    ) -> io::Result<()> {
        self.items.write_all(record)?;
        self.items.write_all(b"\n")?;
        let encoded = encode_manifest_path(path);
        for (alg, w) in &mut self.manifests {
            let value = digest(*alg).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no {alg} digest for {path}"),
                )
            })?;
            writeln!(w, "{value}  {encoded}")?;
        }
        self.files += 1;
        self.bytes += size;
        Ok(())
    }

    /// The staged items.jsonl and payload manifests, complete (in `work`), with their digests.
    fn into_files(
        self,
        work: &Path,
    ) -> io::Result<(StagedFile, Vec<(DigestAlgorithm, StagedFile)>)> {
        let done = |w: StagedWriter, path: PathBuf| -> io::Result<StagedFile> {
            let HashingWriter { inner, hasher } = w.into_inner().map_err(|e| e.into_error())?;
            Ok(StagedFile {
                path,
                file: inner.finish(),
                digests: hasher.finish(),
            })
        };
        let items = done(self.items, Self::items_path(work))?;
        let manifests = self
            .manifests
            .into_iter()
            .map(|(alg, w)| Ok((alg, done(w, Self::manifest_path(work, alg))?)))
            .collect::<io::Result<_>>()?;
        Ok((items, manifests))
    }
}

struct Shared {
    target: BagTarget,
    work: PathBuf,
    options: BagOptions,
    sources: Vec<SourceInfo>,
    state: WorkState,
    places: Mutex<Places>,
    store: Arc<tokio::sync::Mutex<Store>>,
    side: Mutex<SideFiles>,
    /// Makes payload files (folder bags) that get their names only once complete.
    new_files: NewFiles,
    /// Payload folders known to exist (saves a mkdir and a stat per file).
    made_dirs: Mutex<HashSet<PathBuf>>,
}

struct SideFiles {
    skipped: Journal,
    failures: Journal,
}

/// A bag being written; feed it to a [`ferry_core::Pipeline`] as its sink, then call
/// [`BagWriter::finish`].
#[derive(Clone)]
pub struct BagWriter {
    shared: Arc<Shared>,
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| {
        let fatal = matches!(
            e.kind(),
            io::ErrorKind::StorageFull
                | io::ErrorKind::QuotaExceeded
                | io::ErrorKind::ReadOnlyFilesystem
        );
        let err = Error::io(context, e);
        if fatal {
            err
        } else {
            // Writing the archive is not something a retry of one item can fix.
            Error::fatal(err.to_string())
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Flushes every dirty page of the filesystem holding `path` (Linux `syncfs`); elsewhere, or
/// if it fails, falls back to a global `sync`.
fn sync_filesystem(path: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let dir = File::open(path)?;
        // SAFETY: syncfs takes a valid open file descriptor and nothing else.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
            return Ok(());
        }
    }
    // SAFETY: sync() has no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

impl BagWriter {
    /// Starts a new bag at `target`, or resumes an interrupted export of the same sources into
    /// it. Refuses (with a fatal error saying what to do) to write over anything else.
    pub fn open(
        target: BagTarget,
        sources: Vec<SourceInfo>,
        options: BagOptions,
    ) -> Result<(Self, ResumeInfo)> {
        if matches!(target, BagTarget::Store { .. }) {
            return Err(Error::fatal(
                "internal error: bags in an object store are opened with open_store",
            ));
        }
        let (writer, info, _) = Self::open_inner(target, sources, options)?;
        Ok((writer, info))
    }

    /// Starts a new bag in an object store, or resumes an interrupted export into it (the
    /// journal is in the local `work` folder). Refuses a prefix that already holds objects
    /// unless it is that interrupted export.
    pub async fn open_store(
        store: Arc<dyn ObjectStore>,
        work: PathBuf,
        sources: Vec<SourceInfo>,
        options: BagOptions,
    ) -> Result<(Self, ResumeInfo)> {
        store.check().await?;
        let resuming = work.join("state.json").exists();
        let existing = store.list("").await?;
        if !resuming && !existing.is_empty() {
            return Err(Error::fatal(format!(
                "{} already holds {} objects and is not an interrupted ferry export from this machine; choose a new prefix",
                store.uri(),
                existing.len()
            )));
        }
        let target = BagTarget::Store {
            store: store.clone(),
            work,
        };
        let (writer, info, kept) = Self::open_inner(target, sources, options)?;
        if !resuming {
            // bagit.txt first, as in a folder bag: the prefix is recognisably a bag, and one
            // without manifests yet, i.e. incomplete.
            let mut upload = store.create("bagit.txt").await?;
            upload
                .write(Bytes::from_static(BAGIT_TXT.as_bytes()))
                .await?;
            upload.finish().await?;
        }
        // Objects stored after the last checkpoint of an interrupted run are not in the journal:
        // they are deleted and fetched again, like files in a folder bag.
        for object in existing.iter().filter(|o| o.key.starts_with("data/")) {
            if !kept.contains(&path_key(&object.key)) {
                store.delete(&object.key).await?;
            }
        }
        Ok((writer, info))
    }

    fn open_inner(
        target: BagTarget,
        sources: Vec<SourceInfo>,
        options: BagOptions,
    ) -> Result<(Self, ResumeInfo, HashSet<u128>)> {
        if options.digests.is_empty() {
            return Err(Error::fatal("at least one digest algorithm is needed"));
        }
        let work = target.work_dir();
        let path = target.path().to_path_buf();
        let is_zip = matches!(target, BagTarget::Zip(_));
        let state_path = work.join("state.json");
        let source_uris: Vec<String> = sources.iter().map(|s| s.uri.clone()).collect();
        let resuming = state_path.exists();
        if !resuming {
            Self::check_fresh(&target)?;
        }
        let mut state = if resuming {
            let text = fs::read_to_string(&state_path)
                .map_err(io_err(format!("reading {}", state_path.display())))?;
            let state: WorkState = serde_json::from_str(&text).map_err(|e| {
                Error::fatal(format!(
                    "{} is damaged ({e}); delete {} and export again",
                    state_path.display(),
                    path.display()
                ))
            })?;
            if state.sources != source_uris
                || state.digests != options.digests
                || state.zip != is_zip
                || state.deflate != options.deflate
            {
                return Err(Error::fatal(format!(
                    "{} holds an interrupted export of {} with other options; rerun that exact command to resume it, or choose another --to",
                    path.display(),
                    state.sources.join(", ")
                )));
            }
            state
        } else {
            WorkState {
                format: RECORD_FORMAT.into(),
                sources: source_uris,
                digests: options.digests.clone(),
                zip: is_zip,
                deflate: options.deflate,
                started: OffsetDateTime::now_utc(),
                attempts: 0,
            }
        };
        state.attempts += 1;
        fs::create_dir_all(&work).map_err(io_err(format!("creating {}", work.display())))?;
        fs::create_dir_all(work.join("tmp")).map_err(io_err("creating the work area"))?;
        if let BagTarget::Folder(p) = &target {
            fs::create_dir_all(p.join("data"))
                .map_err(io_err(format!("creating {}", p.display())))?;
            write_atomic(&p.join("bagit.txt"), BAGIT_TXT.as_bytes())
                .map_err(io_err("writing bagit.txt"))?;
        }
        write_atomic(
            &state_path,
            &serde_json::to_vec_pretty(&state).expect("state serialises"),
        )
        .map_err(io_err("writing the work state"))?;

        let mut places = Places {
            mapper: PathMapper::new(),
            done: HashMap::new(),
            superseded: HashSet::new(),
            replacing: HashMap::new(),
        };
        let mut info = ResumeInfo {
            resumed: resuming,
            ..Default::default()
        };
        let checkpoint: Checkpoint = fs::read(work.join("checkpoint.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let journal_path = work.join("journal.jsonl");
        let mut kept_paths: HashSet<u128> = HashSet::new();
        let (keep_bytes, keep_lines) = if resuming {
            let (bytes, lines) = Self::replay(
                &journal_path,
                &checkpoint,
                &mut places,
                &mut kept_paths,
                &mut info,
            )?;
            (bytes, lines)
        } else {
            (0, 0)
        };
        let journal = Journal::open(&journal_path, keep_bytes, keep_lines)
            .map_err(io_err("opening the journal"))?;
        let zip = match &target {
            BagTarget::Zip(p) => {
                let partial = with_suffix(p, ZIP_PARTIAL_SUFFIX);
                let spool = work.join("cd.spool");
                if resuming && partial.exists() {
                    let (z, kept) = ZipBuilder::resume(&partial, &spool, keep_lines)
                        .map_err(io_err("reopening the partial zip"))?;
                    if kept != keep_lines {
                        return Err(Error::fatal(format!(
                            "the interrupted zip {} does not match its journal; delete it and {} and export again",
                            partial.display(),
                            work.display()
                        )));
                    }
                    Some(z)
                } else {
                    Some(
                        ZipBuilder::create(&partial, &spool)
                            .map_err(io_err(format!("creating {}", partial.display())))?,
                    )
                }
            }
            BagTarget::Folder(p) => {
                if resuming {
                    Self::remove_orphans(&p.join("data"), p, &kept_paths)
                        .map_err(io_err("cleaning up after the interrupted export"))?;
                }
                None
            }
            BagTarget::Store { .. } => None,
        };
        // Clear temporary files of an earlier attempt.
        if let Ok(entries) = fs::read_dir(work.join("tmp")) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let side = SideFiles {
            skipped: Journal::open(&work.join("skipped.jsonl"), 0, 0)
                .map_err(io_err("opening the work area"))?,
            failures: Journal::open(&work.join("failures.jsonl"), 0, 0)
                .map_err(io_err("opening the work area"))?,
        };
        // A fresh start (nothing kept from an earlier attempt) stages the tag files as it goes.
        let staged = if journal.lines == 0 {
            Staged::create(&work, &options.digests)
                .map_err(io_err("creating the work area"))?
                .into()
        } else {
            None
        };
        let store = Store {
            journal,
            zip,
            last_checkpoint: Instant::now(),
            bytes_since_checkpoint: 0,
            staged,
        };
        let tmp_dir = work.join("tmp");
        let shared = Shared {
            target,
            work,
            options,
            sources,
            state,
            places: Mutex::new(places),
            store: Arc::new(tokio::sync::Mutex::new(store)),
            side: Mutex::new(side),
            new_files: NewFiles::new(tmp_dir),
            made_dirs: Mutex::new(HashSet::new()),
        };
        let writer = BagWriter {
            shared: Arc::new(shared),
        };
        // A first checkpoint records the trimmed journal, so a second crash cannot resurrect
        // what this one dropped.
        writer.checkpoint_now_blocking()?;
        Ok((writer, info, kept_paths))
    }

    fn check_fresh(target: &BagTarget) -> Result<()> {
        match target {
            // Checked against the store's listing by open_store.
            BagTarget::Store { .. } => {}
            BagTarget::Folder(p) => {
                if p.exists() {
                    let empty = fs::read_dir(p)
                        .map(|mut d| d.next().is_none())
                        .unwrap_or(false);
                    if !empty {
                        return Err(Error::fatal(format!(
                            "{} already exists and is not an interrupted ferry export; choose a new --to (ferry never writes into an existing folder)",
                            p.display()
                        )));
                    }
                }
            }
            BagTarget::Zip(p) => {
                if p.exists() {
                    return Err(Error::fatal(format!(
                        "{} already exists; choose a new --to",
                        p.display()
                    )));
                }
                let partial = with_suffix(p, ZIP_PARTIAL_SUFFIX);
                if partial.exists() {
                    return Err(Error::fatal(format!(
                        "{} exists but its work area is gone, so it cannot be resumed; delete it and export again",
                        partial.display()
                    )));
                }
                if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent)
                        .map_err(io_err(format!("creating {}", parent.display())))?;
                }
            }
        }
        Ok(())
    }

    /// Reads the journal of an interrupted attempt up to its last checkpoint.
    fn replay(
        journal: &Path,
        checkpoint: &Checkpoint,
        places: &mut Places,
        kept_paths: &mut HashSet<u128>,
        info: &mut ResumeInfo,
    ) -> Result<(u64, u64)> {
        let Ok(file) = File::open(journal) else {
            return Ok((0, 0));
        };
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        let (mut bytes, mut lines) = (0u64, 0u64);
        let mut dropped_paths: HashSet<String> = HashSet::new();
        let mut bytes_seen_past_checkpoint = false;
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(io_err("reading the journal"))? as u64;
            if n == 0 {
                break;
            }
            if bytes + n > checkpoint.journal_bytes || !line.ends_with('\n') {
                // Written after the last checkpoint: not trusted. If it replaced an older copy
                // of an item, that older copy's file is gone too.
                info.dropped += 1;
                if let Ok((entry, _)) = RecordDigests::parse(&line) {
                    if let Some(p) = entry.path {
                        dropped_paths.insert(p);
                    }
                }
                bytes_seen_past_checkpoint = true;
                continue;
            }
            if bytes_seen_past_checkpoint {
                continue;
            }
            let entry = match JournalLine::parse(&line) {
                Ok(e) => e,
                Err(_) => break,
            };
            if let Some(path) = &entry.record.path {
                let rel = path.strip_prefix("data/").unwrap_or(path);
                places.mapper.register(&entry.logical, rel);
                kept_paths.insert(path_key(path));
                info.items += 1;
                info.bytes += entry.record.size.unwrap_or(0);
                let key = source_key(&entry.record.source, entry.record.conversion.as_ref());
                if let Some(old) = places.done.insert(
                    key,
                    Done {
                        path: path.clone(),
                        size: entry.record.size,
                        modified: entry.record.modified,
                        line: lines,
                    },
                ) {
                    places.superseded.insert(old.line);
                }
            }
            bytes += n;
            lines += 1;
        }
        if !dropped_paths.is_empty() {
            let stale: Vec<u128> = places
                .done
                .iter()
                .filter(|(_, d)| dropped_paths.contains(&d.path))
                .map(|(k, _)| *k)
                .collect();
            for key in stale {
                if let Some(d) = places.done.remove(&key) {
                    places.superseded.insert(d.line);
                    kept_paths.remove(&path_key(&d.path));
                    info.items -= 1;
                    info.bytes -= d.size.unwrap_or(0);
                }
            }
        }
        Ok((bytes, lines))
    }

    /// Deletes payload files no journal line accounts for (written after the last checkpoint).
    fn remove_orphans(dir: &Path, bag: &Path, keep: &HashSet<u128>) -> io::Result<()> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                Self::remove_orphans(&path, bag, keep)?;
                continue;
            }
            let rel = path
                .strip_prefix(bag)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace(std::path::MAIN_SEPARATOR, "/");
            if !keep.contains(&path_key(&rel)) {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn checkpoint_now_blocking(&self) -> Result<()> {
        let store = self.shared.store.clone();
        let mut store = store
            .try_lock()
            .map_err(|_| Error::fatal("internal error: bag store busy at open"))?;
        self.shared.checkpoint(&mut store)
    }

    /// The payload manifests' algorithms.
    pub fn digests(&self) -> &[DigestAlgorithm] {
        &self.shared.options.digests
    }

    /// Writes the tag files and makes the bag complete. Call after the pipeline has finished
    /// without being interrupted; failed items are listed in `ferry/failures.jsonl`.
    pub async fn finish(self, report: &RunReport) -> Result<BagSummary> {
        let shared = self.shared.clone();
        let report = report.clone();
        tokio::task::spawn_blocking(move || shared.finish(&report))
            .await
            .map_err(|e| Error::fatal(format!("internal error while finishing the bag: {e}")))?
    }
}

impl Shared {
    fn ensure_dir(&self, dir: &Path) -> Result<()> {
        if self.made_dirs.lock().expect("dirs lock").contains(dir) {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        self.made_dirs
            .lock()
            .expect("dirs lock")
            .insert(dir.to_path_buf());
        Ok(())
    }

    fn checkpoint(&self, store: &mut Store) -> Result<()> {
        if let Some(zip) = &mut store.zip {
            zip.sync().map_err(io_err("syncing the zip"))?;
        } else if let BagTarget::Folder(p) = &self.target {
            store
                .journal
                .file
                .flush()
                .map_err(io_err("writing the journal"))?;
            sync_filesystem(p).map_err(io_err("syncing the bag"))?;
        }
        store
            .journal
            .sync()
            .map_err(io_err("syncing the journal"))?;
        let cp = Checkpoint {
            journal_bytes: store.journal.bytes,
            journal_lines: store.journal.lines,
        };
        write_atomic(
            &self.work.join("checkpoint.json"),
            &serde_json::to_vec(&cp).expect("checkpoint serialises"),
        )
        .map_err(io_err("writing a checkpoint"))?;
        store.last_checkpoint = Instant::now();
        store.bytes_since_checkpoint = 0;
        Ok(())
    }

    /// Appends a stored item's journal line (the item is in place: its bytes are written and,
    /// for a zip, its entry committed) and makes a checkpoint when one is due.
    fn record_stored(
        &self,
        store: &mut Store,
        entry: &JournalEntry,
        stored: &StoredItem,
    ) -> Result<()> {
        store
            .journal
            .append_line(&entry.line)
            .map_err(io_err("writing the journal"))?;
        if let Some(staged) = &mut store.staged {
            let digest = |alg| stored.digests.get(&alg).map(String::as_str);
            if let Err(e) = staged.add(entry.record(), &stored.path, stored.size, digest) {
                // The journal has it all; finish reads it instead.
                tracing::debug!(error = %e, "staging the tag files failed; finish reads the journal");
                store.staged = None;
            }
        }
        self.maybe_checkpoint(store, stored.size)
    }

    fn maybe_checkpoint(&self, store: &mut Store, added: u64) -> Result<()> {
        store.bytes_since_checkpoint += added;
        if store.last_checkpoint.elapsed() >= self.options.checkpoint_interval
            || store.bytes_since_checkpoint >= self.options.checkpoint_bytes
        {
            self.checkpoint(store)?;
        }
        Ok(())
    }

    fn zip_top(&self) -> String {
        let name = self
            .target
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bag".into());
        crate::pathmap::safe_component(&name).name
    }

    fn finish(&self, report: &RunReport) -> Result<BagSummary> {
        let mut store = self
            .store
            .try_lock()
            .map_err(|_| Error::fatal("internal error: items still being written at finish"))?;
        self.checkpoint(&mut store)?;
        {
            let mut side = self.side.lock().expect("side files lock");
            side.skipped
                .sync()
                .map_err(io_err("writing the work area"))?;
            side.failures
                .sync()
                .map_err(io_err("writing the work area"))?;
        }
        let superseded = self.places.lock().expect("places lock").superseded.clone();
        let store = &mut *store;
        // What was staged while the items were stored, when it covers every line.
        let staged = match store.staged.take() {
            Some(s) if superseded.is_empty() && s.files == store.journal.lines => Some(s),
            _ => None,
        };
        let mut tags: Box<dyn TagTarget + '_> = match (&self.target, store.zip.as_mut()) {
            (BagTarget::Zip(_), Some(zip)) => Box::new(ZipTags {
                algs: self.options.digests.clone(),
                zip,
                top: self.zip_top(),
            }),
            (BagTarget::Folder(p), _) => Box::new(FolderTags {
                algs: self.options.digests.clone(),
                bag: p.clone(),
                staging: self.work.join("tags"),
                written: Vec::new(),
            }),
            (BagTarget::Store { store: objects, .. }, _) => Box::new(StoreTags {
                algs: self.options.digests.clone(),
                store: objects.clone(),
                runtime: tokio::runtime::Handle::current(),
                staging: self.work.join("tags"),
                deferred: Vec::new(),
            }),
            _ => unreachable!("zip target without a zip builder"),
        };
        let journal_path = self.work.join("journal.jsonl");
        let algs = self.options.digests.clone();
        // Unless staged while the items were stored: one pass over the journal stages
        // items.jsonl's records and every payload manifest, counting the payload on the way.
        let mut staged = match staged {
            Some(staged) => staged,
            None => {
                let mut staged =
                    Staged::create(&self.work, &algs).map_err(io_err("staging the manifests"))?;
                for_each_journal_line(&journal_path, &superseded, |line| {
                    let (lite, record) = RecordDigests::parse(line).map_err(io::Error::other)?;
                    let Some(path) = lite.path else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "journal line without a payload path",
                        ));
                    };
                    let digest =
                        |alg: DigestAlgorithm| lite.digests.get(alg.name()).map(String::as_str);
                    staged.add(record.as_bytes(), &path, lite.size.unwrap_or(0), digest)
                })
                .map_err(io_err("reading the journal"))?;
                staged
            }
        };
        let (payload_files, payload_bytes) = (staged.files, staged.bytes);
        // items.jsonl: the stored items' records, then the recorded-only ones.
        let skipped_path = self.work.join("skipped.jsonl");
        let mut skipped_items = 0u64;
        for line in
            BufReader::new(File::open(&skipped_path).map_err(io_err("reading the work area"))?)
                .lines()
        {
            let line = line.map_err(io_err("reading the work area"))?;
            skipped_items += 1;
            staged
                .items
                .write_all(line.as_bytes())
                .and_then(|()| staged.items.write_all(b"\n"))
                .map_err(io_err("staging the tag files"))?;
        }
        let (items, manifests) = staged
            .into_files(&self.work)
            .map_err(io_err("staging the tag files"))?;
        let items_digests = tags.adopt(ITEMS_JSONL, items)?;
        let mut tag_digests: Vec<(String, Digests)> = vec![(ITEMS_JSONL.into(), items_digests)];
        for (alg, file) in manifests {
            let name = format!("manifest-{}.txt", alg.name());
            let d = tags.adopt(&name, file)?;
            tag_digests.push((name, d));
        }
        let mut failed_items = 0u64;
        let failures_path = self.work.join("failures.jsonl");
        let d = tags.write(FAILURES_JSONL, &mut |out| {
            for line in BufReader::new(File::open(&failures_path)?).lines() {
                let line = line?;
                failed_items += 1;
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
            }
            Ok(())
        })?;
        tag_digests.push((FAILURES_JSONL.into(), d));
        let finished = OffsetDateTime::now_utc();
        let run = RunRecord {
            format: RECORD_FORMAT.into(),
            tool: self.options.tool.clone(),
            command: "export".into(),
            sources: self
                .sources
                .iter()
                .map(|s| SourceInfoRecord {
                    // One source per run so far: the report's details are its.
                    details: report.source_details.clone(),
                    ..SourceInfoRecord::from(s)
                })
                .collect(),
            options: self.options.run_options.clone(),
            started: self.state.started,
            finished,
            attempts: self.state.attempts,
            counts: RunCounts {
                archived_items: payload_files,
                archived_bytes: payload_bytes,
                skipped_items,
                failed_items,
                retries: report.retries,
            },
            totals: self
                .sources
                .iter()
                .map(|s| SourceTotals {
                    source: s.uri.clone(),
                    listed_items: report.listed_items,
                    listed_bytes: report.listed_bytes,
                    archived_items: payload_files,
                    skipped_items,
                    failed_items,
                    skipped_reasons: report.skipped_reasons.clone(),
                })
                .collect(),
            complete: failed_items == 0,
        };
        let run_json = serde_json::to_vec_pretty(&run).expect("run record serialises");
        let d = tags.write(RUN_JSON, &mut |out| out.write_all(&run_json))?;
        tag_digests.push((RUN_JSON.into(), d));
        let mut info = BagInfo::default();
        for (label, value) in &self.options.bag_info {
            info.push(label.clone(), value.clone());
        }
        let date = finished.date();
        info.push(
            "Bagging-Date",
            format!(
                "{:04}-{:02}-{:02}",
                date.year(),
                u8::from(date.month()),
                date.day()
            ),
        );
        info.push("Payload-Oxum", payload_oxum(payload_bytes, payload_files));
        info.push("Bag-Size", bag_size(payload_bytes));
        info.push("BagIt-Profile-Identifier", PROFILE_IDENTIFIER);
        info.push("Bag-Software-Agent", self.options.tool.clone());
        let info_text = info.to_text();
        let d = tags.write("bag-info.txt", &mut |out| {
            out.write_all(info_text.as_bytes())
        })?;
        tag_digests.push(("bag-info.txt".into(), d));
        let d = tags.write("bagit.txt", &mut |out| out.write_all(BAGIT_TXT.as_bytes()))?;
        tag_digests.push(("bagit.txt".into(), d));
        for alg in &algs {
            let name = format!("tagmanifest-{}.txt", alg.name());
            let mut text = String::new();
            for (file, digests) in &tag_digests {
                text.push_str(&format!(
                    "{}  {}\n",
                    digests[alg],
                    encode_manifest_path(file)
                ));
            }
            tags.write(&name, &mut |out| out.write_all(text.as_bytes()))?;
        }
        tags.commit()?;
        drop(tags);
        // The commit point.
        match &self.target {
            BagTarget::Folder(p) => {
                let cleanup = p.join(".ferry-cleanup");
                fs::rename(&self.work, &cleanup).map_err(io_err("completing the bag"))?;
                sync_dir(p).map_err(io_err("completing the bag"))?;
                fs::remove_dir_all(&cleanup).map_err(io_err("removing the work area"))?;
            }
            BagTarget::Zip(p) => {
                let zip = store.zip.take().expect("zip builder");
                zip.finish(&self.work.join("cd.spool"))
                    .map_err(io_err("writing the zip's central directory"))?;
                fs::rename(with_suffix(p, ZIP_PARTIAL_SUFFIX), p)
                    .map_err(io_err("completing the zip"))?;
                if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent).map_err(io_err("completing the zip"))?;
                }
                fs::remove_dir_all(&self.work).map_err(io_err("removing the work area"))?;
            }
            BagTarget::Store { .. } => {
                // The manifests are in the store: the bag is complete. The journal goes.
                fs::remove_dir_all(&self.work).map_err(io_err("removing the work area"))?;
            }
        }
        Ok(BagSummary {
            path: self.target.describe(),
            payload_files,
            payload_bytes,
            skipped_items,
            failed_items,
            attempts: self.state.attempts,
        })
    }
}

/// Calls `f` for every journal line not superseded by a later one.
fn for_each_journal_line(
    path: &Path,
    superseded: &HashSet<u64>,
    mut f: impl FnMut(&str) -> io::Result<()>,
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    // One buffer for every line: a journal has a line per item.
    let mut line = Vec::new();
    for i in 0u64.. {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if !superseded.contains(&i) {
            let text = std::str::from_utf8(&line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            f(text)?;
        }
    }
    Ok(())
}

/// Where tag files are written at the end: beside the payload in a folder, or as zip entries.
trait TagTarget {
    /// Writes one tag file through `fill`, returning its digests.
    fn write(
        &mut self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<Digests>;
    /// Takes a tag file staged in the work area, whose digests are known; by default it is
    /// copied through [`TagTarget::write`].
    fn adopt(&mut self, name: &str, staged: StagedFile) -> Result<Digests> {
        let StagedFile { path, file, .. } = staged;
        drop(file);
        self.write(name, &mut |out| {
            io::copy(&mut File::open(&path)?, out).map(|_| ())
        })
    }
    /// Makes all written tag files visible, manifests last.
    fn commit(&mut self) -> Result<()>;
}

/// Hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: MultiHasher,
}
impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct FolderTags {
    algs: Vec<DigestAlgorithm>,
    bag: PathBuf,
    staging: PathBuf,
    written: Vec<(PathBuf, PathBuf)>,
}

impl TagTarget for FolderTags {
    fn write(
        &mut self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<Digests> {
        let algs = self.algs.clone();
        fs::create_dir_all(&self.staging).map_err(io_err("writing tag files"))?;
        let staged = self.staging.join(name.replace('/', "__"));
        let file = File::create(&staged).map_err(io_err(format!("writing {name}")))?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: MultiHasher::new(algs),
        };
        fill(&mut w).map_err(io_err(format!("writing {name}")))?;
        w.flush().map_err(io_err(format!("writing {name}")))?;
        w.inner
            .get_ref()
            .sync_data()
            .map_err(io_err(format!("writing {name}")))?;
        self.written.push((staged, self.bag.join(name)));
        Ok(w.hasher.finish())
    }

    /// A staged file is in the work area, inside the bag: it is moved into place at commit
    /// like the tag files written here, not copied.
    fn adopt(&mut self, name: &str, staged: StagedFile) -> Result<Digests> {
        staged
            .file
            .sync_data()
            .map_err(io_err(format!("writing {name}")))?;
        self.written.push((staged.path, self.bag.join(name)));
        Ok(staged.digests)
    }

    fn commit(&mut self) -> Result<()> {
        // Tag manifests and payload manifests were written last, so they are renamed last:
        // a crash in between leaves a bag without manifests, which no validator calls valid.
        let (manifests, others): (Vec<_>, Vec<_>) = self.written.drain(..).partition(|(_, to)| {
            to.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("manifest-"))
        });
        for (from, to) in others.into_iter().chain(manifests) {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(io_err("writing tag files"))?;
            }
            fs::rename(&from, &to).map_err(io_err(format!("writing {}", to.display())))?;
        }
        sync_dir(&self.bag).map_err(io_err("syncing the bag"))?;
        Ok(())
    }
}

struct ZipTags<'a> {
    algs: Vec<DigestAlgorithm>,
    zip: &'a mut ZipBuilder,
    top: String,
}

struct ZipStreamWriter<'z> {
    zip: &'z mut ZipBuilder,
    entry: Option<StreamEntry>,
}
impl Write for ZipStreamWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.zip
            .write_stream(self.entry.as_mut().expect("open entry"), buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TagTarget for ZipTags<'_> {
    fn write(
        &mut self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<Digests> {
        let meta = EntryMeta {
            name: format!("{}/{name}", self.top),
            modified: OffsetDateTime::now_utc(),
            mode: 0o644,
            deflate: true,
        };
        let entry = self
            .zip
            .begin_stream(&meta, None)
            .map_err(io_err(format!("writing {name}")))?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(
                256 << 10,
                ZipStreamWriter {
                    zip: self.zip,
                    entry: Some(entry),
                },
            ),
            hasher: MultiHasher::new(self.algs.iter().copied()),
        };
        fill(&mut w).map_err(io_err(format!("writing {name}")))?;
        w.flush().map_err(io_err(format!("writing {name}")))?;
        let hasher = w.hasher;
        let mut inner = w
            .inner
            .into_inner()
            .map_err(|e| io_err(format!("writing {name}"))(e.into_error()))?;
        let entry = inner.entry.take().expect("open entry");
        let cd = inner
            .zip
            .finish_stream(entry)
            .map_err(io_err(format!("writing {name}")))?;
        inner
            .zip
            .commit(&cd)
            .map_err(io_err(format!("writing {name}")))?;
        Ok(hasher.finish())
    }

    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Tag files of a bag in an object store. Uploaded ones are visible at once, so the payload
/// and tag manifests are staged locally and uploaded last, at [`TagTarget::commit`]: a bag
/// without its manifests is incomplete to every validator.
struct StoreTags {
    algs: Vec<DigestAlgorithm>,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
    staging: PathBuf,
    deferred: Vec<(String, PathBuf)>,
}

/// A `Write` that uploads through an [`ObjectWriter`], blocking on the runtime (the bag is
/// finished on a blocking thread).
struct UploadWriter<'a> {
    runtime: &'a tokio::runtime::Handle,
    upload: Option<Box<dyn ObjectWriter>>,
}

impl Write for UploadWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let upload = self.upload.as_mut().expect("open upload");
        self.runtime
            .block_on(upload.write(Bytes::copy_from_slice(buf)))
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StoreTags {
    fn upload_file(&self, name: &str, from: &Path) -> Result<()> {
        let mut file = File::open(from).map_err(io_err(format!("reading staged {name}")))?;
        let upload = self.runtime.block_on(self.store.create(name))?;
        let mut w = BufWriter::with_capacity(
            4 << 20,
            UploadWriter {
                runtime: &self.runtime,
                upload: Some(upload),
            },
        );
        io::copy(&mut file, &mut w).map_err(io_err(format!("uploading {name}")))?;
        let inner = w
            .into_inner()
            .map_err(|e| io_err(format!("uploading {name}"))(e.into_error()))?;
        let mut inner = inner;
        let upload = inner.upload.take().expect("open upload");
        self.runtime.block_on(upload.finish())
    }
}

impl TagTarget for StoreTags {
    fn write(
        &mut self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<Digests> {
        // Every tag file is staged locally first: hashed there, uploaded from there.
        fs::create_dir_all(&self.staging).map_err(io_err("writing tag files"))?;
        let staged = self.staging.join(name.replace('/', "__"));
        let file = File::create(&staged).map_err(io_err(format!("writing {name}")))?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: MultiHasher::new(self.algs.iter().copied()),
        };
        fill(&mut w).map_err(io_err(format!("writing {name}")))?;
        w.flush().map_err(io_err(format!("writing {name}")))?;
        let digests = w.hasher.finish();
        if name.contains("manifest-") {
            self.deferred.push((name.to_string(), staged));
        } else {
            self.upload_file(name, &staged)?;
        }
        Ok(digests)
    }

    fn commit(&mut self) -> Result<()> {
        // Payload manifests were written before tag manifests; keep that order.
        for (name, staged) in std::mem::take(&mut self.deferred) {
            self.upload_file(&name, &staged)?;
        }
        Ok(())
    }
}

/// One item being uploaded into a bag in an object store; it appears when the upload
/// completes, at commit.
struct StoreItem {
    shared: Arc<Shared>,
    upload: Option<Box<dyn ObjectWriter>>,
}

#[async_trait]
impl ItemWriter for StoreItem {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.upload
            .as_mut()
            .expect("open upload")
            .write(chunk)
            .await
    }

    async fn commit(mut self: Box<Self>, item: &Item, stored: StoredItem) -> Result<()> {
        let upload = self.upload.take().expect("open upload");
        upload.finish().await?;
        {
            let mut places = self.shared.places.lock().expect("places lock");
            if let Some(old) = places.replacing.remove(&stored.path) {
                places.superseded.insert(old);
            }
        }
        let line = journal_line(item, &stored)?;
        let mut store = self.shared.store.lock().await;
        self.shared.record_stored(&mut store, &line, &stored)
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(upload) = self.upload.take() {
            upload.abort().await;
        }
    }
}

#[async_trait]
impl Sink for BagWriter {
    fn digest_algorithms(&self) -> &[DigestAlgorithm] {
        &self.shared.options.digests
    }

    fn large_items_at_once(&self) -> Option<usize> {
        // A zip is one stream: an item too large to gather in memory is written under the
        // archive's lock, so others as large would only wait, holding what they fetched.
        matches!(self.shared.target, BagTarget::Zip(_)).then_some(1)
    }

    fn place(&self, item: &Item) -> Result<Placement> {
        let mut places = self.shared.places.lock().expect("places lock");
        let key = source_key(&item.source, item.conversion.as_ref());
        if let Some(done) = places.done.get(&key) {
            let unchanged =
                (item.size.is_none() || item.size == done.size) && item.modified == done.modified;
            // A zip cannot take an entry back, so there the copy from the earlier attempt stays
            // (items.jsonl records its modification time); a folder bag gets the newer copy.
            if unchanged || matches!(self.shared.target, BagTarget::Zip(_)) {
                return Ok(Placement::AlreadyStored);
            }
            // Changed at the source since the interrupted attempt: store it again in the same
            // place; the older journal line is left out once the new copy is committed.
            let (path, line) = (done.path.clone(), done.line);
            places.done.remove(&key);
            places.replacing.insert(path.clone(), line);
            return Ok(Placement::New(path));
        }
        let mut logical: Vec<&str> = Vec::with_capacity(item.path.len() + 1);
        logical.push(&item.source.system);
        logical.extend(item.path.iter().map(String::as_str));
        let mapped = places
            .mapper
            .map_file(&logical)
            .map_err(|e| Error::permanent(e.to_string()))?;
        Ok(Placement::New(format!("data/{mapped}")))
    }

    async fn create(&self, item: &Item, path: &str) -> Result<Box<dyn ItemWriter>> {
        let shared = self.shared.clone();
        match &shared.target {
            BagTarget::Folder(bag) => {
                let final_path = bag.join(path);
                let dir = final_path.parent().unwrap_or(bag);
                shared.ensure_dir(dir)?;
                let (file, pending) = shared
                    .new_files
                    .create(dir)
                    .map_err(|e| io_err(format!("creating {}", final_path.display()))(e))?;
                Ok(Box::new(FolderItem {
                    shared: self.shared.clone(),
                    pending: Some(pending),
                    offload: item.size.is_none_or(|s| s > OFFLOAD_MIN),
                    // The buffer gathers what network sources deliver a few KiB at a time into
                    // fewer writes. Never larger than the item: a chunk as large as the buffer
                    // is written straight through, so an item that arrives in one chunk (local
                    // files, small objects) is not copied into it first.
                    file: Some(Offloaded::Idle(BufWriter::with_capacity(
                        item.size.unwrap_or(256 << 10).min(256 << 10) as usize,
                        WritebackFile::new(file),
                    ))),
                    final_path,
                    written: 0,
                }))
            }
            BagTarget::Zip(_) => {
                let meta = EntryMeta {
                    name: format!("{}/{path}", shared.zip_top()),
                    modified: item.modified.unwrap_or_else(OffsetDateTime::now_utc),
                    mode: 0o644,
                    deflate: shared.options.deflate,
                };
                Ok(Box::new(ZipItem {
                    shared: self.shared.clone(),
                    meta,
                    size_hint: item.size,
                    buffer: Vec::new(),
                    streaming: None,
                }))
            }
            BagTarget::Store { store, .. } => {
                let upload = store.create(path).await?;
                Ok(Box::new(StoreItem {
                    shared: self.shared.clone(),
                    upload: Some(upload),
                }))
            }
        }
    }

    async fn record_skipped(&self, item: &Item, reason: &str) -> Result<()> {
        let record = ItemRecord::skipped(item, reason);
        let mut side = self.shared.side.lock().expect("side files lock");
        side.skipped
            .append(&record)
            .map_err(io_err("recording a skipped item"))
    }

    async fn record_failure(&self, failure: &Failure) -> Result<()> {
        let mut side = self.shared.side.lock().expect("side files lock");
        side.failures
            .append(failure)
            .map_err(io_err("recording a failure"))
    }
}

/// A journal line as written (with its newline), and where its record starts.
struct JournalEntry {
    line: Vec<u8>,
    record_at: usize,
}

impl JournalEntry {
    /// The items.jsonl record, without the newline.
    fn record(&self) -> &[u8] {
        &self.line[self.record_at..self.line.len() - 1]
    }
}

/// A stored item's journal line (see [`JournalLine`]), serialised from borrowed parts: before
/// the archive's lock is taken, and without copying the item.
fn journal_line(item: &Item, stored: &StoredItem) -> Result<JournalEntry> {
    /// A [`JournalHeader`] as it is written.
    #[derive(Serialize)]
    struct HeaderRef<'a> {
        logical: LogicalPath<'a>,
        path: &'a str,
        size: u64,
        digests: crate::record::DigestsByName<'a>,
    }
    /// The source system, then the item's path: [`JournalLine::logical`].
    struct LogicalPath<'a>(&'a Item);
    impl Serialize for LogicalPath<'_> {
        fn serialize<S: serde::Serializer>(
            &self,
            serializer: S,
        ) -> std::result::Result<S::Ok, S::Error> {
            serializer.collect_seq(std::iter::once(&self.0.source.system).chain(&self.0.path))
        }
    }
    let internal = |e: serde_json::Error| {
        Error::fatal(format!(
            "internal error: a journal line does not serialise: {e}"
        ))
    };
    let mut line = Vec::with_capacity(1024);
    serde_json::to_writer(
        &mut line,
        &HeaderRef {
            logical: LogicalPath(item),
            path: &stored.path,
            size: stored.size,
            digests: crate::record::DigestsByName(&stored.digests),
        },
    )
    .map_err(internal)?;
    line.push(b'\t');
    let record_at = line.len();
    serde_json::to_writer(&mut line, &ItemRecord::stored_ref(item, stored)).map_err(internal)?;
    line.push(b'\n');
    Ok(JournalEntry { line, record_at })
}

/// Zip entries gathered in memory up to this size are deflated on the async threads.
const INLINE_DEFLATE_MAX: usize = 16 << 10;

/// Items larger than this are written off the async threads (see [`Offloaded`]).
const OFFLOAD_MIN: u64 = 1 << 20;

/// One item being written into a folder bag: a new file (see [`NewFiles`]) given its name on
/// commit.
struct FolderItem {
    shared: Arc<Shared>,
    /// How the file gets its name; `None` once it has (or has been discarded).
    pending: Option<Pending>,
    /// Large files start their way to disk while they are written (see [`WritebackFile`]).
    file: Option<Offloaded<BufWriter<WritebackFile>>>,
    /// Large items are written on the blocking pool, overlapping with hashing; small ones
    /// inline, where a hand-off would cost more than the write.
    offload: bool,
    final_path: PathBuf,
    written: u64,
}

#[async_trait]
impl ItemWriter for FolderItem {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let what = || format!("writing {}", self.final_path.display());
        let file = self.file.as_mut().expect("open file");
        self.written += chunk.len() as u64;
        // `what` is called only on an error: this runs for every chunk.
        let failed = |e: io::Error| io_err(what())(e);
        if self.offload {
            file.write_all(chunk).await.map_err(failed)
        } else {
            let f = file.settle().await.map_err(failed)?;
            f.write_all(&chunk).map_err(failed)
        }
    }

    async fn commit(mut self: Box<Self>, item: &Item, stored: StoredItem) -> Result<()> {
        let file = self.file.take().expect("open file");
        let pending = self.pending.take().expect("pending file");
        let final_path = std::mem::take(&mut self.final_path);
        // Error texts are made only when needed: this runs once per item.
        let writing = |e: io::Error| io_err(format!("writing {}", final_path.display()))(e);
        let file = file
            .into_inner()
            .await
            .map_err(writing)?
            .into_inner()
            .map_err(|e| writing(e.into_error()))?
            .finish();
        if let Some(modified) = item.modified {
            // Keep the source's modification time: restores and plain `ls -l` then tell the truth.
            let _ = file.set_modified(modified.into());
        }
        let placed = self
            .shared
            .new_files
            .put_in_place(&file, &pending, &final_path);
        drop(file);
        if let Err(e) = placed {
            if let Pending::Named(tmp) = pending {
                let _ = fs::remove_file(tmp);
            }
            return Err(io_err(format!(
                "moving {} into place",
                final_path.display()
            ))(e));
        }
        {
            let mut places = self.shared.places.lock().expect("places lock");
            if let Some(old) = places.replacing.remove(&stored.path) {
                places.superseded.insert(old);
            }
        }
        let line = journal_line(item, &stored)?;
        let mut store = self.shared.store.lock().await;
        self.shared.record_stored(&mut store, &line, &stored)
    }

    async fn abort(mut self: Box<Self>) {
        self.discard();
    }
}

impl FolderItem {
    fn discard(&mut self) {
        self.file.take();
        if let Some(Pending::Named(tmp)) = self.pending.take() {
            let _ = fs::remove_file(tmp);
        }
    }
}

impl Drop for FolderItem {
    fn drop(&mut self) {
        self.discard();
    }
}

/// One item being written into a zip bag. Small items are gathered in memory and written in
/// one go under the archive lock; an item that outgrows the buffer takes the lock and streams.
struct ZipItem {
    shared: Arc<Shared>,
    meta: EntryMeta,
    size_hint: Option<u64>,
    buffer: Vec<u8>,
    /// Once streaming, the archive lock and the open entry, written on the blocking pool one
    /// chunk behind the transfer so hashing and writing overlap.
    streaming: Option<Offloaded<ZipStream>>,
}

/// The archive (locked for this entry) and the entry being streamed.
type ZipStream = (tokio::sync::OwnedMutexGuard<Store>, StreamEntry);

fn write_zip_stream((store, entry): &mut ZipStream, data: &[u8]) -> io::Result<()> {
    store
        .zip
        .as_mut()
        .expect("zip builder")
        .write_stream(entry, data)
}

#[async_trait]
impl ItemWriter for ZipItem {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.streaming.is_none()
            && self.buffer.len() + chunk.len() <= self.shared.options.zip_buffer
        {
            self.buffer.extend_from_slice(&chunk);
            return Ok(());
        }
        if self.streaming.is_none() {
            let mut store = self.shared.store.clone().lock_owned().await;
            let zip = store.zip.as_mut().expect("zip builder");
            let mut entry = zip
                .begin_stream(&self.meta, self.size_hint)
                .map_err(io_err("writing the zip"))?;
            zip.write_stream(&mut entry, &self.buffer)
                .map_err(io_err("writing the zip"))?;
            self.buffer = Vec::new();
            self.streaming = Some(Offloaded::Idle((store, entry)));
        }
        let streaming = self.streaming.as_mut().expect("streaming");
        streaming
            .write(chunk, write_zip_stream)
            .await
            .map_err(io_err("writing the zip"))
    }

    async fn commit(mut self: Box<Self>, item: &Item, stored: StoredItem) -> Result<()> {
        let line = journal_line(item, &stored)?;
        let (mut store, cd) = match self.streaming.take() {
            Some(streaming) => {
                let (mut store, entry) = streaming
                    .into_inner()
                    .await
                    .map_err(io_err("writing the zip"))?;
                let cd = store
                    .zip
                    .as_mut()
                    .expect("zip builder")
                    .finish_stream(entry)
                    .map_err(io_err("writing the zip"))?;
                (store, cd)
            }
            None => {
                let content = std::mem::take(&mut self.buffer);
                let meta = self.meta.clone();
                // A CRC takes microseconds, less than a trip to the blocking pool and back
                // (which dominated zips of many small files); deflating a large entry does not.
                let prepared = if !meta.deflate || content.len() <= INLINE_DEFLATE_MAX {
                    PreparedEntry::new(meta, content)
                } else {
                    tokio::task::spawn_blocking(move || PreparedEntry::new(meta, content))
                        .await
                        .map_err(|e| Error::fatal(format!("internal error: {e}")))?
                };
                let mut store = self.shared.store.clone().lock_owned().await;
                let cd = store
                    .zip
                    .as_mut()
                    .expect("zip builder")
                    .write_prepared(&prepared)
                    .map_err(io_err("writing the zip"))?;
                (store, cd)
            }
        };
        store
            .zip
            .as_mut()
            .expect("zip builder")
            .commit(&cd)
            .map_err(io_err("writing the zip"))?;
        self.shared.record_stored(&mut store, &line, &stored)
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(streaming) = self.streaming.take() {
            if let Ok(inner) = streaming.into_inner().await {
                self.streaming = Some(Offloaded::Idle(inner));
            }
        }
        self.discard();
    }
}

impl ZipItem {
    fn discard(&mut self) {
        // A write still running on the blocking pool keeps the lock until it ends; then the
        // entry is left unfinished (never committed) and cut off on resume.
        if let Some(Offloaded::Idle((mut store, entry))) = self.streaming.take() {
            let offset = ZipBuilder::stream_offset(&entry);
            if let Some(zip) = store.zip.as_mut() {
                if let Err(e) = zip.discard(offset) {
                    tracing::warn!("could not cut an abandoned entry out of the zip: {e}");
                }
            }
        }
    }
}

impl Drop for ZipItem {
    fn drop(&mut self) {
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record tests' item, with a tab in its names (a journal line splits at a tab).
    fn stored_item() -> (Item, StoredItem) {
        let (mut item, mut stored) = crate::record::tests::full_item();
        item.source.id = "a\tb/c.txt".into();
        item.path[1] = "a\tb".into();
        stored.path = "data/s3/bucket/a\tb/c.txt".into();
        (item, stored)
    }

    #[test]
    fn journal_lines_of_this_and_earlier_versions_read_the_same() {
        let (item, stored) = stored_item();
        let new = String::from_utf8(journal_line(&item, &stored).unwrap().line).unwrap();
        assert_eq!(
            new.matches('\t').count(),
            1,
            "tabs in names are escaped: {new}"
        );
        // An earlier version wrote one object.
        #[derive(Serialize)]
        struct Old<'a> {
            logical: Vec<String>,
            record: &'a ItemRecord,
        }
        let record = ItemRecord::stored(&item, &stored);
        let mut logical = vec![item.source.system.clone()];
        logical.extend(item.path.iter().cloned());
        let old = serde_json::to_string(&Old {
            logical: logical.clone(),
            record: &record,
        })
        .unwrap()
            + "\n";
        for line in [&new, &old] {
            let parsed = JournalLine::parse(line).unwrap();
            assert_eq!(parsed.logical, logical);
            assert_eq!(parsed.record.path.as_deref(), Some(stored.path.as_str()));
            assert_eq!(parsed.record.source.id, item.source.id);
            let (lite, text) = RecordDigests::parse(line.trim_end()).unwrap();
            assert_eq!(lite.path.as_deref(), Some(stored.path.as_str()));
            assert_eq!(lite.size, Some(stored.size));
            assert_eq!(
                lite.digests["sha256"],
                stored.digests[&DigestAlgorithm::Sha256]
            );
            assert_eq!(lite.digests["md5"], stored.digests[&DigestAlgorithm::Md5]);
            // The record text is the items.jsonl line, byte for byte.
            assert_eq!(text, serde_json::to_string(&record).unwrap());
        }
    }
}
