//! The repository's records, as `manifests/repository.md` specifies them: the repository file,
//! entries of a state or of a run's changes, the run record, and the names of things.

use ferry_core::{Item, StoredItem};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// `format` of `ferry-repository.json`.
pub const REPOSITORY_FORMAT: &str = "ferry-repository/1";
/// `format` of a run record.
pub const RUN_FORMAT: &str = "ferry-run/1";
/// The repository file's key.
pub const REPOSITORY_FILE: &str = "ferry-repository.json";
/// The state file of a checkpoint run.
pub const STATE_FILE: &str = "state.jsonl.gz";
/// The changes file of a run.
pub const CHANGES_FILE: &str = "changes.jsonl.gz";
/// The run record, written last.
pub const RUN_FILE: &str = "run.json";
/// Runs removed by prune, for the chain.
pub const PRUNED_FILE: &str = "pruned.jsonl";
/// Runs under legal hold.
pub const HOLDS_FILE: &str = "holds.json";

/// `ferry-repository.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepositoryInfo {
    /// [`REPOSITORY_FORMAT`].
    pub format: String,
    /// A random id, to tell repositories apart.
    pub id: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// The digest naming blobs: `sha256`.
    pub digest: String,
}

/// What an entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A new key (and every entry of a state).
    Add,
    /// New content or metadata for a key.
    Change,
    /// The key is gone from the source.
    Remove,
}

/// One line of a state or a changes file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The item's logical path ([`entry_key`]).
    pub key: String,
    /// What the entry does.
    pub op: Op,
    /// SHA-256 of the content; `None` for items without content and for removals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Bytes of the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// What the source said that tells the next run whether the item changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The provenance record (items.jsonl shape, `path: null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
}

impl Entry {
    /// A removal of `key`.
    pub fn removal(key: String) -> Entry {
        Entry {
            key,
            op: Op::Remove,
            blob: None,
            size: None,
            fingerprint: None,
            item: None,
        }
    }
}

/// The previous run of a job and the digest of its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLink {
    /// Its id.
    pub id: String,
    /// SHA-256 of its `run.json` bytes.
    pub sha256: String,
}

/// The checkpoint a run's state is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// The run holding `state.jsonl.gz`.
    pub run: String,
}

/// Digest, size and entry count of one of a run's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Entries (lines) in it.
    pub entries: u64,
}

/// What a run did, in numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    /// Items the source listed.
    pub listed: u64,
    /// New keys.
    pub added: u64,
    /// Keys with new content or metadata.
    pub changed: u64,
    /// Keys gone from the source.
    pub removed: u64,
    /// Keys the source listed unchanged (not read again).
    pub unchanged: u64,
    /// Items that could not be read (their earlier entry is kept).
    pub failed: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes written to the repository (blobs and run files).
    pub bytes_written: u64,
    /// Blobs written (content not stored before).
    pub blobs_written: u64,
    /// Items in the state after the run.
    pub state_entries: u64,
    /// Bytes of content in the state after the run.
    pub state_bytes: u64,
}

/// `runs/<id>/run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RUN_FORMAT`].
    pub format: String,
    /// The run id.
    pub id: String,
    /// The job.
    pub job: String,
    /// The source as the user named it (no secrets).
    pub source: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// When it finished.
    #[serde(with = "time::serde::rfc3339")]
    pub finished: OffsetDateTime,
    /// `completed` or `completed_with_failures`.
    pub status: String,
    /// ferry's version.
    pub ferry_version: String,
    /// Options that change what is listed or how (no secrets).
    pub options: serde_json::Map<String, Value>,
    /// The job's previous run, `None` for its first.
    pub previous: Option<RunLink>,
    /// Where this run's state is read from.
    pub checkpoint: CheckpointRef,
    /// The run's files by name ([`CHANGES_FILE`], [`STATE_FILE`]).
    pub files: std::collections::BTreeMap<String, FileInfo>,
    /// Counts.
    pub counts: RunCounts,
    /// Items that could not be read, or parts of the source that could not be listed.
    pub failures: Vec<Value>,
    /// What the source needs to list only what changed next time.
    pub cursors: Value,
    /// Notes (removals not computed because the listing was incomplete, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RunRecord {
    /// True when the run's state holds everything the source listed.
    pub fn complete(&self) -> bool {
        self.status == "completed"
    }
}

/// The key of a blob with SHA-256 `hex`: one level of 256 folders by its first two hex digits
/// (a second level would cost a 4 KiB folder per few blobs on most filesystems).
pub fn blob_key(hex: &str) -> String {
    format!("blobs/sha256/{}/{hex}", &hex[..2])
}

/// The key of one of a run's files.
pub fn run_file(run: &str, name: &str) -> String {
    format!("runs/{run}/{name}")
}

/// A run id: the UTC start time to the second, and the job.
pub fn run_id(started: OffsetDateTime, job: &str) -> String {
    let t = started.to_offset(time::UtcOffset::UTC);
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour][minute][second]Z");
    format!("{}-{}", t.format(&f).unwrap_or_default(), safe_job(job))
}

/// A job name as it appears in run ids: `A–Z a–z 0–9 . _ -`, others as `_`.
pub fn safe_job(job: &str) -> String {
    let s: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "backup".into()
    } else {
        s
    }
}

/// The job of a run id (what follows the time).
pub fn job_of(run: &str) -> &str {
    run.split_once("Z-").map_or(run, |(_, job)| job)
}

/// An item's logical path: the source system and its path components, joined with `/`; a `/`
/// or `%` inside a component is written `%2F` or `%25`, so components never run together.
pub fn entry_key(item: &Item) -> String {
    let mut key = item.source.system.clone();
    for c in &item.path {
        key.push('/');
        for ch in c.chars() {
            match ch {
                '/' => key.push_str("%2F"),
                '%' => key.push_str("%25"),
                _ => key.push(ch),
            }
        }
    }
    key
}

/// The path components of a key (undoing [`entry_key`]'s escapes).
pub fn key_components(key: &str) -> Vec<String> {
    key.split('/')
        .map(|c| c.replace("%2F", "/").replace("%25", "%"))
        .collect()
}

/// What the source said about an item as it was listed, compared by the next run to decide
/// whether to read it again: version, size, modification time and ETag, whichever the source
/// gives (fs: size and mtime; s3: version id, size, ETag; m365: changeKey or cTag; google: the
/// file's version and modifiedTime — messages never change).
pub fn fingerprint(item: &Item) -> String {
    let time = item
        .modified
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    // S3's ETag describes the content. OneDrive's eTag changes with any metadata (a rename,
    // a move), so drive items are compared by their cTag (the version) alone: a moved file
    // keeps its fingerprint and is not read again.
    let etag = match item.source.system.as_str() {
        "s3" => item
            .extra
            .get("etag")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        _ => "",
    };
    let to = item
        .conversion
        .as_ref()
        .and_then(|c| c.get("to"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!(
        "v={};size={};mtime={time};etag={etag};to={to}",
        item.source.version.as_deref().unwrap_or_default(),
        item.size.map(|s| s.to_string()).unwrap_or_default(),
    )
}

/// The provenance record of an item stored as a blob (items.jsonl shape, `path: null`).
pub fn item_record(item: &Item, stored: Option<&StoredItem>) -> Value {
    let mut v = serde_json::json!({
        "path": null,
        "size": stored.map(|s| s.size).or(item.size),
        "digests": stored.map(|s| s.digests.iter().map(|(a, d)| (a.name().to_string(), Value::String(d.clone()))).collect::<serde_json::Map<_, _>>()).unwrap_or_default(),
        "skipped": null,
        "media_type": item.media_type,
        "source": item.source,
        "source_checksums": stored.map(|s| serde_json::to_value(&s.checks).unwrap_or(Value::Null)).unwrap_or_else(|| Value::Array(Vec::new())),
        "created": item.created.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        "modified": item.modified.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        "retrieved_at": stored.and_then(|s| s.retrieved_at.format(&time::format_description::well_known::Rfc3339).ok()),
        "conversion": item.conversion,
        "extra": item.extra,
    });
    // The kind (`type` and its fields) the same way items.jsonl flattens it.
    if let Ok(Value::Object(kind)) = serde_json::to_value(&item.kind) {
        for (k, val) in kind {
            v[k] = val;
        }
    }
    v
}

/// SHA-256 of bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::SourceRef;

    #[test]
    fn keys_keep_component_boundaries_and_come_back() {
        let item = Item::file(
            SourceRef {
                system: "google".into(),
                account: None,
                container: None,
                id: "1".into(),
                version: None,
                original_name: None,
                original_path: None,
            },
            vec!["a".into(), "Q1/Q2 100%.pdf".into()],
        );
        let key = entry_key(&item);
        assert_eq!(key, "google/a/Q1%2FQ2 100%25.pdf");
        assert_eq!(key_components(&key), vec!["google", "a", "Q1/Q2 100%.pdf"]);
    }

    #[test]
    fn run_ids_sort_by_time_and_name_their_job() {
        let t = OffsetDateTime::from_unix_timestamp(1_764_295_200).unwrap();
        let id = run_id(t, "share files");
        assert_eq!(id, "2025-11-28T020000Z-share_files");
        assert_eq!(job_of(&id), "share_files");
        assert_eq!(
            blob_key(&"ab".repeat(32)),
            format!("blobs/sha256/ab/{}", "ab".repeat(32))
        );
    }
}
