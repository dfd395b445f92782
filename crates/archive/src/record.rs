//! The provenance records ferry writes beside the payload: one `ferry/items.jsonl` line per item
//! and `ferry/run.json` per run. Their JSON Schemas are in `manifests/`.

use std::collections::BTreeMap;

use ferry_core::{ChecksumCheck, Digests, Item, ItemKind, SourceInfo, SourceRef, StoredItem};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where ferry's own tag files live inside a bag.
pub const ITEMS_JSONL: &str = "ferry/items.jsonl";
/// Items that could not be archived.
pub const FAILURES_JSONL: &str = "ferry/failures.jsonl";
/// The run record.
pub const RUN_JSON: &str = "ferry/run.json";

/// Version of the items.jsonl / run.json format; bumped on incompatible changes.
pub const RECORD_FORMAT: &str = "ferry-items/1";

/// One line of `ferry/items.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Payload path inside the bag (`data/…`), or `null` when the item has no stored bytes.
    pub path: Option<String>,
    /// Bytes stored.
    pub size: Option<u64>,
    /// Digests of the stored bytes, by algorithm name (the same as the payload manifests).
    pub digests: BTreeMap<String, String>,
    /// What the item is (`file`, `symlink`, `empty_directory`, `other`) and its particulars.
    #[serde(flatten)]
    pub kind: ItemKind,
    /// Why the item was recorded without bytes, when it was.
    pub skipped: Option<String>,
    /// Media type, if known.
    pub media_type: Option<String>,
    /// Where the item came from.
    pub source: SourceRef,
    /// The source's own checksums and whether the received bytes matched them.
    pub source_checksums: Vec<ChecksumCheck>,
    /// Created at the source.
    #[serde(with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
    /// Last modified at the source.
    #[serde(with = "time::serde::rfc3339::option")]
    pub modified: Option<OffsetDateTime>,
    /// When ferry finished reading it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub retrieved_at: Option<OffsetDateTime>,
    /// A format conversion applied on the way (e.g. Google Docs → ODF), `null` for none.
    pub conversion: Option<serde_json::Value>,
    /// Source-specific metadata.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ItemRecord {
    /// The record of an item stored in the payload.
    pub fn stored(item: &Item, stored: &StoredItem) -> Self {
        ItemRecord {
            path: Some(stored.path.clone()),
            size: Some(stored.size),
            digests: stored
                .digests
                .iter()
                .map(|(a, d)| (a.name().to_string(), d.clone()))
                .collect(),
            kind: item.kind.clone(),
            skipped: None,
            media_type: item.media_type.clone(),
            source: item.source.clone(),
            source_checksums: stored.checks.clone(),
            created: item.created,
            modified: item.modified,
            retrieved_at: Some(stored.retrieved_at),
            conversion: item.conversion.clone(),
            extra: item.extra.clone(),
        }
    }

    /// The record of an item stored in the payload, borrowed from the item: serialises exactly
    /// as [`ItemRecord::stored`] does, without copying the item first (one record is written
    /// per item, so for many small files the copy cost more than the serialising).
    pub fn stored_ref<'a>(item: &'a Item, stored: &'a StoredItem) -> StoredRecord<'a> {
        StoredRecord {
            path: Some(&stored.path),
            size: Some(stored.size),
            digests: DigestsByName(&stored.digests),
            kind: &item.kind,
            skipped: None,
            media_type: item.media_type.as_deref(),
            source: &item.source,
            source_checksums: &stored.checks,
            created: item.created,
            modified: item.modified,
            retrieved_at: Some(stored.retrieved_at),
            conversion: item.conversion.as_ref(),
            extra: &item.extra,
        }
    }

    /// The record of an item that has no bytes to store.
    pub fn skipped(item: &Item, reason: &str) -> Self {
        ItemRecord {
            path: None,
            size: item.size,
            digests: BTreeMap::new(),
            kind: item.kind.clone(),
            skipped: Some(reason.to_string()),
            media_type: item.media_type.clone(),
            source: item.source.clone(),
            source_checksums: Vec::new(),
            created: item.created,
            modified: item.modified,
            retrieved_at: Some(OffsetDateTime::now_utc()),
            conversion: item.conversion.clone(),
            extra: item.extra.clone(),
        }
    }
}

/// [`ItemRecord`] of a stored item, borrowed (see [`ItemRecord::stored_ref`]). The fields are
/// those of [`ItemRecord`], in the same order and with the same encodings.
#[derive(Serialize)]
pub struct StoredRecord<'a> {
    path: Option<&'a str>,
    size: Option<u64>,
    digests: DigestsByName<'a>,
    #[serde(flatten)]
    kind: &'a ItemKind,
    skipped: Option<&'a str>,
    media_type: Option<&'a str>,
    source: &'a SourceRef,
    source_checksums: &'a [ChecksumCheck],
    #[serde(serialize_with = "rfc3339_option::serialize")]
    created: Option<OffsetDateTime>,
    #[serde(serialize_with = "rfc3339_option::serialize")]
    modified: Option<OffsetDateTime>,
    #[serde(serialize_with = "rfc3339_option::serialize")]
    retrieved_at: Option<OffsetDateTime>,
    conversion: Option<&'a serde_json::Value>,
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

/// Digests as a map from algorithm name to value, names in order (as a `BTreeMap<String, _>`
/// of them would be).
pub(crate) struct DigestsByName<'a>(pub(crate) &'a Digests);

impl Serialize for DigestsByName<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let entries = self
            .0
            .iter()
            .map(|(alg, value)| (alg.name(), value.as_str()));
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        // Algorithms in their own order are mostly in name order too (md5, sha1, sha256,
        // sha512); this runs twice per item, so the sorted copy is made only when they are not.
        if entries.clone().is_sorted_by_key(|(name, _)| name) {
            for (name, value) in entries {
                map.serialize_entry(name, value)?;
            }
        } else {
            let mut sorted: Vec<(&str, &str)> = entries.collect();
            sorted.sort_unstable_by_key(|(name, _)| *name);
            for (name, value) in sorted {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// `time::serde::rfc3339::option`, formatted on the stack instead of into a new `String`: a
/// stored item's record has three times, and is serialised once per item.
mod rfc3339_option {
    use serde::ser::Error as _;
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: serde::Serializer>(
        value: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let Some(t) = value else {
            return serializer.serialize_none();
        };
        // The longest RFC 3339 time `time` writes ("-9999-12-31T23:59:59.999999999+23:59") is
        // 36 bytes.
        let mut buf = [0u8; 64];
        let mut out = &mut buf[..];
        t.format_into(&mut out, &Rfc3339)
            .map_err(S::Error::custom)?;
        // What was written is what the writer moved past: the count `format_into` returns
        // leaves out the "Z" after a fraction of a second (time 0.3).
        let written = 64 - out.len();
        let text = std::str::from_utf8(&buf[..written]).map_err(S::Error::custom)?;
        serializer.serialize_some(&text)
    }
}

/// `ferry/run.json`: what ran, when, with which options, and what came of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RECORD_FORMAT`].
    pub format: String,
    /// `ferry <version>`.
    pub tool: String,
    /// The command line's intent: `export`.
    pub command: String,
    /// The sources read.
    pub sources: Vec<SourceInfoRecord>,
    /// Options that shaped the archive (digests, concurrency, compression, …).
    pub options: serde_json::Map<String, serde_json::Value>,
    /// When the run (and any earlier interrupted attempts it resumed) started.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// When the bag was completed.
    #[serde(with = "time::serde::rfc3339")]
    pub finished: OffsetDateTime,
    /// How many attempts it took (1 + resumes).
    pub attempts: u32,
    /// Counts over all attempts.
    pub counts: RunCounts,
    /// Per-source totals: what the listing found against what was archived.
    pub totals: Vec<SourceTotals>,
    /// Whether every listed item was archived or deliberately skipped.
    pub complete: bool,
}

/// A source as recorded in run.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceInfoRecord {
    /// As the user named it.
    pub uri: String,
    /// `fs`, `s3`, …
    pub system: String,
    /// Connector and version.
    pub connector: String,
    /// Options that shaped the listing.
    pub options: serde_json::Map<String, serde_json::Value>,
    /// What the connector reported after the run: reconciliation against the source's own
    /// counts, cursors for the next incremental run.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl From<&SourceInfo> for SourceInfoRecord {
    fn from(info: &SourceInfo) -> Self {
        SourceInfoRecord {
            uri: info.uri.clone(),
            system: info.system.clone(),
            connector: info.connector.clone(),
            options: info.options.clone(),
            details: serde_json::Map::new(),
        }
    }
}

/// Item counts of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunCounts {
    /// Payload files in the bag.
    pub archived_items: u64,
    /// Payload bytes in the bag.
    pub archived_bytes: u64,
    /// Items recorded without bytes.
    pub skipped_items: u64,
    /// Items in `ferry/failures.jsonl`.
    pub failed_items: u64,
    /// Transfers retried.
    pub retries: u64,
}

/// Listing totals against archive totals for one source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceTotals {
    /// The source's URI.
    pub source: String,
    /// Items the listing found, all kinds (last attempt).
    pub listed_items: u64,
    /// Bytes the listing stated (last attempt).
    pub listed_bytes: u64,
    /// Items stored, over all attempts.
    pub archived_items: u64,
    /// Items recorded without bytes.
    pub skipped_items: u64,
    /// Items that failed.
    pub failed_items: u64,
    /// Skipped items by reason.
    pub skipped_reasons: BTreeMap<String, u64>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ferry_core::{ChecksumAlgorithm, DigestAlgorithm};

    /// An item with every field set, and what storing it gave.
    pub(crate) fn full_item() -> (Item, StoredItem) {
        let mut item = Item::file(
            SourceRef {
                system: "s3".into(),
                account: Some("acct".into()),
                container: Some("bucket".into()),
                id: "a/b \"quoted\".txt".into(),
                version: Some("v1".into()),
                original_name: Some("b \"quoted\".txt".into()),
                original_path: Some("a/b \"quoted\".txt".into()),
            },
            vec!["bucket".into(), "a".into(), "b.txt".into()],
        );
        item.kind = ItemKind::Symlink {
            target: "../x".into(),
        };
        item.size = Some(5);
        item.media_type = Some("text/plain".into());
        item.created = Some(OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap());
        item.modified =
            Some(OffsetDateTime::from_unix_timestamp_nanos(1_700_000_001_500_000_000).unwrap());
        item.conversion = Some(serde_json::json!({"from": "x", "to": "y"}));
        item.extra.insert("mode".into(), "644".into());
        item.extra
            .insert("tags".into(), serde_json::json!({"k": [1, 2]}));
        let mut digests = Digests::new();
        digests.insert(DigestAlgorithm::Sha512, "bb".into());
        digests.insert(DigestAlgorithm::Md5, "cc".into());
        digests.insert(DigestAlgorithm::Sha256, "aa".into());
        let stored = StoredItem {
            path: "data/s3/bucket/a/b.txt".into(),
            size: 5,
            digests,
            checks: vec![ChecksumCheck {
                algorithm: ChecksumAlgorithm::Md5,
                value: "cc".into(),
                verified: true,
                observed: None,
            }],
            retrieved_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        };
        (item, stored)
    }

    #[test]
    fn the_borrowed_stored_record_serialises_like_the_owned_one() {
        let (item, stored) = full_item();
        let owned = serde_json::to_string(&ItemRecord::stored(&item, &stored)).unwrap();
        let borrowed = serde_json::to_string(&ItemRecord::stored_ref(&item, &stored)).unwrap();
        assert_eq!(borrowed, owned);
        // And with the optional parts absent.
        let mut bare = item.clone();
        bare.kind = ItemKind::File;
        bare.media_type = None;
        bare.created = None;
        bare.conversion = None;
        bare.extra.clear();
        let owned = serde_json::to_string(&ItemRecord::stored(&bare, &stored)).unwrap();
        let borrowed = serde_json::to_string(&ItemRecord::stored_ref(&bare, &stored)).unwrap();
        assert_eq!(borrowed, owned);
        // Times with an offset and with every digit of a nanosecond, far from now.
        let mut far = item.clone();
        let offset = time::UtcOffset::from_hms(-9, -30, 0).unwrap();
        far.created = Some(
            OffsetDateTime::from_unix_timestamp_nanos(-2_000_000_000_123_456_789)
                .unwrap()
                .to_offset(offset),
        );
        far.modified =
            Some(OffsetDateTime::from_unix_timestamp_nanos(253_402_300_799_999_999_999).unwrap());
        let owned = serde_json::to_string(&ItemRecord::stored(&far, &stored)).unwrap();
        let borrowed = serde_json::to_string(&ItemRecord::stored_ref(&far, &stored)).unwrap();
        assert_eq!(borrowed, owned);
        assert!(borrowed.contains("-09:30"), "{borrowed}");
    }
}
