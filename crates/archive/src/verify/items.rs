//! `ferry/items.jsonl` against the manifests and the files: every record with a path names a
//! listed payload file with the same digests and size, and every payload file has exactly one
//! record. Records are read as loose JSON values, so a record from a newer or older ferry (or a
//! hand-edited one) is judged on the fields that matter here and nothing else.

use std::collections::{HashMap, HashSet};

use ferry_core::DigestAlgorithm;
use serde_json::Value;

use super::manifests::{Resolver, Tables};
use super::{Findings, ProblemKind};
use crate::reader::{BagReader, FileId};
use crate::record::ITEMS_JSONL;

/// Checks items.jsonl, if the bag has one. Returns the sizes records claim where they differ
/// from the file's size: whether that is the file's fault or the record's is only known after
/// hashing (see [`report_size_claims`]).
pub(super) fn check_items(
    reader: &BagReader,
    tables: &Tables,
    resolver: &mut Resolver<'_>,
    findings: &mut Findings,
) -> HashMap<FileId, u64> {
    let mut size_claims = HashMap::new();
    let records = match reader.item_records() {
        Ok(Some(records)) => records,
        Ok(None) => return size_claims,
        Err(e) => {
            findings.problem(
                ProblemKind::UnreadableTagFile,
                Some(ITEMS_JSONL),
                e.to_string(),
            );
            return size_claims;
        }
    };
    let payload = reader.ids_with_prefix("data/");
    // Records per payload file, saturating: "more than one" is all that matters.
    let mut seen = vec![0u8; payload.len()];
    let malformed = |findings: &mut Findings, line: usize, detail: String| {
        findings.problem(
            ProblemKind::MalformedItemsLine,
            Some(ITEMS_JSONL),
            format!("line {line}: {detail}"),
        );
    };
    for record in records {
        let (line, value) = match record {
            Ok(r) => r,
            Err(e) => {
                malformed(findings, e.line, e.detail);
                continue;
            }
        };
        let Value::Object(obj) = &value else {
            malformed(findings, line, "not a JSON object".into());
            continue;
        };
        let path = match obj.get("path") {
            None | Some(Value::Null) => continue,
            Some(Value::String(p)) => p.as_str(),
            Some(other) => {
                malformed(
                    findings,
                    line,
                    format!("\"path\" is {other}, not a string or null"),
                );
                continue;
            }
        };
        let size = match obj.get("size") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(s) => Some(s),
                None => {
                    malformed(findings, line, format!("\"size\" is {v}, not a byte count"));
                    continue;
                }
            },
        };
        let digests = match obj.get("digests") {
            None | Some(Value::Null) => None,
            Some(Value::Object(d)) => Some(d),
            Some(other) => {
                malformed(
                    findings,
                    line,
                    format!("\"digests\" is {other}, not an object"),
                );
                continue;
            }
        };

        let id = if path.starts_with("data/") {
            resolver
                .resolve_literal(path)
                .filter(|id| payload.contains(id))
        } else {
            None
        };
        let Some(id) = id else {
            if !tables.missing.contains_key(path) {
                // (A path the manifests list but the bag lacks is already reported missing.)
                findings.problem(
                    ProblemKind::ItemsUnknownPath,
                    Some(path),
                    format!("line {line} names {path:?}, which is neither in the bag nor in its payload manifests"),
                );
            }
            continue;
        };
        let slot = &mut seen[id - payload.start];
        *slot = slot.saturating_add(1);
        if tables.listed[id] == 0 {
            // In data/ but in no manifest: already an unlisted file, nothing to compare with.
            continue;
        }

        for (alg_name, digest) in digests.into_iter().flatten() {
            let Some(digest) = digest.as_str() else {
                malformed(
                    findings,
                    line,
                    format!("digest {alg_name:?} is not a string"),
                );
                continue;
            };
            // Algorithms without a payload manifest have nothing to be compared with.
            let Some(m) = alg_name
                .parse::<DigestAlgorithm>()
                .ok()
                .and_then(|alg| tables.payload_index(alg))
            else {
                continue;
            };
            let pm = &tables.payload[m];
            if tables.listed[id] & (1 << m) == 0 || tables.unusable.contains(&(m as u8, id)) {
                continue;
            }
            let expected = hex::encode(pm.digest(id));
            if !digest.eq_ignore_ascii_case(&expected) {
                findings.problem(
                    ProblemKind::ItemsMismatch,
                    Some(path),
                    format!(
                        "items.jsonl line {line} gives {alg_name} {digest}, {} gives {expected}",
                        pm.name
                    ),
                );
            }
        }
        if let Some(size) = size {
            if size != reader.size(id) {
                size_claims.insert(id, size);
            }
        }
    }
    for (i, count) in seen.into_iter().enumerate() {
        let id = payload.start + i;
        match count {
            1 => {}
            0 => findings.problem(
                ProblemKind::ItemsMissingRecord,
                Some(reader.path(id)),
                "payload file without a record in ferry/items.jsonl",
            ),
            _ => findings.problem(
                ProblemKind::ItemsDuplicateRecord,
                Some(reader.path(id)),
                "more than one record in ferry/items.jsonl names this file",
            ),
        }
    }
    size_claims
}

/// Reports the sizes items.jsonl claims that differ from the files. A file whose digest was
/// found wrong already says so (with the claimed size); one that hashed correctly means the
/// record is wrong; one not hashed (completeness-only) may be truncated.
pub(super) fn report_size_claims(
    reader: &BagReader,
    tables: &Tables,
    size_claims: &HashMap<FileId, u64>,
    mismatched: Option<&HashSet<FileId>>,
    findings: &mut Findings,
) {
    let mut claims: Vec<(FileId, u64)> = size_claims.iter().map(|(id, s)| (*id, *s)).collect();
    claims.sort_unstable();
    for (id, claimed) in claims {
        let path = reader.path(id);
        let actual = reader.size(id);
        match mismatched {
            Some(bad) if bad.contains(&id) => {}
            Some(_) if tables.listed[id] != 0 => findings.problem(
                ProblemKind::ItemsMismatch,
                Some(path),
                format!("items.jsonl records {claimed} bytes, but the file has {actual} bytes and matches its manifest digests"),
            ),
            _ => findings.problem(
                ProblemKind::SizeMismatch,
                Some(path),
                format!("the file has {actual} bytes, items.jsonl records {claimed} bytes: truncated or changed"),
            ),
        }
    }
}
