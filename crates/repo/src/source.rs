//! A run's state read back as a source: [`RepoConnector`] lists the entries of a run (or those
//! globs select) as the items they were backed up as, and opens each from its blob — so the
//! pipeline and the bag writer turn a run into a self-contained BagIt bag (`ferry bag`) with
//! every item's original provenance, and every blob is checked against its name on the way.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_core::{
    listing_channel, ChecksumAlgorithm, ChecksumCheck, Connector, ContainerCounts, Error, Failure,
    Item, ItemKind, Listing, ListingStream, Opened, Result, SourceChecksum, SourceInfo, SourceRef,
};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::format::{blob_key, key_components, Entry};
use crate::repository::{Repository, StoredRun};
use crate::restore::Glob;

/// The `system` a repository reader names in a bag's run record (the items keep their own).
pub const SYSTEM: &str = "ferry-repository";

/// Entries waiting between the state reader and the pipeline: enough to keep the transfers
/// busy, few enough that memory does not grow with the state.
const LISTING_BUFFER: usize = 256;

/// A repository run's state as a source of items.
pub struct RepoConnector {
    repo: Arc<Repository>,
    run: StoredRun,
    globs: Vec<Glob>,
    patterns: Vec<String>,
}

impl RepoConnector {
    /// Reads `run` of `repo`; only entries whose key matches one of `patterns` (globs as for
    /// restore), or all when there are none.
    pub fn new(repo: Arc<Repository>, run: StoredRun, patterns: &[String]) -> RepoConnector {
        RepoConnector {
            repo,
            run,
            globs: patterns.iter().map(|p| Glob::new(p)).collect(),
            patterns: patterns.to_vec(),
        }
    }

    /// The run being read.
    pub fn run(&self) -> &StoredRun {
        &self.run
    }
}

#[async_trait]
impl Connector for RepoConnector {
    fn info(&self) -> SourceInfo {
        let r = &self.run.record;
        let mut options = Map::new();
        options.insert("repository".into(), self.repo.store().uri().into());
        options.insert("run".into(), r.id.clone().into());
        options.insert("job".into(), r.job.clone().into());
        options.insert("source".into(), r.source.clone().into());
        if !self.patterns.is_empty() {
            options.insert("paths".into(), self.patterns.clone().into());
        }
        SourceInfo {
            // The run in the URI: a rerun of the same `ferry bag` resumes, another run does not.
            uri: format!("{}#{}", self.repo.store().uri(), r.id),
            system: SYSTEM.into(),
            connector: format!("ferry-repo {}", env!("CARGO_PKG_VERSION")),
            options,
        }
    }

    fn list(&self) -> ListingStream<'_> {
        let (tx, stream) = listing_channel(LISTING_BUFFER);
        let repo = self.repo.clone();
        let run = self.run.record.id.clone();
        let globs = self.globs.clone();
        tokio::spawn(async move {
            let mut state = match repo.state(&run).await {
                Ok(state) => state,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            // The entries are read from gzip files: blocking work, kept off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                for entry in state.entries.by_ref() {
                    let listing = match entry {
                        // A state file that cannot be read stops the bag: it would be incomplete.
                        Err(e) => Err(e),
                        Ok(e) if !globs.is_empty() && !globs.iter().any(|g| g.matches(&e.key)) => {
                            continue
                        }
                        Ok(e) => Ok(match entry_item(&e) {
                            Ok(item) => Listing::Item(item),
                            Err(err) => Listing::Failed(Failure {
                                source: None,
                                name: e.key.clone(),
                                stage: "list".into(),
                                error: err.message().to_string(),
                                attempts: 1,
                                at: OffsetDateTime::now_utc(),
                            }),
                        }),
                    };
                    let stop = listing.is_err();
                    if tx.blocking_send(listing).is_err() || stop {
                        return;
                    }
                }
            })
            .await;
        });
        stream
    }

    async fn open(&self, item: &Item, offset: u64) -> Result<Opened> {
        let blob = blob_of(item).ok_or_else(|| {
            Error::permanent(format!(
                "{}: the repository holds no content for it",
                item.display_name()
            ))
        })?;
        let bytes = self.repo.store().read(&blob_key(blob), offset).await?;
        Ok(Opened::bytes(bytes))
    }

    fn resumable(&self) -> bool {
        true
    }

    fn run_details(
        &self,
        _outcomes: &BTreeMap<(String, String), ContainerCounts>,
    ) -> Map<String, Value> {
        let r = &self.run.record;
        let mut details = Map::new();
        details.insert(
            "repository_run".into(),
            json!({
                "repository": self.repo.store().uri(),
                "repository_id": self.repo.info.id,
                "run": r.id,
                "run_sha256": self.run.sha256,
                "job": r.job,
                "source": r.source,
                "started": r.started.format(&Rfc3339).ok(),
                "finished": r.finished.format(&Rfc3339).ok(),
                "status": r.status,
            }),
        );
        details
    }
}

/// The blob an item made by [`entry_item`] is read from: its SHA-256 source checksum.
fn blob_of(item: &Item) -> Option<&str> {
    item.source_checksums
        .iter()
        .find(|c| c.algorithm == ChecksumAlgorithm::Sha256 && !c.advisory && c.part_size.is_none())
        .map(|c| c.value.as_str())
}

/// The item an entry was backed up as, rebuilt from its provenance record: the same source
/// reference, kind, times, media type, metadata and conversion; its path from the key (less
/// the system, which the bag writer puts first); its size the blob's. Its checksums are the
/// blob's SHA-256 — so the pipeline checks every blob against its name — and the source's
/// own whole-content checksums that matched when it was backed up (checksums over parts
/// cannot be computed again without the part size, which the record does not keep; ones the
/// bytes did not match would only be flagged again).
pub fn entry_item(e: &Entry) -> Result<Item> {
    let bad = |what: &str| {
        Error::permanent(format!(
            "the repository entry {:?} has {what}; the repository may be damaged (ferry verify says more)",
            e.key
        ))
    };
    let record = e
        .item
        .as_ref()
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no provenance record"))?;
    let source: SourceRef =
        serde_json::from_value(record.get("source").cloned().unwrap_or_default())
            .map_err(|err| bad(&format!("an unreadable source reference ({err})")))?;
    // The kind is flattened into the record (`type` and its fields), as in items.jsonl.
    let mut kind = Map::new();
    for field in ["type", "target", "what"] {
        if let Some(v) = record.get(field) {
            kind.insert(field.into(), v.clone());
        }
    }
    let kind: ItemKind = serde_json::from_value(Value::Object(kind))
        .map_err(|err| bad(&format!("an unknown item type ({err})")))?;
    let time = |field: &str| -> Result<Option<OffsetDateTime>> {
        match record.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => OffsetDateTime::parse(s, &Rfc3339)
                .map(Some)
                .map_err(|_| bad(&format!("an unreadable {field} time {s:?}"))),
            Some(_) => Err(bad(&format!("an unreadable {field} time"))),
        }
    };
    let mut components = key_components(&e.key);
    if components.len() < 2 {
        return Err(bad("a key without a path"));
    }
    components.remove(0);
    let mut source_checksums = Vec::new();
    if kind == ItemKind::File {
        let blob = e
            .blob
            .as_deref()
            .ok_or_else(|| bad("no content although it is a file"))?;
        if blob.len() != 64 || !blob.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(&format!(
                "a content name {blob:?} that is not a SHA-256"
            )));
        }
        let checks: Vec<ChecksumCheck> = record
            .get("source_checksums")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        for c in checks {
            let whole = !c.value.contains('-');
            let duplicate = c.algorithm == ChecksumAlgorithm::Sha256;
            if c.verified && whole && !duplicate {
                source_checksums.push(SourceChecksum::new(c.algorithm, c.value));
            }
        }
        source_checksums.push(SourceChecksum::new(ChecksumAlgorithm::Sha256, blob));
    }
    let size = match kind {
        ItemKind::File => e.size,
        _ => record.get("size").and_then(Value::as_u64),
    };
    Ok(Item {
        source,
        kind,
        path: components,
        size,
        created: time("created")?,
        modified: time("modified")?,
        media_type: record
            .get("media_type")
            .and_then(Value::as_str)
            .map(str::to_string),
        source_checksums,
        extra: record
            .get("extra")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        conversion: record.get("conversion").filter(|c| !c.is_null()).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{entry_key, item_record, Op};

    fn sample() -> Item {
        let mut item = Item::file(
            SourceRef {
                system: "google".into(),
                account: Some("ola@example.no".into()),
                container: Some("My Drive".into()),
                id: "1abc".into(),
                version: Some("7".into()),
                original_name: Some("Q1/Q2 100%".into()),
                original_path: Some("Reports/Q1/Q2 100%".into()),
            },
            vec![
                "ola@example.no".into(),
                "Reports".into(),
                "Q1/Q2 100%.odt".into(),
            ],
        );
        item.size = Some(5);
        item.modified =
            Some(OffsetDateTime::parse("2026-11-27T08:14:03.123456789Z", &Rfc3339).unwrap());
        item.media_type = Some("application/vnd.oasis.opendocument.text".into());
        item.extra
            .insert("owners".into(), json!(["ola@example.no"]));
        item.conversion =
            Some(json!({"from": "application/vnd.google-apps.document", "to": "odt"}));
        item
    }

    #[test]
    fn an_entry_comes_back_as_the_item_it_was_backed_up_as() {
        let item = sample();
        let blob = "ab".repeat(32);
        let mut record = item_record(&item, None);
        record["source_checksums"] = json!([
            {"algorithm": "md5", "value": "0123456789abcdef0123456789abcdef", "verified": true},
            {"algorithm": "md5", "value": "0123456789abcdef0123456789abcdef-3", "verified": true},
            {"algorithm": "quickxor", "value": "00", "verified": false, "observed": "11"},
        ]);
        let e = Entry {
            key: entry_key(&item),
            op: Op::Add,
            blob: Some(blob.clone()),
            size: Some(5),
            fingerprint: None,
            item: Some(record),
        };
        let back = entry_item(&e).unwrap();
        assert_eq!(back.source, item.source);
        assert_eq!(back.path, item.path);
        assert_eq!(back.modified, item.modified);
        assert_eq!(back.extra, item.extra);
        assert_eq!(back.conversion, item.conversion);
        assert_eq!(back.media_type, item.media_type);
        assert_eq!(back.size, Some(5));
        assert_eq!(
            back.source_checksums,
            vec![
                SourceChecksum::new(ChecksumAlgorithm::Md5, "0123456789abcdef0123456789abcdef"),
                SourceChecksum::new(ChecksumAlgorithm::Sha256, blob.clone()),
            ]
        );
        assert_eq!(blob_of(&back), Some(blob.as_str()));
    }

    #[test]
    fn entries_without_content_keep_their_kind() {
        let mut item = sample();
        item.kind = ItemKind::Symlink {
            target: "../elsewhere".into(),
        };
        let mut record = item_record(&item, None);
        record["skipped"] = "symbolic link: recorded, not followed".into();
        let e = Entry {
            key: entry_key(&item),
            op: Op::Add,
            blob: None,
            size: None,
            fingerprint: None,
            item: Some(record),
        };
        let back = entry_item(&e).unwrap();
        assert_eq!(back.kind, item.kind);
        assert!(back.source_checksums.is_empty());
        // A file without content is damage, not a link.
        let mut file = e.clone();
        file.item.as_mut().unwrap()["type"] = "file".into();
        assert!(entry_item(&file).is_err());
    }
}
