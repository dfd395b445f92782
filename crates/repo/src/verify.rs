//! `ferry verify REPO`: everything a repository holds, checked against the digests it records.
//!
//! - the repository file;
//! - every run record parses and names itself;
//! - each run's `changes.jsonl.gz` and `state.jsonl.gz` against the digest, size and entry
//!   count its record lists — or, for a state `ferry prune` wrote, its `checkpoint.json` — and
//!   every entry in them parses, in key order;
//! - each run's state can be read from the checkpoint its record names (or a later one prune
//!   wrote);
//! - the chain, per job: each run's `previous` link must name the job's preceding run with the
//!   SHA-256 of that run's `run.json` bytes, or a run in `pruned.jsonl` with that digest (the
//!   walk then continues at the pruned run's own `previous`). A run gone without a
//!   `pruned.jsonl` line, or a record whose digest no longer matches, is reported by name;
//! - every content a run's files refer to exists; every content (or a random share, with a
//!   sample) is hashed again and compared with its name — a few at a time, streamed, so memory
//!   does not grow with their size;
//! - as information, not problems: contents nobody refers to, folders of runs that never
//!   finished, runs an interrupted prune left, the lock.
//!
//! What the chain cannot show: the newest run of a job removed or edited (nothing links to
//! it), or an edit by someone who also rewrites the later records — the chain is evidence
//! against accidents and careless edits, not a signature.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use ferry_core::{Error, ObjectStore, Result};
use futures::StreamExt;
use serde::Serialize;
use sha2::Digest as _;

use crate::entries::EntryReader;
use crate::format::{
    job_of, run_file, FileInfo, Op, RunLink, RunRecord, CHANGES_FILE, HOLDS_FILE, PRUNED_FILE,
    REPOSITORY_FILE, REPOSITORY_FORMAT, RUN_FILE, RUN_FORMAT, STATE_FILE,
};
use crate::lock::LOCK_KEY;
use crate::prune::{blob_bytes, read_holds, read_pruned, CHECKPOINT_FILE, CHECKPOINT_FORMAT};
use crate::repository::Repository;

/// How much to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Hash only this percentage of the contents, chosen at random (at least one); `None`:
    /// all of them.
    pub sample_percent: Option<f64>,
    /// Contents hashed at once (0: one per core).
    pub threads: usize,
}

/// Parses a `--sample` value: `5%`, `0.5%` or `5`; more than 0, at most 100.
pub fn parse_sample(s: &str) -> Result<f64> {
    let n = s.trim().trim_end_matches('%').trim();
    match n.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(Error::fatal(format!(
            "--sample {s:?} is not a share of the contents; give a percentage above 0 and at most 100, such as 5%"
        ))),
    }
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every check made passed.
    Valid,
    /// Something is damaged, missing or changed.
    Invalid,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Valid => "VALID",
            Status::Invalid => "INVALID",
        })
    }
}

/// What a finding is about. Serialised (and displayed) as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// `ferry-repository.json` is not what this ferry reads.
    RepositoryFile,
    /// A `run.json` does not parse, or does not name itself.
    RunRecord,
    /// A run's changes or state file is missing, unreadable, or not what its record (or
    /// checkpoint description) says.
    RunFile,
    /// A run's state cannot be read as its record says.
    State,
    /// A run went without `ferry prune` (the next run's link names it, `pruned.jsonl` does not).
    RunRemoved,
    /// A run record changed after it was written (the next run's link holds another digest).
    RunChanged,
    /// The chain is broken otherwise (a run outside it, a wrong `pruned.jsonl` line).
    Chain,
    /// `pruned.jsonl` cannot be read.
    PrunedList,
    /// `holds.json` cannot be read, or names a run that is not there.
    Holds,
    /// A content a run refers to is missing.
    MissingBlob,
    /// A content's bytes do not hash to its name.
    DamagedBlob,
    /// A content cannot be read.
    UnreadableBlob,
    /// Information: a content no run refers to (left by an interrupted run or prune; the next
    /// prune removes it).
    UnreferencedBlob,
    /// Information: a run folder without a record (an interrupted or running backup, or a
    /// run an interrupted prune was removing).
    PartialRun,
    /// Information: a run an interrupted prune had listed in `pruned.jsonl` but not yet
    /// removed, or a checkpoint description whose state it had not yet written (the next
    /// prune finishes).
    InterruptedPrune,
    /// Information: an object ferry does not know.
    UnexpectedObject,
    /// Information: a backup or prune holds the lock (its work in progress may show above).
    Locked,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).unwrap_or_default();
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The object it concerns (`runs/<id>/run.json`, `blobs/sha256/…`).
    pub key: String,
    /// What is wrong, in words.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.kind, self.key, self.detail)
    }
}

/// Sizes and counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Runs with a record.
    pub runs: u64,
    /// Jobs.
    pub jobs: u64,
    /// Runs removed by prune (`pruned.jsonl`).
    pub pruned_runs: u64,
    /// Runs under hold.
    pub holds: u64,
    /// Changes and state files checked.
    pub run_files: u64,
    /// Entries in them.
    pub entries: u64,
    /// Contents stored.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Distinct contents the runs refer to.
    pub blobs_referenced: u64,
    /// Contents stored that no run refers to.
    pub blobs_unreferenced: u64,
    /// Their bytes.
    pub bytes_unreferenced: u64,
    /// Contents hashed again.
    pub blobs_hashed: u64,
    /// Bytes hashed again.
    pub bytes_hashed: u64,
}

/// At most this many findings of each severity are listed (all are counted).
pub const LISTED: usize = 1000;

/// The result of [`verify`]: `Serialize` gives the `--json` form, `Display` the human one.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The verdict.
    pub status: Status,
    /// The repository.
    pub repository: String,
    /// `repository` (a bag's report says `folder` or `zip`).
    pub storage: &'static str,
    /// The repository's id.
    pub id: String,
    /// The share of contents hashed, when sampled.
    pub sample_percent: Option<f64>,
    /// Sizes and counts.
    pub counts: Counts,
    /// Wall-clock time, in seconds.
    pub elapsed_seconds: f64,
    /// What makes the repository invalid (the first [`LISTED`]).
    pub problems: Vec<Problem>,
    /// How many problems there are in all.
    pub problem_count: u64,
    /// What is worth knowing but not wrong (the first [`LISTED`]).
    pub info: Vec<Problem>,
    /// How many in all.
    pub info_count: u64,
}

impl VerifyReport {
    fn problem(&mut self, kind: ProblemKind, key: impl Into<String>, detail: impl Into<String>) {
        self.problem_count += 1;
        if self.problems.len() < LISTED {
            self.problems.push(Problem {
                kind,
                key: key.into(),
                detail: detail.into(),
            });
        }
    }

    fn info(&mut self, kind: ProblemKind, key: impl Into<String>, detail: impl Into<String>) {
        self.info_count += 1;
        if self.info.len() < LISTED {
            self.info.push(Problem {
                kind,
                key: key.into(),
                detail: detail.into(),
            });
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "problem  {p}")?;
        }
        if self.problem_count > self.problems.len() as u64 {
            writeln!(
                f,
                "problem  … and {} more (--json lists the first {LISTED})",
                self.problem_count - self.problems.len() as u64
            )?;
        }
        for p in &self.info {
            writeln!(f, "info     {p}")?;
        }
        if self.info_count > self.info.len() as u64 {
            writeln!(
                f,
                "info     … and {} more",
                self.info_count - self.info.len() as u64
            )?;
        }
        let c = &self.counts;
        let hashed = match self.sample_percent {
            Some(p) => format!(
                "{} of {} contents hashed ({p}% sample, {} bytes)",
                c.blobs_hashed, c.blobs, c.bytes_hashed
            ),
            None => format!(
                "{} contents hashed ({} bytes)",
                c.blobs_hashed, c.bytes_hashed
            ),
        };
        write!(
            f,
            "{}: repository {} — {} runs of {} jobs ({} pruned), chain checked, {} run files ({} entries), {hashed}, {} unreferenced, in {:.1} s; {} problems, {} notes",
            self.status,
            self.repository,
            c.runs,
            c.jobs,
            c.pruned_runs,
            c.run_files,
            c.entries,
            c.blobs_unreferenced,
            self.elapsed_seconds,
            self.problem_count,
            self.info_count
        )
    }
}

/// A run as verify sees it.
struct RunSeen {
    id: String,
    /// SHA-256 of its `run.json` bytes.
    sha256: String,
    /// The record, when it parses.
    record: Option<RunRecord>,
}

/// Checks `repo`. An `Err` means the repository could not be read at all (a listing failed);
/// everything else is a finding in the report.
pub async fn verify(repo: &Repository, options: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    let store = repo.store().clone();
    let mut report = VerifyReport {
        status: Status::Valid,
        repository: store.uri(),
        storage: "repository",
        id: repo.info.id.clone(),
        sample_percent: options.sample_percent,
        counts: Counts::default(),
        elapsed_seconds: 0.0,
        problems: Vec::new(),
        problem_count: 0,
        info: Vec::new(),
        info_count: 0,
    };

    // The repository file (Repository::open read it; check what it promises).
    if repo.info.format != REPOSITORY_FORMAT || repo.info.digest != "sha256" {
        report.problem(
            ProblemKind::RepositoryFile,
            REPOSITORY_FILE,
            format!(
                "format {:?} with digest {:?}; this ferry writes {REPOSITORY_FORMAT} with sha256",
                repo.info.format, repo.info.digest
            ),
        );
    }
    if let Ok(bytes) = store.get_bytes(LOCK_KEY, 64 * 1024).await {
        let holder = serde_json::from_slice::<crate::lock::LockInfo>(&bytes)
            .map(|l| {
                format!(
                    "{} on {} (pid {}), last heartbeat {}",
                    l.run, l.host, l.pid, l.heartbeat
                )
            })
            .unwrap_or_else(|_| "an unreadable lock file".into());
        report.info(
            ProblemKind::Locked,
            LOCK_KEY,
            format!("held by {holder}; what it is writing may show as partial or unreferenced"),
        );
    }

    // pruned.jsonl and holds.json.
    let pruned = match read_pruned(store.as_ref()).await {
        Ok(p) => p,
        Err(e) => {
            report.problem(ProblemKind::PrunedList, PRUNED_FILE, e.to_string());
            Vec::new()
        }
    };
    report.counts.pruned_runs = pruned.len() as u64;
    let pruned_by_id: HashMap<&str, &crate::prune::PrunedRun> =
        pruned.iter().map(|p| (p.id.as_str(), p)).collect();
    let holds = match read_holds(store.as_ref()).await {
        Ok(h) => h.holds,
        Err(e) => {
            report.problem(ProblemKind::Holds, HOLDS_FILE, e.to_string());
            Vec::new()
        }
    };
    report.counts.holds = holds.len() as u64;

    // The run folders.
    let mut folders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in store.list("runs/").await? {
        match o.key.strip_prefix("runs/").and_then(|r| r.split_once('/')) {
            Some((dir, name)) => folders
                .entry(dir.to_string())
                .or_default()
                .push(name.to_string()),
            None => report.info(
                ProblemKind::UnexpectedObject,
                &o.key,
                "not in a run's folder",
            ),
        }
    }
    let mut runs: Vec<RunSeen> = Vec::new();
    // Runs an interrupted prune was removing: listed in pruned.jsonl, record still there.
    let mut leftovers: HashSet<String> = HashSet::new();
    for (dir, names) in &folders {
        if !names.iter().any(|n| n == RUN_FILE) {
            report.info(
                ProblemKind::PartialRun,
                format!("runs/{dir}/"),
                "a run folder without a record: what a backup or prune that was interrupted (or a backup that is running) left; the next backup or prune clears it",
            );
            continue;
        }
        let key = run_file(dir, RUN_FILE);
        let bytes = match store.get_bytes(&key, 64 << 20).await {
            Ok(b) => b,
            Err(e) => {
                report.problem(ProblemKind::RunRecord, &key, format!("cannot be read: {e}"));
                continue;
            }
        };
        let sha256 = crate::format::sha256_hex(&bytes);
        if let Some(p) = pruned_by_id.get(dir.as_str()) {
            leftovers.insert(dir.clone());
            if p.sha256 == sha256 {
                report.info(
                    ProblemKind::InterruptedPrune,
                    format!("runs/{dir}/"),
                    "removed by a prune that was interrupted (pruned.jsonl lists it); the next prune finishes removing it",
                );
            } else {
                report.problem(
                    ProblemKind::RunChanged,
                    &key,
                    format!("run {dir}'s record was changed after it was written (pruned.jsonl holds another digest)"),
                );
            }
            continue;
        }
        let record = match serde_json::from_slice::<RunRecord>(&bytes) {
            Ok(r) if r.id != *dir => {
                report.problem(
                    ProblemKind::RunRecord,
                    &key,
                    format!("the record names run {:?}, not its folder's {dir:?}", r.id),
                );
                None
            }
            Ok(r) if r.format != RUN_FORMAT => {
                report.problem(
                    ProblemKind::RunRecord,
                    &key,
                    format!("format {:?}, not {RUN_FORMAT}", r.format),
                );
                None
            }
            Ok(r) => Some(r),
            Err(e) => {
                report.problem(
                    ProblemKind::RunRecord,
                    &key,
                    format!("not a run record ({e})"),
                );
                None
            }
        };
        for name in names {
            if ![RUN_FILE, CHANGES_FILE, STATE_FILE, CHECKPOINT_FILE].contains(&name.as_str()) {
                report.info(
                    ProblemKind::UnexpectedObject,
                    run_file(dir, name),
                    "not a file ferry writes into a run's folder",
                );
            }
        }
        runs.push(RunSeen {
            id: dir.clone(),
            sha256,
            record,
        });
    }
    report.counts.runs = runs.len() as u64;
    let jobs: HashSet<&str> = runs.iter().map(|r| job_of(&r.id)).collect();
    report.counts.jobs = jobs.len() as u64;
    for h in &holds {
        if !runs.iter().any(|r| r.id == h.run) {
            report.problem(
                ProblemKind::Holds,
                HOLDS_FILE,
                format!("run {} is under hold but not in the repository", h.run),
            );
        }
    }

    // Each run's files; the contents they refer to (by the index of the first run that does).
    let mut referenced: HashMap<[u8; 32], u32> = HashMap::new();
    // Runs whose state file can be used (present; described by the record or a checkpoint).
    let mut with_state: HashMap<String, StateSource> = HashMap::new();
    for (i, run) in runs.iter().enumerate() {
        let names = &folders[&run.id];
        let has = |n: &str| names.iter().any(|x| x == n);
        let Some(record) = &run.record else {
            // Still count what its files refer to, so its contents are not called unreferenced.
            for name in [CHANGES_FILE, STATE_FILE] {
                if has(name) {
                    check_file(
                        repo,
                        &run.id,
                        name,
                        None,
                        i as u32,
                        &mut referenced,
                        &mut report,
                    )
                    .await;
                }
            }
            continue;
        };
        for name in [CHANGES_FILE, STATE_FILE] {
            let described = record.files.get(name);
            match (described, has(name)) {
                (Some(info), true) => {
                    check_file(
                        repo,
                        &run.id,
                        name,
                        Some(info),
                        i as u32,
                        &mut referenced,
                        &mut report,
                    )
                    .await;
                    if name == STATE_FILE {
                        with_state.insert(run.id.clone(), StateSource::Record);
                    }
                }
                (Some(_), false) => report.problem(
                    ProblemKind::RunFile,
                    run_file(&run.id, name),
                    format!("missing (run {}'s record lists it)", run.id),
                ),
                (None, true) if name == STATE_FILE => {
                    match crate::prune::read_checkpoint(store.as_ref(), &run.id).await {
                        Ok(Some(cp)) if cp.format == CHECKPOINT_FORMAT && cp.run == run.id => {
                            check_file(
                                repo,
                                &run.id,
                                name,
                                Some(&cp.file),
                                i as u32,
                                &mut referenced,
                                &mut report,
                            )
                            .await;
                            with_state.insert(run.id.clone(), StateSource::Checkpoint);
                        }
                        Ok(Some(_)) => report.problem(
                            ProblemKind::RunFile,
                            run_file(&run.id, CHECKPOINT_FILE),
                            "not a checkpoint description of this run",
                        ),
                        Ok(None) => {
                            report.problem(
                                ProblemKind::RunFile,
                                run_file(&run.id, name),
                                "neither the run's record nor a checkpoint.json describes this state, so it cannot be checked",
                            );
                            check_file(
                                repo,
                                &run.id,
                                name,
                                None,
                                i as u32,
                                &mut referenced,
                                &mut report,
                            )
                            .await;
                        }
                        Err(e) => report.problem(
                            ProblemKind::RunFile,
                            run_file(&run.id, CHECKPOINT_FILE),
                            e.to_string(),
                        ),
                    }
                }
                (None, true) => {
                    report.problem(
                        ProblemKind::RunFile,
                        run_file(&run.id, name),
                        "the run's record does not list this file",
                    );
                    check_file(
                        repo,
                        &run.id,
                        name,
                        None,
                        i as u32,
                        &mut referenced,
                        &mut report,
                    )
                    .await;
                }
                (None, false) => {}
            }
        }
        if has(CHECKPOINT_FILE) && !has(STATE_FILE) {
            report.info(
                ProblemKind::InterruptedPrune,
                run_file(&run.id, CHECKPOINT_FILE),
                "a prune was interrupted before it wrote the state this describes; the next prune clears it",
            );
        }
    }

    check_chain(&runs, &leftovers, &pruned_by_id, &mut report);
    check_state_sources(&runs, &leftovers, &with_state, &folders, &mut report);

    // The contents.
    report.counts.blobs_referenced = referenced.len() as u64;
    let mut present: Vec<(String, [u8; 32], u64)> = Vec::new();
    for o in store.list("blobs/").await? {
        let name = o.key.rsplit('/').next().unwrap_or_default();
        let parsed = blob_bytes(name).filter(|_| o.key == crate::format::blob_key(name));
        let Some(b) = parsed else {
            report.info(
                ProblemKind::UnexpectedObject,
                &o.key,
                "not named as a content is (blobs/sha256/ab/abcd…, lowercase)",
            );
            continue;
        };
        report.counts.blobs += 1;
        report.counts.blob_bytes += o.size;
        if referenced.remove(&b).is_none() {
            report.counts.blobs_unreferenced += 1;
            report.counts.bytes_unreferenced += o.size;
            report.info(
                ProblemKind::UnreferencedBlob,
                &o.key,
                "no run refers to it (left by an interrupted run or prune, or by a run removed by hand); the next prune removes it",
            );
        }
        present.push((o.key, b, o.size));
    }
    let mut missing: Vec<([u8; 32], u32)> = referenced.into_iter().collect();
    missing.sort();
    for (b, i) in missing {
        report.problem(
            ProblemKind::MissingBlob,
            crate::format::blob_key(&hex::encode(b)),
            format!("missing; run {} refers to it", runs[i as usize].id),
        );
    }

    // Hash them again (all, or a sample).
    let chosen: Vec<usize> = match options.sample_percent {
        Some(p) if !present.is_empty() => {
            let n = ((present.len() as f64 * p / 100.0).ceil() as usize).clamp(1, present.len());
            sample_indices(present.len(), n)
        }
        _ => (0..present.len()).collect(),
    };
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(4, usize::from)
    } else {
        options.threads
    };
    let mut results = futures::stream::iter(chosen.into_iter().map(|i| {
        let store = store.clone();
        let (key, want, _) = present[i].clone();
        async move {
            let got = hash_object(store, &key).await;
            (key, want, got)
        }
    }))
    .buffer_unordered(threads.max(1));
    while let Some((key, want, got)) = results.next().await {
        match got {
            Ok((digest, len)) => {
                report.counts.blobs_hashed += 1;
                report.counts.bytes_hashed += len;
                if digest != want {
                    report.problem(
                        ProblemKind::DamagedBlob,
                        &key,
                        format!(
                            "its bytes hash to {}, not to its name: the content is damaged",
                            hex::encode(digest)
                        ),
                    );
                }
            }
            Err(e) => report.problem(ProblemKind::UnreadableBlob, &key, e.to_string()),
        }
    }

    report.problems.sort_by(|a, b| a.key.cmp(&b.key));
    if report.problem_count > 0 {
        report.status = Status::Invalid;
    }
    report.elapsed_seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(report)
}

/// Where a run's state file is described.
enum StateSource {
    /// Its record lists it (the run wrote it).
    Record,
    /// `checkpoint.json` (prune wrote it).
    Checkpoint,
}

/// Checks one of a run's files against `info` (when given), reads every entry, and notes the
/// contents they refer to.
async fn check_file(
    repo: &Repository,
    run: &str,
    name: &str,
    info: Option<&FileInfo>,
    index: u32,
    referenced: &mut HashMap<[u8; 32], u32>,
    report: &mut VerifyReport,
) {
    let key = run_file(run, name);
    report.counts.run_files += 1;
    let local = match repo.local(&key).await {
        Ok(l) => l,
        Err(e) => {
            report.problem(ProblemKind::RunFile, &key, format!("cannot be read: {e}"));
            return;
        }
    };
    let path = local.path.clone();
    let key2 = key.clone();
    let state = name == STATE_FILE;
    // Hashing and decompressing are CPU work: off the async threads.
    let checked = tokio::task::spawn_blocking(move || read_entry_file(&path, &key2, state)).await;
    let checked = match checked {
        Ok(c) => c,
        Err(e) => {
            report.problem(ProblemKind::RunFile, &key, format!("check failed: {e}"));
            return;
        }
    };
    let (digest, size, entries, blobs, error) = match checked {
        Ok(c) => c,
        Err(e) => {
            report.problem(ProblemKind::RunFile, &key, e.to_string());
            return;
        }
    };
    report.counts.entries += entries;
    for b in blobs {
        referenced.entry(b).or_insert(index);
    }
    if let Some(info) = info {
        if digest != info.sha256 {
            report.problem(
                ProblemKind::RunFile,
                &key,
                format!(
                    "its SHA-256 is {digest}, not {} as recorded: the file was changed or damaged",
                    info.sha256
                ),
            );
        } else if size != info.size || entries != info.entries {
            report.problem(
                ProblemKind::RunFile,
                &key,
                format!(
                    "{size} bytes and {entries} entries, not {} and {} as recorded",
                    info.size, info.entries
                ),
            );
        }
    }
    if let Some(e) = error {
        report.problem(ProblemKind::RunFile, &key, e);
    }
}

type EntryFileCheck = (String, u64, u64, Vec<[u8; 32]>, Option<String>);

/// A local entry file's SHA-256 and size, its entries, the contents they refer to, and the
/// first thing wrong inside it.
fn read_entry_file(path: &std::path::Path, what: &str, state: bool) -> Result<EntryFileCheck> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::permanent(format!("cannot be read: {e}")))?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::permanent(format!("cannot be read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let digest = hex::encode(hasher.finalize());
    let mut entries = 0u64;
    let mut blobs = Vec::new();
    let mut error = None;
    let mut last: Option<String> = None;
    for e in EntryReader::open(path, what)? {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                error = Some(err.to_string());
                break;
            }
        };
        entries += 1;
        if last.as_ref().is_some_and(|l| e.key <= *l) {
            error.get_or_insert_with(|| {
                format!(
                    "entries are not in key order ({:?} comes after {:?})",
                    e.key,
                    last.as_deref().unwrap_or_default()
                )
            });
        }
        if state && e.op != Op::Add {
            error.get_or_insert_with(|| {
                format!(
                    "a state holds only additions, but {:?} is {:?}",
                    e.key, e.op
                )
            });
        }
        if let Some(b) = &e.blob {
            match blob_bytes(b) {
                Some(raw) => blobs.push(raw),
                None => {
                    error.get_or_insert_with(|| {
                        format!(
                            "{:?} names the content {b:?}, which is not a SHA-256",
                            e.key
                        )
                    });
                }
            }
        }
        last = Some(e.key);
    }
    Ok((digest, size, entries, blobs, error))
}

/// Follows each run's `previous` link back to the job's preceding run (across runs prune
/// removed) and reports where the chain breaks.
fn check_chain(
    runs: &[RunSeen],
    leftovers: &HashSet<String>,
    pruned: &HashMap<&str, &crate::prune::PrunedRun>,
    report: &mut VerifyReport,
) {
    let present: HashMap<&str, &RunSeen> = runs.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut by_job: BTreeMap<&str, Vec<&RunSeen>> = BTreeMap::new();
    for r in runs {
        by_job.entry(job_of(&r.id)).or_default().push(r);
    }
    for list in by_job.values() {
        for (i, run) in list.iter().enumerate() {
            let Some(record) = &run.record else { continue };
            let before = i.checked_sub(1).map(|j| list[j]);
            let key = run_file(&run.id, RUN_FILE);
            let mut link: Option<RunLink> = record.previous.clone();
            // Links must go back in time: that also ends the walk on a looping pruned.jsonl.
            let mut after = run.id.clone();
            loop {
                let Some(l) = link.take() else {
                    if let Some(b) = before {
                        report.problem(
                            ProblemKind::Chain,
                            run_file(&b.id, RUN_FILE),
                            format!(
                                "run {} is not in its job's chain: run {} (and the runs prune removed before it) lead back to the job's first run without it",
                                b.id, run.id
                            ),
                        );
                    }
                    break;
                };
                if l.id >= after {
                    report.problem(
                        ProblemKind::Chain,
                        &key,
                        format!("the chain back from run {} names run {} after run {after}, which does not come before it", run.id, l.id),
                    );
                    break;
                }
                after = l.id.clone();
                if let Some(b) = before.filter(|b| b.id == l.id) {
                    if b.sha256 != l.sha256 {
                        report.problem(
                            ProblemKind::RunChanged,
                            run_file(&b.id, RUN_FILE),
                            format!(
                                "run {}'s record was changed after it was written (run {} recorded its SHA-256 as {}, it is now {})",
                                b.id, run.id, l.sha256, b.sha256
                            ),
                        );
                    }
                    break;
                }
                if let Some(p) = pruned.get(l.id.as_str()) {
                    if p.sha256 != l.sha256 {
                        report.problem(
                            ProblemKind::Chain,
                            PRUNED_FILE,
                            format!(
                                "the line of run {} holds SHA-256 {}, but run {} recorded {}: pruned.jsonl or a record was edited",
                                l.id, p.sha256, run.id, l.sha256
                            ),
                        );
                        break;
                    }
                    link = p.previous.clone();
                    continue;
                }
                if leftovers.contains(&l.id) {
                    // Half removed by an interrupted prune but not in pruned.jsonl: cannot be.
                    break;
                }
                if let Some(other) = present.get(l.id.as_str()) {
                    report.problem(
                        ProblemKind::Chain,
                        &key,
                        format!(
                            "run {}'s previous link names run {} of another place in the chain{}",
                            run.id,
                            other.id,
                            before
                                .map(|b| format!(" (run {} comes between)", b.id))
                                .unwrap_or_default()
                        ),
                    );
                } else {
                    report.problem(
                        ProblemKind::RunRemoved,
                        run_file(&l.id, RUN_FILE),
                        format!(
                            "run {} was removed outside ferry prune (run {} links to it; pruned.jsonl does not list it)",
                            l.id, run.id
                        ),
                    );
                }
                break;
            }
        }
    }
}

/// Each run's state must be readable the way [`Repository::state_runs`] reads it: from the
/// nearest run of its job at or before it that holds a state — which must be the checkpoint
/// its record names, or a later one prune wrote.
fn check_state_sources(
    runs: &[RunSeen],
    leftovers: &HashSet<String>,
    with_state: &HashMap<String, StateSource>,
    folders: &BTreeMap<String, Vec<String>>,
    report: &mut VerifyReport,
) {
    // Repository::state_runs walks every run with a record, leftovers of a prune included.
    let mut ids: Vec<&str> = runs
        .iter()
        .map(|r| r.id.as_str())
        .chain(leftovers.iter().map(String::as_str))
        .collect();
    ids.sort();
    let has_state = |id: &str| {
        folders
            .get(id)
            .is_some_and(|names| names.iter().any(|n| n == STATE_FILE))
    };
    for run in runs {
        let Some(record) = &run.record else { continue };
        let job = job_of(&run.id);
        let base = ids
            .iter()
            .rev()
            .filter(|id| job_of(id) == job && **id <= run.id.as_str())
            .find(|id| has_state(id));
        let key = run_file(&run.id, RUN_FILE);
        let Some(base) = base else {
            report.problem(
                ProblemKind::State,
                &key,
                format!(
                    "run {}'s state cannot be read: no run of its job at or before it holds a full state (its record names {})",
                    run.id, record.checkpoint.run
                ),
            );
            continue;
        };
        let ok = *base == record.checkpoint.run
            || (matches!(with_state.get(*base), Some(StateSource::Checkpoint))
                && *base > record.checkpoint.run.as_str());
        if !ok {
            report.problem(
                ProblemKind::State,
                &key,
                format!(
                    "run {}'s state would be read from run {base}, but its record names run {} (whose state is gone)",
                    run.id, record.checkpoint.run
                ),
            );
        } else if leftovers.contains(*base) {
            report.problem(
                ProblemKind::State,
                &key,
                format!(
                    "run {}'s state is read from run {base}, which prune removed",
                    run.id
                ),
            );
        }
    }
}

/// `n` distinct indices below `len`, at random.
fn sample_indices(len: usize, n: usize) -> Vec<usize> {
    let mut seed = [0u8; 8];
    crate::repository::getrandom(&mut seed);
    let mut state = u64::from_le_bytes(seed);
    // splitmix64: plenty for choosing which contents to check.
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut idx: Vec<usize> = (0..len).collect();
    for i in 0..n {
        let j = i + (next() % (len - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx.sort_unstable();
    idx
}

/// SHA-256 and length of an object, streamed.
async fn hash_object(store: Arc<dyn ObjectStore>, key: &str) -> Result<([u8; 32], u64)> {
    if let Some(path) = store.local_path(key) {
        // A folder: read it on a blocking thread, in 1 MiB pieces.
        return tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = std::fs::File::open(&path)
                .map_err(|e| Error::permanent(format!("cannot be read: {e}")))?;
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut len = 0u64;
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| Error::permanent(format!("cannot be read: {e}")))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Ok((hasher.finalize().into(), len))
        })
        .await
        .map_err(|e| Error::fatal(format!("hashing task failed: {e}")))?;
    }
    let mut stream = store.read(key, 0).await?;
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        len += chunk.len() as u64;
    }
    Ok((hasher.finalize().into(), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_percentages_and_distinct() {
        assert_eq!(parse_sample("5%").unwrap(), 5.0);
        assert_eq!(parse_sample("0.5").unwrap(), 0.5);
        assert!(parse_sample("0%").is_err());
        assert!(parse_sample("101%").is_err());
        assert!(parse_sample("x").is_err());
        let s = sample_indices(100, 10);
        assert_eq!(s.len(), 10);
        let set: HashSet<usize> = s.iter().copied().collect();
        assert_eq!(set.len(), 10);
        assert!(s.iter().all(|&i| i < 100));
        assert_eq!(sample_indices(3, 3), vec![0, 1, 2]);
    }
}
