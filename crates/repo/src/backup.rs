//! One backup run: a [`Sink`] for the pipeline that reads again only what changed, stores new
//! content once by digest, and at the end writes the run's changes, a full state when due, and
//! the run record last.
//!
//! How "unchanged" is decided without reading an item: the previous state's entries are held as
//! an index of 8-byte key hashes with the hash of each entry's fingerprint (what the source said
//! about the item: size and mtime, ETag and version, changeKey, …). [`Sink::place`] answers
//! [`Placement::AlreadyStored`] when the listed item's fingerprint equals the stored one, so the
//! pipeline never opens it. Memory is some 60 bytes per item of the state (more for sources
//! that list only changes: they also hold each item's identity and blob, to notice moves).
//!
//! A run that changed nothing reads the previous state once, at the start, and only the parts
//! of each entry the index needs ([`crate::entries::EntryHead`]): the end looks for removals
//! only when some key was not listed again, and takes the state's counts from the previous run
//! when there are no changes.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::sink::Placement;
use ferry_core::writeback::{Offloaded, WritebackFile};
use ferry_core::{
    DigestAlgorithm, Error, Failure, Item, ItemWriter, ObjectStore, Result, RunReport, Sink,
    StoredItem,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::entries::{EntryHead, EntryReader, EntryWriter, StateMerge};
use crate::format::{
    blob_key, entry_key, fingerprint, item_record, run_file, run_id, CheckpointRef, Entry,
    FileInfo, Op, RunCounts, RunLink, RunRecord, CHANGES_FILE, RUN_FILE, RUN_FORMAT, STATE_FILE,
};
use crate::lock::RepoLock;
use crate::repository::{Repository, StoredRun};

/// A full state is written on a job's first run and then at least every this many runs.
pub const CHECKPOINT_EVERY: usize = 14;

/// What a backup run is.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The job's name.
    pub job: String,
    /// The source as the user named it (no secrets).
    pub source: String,
    /// Options that change what is listed (no secrets), for the record.
    pub options: serde_json::Map<String, serde_json::Value>,
    /// The source lists everything every time (fs, S3): keys it no longer lists were removed.
    /// (A source that lists only changes says what was removed itself.)
    pub full_listing: bool,
    /// Items of a source that lists everything can come back at another key with content
    /// stored before (S3 with versions: an overwritten object's older version gets a name of
    /// its own): the previous state's content is then indexed by item identity and
    /// fingerprint too, so such an item is not read again. Always so for a source that lists
    /// only changes (moved and renamed items).
    pub moves: bool,
}

impl BackupOptions {
    /// Whether the run indexes the previous state's content by item identity.
    fn reuses(&self) -> bool {
        self.moves || !self.full_listing
    }
}

fn hash(s: &str) -> u64 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(s.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// One key of the previous state.
#[derive(Debug, Clone, Copy)]
struct Known {
    fingerprint: u64,
}

/// Content of the previous state an item can take without being read again when it is listed
/// at another key (moved or renamed) with the same fingerprint.
#[derive(Debug, Clone, Copy)]
struct Prior {
    blob: [u8; 32],
    size: u64,
    retrieved_at: Option<OffsetDateTime>,
}

#[derive(Default)]
struct Progress {
    /// Key hashes of the previous state.
    known: HashMap<u64, Known>,
    /// Blobs the previous state refers to (no need to ask the store about them).
    known_blobs: HashSet<[u8; 32]>,
    /// Keys listed in this run.
    seen: HashSet<u64>,
    /// How many of them are keys of the previous state.
    seen_known: usize,
    /// Fingerprints of items placed for reading, until they are committed.
    pending: HashMap<u64, String>,
    /// Where each change entry is in the spool: (key, offset, length).
    changes: Vec<(String, u64, u64)>,
    counts: RunCounts,
    failures: Vec<serde_json::Value>,
    listing_failed: bool,
    /// Items an incremental listing said are gone, by [`identity`] hash.
    removed: HashSet<u64>,
    /// Containers an incremental source listed whole, by [`container_identity`] hash.
    complete: HashSet<u64>,
    /// Incremental sources only: how many keys each [`identity`] has in the previous state.
    known_ids: HashMap<u64, u32>,
    /// Incremental sources only: the [`identity`] of each key hash of the previous state.
    key_ids: HashMap<u64, u64>,
    /// Incremental sources only: the previous state's content by ([`identity`], fingerprint
    /// hash), for items listed at another key.
    priors: HashMap<(u64, u64), Prior>,
    /// Incremental sources only: identities listed in this run (read or unchanged); their
    /// previous keys not listed again are gone (moved or renamed).
    listed: HashSet<u64>,
    /// Incremental sources only: identities whose item could not be read in this run (their
    /// earlier keys stay).
    failed_ids: HashSet<u64>,
    /// An identity of the previous state was listed at a new key, or has several keys: the
    /// previous state is scanned at the end for keys it left.
    moved: bool,
}

/// What names an item at its source, whatever its path: system, account, container, id.
fn identity(system: &str, account: Option<&str>, container: Option<&str>, id: &str) -> u64 {
    hash(&format!(
        "{system}\u{0}{}\u{0}{}\u{0}{id}",
        account.unwrap_or_default(),
        container.unwrap_or_default()
    ))
}

/// What names a container: system, account, container.
fn container_identity(system: &str, account: Option<&str>, container: Option<&str>) -> u64 {
    hash(&format!(
        "{system}\u{0}{}\u{0}{}",
        account.unwrap_or_default(),
        container.unwrap_or_default()
    ))
}

/// The [`identity`] of the item in an entry's provenance record.
fn head_identity(e: &EntryHead) -> Option<u64> {
    let s = e.item.as_ref()?.source.as_ref()?;
    Some(identity(
        s.system.as_deref()?,
        s.account.as_deref(),
        s.container.as_deref(),
        s.id.as_deref()?,
    ))
}

/// The [`container_identity`] of the item in an entry's provenance record.
fn head_container(e: &EntryHead) -> Option<u64> {
    let s = e.item.as_ref()?.source.as_ref()?;
    Some(container_identity(
        s.system.as_deref()?,
        s.account.as_deref(),
        s.container.as_deref(),
    ))
}

/// A backup run in progress.
pub struct Backup {
    repo: Arc<Repository>,
    options: BackupOptions,
    id: String,
    started: OffsetDateTime,
    previous: Option<StoredRun>,
    lock: tokio::sync::Mutex<Option<RepoLock>>,
    progress: Mutex<Progress>,
    spool: Mutex<std::fs::File>,
    spool_path: PathBuf,
}

impl Backup {
    /// Takes the repository's lock, clears what an interrupted run left, and reads the job's
    /// last state into the index.
    pub async fn start(repo: Arc<Repository>, options: BackupOptions) -> Result<Arc<Backup>> {
        let started = crate::prune::now();
        let mut id = run_id(started, &options.job);
        let lock = RepoLock::acquire(repo.store().clone(), &id).await?;
        clear_partial_runs(repo.store().as_ref()).await?;
        // Two runs of a job within one second: the later waits for the next second's id.
        while repo.store().exists(&run_file(&id, RUN_FILE)).await? {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            id = run_id(OffsetDateTime::now_utc(), &options.job);
        }
        let job = crate::format::safe_job(&options.job);
        let previous_id = repo
            .run_ids()
            .await?
            .into_iter()
            .rfind(|r| crate::format::job_of(r) == job);
        let mut progress = Progress::default();
        let previous = match previous_id {
            Some(p) => {
                let stored = repo.run(&p).await?;
                let n = stored.record.counts.state_entries as usize;
                progress.known.reserve(n);
                progress.known_blobs.reserve(n);
                progress.seen.reserve(n);
                let (full_listing, reuses) = (options.full_listing, options.reuses());
                repo.for_each_head(&p, |e| {
                    let fp = hash(e.fingerprint.as_deref().unwrap_or_default());
                    let h = hash(&e.key);
                    progress.known.insert(h, Known { fingerprint: fp });
                    let blob = e.blob.as_deref().and_then(blob_bytes);
                    if let Some(b) = blob {
                        progress.known_blobs.insert(b);
                    }
                    if !reuses {
                        return Ok(());
                    }
                    if let Some(ident) = head_identity(e) {
                        if !full_listing {
                            *progress.known_ids.entry(ident).or_default() += 1;
                            progress.key_ids.insert(h, ident);
                        }
                        if let Some(blob) = blob {
                            let retrieved_at = e
                                .item
                                .as_ref()
                                .and_then(|i| i.retrieved_at.as_deref())
                                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
                            progress.priors.insert(
                                (ident, fp),
                                Prior {
                                    blob,
                                    size: e.size.unwrap_or(0),
                                    retrieved_at,
                                },
                            );
                        }
                    }
                    Ok(())
                })
                .await?;
                Some(stored)
            }
            None => None,
        };
        let spool_path = repo.work_file("changes.jsonl");
        let spool = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&spool_path)
            .map_err(|e| spool_error(&spool_path, e))?;
        Ok(Arc::new(Backup {
            repo,
            options,
            id,
            started,
            previous,
            lock: tokio::sync::Mutex::new(Some(lock)),
            progress: Mutex::new(progress),
            spool: Mutex::new(spool),
            spool_path,
        }))
    }

    /// The run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The previous run of the job, if any (its cursors tell an incremental source where to
    /// start).
    pub fn previous(&self) -> Option<&RunRecord> {
        self.previous.as_ref().map(|p| &p.record)
    }

    fn spool_entry(&self, e: &Entry) -> Result<()> {
        let mut line = serde_json::to_vec(e).map_err(|err| Error::fatal(err.to_string()))?;
        line.push(b'\n');
        let mut f = self.spool.lock().expect("spool");
        let offset = f
            .seek(SeekFrom::End(0))
            .map_err(|err| Error::fatal(format!("spooling a change: {err}")))?;
        f.write_all(&line)
            .map_err(|err| Error::fatal(format!("spooling a change: {err}")))?;
        drop(f);
        let mut p = self.progress.lock().expect("progress");
        match e.op {
            Op::Add => p.counts.added += 1,
            Op::Change => p.counts.changed += 1,
            Op::Remove => p.counts.removed += 1,
        }
        p.changes.push((e.key.clone(), offset, line.len() as u64));
        Ok(())
    }

    /// Ends the run: the changes file (with removals when the source lists everything and the
    /// listing was complete), a full state when due, then the run record; lets the lock go.
    pub async fn finish(
        self: Arc<Self>,
        report: &RunReport,
        cursors: serde_json::Value,
    ) -> Result<StoredRun> {
        let repo = self.repo.clone();
        let store = repo.store().clone();
        let mut notes = Vec::new();
        let (mut changes, seen, listing_failed, mut counts, failures, removed, complete) = {
            let mut p = self.progress.lock().expect("progress");
            (
                std::mem::take(&mut p.changes),
                std::mem::take(&mut p.seen),
                p.listing_failed,
                p.counts.clone(),
                std::mem::take(&mut p.failures),
                std::mem::take(&mut p.removed),
                std::mem::take(&mut p.complete),
            )
        };
        let (listed, moved) = {
            let mut p = self.progress.lock().expect("progress");
            let mut listed = std::mem::take(&mut p.listed);
            for f in &p.failed_ids {
                listed.remove(f);
            }
            (listed, p.moved)
        };
        let (seen_known, known_keys) = {
            let p = self.progress.lock().expect("progress");
            (p.seen_known, p.known.len())
        };
        // Removals. A source that lists everything: keys of the previous state it no longer
        // lists (unless part of the listing failed). An incremental source: the items it said
        // are gone, the unseen items of the containers it listed whole, and the unseen keys of
        // items it listed (moved or renamed: listed at their new key only).
        let mut removals = Vec::new();
        if let Some(prev) = &self.previous {
            let whole = self.options.full_listing && !listing_failed;
            // Every key of the previous state listed again: nothing to look for.
            let all_seen = seen_known == known_keys;
            let moved = moved && !listed.is_empty();
            if (whole && !all_seen) || !removed.is_empty() || !complete.is_empty() || moved {
                repo.for_each_head(&prev.record.id, |e| {
                    if seen.contains(&hash(&e.key)) {
                        return Ok(());
                    }
                    let gone = whole
                        || head_identity(e)
                            .is_some_and(|i| removed.contains(&i) || listed.contains(&i))
                        || head_container(e).is_some_and(|c| complete.contains(&c));
                    if gone {
                        removals.push(Entry::removal(e.key.to_string()));
                    }
                    Ok(())
                })
                .await?;
            }
            if self.options.full_listing && listing_failed {
                notes.push("part of the source could not be listed, so no item is marked removed in this run".into());
            }
        }
        counts.removed = removals.len() as u64;
        // The changes file: spooled changes and removals, merged in key order.
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        let changes_path = repo.work_file(CHANGES_FILE);
        let mut writer = EntryWriter::create(&changes_path)?;
        {
            let mut spool = BufReader::new(
                std::fs::File::open(&self.spool_path)
                    .map_err(|e| Error::fatal(format!("reading the spooled changes: {e}")))?,
            );
            let mut removals = removals.into_iter().peekable();
            let mut line = String::new();
            for (key, offset, _len) in &changes {
                while removals.peek().is_some_and(|r| r.key < *key) {
                    writer.write(&removals.next().expect("peeked"))?;
                }
                spool
                    .seek(SeekFrom::Start(*offset))
                    .map_err(|e| Error::fatal(format!("reading the spooled changes: {e}")))?;
                line.clear();
                spool
                    .read_line(&mut line)
                    .map_err(|e| Error::fatal(format!("reading the spooled changes: {e}")))?;
                let e: Entry = serde_json::from_str(&line)
                    .map_err(|e| Error::fatal(format!("internal error: spooled change: {e}")))?;
                writer.write(&e)?;
            }
            for r in removals {
                writer.write(&r)?;
            }
        }
        let changes_info = writer.finish()?;
        let _ = std::fs::remove_file(&self.spool_path);
        // A full state when due: the first run, every CHECKPOINT_EVERY runs, or when the
        // changes since the last one outgrow a quarter of the state.
        let mut checkpoint_run = self.id.clone();
        let mut state_info: Option<FileInfo> = None;
        let due = match &self.previous {
            None => true,
            Some(prev) => {
                let chain = repo.state_runs(&prev.record.id).await?;
                let since: u64 = {
                    let mut n = changes_info.entries;
                    for id in chain.iter().skip(1) {
                        if let Ok(r) = repo.run(id).await {
                            n += r.record.files.get(CHANGES_FILE).map_or(0, |f| f.entries);
                        }
                    }
                    n
                };
                let state_entries = prev.record.counts.state_entries.max(1);
                if chain.len() >= CHECKPOINT_EVERY || since * 4 > state_entries {
                    true
                } else {
                    checkpoint_run = chain[0].clone();
                    false
                }
            }
        };
        let state_path = repo.work_file(STATE_FILE);
        // Count the new state, and write it when due. Nothing changed: the previous state's
        // counts.
        let files = match &self.previous {
            Some(prev) if due || changes_info.entries > 0 => {
                repo.state_files(&prev.record.id).await?
            }
            _ => Vec::new(),
        };
        match &self.previous {
            Some(prev) if !due && changes_info.entries == 0 => {
                counts.state_entries = prev.record.counts.state_entries;
                counts.state_bytes = prev.record.counts.state_bytes;
            }
            _ if !due => {
                let mut sources: Vec<(&std::path::Path, &str)> = files
                    .iter()
                    .map(|(l, k)| (l.path.as_path(), k.as_str()))
                    .collect();
                sources.push((&changes_path, CHANGES_FILE));
                let (mut n, mut bytes) = (0, 0);
                crate::entries::for_each_head(&sources, |e| {
                    n += 1;
                    bytes += e.size.unwrap_or(0);
                    Ok(())
                })?;
                counts.state_entries = n;
                counts.state_bytes = bytes;
            }
            // Due, but nothing changed since the checkpoint: the same file again.
            Some(prev) if files.len() == 1 && changes_info.entries == 0 => {
                state_info = Some(crate::entries::copy_entry_file(
                    &files[0].0.path,
                    &state_path,
                    prev.record.counts.state_entries,
                )?);
                counts.state_entries = prev.record.counts.state_entries;
                counts.state_bytes = prev.record.counts.state_bytes;
            }
            _ => {
                let mut readers = Vec::new();
                for (l, k) in &files {
                    readers.push(EntryReader::open(&l.path, k)?);
                }
                readers.push(EntryReader::open(&changes_path, CHANGES_FILE)?);
                let mut w = EntryWriter::create(&state_path)?;
                counts.state_entries = 0;
                counts.state_bytes = 0;
                for e in StateMerge::new(readers) {
                    let e = e?;
                    counts.state_entries += 1;
                    counts.state_bytes += e.size.unwrap_or(0);
                    w.write(&e)?;
                }
                state_info = Some(w.finish()?);
            }
        }
        drop(files);
        // Upload the run's files, the record last.
        let mut files = std::collections::BTreeMap::new();
        // A job's first run stores its state, which holds exactly its changes (all adds): the
        // same list twice would double the run's writes.
        if changes_info.entries > 0 && self.previous.is_some() {
            counts.bytes_written += changes_info.size;
            store
                .adopt_file(&run_file(&self.id, CHANGES_FILE), &changes_path)
                .await?;
            files.insert(CHANGES_FILE.to_string(), changes_info);
        } else {
            let _ = std::fs::remove_file(&changes_path);
        }
        if let Some(info) = state_info {
            counts.bytes_written += info.size;
            store
                .adopt_file(&run_file(&self.id, STATE_FILE), &state_path)
                .await?;
            files.insert(STATE_FILE.to_string(), info);
        }
        counts.listed = report.listed_items;
        counts.failed = failures.len() as u64;
        counts.bytes_read = report.archived_bytes;
        let status = if failures.is_empty() {
            "completed"
        } else {
            "completed_with_failures"
        };
        let record = RunRecord {
            format: RUN_FORMAT.into(),
            id: self.id.clone(),
            job: self.options.job.clone(),
            source: self.options.source.clone(),
            started: self.started,
            finished: OffsetDateTime::now_utc(),
            status: status.into(),
            ferry_version: env!("CARGO_PKG_VERSION").into(),
            options: self.options.options.clone(),
            previous: self.previous.as_ref().map(|p| RunLink {
                id: p.record.id.clone(),
                sha256: p.sha256.clone(),
            }),
            checkpoint: CheckpointRef {
                run: checkpoint_run,
            },
            files,
            counts,
            failures,
            cursors,
            notes,
        };
        let bytes = record_bytes(&record);
        let sha256 = crate::format::sha256_hex(&bytes);
        if !store
            .put_new(&run_file(&self.id, RUN_FILE), Bytes::from(bytes))
            .await?
        {
            return Err(Error::fatal(format!(
                "run {} already exists in the repository",
                self.id
            )));
        }
        if let Some(lock) = self.lock.lock().await.take() {
            lock.release().await?;
        }
        Ok(StoredRun { record, sha256 })
    }

    /// Gives up: the lock goes, the blobs written stay for the next run to reuse; nothing
    /// else of this run remains.
    pub async fn abandon(self: Arc<Self>) {
        let _ = std::fs::remove_file(&self.spool_path);
        if let Some(lock) = self.lock.lock().await.take() {
            let _ = lock.release().await;
        }
    }
}

/// run.json: indented for people, but the cursors on one line — a drive's folder map holds
/// a triple per folder, which indentation would more than double.
fn record_bytes(record: &RunRecord) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Written<'a> {
        #[serde(flatten)]
        rest: serde_json::Map<String, serde_json::Value>,
        cursors: &'a serde_json::value::RawValue,
    }
    let mut rest = match serde_json::to_value(record).expect("JSON") {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a run record is an object"),
    };
    let cursors = rest.remove("cursors").unwrap_or_default();
    let raw = serde_json::value::RawValue::from_string(cursors.to_string()).expect("JSON");
    serde_json::to_vec_pretty(&Written {
        rest,
        cursors: &raw,
    })
    .expect("JSON")
}

fn blob_bytes(hex: &str) -> Option<[u8; 32]> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex, &mut b).ok()?;
    Some(b)
}

/// Deletes what interrupted runs left: run folders without a record, temporary files.
async fn clear_partial_runs(store: &dyn ObjectStore) -> Result<()> {
    let objects = store.list("runs/").await?;
    let complete: HashSet<String> = objects
        .iter()
        .filter_map(|o| {
            o.key
                .strip_suffix(&format!("/{RUN_FILE}"))
                .map(str::to_string)
        })
        .collect();
    for o in &objects {
        let dir = o.key.rsplit_once('/').map_or("", |(d, _)| d);
        if !complete.contains(dir) {
            tracing::info!("removing {} left by an interrupted run", o.key);
            store.delete(&o.key).await?;
        }
    }
    if let Some(tmp) = store.local_path("tmp") {
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// The item's key, marked seen. Two items of one run on the same path (Drive allows two
/// files of one name in a folder) cannot share a key: the later one's name gets `~` and a
/// short hash of its source identity before its extension — stable across runs as long as the
/// source lists the twins in the same order.
fn unique_key(p: &mut Progress, item: &Item) -> Result<(String, u64)> {
    let key = entry_key(item);
    let h = hash(&key);
    // An incremental source lists only what changed: the plain key may belong to a twin the
    // previous state holds and this run does not list. It stays that twin's.
    let held_by_twin = p
        .key_ids
        .get(&h)
        .is_some_and(|&owner| owner != item_identity(item));
    if !held_by_twin && p.seen.insert(h) {
        return Ok((key, h));
    }
    let s = &item.source;
    let tag = identity(
        &s.system,
        s.account.as_deref(),
        s.container.as_deref(),
        &s.id,
    );
    // Before the extension, so the restored file still opens with the right program.
    let (dir, name) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
    let name = match name.rfind('.') {
        Some(i) if i > 0 => format!("{}~{:08x}{}", &name[..i], tag as u32, &name[i..]),
        _ => format!("{name}~{:08x}", tag as u32),
    };
    let twin = if dir.is_empty() {
        name
    } else {
        format!("{dir}/{name}")
    };
    let h = hash(&twin);
    if p.seen.insert(h) {
        return Ok((twin, h));
    }
    Err(Error::permanent(format!(
        "the source listed {key:?} twice in one run; the second is left out"
    )))
}

/// The item's [`identity`].
fn item_identity(item: &Item) -> u64 {
    let s = &item.source;
    identity(
        &s.system,
        s.account.as_deref(),
        s.container.as_deref(),
        &s.id,
    )
}

/// Incremental sources: notes the item listed at key hash `h` as listed; marks the run
/// `moved` when its identity had another key in the previous state. Its [`identity`].
fn note_listed(p: &mut Progress, item: &Item, h: u64) -> u64 {
    let ident = item_identity(item);
    p.listed.insert(ident);
    if let Some(&n) = p.known_ids.get(&ident) {
        if n > 1 || p.key_ids.get(&h) != Some(&ident) {
            p.moved = true;
        }
    }
    ident
}

/// The pipeline's sink for a backup run.
pub struct BackupSink(pub Arc<Backup>);

#[async_trait]
impl Sink for BackupSink {
    fn digest_algorithms(&self) -> &[DigestAlgorithm] {
        &[DigestAlgorithm::Sha256]
    }

    fn place(&self, item: &Item) -> Result<Placement> {
        let fp = fingerprint(item);
        let fph = hash(&fp);
        let mut p = self.0.progress.lock().expect("progress");
        let (key, h) = unique_key(&mut p, item)?;
        let known = p.known.get(&h).copied();
        if known.is_some() {
            p.seen_known += 1;
        }
        if known.is_some_and(|k| k.fingerprint == fph) {
            p.counts.unchanged += 1;
            if !self.0.options.full_listing {
                note_listed(&mut p, item, h);
            }
            return Ok(Placement::AlreadyStored);
        }
        if self.0.options.reuses() {
            let ident = if self.0.options.full_listing {
                item_identity(item)
            } else {
                note_listed(&mut p, item, h)
            };
            // Moved, renamed, an older version: the same content, not read again.
            if let Some(prior) = p.priors.get(&(ident, fph)).copied() {
                drop(p);
                let op = if known.is_some() { Op::Change } else { Op::Add };
                let digest = hex::encode(prior.blob);
                let stored = StoredItem {
                    path: key.clone(),
                    size: prior.size,
                    digests: [(DigestAlgorithm::Sha256, digest.clone())].into(),
                    checks: Vec::new(),
                    retrieved_at: prior.retrieved_at.unwrap_or_else(OffsetDateTime::now_utc),
                };
                let mut record = item_record(item, Some(&stored));
                // The content was read when the earlier entry was made.
                record["retrieved_at"] = prior
                    .retrieved_at
                    .and_then(|t| t.format(&Rfc3339).ok())
                    .into();
                self.0.spool_entry(&Entry {
                    key,
                    op,
                    blob: Some(digest),
                    size: Some(prior.size),
                    fingerprint: Some(fp),
                    item: Some(record),
                })?;
                return Ok(Placement::AlreadyStored);
            }
        }
        p.pending.insert(h, fp);
        Ok(Placement::New(key))
    }

    async fn create(&self, item: &Item, path: &str) -> Result<Box<dyn ItemWriter>> {
        // A small item is gathered in memory and stored in one go at commit: a spool file
        // costs a file of its own and several trips to the blocking pool, which dominated
        // backups of many small files.
        let body = match item.size {
            Some(size) if size <= SMALL_BLOB as u64 => {
                Body::Memory(Vec::with_capacity(size as usize))
            }
            _ => {
                let (file, spool) = self.0.open_spool().await?;
                Body::Spool { file, spool }
            }
        };
        Ok(Box::new(BlobWriter {
            backup: self.0.clone(),
            key: path.to_string(),
            body: Some(body),
        }))
    }

    async fn record_skipped(&self, item: &Item, reason: &str) -> Result<()> {
        // Items without content: an entry with no blob, when new or changed.
        let fp = fingerprint(item);
        let (key, h, op) = {
            let mut p = self.0.progress.lock().expect("progress");
            let (key, h) = unique_key(&mut p, item)?;
            if !self.0.options.full_listing {
                note_listed(&mut p, item, h);
            }
            let op = match p.known.get(&h).copied() {
                Some(k) if k.fingerprint == hash(&fp) => {
                    p.seen_known += 1;
                    p.counts.unchanged += 1;
                    return Ok(());
                }
                Some(_) => {
                    p.seen_known += 1;
                    Op::Change
                }
                None => Op::Add,
            };
            (key, h, op)
        };
        let _ = h;
        let mut record = item_record(item, None);
        record["skipped"] = reason.into();
        self.0.spool_entry(&Entry {
            key,
            op,
            blob: None,
            size: None,
            fingerprint: Some(fp),
            item: Some(record),
        })
    }

    async fn record_removed(&self, source: &ferry_core::SourceRef) -> Result<()> {
        let h = identity(
            &source.system,
            source.account.as_deref(),
            source.container.as_deref(),
            &source.id,
        );
        self.0.progress.lock().expect("progress").removed.insert(h);
        Ok(())
    }

    async fn record_complete(
        &self,
        system: &str,
        account: Option<&str>,
        container: Option<&str>,
    ) -> Result<()> {
        let h = container_identity(system, account, container);
        self.0.progress.lock().expect("progress").complete.insert(h);
        Ok(())
    }

    async fn record_failure(&self, failure: &Failure) -> Result<()> {
        let mut p = self.0.progress.lock().expect("progress");
        match &failure.source {
            None => p.listing_failed = true,
            // An item not read keeps its earlier keys, even when listed at a new one.
            Some(s) if !self.0.options.full_listing => {
                let ident = identity(
                    &s.system,
                    s.account.as_deref(),
                    s.container.as_deref(),
                    &s.id,
                );
                p.failed_ids.insert(ident);
            }
            Some(_) => {}
        }
        p.failures
            .push(serde_json::to_value(failure).unwrap_or(serde_json::Value::Null));
        Ok(())
    }
}

/// A failed write of content on its way into the repository, in one sentence.
fn spool_error(path: &std::path::Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        Error::fatal(format!(
            "{}: the disk is full; free space and run again (the repository stays as it was before this run)",
            path.display()
        ))
    } else {
        Error::fatal(format!("cannot write {}: {e}", path.display()))
    }
}

/// Items up to this size are gathered in memory instead of spooled to a file (at most this
/// much per transfer in flight).
const SMALL_BLOB: usize = 64 << 10;

impl Backup {
    /// A new spool file: next to the repository when it is a folder (then the blob is a rename
    /// away), else in the work folder.
    async fn open_spool(&self) -> Result<(Offloaded<WritebackFile>, PathBuf)> {
        let spool = match self.repo.store().local_path("tmp") {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::fatal(format!("cannot create {}: {e}", dir.display())))?;
                dir.join(format!(
                    "{}-{}.blob",
                    std::process::id(),
                    self.repo
                        .work_file("x")
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ))
            }
            None => self.repo.work_file("blob"),
        };
        let file = tokio::fs::File::create(&spool)
            .await
            .map_err(|e| spool_error(&spool, e))?
            .into_std()
            .await;
        Ok((Offloaded::Idle(WritebackFile::new(file)), spool))
    }
}

/// Where an item's bytes wait for its commit.
enum Body {
    /// A small item, in memory (at most [`SMALL_BLOB`] bytes).
    Memory(Vec<u8>),
    /// A spool file, written on the blocking pool one chunk behind; on its way to disk while
    /// it is spooled, so that the flush at commit has little left to do (see
    /// [`WritebackFile`]).
    Spool {
        file: Offloaded<WritebackFile>,
        spool: PathBuf,
    },
}

struct BlobWriter {
    backup: Arc<Backup>,
    key: String,
    /// `None` once committed or aborted.
    body: Option<Body>,
}

#[async_trait]
impl ItemWriter for BlobWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        match self.body.as_mut().expect("open until committed") {
            Body::Memory(buf) if buf.len() + chunk.len() <= SMALL_BLOB => {
                buf.extend_from_slice(&chunk);
                Ok(())
            }
            Body::Memory(buf) => {
                // Larger than listed: spooled from here on.
                let gathered = Bytes::from(std::mem::take(buf));
                let (mut file, spool) = self.backup.open_spool().await?;
                self.body = Some(Body::Spool {
                    file: Offloaded::Lost,
                    spool: spool.clone(),
                });
                for bytes in [gathered, chunk] {
                    file.write_all(bytes)
                        .await
                        .map_err(|e| spool_error(&spool, e))?;
                }
                self.body = Some(Body::Spool { file, spool });
                Ok(())
            }
            Body::Spool { file, spool } => file
                .write_all(chunk)
                .await
                .map_err(|e| spool_error(spool, e)),
        }
    }

    async fn commit(mut self: Box<Self>, item: &Item, stored: StoredItem) -> Result<()> {
        let body = self.body.take().expect("open until committed");
        let backup = &self.backup;
        let digest = stored
            .digests
            .get(&DigestAlgorithm::Sha256)
            .cloned()
            .ok_or_else(|| Error::fatal("internal error: no SHA-256 of the content"))?;
        let raw = blob_bytes(&digest).ok_or_else(|| Error::fatal("internal error: bad digest"))?;
        let store = backup.repo.store();
        let key = blob_key(&digest);
        let known = || {
            backup
                .progress
                .lock()
                .expect("progress")
                .known_blobs
                .contains(&raw)
        };
        let stored_now = match body {
            // Written whole under a temporary name, flushed and renamed into place, unless the
            // repository has it.
            Body::Memory(buf) => !known() && store.put_if_absent(&key, Bytes::from(buf)).await?,
            Body::Spool { file, spool } => {
                let removing = SpoolGuard(Some(spool));
                let f = file
                    .into_inner()
                    .await
                    .map_err(|e| spool_error(removing.path(), e))?;
                tokio::task::spawn_blocking(move || f.finish().sync_all())
                    .await
                    .map_err(|e| Error::fatal(format!("flushing task failed: {e}")))?
                    .map_err(|e| spool_error(removing.path(), e))?;
                if known() || store.exists(&key).await? {
                    false
                } else {
                    // On an error the guard removes the spool file.
                    store.adopt_file(&key, removing.path()).await?;
                    removing.keep();
                    true
                }
            }
        };
        if stored_now {
            // Two items with the same new content can both get here at once; both writes
            // hold the same bytes, and the content is counted once.
            let mut p = backup.progress.lock().expect("progress");
            if p.known_blobs.insert(raw) {
                p.counts.blobs_written += 1;
                p.counts.bytes_written += stored.size;
            }
        }
        let h = hash(&self.key);
        let (op, fp) = {
            let mut p = backup.progress.lock().expect("progress");
            let fp = p.pending.remove(&h).unwrap_or_else(|| fingerprint(item));
            let op = if p.known.contains_key(&h) {
                Op::Change
            } else {
                Op::Add
            };
            (op, fp)
        };
        backup.spool_entry(&Entry {
            key: std::mem::take(&mut self.key),
            op,
            blob: Some(digest),
            size: Some(stored.size),
            fingerprint: Some(fp),
            item: Some(item_record(item, Some(&stored))),
        })
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(Body::Spool { file, spool }) = self.body.take() {
            drop(file);
            let _ = tokio::fs::remove_file(&spool).await;
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(Body::Spool { spool, .. }) = self.body.take() {
            let _ = std::fs::remove_file(&spool);
        }
    }
}

/// Removes a spool file when dropped, unless it was kept (moved into the repository).
struct SpoolGuard(Option<PathBuf>);

impl SpoolGuard {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("not kept yet")
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        if let Some(spool) = self.0.take() {
            let _ = std::fs::remove_file(spool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FolderStore;
    use ferry_core::SourceRef;

    fn item(id: &str, path: &[&str], size: u64, version: &str) -> Item {
        let mut i = Item::file(
            SourceRef {
                system: "m365".into(),
                account: Some("ann".into()),
                container: Some("drive1".into()),
                id: id.into(),
                version: Some(version.into()),
                original_name: None,
                original_path: None,
            },
            path.iter().map(|s| s.to_string()).collect(),
        );
        i.size = Some(size);
        i
    }

    /// One run of an incremental source listing `items` with `content` (an empty one cannot
    /// be read); the items the sink asked to read.
    async fn run(repo: &Arc<Repository>, items: &[(Item, &[u8])]) -> (StoredRun, Vec<String>) {
        run_of(repo, false, items).await
    }

    /// A backup of the test job into `repo`.
    async fn start(repo: &Arc<Repository>, full_listing: bool) -> Arc<Backup> {
        Backup::start(
            repo.clone(),
            BackupOptions {
                job: "job".into(),
                source: "test".into(),
                options: Default::default(),
                full_listing,
                moves: false,
            },
        )
        .await
        .unwrap()
    }

    async fn run_of(
        repo: &Arc<Repository>,
        full_listing: bool,
        items: &[(Item, &[u8])],
    ) -> (StoredRun, Vec<String>) {
        let backup = start(repo, full_listing).await;
        let sink = BackupSink(backup.clone());
        let mut read = Vec::new();
        for (item, content) in items {
            if let Placement::New(path) = sink.place(item).unwrap() {
                read.push(path.clone());
                if content.is_empty() {
                    let failure = Failure {
                        source: Some(item.source.clone()),
                        name: path,
                        stage: "download".into(),
                        error: "gone".into(),
                        attempts: 1,
                        at: OffsetDateTime::now_utc(),
                    };
                    sink.record_failure(&failure).await.unwrap();
                    continue;
                }
                let mut w = sink.create(item, &path).await.unwrap();
                w.write(Bytes::copy_from_slice(content)).await.unwrap();
                let stored = StoredItem {
                    path,
                    size: content.len() as u64,
                    digests: [(DigestAlgorithm::Sha256, crate::format::sha256_hex(content))].into(),
                    checks: Vec::new(),
                    retrieved_at: OffsetDateTime::now_utc(),
                };
                w.commit(item, stored).await.unwrap();
            }
        }
        let stored = backup
            .finish(&RunReport::start(), serde_json::Value::Null)
            .await
            .unwrap();
        (stored, read)
    }

    async fn state(repo: &Repository, run: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in repo.state(run).await.unwrap().entries {
            let e = e.unwrap();
            out.push((e.key, e.blob.unwrap_or_default()));
        }
        out
    }

    async fn repo(dir: &std::path::Path) -> Arc<Repository> {
        let store: Arc<dyn ObjectStore> = Arc::new(FolderStore::new(dir.join("repo")));
        Arc::new(
            Repository::open(store, &dir.join("work"), true)
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn small_items_are_gathered_in_memory_and_an_item_larger_than_listed_is_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let backup = start(&repo, false).await;
        let sink = BackupSink(backup.clone());
        let big: Vec<u8> = (0..SMALL_BLOB * 2 + 7).map(|i| (i % 251) as u8).collect();
        // (listed size, chunks): small; listed small but larger (spilled after a first chunk
        // gathered in memory); listed large.
        let cases: Vec<(u64, Vec<&[u8]>)> = vec![
            (5, vec![b"hello"]),
            (10, vec![&big[..10], &big[10..]]),
            (
                big.len() as u64,
                vec![&big[..SMALL_BLOB], &big[SMALL_BLOB..]],
            ),
        ];
        for (n, (size, chunks)) in cases.iter().enumerate() {
            let item = item(&format!("i{n}"), &[&format!("f{n}")], *size, "v1");
            let Placement::New(path) = sink.place(&item).unwrap() else {
                panic!("new item")
            };
            let mut w = sink.create(&item, &path).await.unwrap();
            let mut content = Vec::new();
            for c in chunks {
                w.write(Bytes::copy_from_slice(c)).await.unwrap();
                content.extend_from_slice(c);
            }
            let stored = StoredItem {
                path,
                size: content.len() as u64,
                digests: [(DigestAlgorithm::Sha256, crate::format::sha256_hex(&content))].into(),
                checks: Vec::new(),
                retrieved_at: OffsetDateTime::now_utc(),
            };
            w.commit(&item, stored).await.unwrap();
            let digest = crate::format::sha256_hex(&content);
            let blob = dir
                .path()
                .join("repo/blobs/sha256")
                .join(&digest[..2])
                .join(&digest);
            assert_eq!(std::fs::read(&blob).unwrap(), content, "case {n}");
        }
        backup
            .finish(&RunReport::start(), serde_json::Value::Null)
            .await
            .unwrap();
        let spools: Vec<_> = std::fs::read_dir(dir.path().join("repo/tmp"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(spools.is_empty(), "left behind: {spools:?}");
    }

    #[tokio::test]
    async fn a_full_listing_counts_its_state_without_reading_it_when_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
        let items = |changed: Option<usize>, skip: Option<usize>| -> Vec<(Item, &[u8])> {
            names
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != skip)
                .map(|(i, n)| {
                    let mut it = item(n, &["share", n], 2, "v1");
                    it.source.system = "fs".into();
                    if Some(i) == changed {
                        it.size = Some(3);
                        (it, b"new".as_slice())
                    } else {
                        (it, b"ab".as_slice())
                    }
                })
                .collect()
        };
        let (first, read) = run_of(&repo, true, &items(None, None)).await;
        assert_eq!(read.len(), 8);
        assert_eq!(first.record.counts.state_bytes, 16);
        let (second, read) = run_of(&repo, true, &items(None, None)).await;
        assert!(read.is_empty());
        let c = &second.record.counts;
        assert_eq!(
            (c.unchanged, c.removed, c.state_entries, c.state_bytes),
            (8, 0, 8, 16)
        );
        assert!(second.record.files.is_empty(), "{:?}", second.record.files);
        // One changed, one gone: counted from the checkpoint and the changes, not written.
        let (third, read) = run_of(&repo, true, &items(Some(2), Some(5))).await;
        assert_eq!(read, vec!["fs/share/f2"]);
        let c = &third.record.counts;
        assert_eq!(
            (c.changed, c.removed, c.state_entries, c.state_bytes),
            (1, 1, 7, 15)
        );
        assert!(!third.record.files.contains_key(STATE_FILE));
        assert_eq!(state(&repo, &third.record.id).await.len(), 7);
    }

    #[tokio::test]
    async fn a_checkpoint_due_when_nothing_changed_is_the_last_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let items = [(item("1", &["a"], 2, "v1"), b"ab".as_slice())];
        let (first, _) = run_of(&repo, true, &items).await;
        // One second apart: the job's runs wait for the next second's id.
        for _ in 1..CHECKPOINT_EVERY {
            let run = run_of(&repo, true, &items).await.0;
            assert!(run.record.files.is_empty());
        }
        let last = run_of(&repo, true, &items).await.0;
        assert_eq!(last.record.checkpoint.run, last.record.id);
        assert_eq!(
            last.record.files[STATE_FILE],
            first.record.files[STATE_FILE]
        );
        assert_eq!(last.record.counts.state_entries, 1);
        let a = std::fs::read(
            dir.path()
                .join(format!("repo/runs/{}/{STATE_FILE}", first.record.id)),
        );
        let b = std::fs::read(
            dir.path()
                .join(format!("repo/runs/{}/{STATE_FILE}", last.record.id)),
        );
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(state(&repo, &last.record.id).await.len(), 1);
    }

    #[tokio::test]
    async fn a_moved_item_leaves_its_old_key_and_keeps_its_blob() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let a = item("1", &["ann", "docs", "a.txt"], 5, "v1");
        let b = item("2", &["ann", "docs", "b.txt"], 3, "v1");
        let (first, read) = run(&repo, &[(a, b"alpha"), (b, b"bet")]).await;
        assert_eq!(read.len(), 2);
        let sha_a = crate::format::sha256_hex(b"alpha");
        let sha_b = crate::format::sha256_hex(b"bet");

        // A delta listing: a.txt renamed (same fingerprint), b.txt moved and changed.
        let a2 = item("1", &["ann", "archive", "a-old.txt"], 5, "v1");
        let b2 = item("2", &["ann", "archive", "b.txt"], 4, "v2");
        let (second, read) = run(&repo, &[(a2, b"alpha"), (b2, b"beta")]).await;
        assert_eq!(
            read,
            vec!["m365/ann/archive/b.txt"],
            "the renamed item is not read again"
        );
        assert_eq!(
            state(&repo, &second.record.id).await,
            vec![
                ("m365/ann/archive/a-old.txt".to_string(), sha_a.clone()),
                (
                    "m365/ann/archive/b.txt".to_string(),
                    crate::format::sha256_hex(b"beta")
                ),
            ]
        );
        let c = &second.record.counts;
        assert_eq!((c.added, c.changed, c.removed), (2, 0, 2));
        assert_eq!(c.blobs_written, 1);
        // The earlier run still restores the old keys.
        assert_eq!(
            state(&repo, &first.record.id).await,
            vec![
                ("m365/ann/docs/a.txt".to_string(), sha_a.clone()),
                ("m365/ann/docs/b.txt".to_string(), sha_b),
            ]
        );
        // The reused entry names its blob in its provenance record too.
        let mut st = repo.state(&second.record.id).await.unwrap();
        let e = st.entries.next().unwrap().unwrap();
        assert_eq!(e.size, Some(5));
        assert_eq!(e.item.unwrap()["digests"]["sha256"], sha_a.as_str());

        // A run that lists nothing moved removes nothing.
        let (third, read) = run(&repo, &[]).await;
        assert!(read.is_empty());
        assert_eq!(third.record.counts.removed, 0);
        assert_eq!(third.record.counts.state_entries, 2);

        // Two files of one name in one folder (Drive allows it): the second gets a twin key.
        // When only the second changes, a delta lists it alone — it keeps its twin key and the
        // first keeps the plain one.
        let t1 = item("7", &["ann", "twins", "notes.txt"], 2, "v1");
        let t2 = item("8", &["ann", "twins", "notes.txt"], 2, "v1");
        let (before, read) = run(&repo, &[(t1, b"t1"), (t2, b"t2")]).await;
        assert_eq!(read.len(), 2);
        let twin_keys: Vec<String> = state(&repo, &before.record.id)
            .await
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.contains("/twins/"))
            .collect();
        assert_eq!(twin_keys.len(), 2, "{twin_keys:?}");
        let t2 = item("8", &["ann", "twins", "notes.txt"], 3, "v2");
        let (after, read) = run(&repo, &[(t2, b"t2!")]).await;
        assert_eq!(read.len(), 1);
        let c = &after.record.counts;
        assert_eq!((c.added, c.changed, c.removed), (0, 1, 0), "{c:?}");
        let now = state(&repo, &after.record.id).await;
        let twins: Vec<_> = now.iter().filter(|(k, _)| k.contains("/twins/")).collect();
        assert_eq!(twins.len(), 2, "{now:?}");
        assert!(twins
            .iter()
            .any(|(k, sha)| k == "m365/ann/twins/notes.txt"
                && *sha == crate::format::sha256_hex(b"t1")));
        assert!(twins
            .iter()
            .any(|(k, sha)| k != "m365/ann/twins/notes.txt"
                && *sha == crate::format::sha256_hex(b"t2!")));

        // Moved again, but not read: its earlier key stays.
        let b3 = item("2", &["ann", "b.txt"], 2, "v3");
        let (fourth, read) = run(&repo, &[(b3, b"")]).await;
        assert_eq!(read, vec!["m365/ann/b.txt"]);
        assert_eq!(fourth.record.counts.removed, 0);
        assert_eq!(
            fourth.record.counts.state_entries, 4,
            "two files and two twins"
        );
    }
}
