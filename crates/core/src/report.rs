//! The outcome of a run: what was archived, what was skipped and why, what failed and why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::item::{ChecksumAlgorithm, SourceRef};

/// The result of checking one source-stated checksum against the bytes received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumCheck {
    /// The algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// What the source stated.
    pub value: String,
    /// Whether the received bytes matched it.
    pub verified: bool,
    /// What the received bytes gave, when they did not match an advisory checksum (the bytes
    /// were kept; see [`SourceChecksum::advisory`](crate::SourceChecksum::advisory)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
}

/// An item, or part of a listing, that could not be archived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// Which item, when the failure concerns one.
    pub source: Option<SourceRef>,
    /// A human-readable name of what failed (an item or a part of the source).
    pub name: String,
    /// The stage that failed: `list`, `download`, `check`, `write`.
    pub stage: String,
    /// Why, in one sentence.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When the last attempt failed.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An item that was deliberately not archived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// A human-readable name of the item.
    pub name: String,
    /// Why it was not archived.
    pub reason: String,
}

/// What happened to one item.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Stored in the archive, at this payload path, with this many bytes.
    Archived {
        /// Payload path inside the archive.
        path: String,
        /// Bytes stored.
        size: u64,
        /// Kept although a checksum the source states did not match (see
        /// [`PipelineOptions::keep_mismatched`](crate::PipelineOptions::keep_mismatched)).
        mismatched: bool,
    },
    /// Already stored by an earlier, interrupted attempt of the same export.
    AlreadyArchived,
    /// Recorded but not archived, with the reason.
    Skipped(String),
    /// Not archived because of an error.
    Failed(Box<Failure>),
}

/// Counts and reasons for a whole run; also the basis of `run.json` and `--json` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// When the run started.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished: Option<OffsetDateTime>,
    /// Items the listing found (all kinds).
    pub listed_items: u64,
    /// Bytes in the listed items whose size the source stated.
    pub listed_bytes: u64,
    /// Items stored in this run.
    pub archived_items: u64,
    /// Bytes stored in this run.
    pub archived_bytes: u64,
    /// Items found already stored by an earlier interrupted attempt (resume).
    pub resumed_items: u64,
    /// Bytes in those items.
    pub resumed_bytes: u64,
    /// Of the items stored, those kept although a checksum the source states did not match
    /// their bytes (two downloads agreed; each flagged in items.jsonl).
    #[serde(default)]
    pub mismatched_items: u64,
    /// Items recorded but not archived (links, special files, …).
    pub skipped_items: u64,
    /// Skipped items by reason.
    pub skipped_reasons: BTreeMap<String, u64>,
    /// Items (or parts of the listing) that failed.
    pub failed_items: u64,
    /// Transfers retried.
    pub retries: u64,
    /// The first failures (all of them are in the archive's failure list).
    pub failures: Vec<Failure>,
    /// Set when the run stopped early, with the reason.
    pub stopped: Option<String>,
    /// Item outcomes per (account, container), for connectors that reconcile what was archived
    /// with the source's own counts (a mail folder's totalItemCount).
    #[serde(skip)]
    pub containers: BTreeMap<(String, String), ContainerCounts>,
    /// What the connector reported after the listing (reconciliation, cursors for the next
    /// incremental run); recorded in run.json with the source.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub source_details: serde_json::Map<String, serde_json::Value>,
}

/// Outcomes of the items of one container (a mail folder, a drive, a bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCounts {
    /// Items listed.
    pub listed: u64,
    /// Items archived (in this run or an interrupted attempt it resumed).
    pub archived: u64,
    /// Items recorded without content.
    pub skipped: u64,
    /// Items that failed.
    pub failed: u64,
}

impl ContainerCounts {
    /// Counts one outcome.
    pub fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Archived { .. } | Outcome::AlreadyArchived => self.archived += 1,
            Outcome::Skipped(_) => self.skipped += 1,
            Outcome::Failed(_) => self.failed += 1,
        }
    }
}

/// How many failures a report keeps in memory; the archive's failure list has them all.
pub const REPORT_FAILURES_KEPT: usize = 100;

impl RunReport {
    /// An empty report for a run starting now.
    pub fn start() -> Self {
        RunReport {
            started: OffsetDateTime::now_utc(),
            finished: None,
            listed_items: 0,
            listed_bytes: 0,
            archived_items: 0,
            archived_bytes: 0,
            resumed_items: 0,
            resumed_bytes: 0,
            mismatched_items: 0,
            skipped_items: 0,
            skipped_reasons: BTreeMap::new(),
            failed_items: 0,
            retries: 0,
            failures: Vec::new(),
            stopped: None,
            containers: BTreeMap::new(),
            source_details: serde_json::Map::new(),
        }
    }

    /// Adds one item's outcome to the counts.
    pub fn add(&mut self, outcome: &Outcome, size_hint: Option<u64>) {
        match outcome {
            Outcome::Archived {
                size, mismatched, ..
            } => {
                self.archived_items += 1;
                self.archived_bytes += size;
                self.mismatched_items += u64::from(*mismatched);
            }
            Outcome::AlreadyArchived => {
                self.resumed_items += 1;
                self.resumed_bytes += size_hint.unwrap_or(0);
            }
            Outcome::Skipped(reason) => {
                self.skipped_items += 1;
                *self.skipped_reasons.entry(reason.clone()).or_default() += 1;
            }
            Outcome::Failed(f) => {
                self.failed_items += 1;
                if self.failures.len() < REPORT_FAILURES_KEPT {
                    self.failures.push((**f).clone());
                }
            }
        }
    }

    /// True when every listed item is in the archive or deliberately skipped.
    pub fn is_complete(&self) -> bool {
        self.failed_items == 0 && self.stopped.is_none()
    }
}
