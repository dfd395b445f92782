//! `ferry prune`: retention for a repository, and legal holds.
//!
//! Which runs stay: per job, the newest run of each of the last N days, ISO weeks, months and
//! years that have runs (as restic's `forget --keep-daily` …, periods in UTC), the job's newest
//! run, and every run under hold (`holds.json`). The others go, in steps that each leave a
//! valid repository, so a prune killed at any moment is safe and the next prune finishes it:
//!
//! 1. every kept run whose state would be read through a removed run gets its own full state:
//!    `runs/<K>/checkpoint.json` (what the state file will be: digest, size, entries) first,
//!    then `runs/<K>/state.jsonl.gz`. Run records are never rewritten — their digests are the
//!    chain;
//! 2. the removed runs are appended to `pruned.jsonl` (id, record digest and `previous` link),
//!    so the chain can be followed across the gap;
//! 3. the removed runs are deleted: their `run.json` first, newest first (a run without its
//!    record is no run; every run still recorded keeps the older runs it is read through),
//!    then the rest of their folders;
//! 4. the contents no kept run's state refers to are deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use ferry_core::{Error, ObjectStore, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::entries::EntryWriter;
use crate::format::{
    job_of, run_file, FileInfo, RunLink, HOLDS_FILE, PRUNED_FILE, RUN_FILE, STATE_FILE,
};
use crate::lock::RepoLock;
use crate::repository::Repository;

/// The description of a state written by prune, beside it in the run's folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// `format` of [`CHECKPOINT_FILE`].
pub const CHECKPOINT_FORMAT: &str = "ferry-checkpoint/1";

/// The current time; a test can set it with `FERRY_FAKE_NOW` (RFC 3339), so runs can be made
/// on days that have not come yet — retention by day and week cannot be tested otherwise.
pub fn now() -> OffsetDateTime {
    std::env::var("FERRY_FAKE_NOW")
        .ok()
        .and_then(|s| {
            OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).ok()
        })
        .unwrap_or_else(OffsetDateTime::now_utc)
}

/// One line of `pruned.jsonl`: a run `ferry prune` removed, so the chain can be followed past it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedRun {
    /// Its id.
    pub id: String,
    /// Its job (as its record named it).
    pub job: String,
    /// SHA-256 of its `run.json` bytes (what the next run's `previous` link holds).
    pub sha256: String,
    /// Its own `previous` link.
    pub previous: Option<RunLink>,
    /// When prune removed it.
    #[serde(with = "time::serde::rfc3339")]
    pub removed_at: OffsetDateTime,
}

/// `holds.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    /// The runs under legal hold.
    pub holds: Vec<Hold>,
}

/// A run under legal hold: prune never removes it, nor anything its state refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The run id.
    pub run: String,
    /// Why (a case or journal number).
    pub reason: String,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// `runs/<id>/checkpoint.json`: a full state prune wrote into a kept run (its record, which is
/// never rewritten, does not list it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFile {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// The run.
    pub run: String,
    /// `prune`.
    pub written_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Digest, size and entries of the run's `state.jsonl.gz`.
    pub file: FileInfo,
}

/// `pruned.jsonl` (empty when absent).
pub async fn read_pruned(store: &dyn ObjectStore) -> Result<Vec<PrunedRun>> {
    if !store.exists(PRUNED_FILE).await? {
        return Ok(Vec::new());
    }
    let bytes = store.get_bytes(PRUNED_FILE, 256 << 20).await?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(serde_json::from_slice(line).map_err(|e| {
            Error::permanent(format!(
                "line {} of {PRUNED_FILE} is not a pruned run ({e}); restore the file from a copy, or run ferry verify",
                i + 1
            ))
        })?);
    }
    Ok(out)
}

/// `holds.json` (no holds when absent).
pub async fn read_holds(store: &dyn ObjectStore) -> Result<Holds> {
    if !store.exists(HOLDS_FILE).await? {
        return Ok(Holds::default());
    }
    let bytes = store.get_bytes(HOLDS_FILE, 64 << 20).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::permanent(format!(
            "{HOLDS_FILE} cannot be read ({e}); fix it by hand (`{{\"holds\": [{{\"run\", \"reason\", \"since\"}}]}}`) before pruning"
        ))
    })
}

/// A run's `checkpoint.json`, if it has one.
pub async fn read_checkpoint(store: &dyn ObjectStore, run: &str) -> Result<Option<CheckpointFile>> {
    let key = run_file(run, CHECKPOINT_FILE);
    if !store.exists(&key).await? {
        return Ok(None);
    }
    let bytes = store.get_bytes(&key, 1 << 20).await?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::permanent(format!("{key} cannot be read ({e})")))
}

/// How many periods of each kind to keep the newest run of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Days.
    pub daily: u32,
    /// ISO weeks.
    pub weekly: u32,
    /// Months.
    pub monthly: u32,
    /// Years.
    pub yearly: u32,
}

impl Policy {
    /// True when it keeps nothing by time (only the newest runs and holds would stay).
    pub fn is_empty(&self) -> bool {
        self.daily == 0 && self.weekly == 0 && self.monthly == 0 && self.yearly == 0
    }
}

/// What prune decides about one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The run id.
    pub run: String,
    /// Its job (as in run ids).
    pub job: String,
    /// Whether it stays.
    pub keep: bool,
    /// Why it stays: `newest`, `daily`, `weekly`, `monthly`, `yearly`, `hold`; why it goes
    /// when it was left by an interrupted prune: `finishing an interrupted prune`.
    pub reasons: Vec<String>,
}

/// Decides which of `runs` (id and start time) stay under `policy`, with `held` runs always
/// kept. Per job, newest first: a run is kept for a period kind when its period differs from
/// the last kept one's of that kind and that kind's count is not used up — so "the last N
/// days" are the last N days that have runs.
pub fn select(
    runs: &[(String, OffsetDateTime)],
    policy: &Policy,
    held: &HashSet<String>,
) -> Vec<Decision> {
    let mut by_job: BTreeMap<String, Vec<&(String, OffsetDateTime)>> = BTreeMap::new();
    for r in runs {
        by_job.entry(job_of(&r.0).to_string()).or_default().push(r);
    }
    let mut out = Vec::new();
    for (job, mut list) in by_job {
        list.sort_by(|a, b| b.0.cmp(&a.0));
        type Bucket = fn(OffsetDateTime) -> String;
        let day: Bucket = |t| format!("{}-{:03}", t.year(), t.ordinal());
        let week: Bucket = |t| {
            let (y, w, _) = t.to_iso_week_date();
            format!("{y}-W{w:02}")
        };
        let month: Bucket = |t| format!("{}-{:02}", t.year(), u8::from(t.month()));
        let year: Bucket = |t| t.year().to_string();
        let mut rules: Vec<(&str, u32, Bucket, Option<String>)> = vec![
            ("daily", policy.daily, day, None),
            ("weekly", policy.weekly, week, None),
            ("monthly", policy.monthly, month, None),
            ("yearly", policy.yearly, year, None),
        ];
        for (i, (id, started)) in list.into_iter().enumerate() {
            let t = started.to_offset(time::UtcOffset::UTC);
            let mut reasons = Vec::new();
            if i == 0 {
                reasons.push("newest".to_string());
            }
            for (name, left, bucket, last) in rules.iter_mut() {
                if *left == 0 {
                    continue;
                }
                let b = bucket(t);
                if last.as_deref() != Some(b.as_str()) {
                    *left -= 1;
                    *last = Some(b);
                    reasons.push(name.to_string());
                }
            }
            if held.contains(id) {
                reasons.push("hold".into());
            }
            out.push(Decision {
                run: id.clone(),
                job: job.clone(),
                keep: !reasons.is_empty(),
                reasons,
            });
        }
    }
    out.sort_by(|a, b| a.run.cmp(&b.run));
    out
}

/// What to do.
#[derive(Debug, Clone, Default)]
pub struct PruneRequest {
    /// The retention policy; empty: only change holds.
    pub policy: Policy,
    /// Runs to put under hold (ids, or `latest` / a date as `ferry restore --run` takes them).
    pub hold: Vec<String>,
    /// Why (required with `hold`).
    pub reason: Option<String>,
    /// Runs whose hold is lifted.
    pub release: Vec<String>,
    /// Say what would happen, change nothing.
    pub dry_run: bool,
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneSummary {
    /// The repository.
    pub repository: String,
    /// Nothing was changed.
    pub dry_run: bool,
    /// The policy applied (`None`: holds were changed only).
    pub policy: Option<Policy>,
    /// Every run and what became of it, oldest first.
    pub runs: Vec<Decision>,
    /// Runs kept.
    pub kept_runs: u64,
    /// Runs removed.
    pub removed_runs: u64,
    /// Kept runs given a full state because the runs their state was read through went.
    pub checkpoints: Vec<String>,
    /// Contents no kept run refers to, deleted.
    pub blobs_removed: u64,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Contents kept.
    pub blobs_kept: u64,
    /// Runs put under hold now.
    pub held: Vec<String>,
    /// Runs whose hold was lifted now.
    pub released: Vec<String>,
    /// Every hold after this prune.
    pub holds: Vec<Hold>,
    /// What an interrupted prune or run had left, cleared first.
    pub cleared: Vec<String>,
}

/// Test hook: `FERRY_PRUNE_STOP_AFTER=<step>` kills the process after that step, as `kill -9`
/// would, so tests can check that every step leaves a valid repository. Steps:
/// `checkpoint-description`, `checkpoint`, `checkpoints`, `pruned`, `run-record`, `runs`, `blob`.
fn stop_after(step: &str) {
    if std::env::var("FERRY_PRUNE_STOP_AFTER").is_ok_and(|s| s == step) {
        tracing::warn!("FERRY_PRUNE_STOP_AFTER={step}: stopping here");
        // SAFETY: kill on our own pid with SIGKILL has no preconditions; it does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Applies `req` to `repo`: holds first, then (with a policy) retention. Takes the repository's
/// lock unless it is a dry run.
pub async fn prune(repo: &Repository, req: &PruneRequest) -> Result<PruneSummary> {
    if !req.hold.is_empty() && req.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(Error::fatal(
            "a legal hold needs a reason: give it with --reason (a case or journal number)",
        ));
    }
    if req.policy.is_empty() && req.hold.is_empty() && req.release.is_empty() {
        return Err(Error::fatal(
            "give at least one --keep-… option (--keep-daily, --keep-weekly, --keep-monthly, --keep-yearly)",
        ));
    }
    let lock = if req.dry_run {
        None
    } else {
        Some(RepoLock::acquire(repo.store().clone(), "prune").await?)
    };
    let result = prune_locked(repo, req).await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    result
}

async fn prune_locked(repo: &Repository, req: &PruneRequest) -> Result<PruneSummary> {
    let store = repo.store().clone();
    let mut summary = PruneSummary {
        repository: store.uri(),
        dry_run: req.dry_run,
        policy: (!req.policy.is_empty()).then_some(req.policy),
        ..PruneSummary::default()
    };
    // Holds.
    let mut holds = read_holds(store.as_ref()).await?;
    let at = now();
    for spec in &req.hold {
        let run = repo.resolve(spec, None).await?.record.id;
        if let Some(h) = holds.holds.iter_mut().find(|h| h.run == run) {
            h.reason = req.reason.clone().unwrap_or_default();
        } else {
            holds.holds.push(Hold {
                run: run.clone(),
                reason: req.reason.clone().unwrap_or_default(),
                since: at,
            });
        }
        summary.held.push(run);
    }
    for spec in &req.release {
        // An exact id, or what `latest` or a date names among the runs.
        let run = if holds.holds.iter().any(|h| h.run == *spec) {
            spec.clone()
        } else {
            repo.resolve(spec, None).await?.record.id
        };
        let before = holds.holds.len();
        holds.holds.retain(|h| h.run != run);
        if holds.holds.len() == before {
            return Err(Error::fatal(format!(
                "run {run} is not under hold; the repository's {HOLDS_FILE} lists the runs that are"
            )));
        }
        summary.released.push(run);
    }
    if !req.dry_run && (!req.hold.is_empty() || !req.release.is_empty()) {
        holds.holds.sort_by(|a, b| a.run.cmp(&b.run));
        store
            .put_bytes(
                HOLDS_FILE,
                Bytes::from(serde_json::to_vec_pretty(&holds).expect("JSON")),
            )
            .await?;
    }
    summary.holds = holds.holds.clone();
    if req.policy.is_empty() {
        return Ok(summary);
    }
    let held: HashSet<String> = holds.holds.iter().map(|h| h.run.clone()).collect();

    // What an interrupted prune (or run) left: finish it first, so the plan sees a clean
    // repository.
    let pruned = read_pruned(store.as_ref()).await?;
    let pruned_ids: HashSet<String> = pruned.iter().map(|p| p.id.clone()).collect();
    let mut listing = RunListing::read(store.as_ref()).await?;
    let leftovers: Vec<String> = listing
        .complete
        .iter()
        .filter(|id| pruned_ids.contains(*id))
        .cloned()
        .collect();
    if !req.dry_run {
        delete_runs(store.as_ref(), &leftovers).await?;
        for id in &leftovers {
            summary
                .cleared
                .push(format!("run {id} (removed by an interrupted prune)"));
        }
        for dir in &listing.partial {
            for key in listing.files.get(dir).into_iter().flatten() {
                store.delete(key).await?;
            }
            summary
                .cleared
                .push(format!("runs/{dir}/ (a run or prune that was interrupted)"));
        }
        for id in &listing.complete {
            if listing.has(id, CHECKPOINT_FILE) && !listing.has(id, STATE_FILE) {
                store.delete(&run_file(id, CHECKPOINT_FILE)).await?;
                summary.cleared.push(format!(
                    "runs/{id}/{CHECKPOINT_FILE} (its state was never written)"
                ));
            }
        }
        listing = RunListing::read(store.as_ref()).await?;
    }

    // The plan.
    let mut runs = Vec::new();
    for id in listing
        .complete
        .iter()
        .filter(|id| !pruned_ids.contains(*id))
    {
        let stored = repo.run(id).await.map_err(|e| {
            Error::fatal(format!(
                "{e}; nothing was pruned — run ferry verify and repair the repository first"
            ))
        })?;
        runs.push((id.clone(), stored.record.started));
    }
    let mut decisions = select(&runs, &req.policy, &held);
    if req.dry_run {
        for id in &leftovers {
            decisions.push(Decision {
                run: id.clone(),
                job: job_of(id).to_string(),
                keep: false,
                reasons: vec!["finishing an interrupted prune".into()],
            });
        }
        decisions.sort_by(|a, b| a.run.cmp(&b.run));
    }
    let kept: BTreeSet<String> = decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.run.clone())
        .collect();
    let removed: Vec<String> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.run.clone())
        .collect();
    let removed_set: HashSet<&str> = removed.iter().map(String::as_str).collect();
    summary.kept_runs = kept.len() as u64;
    summary.removed_runs = removed.len() as u64;

    // 1. Full states for kept runs that would read through a removed run (oldest first: a
    // new state can spare a later run of the job its own).
    let mut with_state: HashSet<String> = listing
        .complete
        .iter()
        .filter(|id| listing.has(id, STATE_FILE))
        .cloned()
        .collect();
    for k in &kept {
        let chain = state_chain(&listing.complete, &with_state, k);
        if !chain.iter().any(|id| removed_set.contains(id.as_str())) {
            continue;
        }
        if chain.first().is_none_or(|c| !with_state.contains(c)) {
            return Err(Error::fatal(format!(
                "run {k} has no full state at or before it, so its state cannot be kept; nothing was pruned — run ferry verify"
            )));
        }
        if !req.dry_run {
            write_checkpoint(repo, k).await?;
        }
        with_state.insert(k.clone());
        summary.checkpoints.push(k.clone());
    }
    stop_after("checkpoints");

    // 2. The removed runs' links, for the chain.
    if !req.dry_run && !removed.is_empty() {
        let mut body = if store.exists(PRUNED_FILE).await? {
            store.get_bytes(PRUNED_FILE, 256 << 20).await?
        } else {
            Vec::new()
        };
        if body.last().is_some_and(|&b| b != b'\n') {
            body.push(b'\n');
        }
        for id in &removed {
            let stored = repo.run(id).await?;
            let line = PrunedRun {
                id: id.clone(),
                job: stored.record.job.clone(),
                sha256: stored.sha256.clone(),
                previous: stored.record.previous.clone(),
                removed_at: at,
            };
            body.extend(serde_json::to_vec(&line).expect("JSON"));
            body.push(b'\n');
        }
        store.put_bytes(PRUNED_FILE, Bytes::from(body)).await?;
        stop_after("pruned");

        // 3. The runs.
        delete_runs(store.as_ref(), &removed).await?;
        stop_after("runs");
    }

    // 4. Contents no kept run refers to.
    let mut referenced: HashSet<[u8; 32]> = HashSet::new();
    for k in &kept {
        let mut state = repo.state(k).await?;
        for e in state.entries.by_ref() {
            if let Some(b) = e?.blob.as_deref().and_then(blob_bytes) {
                referenced.insert(b);
            }
        }
    }
    let mut first = true;
    for o in store.list("blobs/").await? {
        let Some(b) = o.key.rsplit('/').next().and_then(blob_bytes) else {
            continue;
        };
        if referenced.contains(&b) {
            summary.blobs_kept += 1;
            continue;
        }
        if !req.dry_run {
            store.delete(&o.key).await?;
            if first {
                stop_after("blob");
                first = false;
            }
        }
        summary.blobs_removed += 1;
        summary.bytes_removed += o.size;
    }
    summary.runs = decisions;
    Ok(summary)
}

/// The objects under `runs/`, by run folder.
struct RunListing {
    /// Runs with a record, sorted.
    complete: Vec<String>,
    /// Run folders without a record.
    partial: Vec<String>,
    /// Every object key, by run folder.
    files: HashMap<String, Vec<String>>,
}

impl RunListing {
    async fn read(store: &dyn ObjectStore) -> Result<RunListing> {
        let mut files: HashMap<String, Vec<String>> = HashMap::new();
        for o in store.list("runs/").await? {
            if let Some((dir, _)) = o.key.strip_prefix("runs/").and_then(|r| r.split_once('/')) {
                files
                    .entry(dir.to_string())
                    .or_default()
                    .push(o.key.clone());
            }
        }
        let mut complete = Vec::new();
        let mut partial = Vec::new();
        for (dir, keys) in &files {
            if keys.iter().any(|k| *k == run_file(dir, RUN_FILE)) {
                complete.push(dir.clone());
            } else {
                partial.push(dir.clone());
            }
        }
        complete.sort();
        partial.sort();
        Ok(RunListing {
            complete,
            partial,
            files,
        })
    }

    fn has(&self, run: &str, name: &str) -> bool {
        let key = run_file(run, name);
        self.files.get(run).is_some_and(|keys| keys.contains(&key))
    }
}

/// The runs `run`'s state is read from, oldest first, as [`Repository::state_runs`] finds
/// them: the nearest run of its job at or before it with a state, then every later run of the
/// job up to it. Without a state, every run of the job up to it (the first is then stateless).
fn state_chain(ids: &[String], with_state: &HashSet<String>, run: &str) -> Vec<String> {
    let job = job_of(run);
    let mut chain = Vec::new();
    for id in ids
        .iter()
        .rev()
        .filter(|id| job_of(id) == job && id.as_str() <= run)
    {
        chain.push(id.clone());
        if with_state.contains(id) {
            break;
        }
    }
    chain.reverse();
    chain
}

/// Writes `run`'s state into its folder: the description first, then the state, so a state
/// file never exists without the digest it is checked against.
async fn write_checkpoint(repo: &Repository, run: &str) -> Result<()> {
    let path = repo.work_file(STATE_FILE);
    let mut writer = EntryWriter::create(&path)?;
    {
        let mut state = repo.state(run).await?;
        for e in state.entries.by_ref() {
            writer.write(&e?)?;
        }
    }
    let info = writer.finish()?;
    let description = CheckpointFile {
        format: CHECKPOINT_FORMAT.into(),
        run: run.to_string(),
        written_by: "prune".into(),
        at: now(),
        file: info,
    };
    let store = repo.store();
    store
        .put_bytes(
            &run_file(run, CHECKPOINT_FILE),
            Bytes::from(serde_json::to_vec_pretty(&description).expect("JSON")),
        )
        .await?;
    stop_after("checkpoint-description");
    if let Err(e) = store.adopt_file(&run_file(run, STATE_FILE), &path).await {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    stop_after("checkpoint");
    Ok(())
}

/// Deletes runs: first their records, newest first, then the rest of their folders.
///
/// Records first, because a run whose record stayed while its files went could be restored
/// wrong (a missing changes file reads as "no changes"); newest first, because then every run
/// still recorded has all the older runs its state is read through. What is left of a folder
/// without its record is cleared by the next backup or prune.
async fn delete_runs(store: &dyn ObjectStore, ids: &[String]) -> Result<()> {
    for (i, id) in ids.iter().rev().enumerate() {
        store.delete(&run_file(id, RUN_FILE)).await?;
        if i == 0 {
            stop_after("run-record");
        }
    }
    for id in ids {
        for o in store.list(&format!("runs/{id}/")).await? {
            store.delete(&o.key).await?;
        }
    }
    Ok(())
}

/// A blob name's 32 bytes (`None` for anything else).
pub fn blob_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    hex::decode(hex).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn runs(times: &[&str]) -> Vec<(String, OffsetDateTime)> {
        times
            .iter()
            .map(|s| {
                let t = t(s);
                (crate::format::run_id(t, "job"), t)
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<String> {
        d.iter()
            .filter(|d| d.keep)
            .map(|d| d.run[..10].to_string() + &d.run[10..17])
            .collect()
    }

    #[test]
    fn keep_daily_counts_days_that_have_runs_and_takes_each_days_newest() {
        let r = runs(&[
            "2026-01-01T02:00:00Z",
            "2026-01-02T02:00:00Z",
            "2026-01-04T02:00:00Z",
            "2026-01-04T14:00:00Z",
            "2026-01-06T02:00:00Z",
        ]);
        let policy = Policy {
            daily: 2,
            ..Policy::default()
        };
        let d = select(&r, &policy, &HashSet::new());
        assert_eq!(kept(&d), vec!["2026-01-04T140000", "2026-01-06T020000"]);
        assert_eq!(d[4].reasons, vec!["newest", "daily"]);
        // A hold keeps a run the policy would drop.
        let held: HashSet<String> = [r[1].0.clone()].into();
        let d = select(&r, &policy, &held);
        assert_eq!(
            kept(&d),
            vec![
                "2026-01-02T020000",
                "2026-01-04T140000",
                "2026-01-06T020000"
            ]
        );
        assert_eq!(d[1].reasons, vec!["hold"]);
    }

    #[test]
    fn weeks_are_iso_weeks_and_rules_combine() {
        // 2026-01-04 is a Sunday (ISO week 1); 2026-01-05 starts week 2.
        let r = runs(&[
            "2025-12-20T02:00:00Z",
            "2025-12-30T02:00:00Z",
            "2026-01-04T02:00:00Z",
            "2026-01-05T02:00:00Z",
            "2026-01-06T02:00:00Z",
        ]);
        let policy = Policy {
            weekly: 2,
            ..Policy::default()
        };
        let d = select(&r, &policy, &HashSet::new());
        assert_eq!(kept(&d), vec!["2026-01-04T020000", "2026-01-06T020000"]);
        let policy = Policy {
            daily: 1,
            monthly: 2,
            yearly: 3,
            ..Policy::default()
        };
        let d = select(&r, &policy, &HashSet::new());
        assert_eq!(
            kept(&d),
            vec!["2025-12-30T020000", "2026-01-06T020000"],
            "{d:?}"
        );
        assert_eq!(d[1].reasons, vec!["monthly", "yearly"]);
    }

    #[test]
    fn jobs_are_kept_apart() {
        let mut r = runs(&["2026-01-01T02:00:00Z", "2026-01-02T02:00:00Z"]);
        let t0 = t("2026-01-01T03:00:00Z");
        r.push((crate::format::run_id(t0, "other"), t0));
        let d = select(
            &r,
            &Policy {
                daily: 1,
                ..Policy::default()
            },
            &HashSet::new(),
        );
        let keep: Vec<(&str, bool)> = d.iter().map(|d| (d.job.as_str(), d.keep)).collect();
        assert_eq!(keep, vec![("job", false), ("other", true), ("job", true)]);
    }

    #[test]
    fn a_state_chain_stops_at_the_nearest_state() {
        let ids: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| format!("2026-01-0{}T000000Z-job", s.as_bytes()[0] - b'a' + 1))
            .collect();
        let with: HashSet<String> = [ids[0].clone(), ids[2].clone()].into();
        assert_eq!(state_chain(&ids, &with, &ids[1]), ids[..2].to_vec());
        assert_eq!(state_chain(&ids, &with, &ids[3]), ids[2..].to_vec());
    }
}
