//! The item model: one thing a connector found at the source, with its provenance.
//!
//! Every connector describes what it finds with the same [`Item`]; what is special to one
//! source (S3 storage class, a message's internetMessageId, a file's mode) goes under
//! [`Item::extra`] so the shape stays the same for archivists and scripts.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::hash::DigestAlgorithm;

/// Where an item came from, precisely enough to find it again at the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRef {
    /// The source system: `fs`, `s3`, `m365`, `google`, …
    pub system: String,
    /// The account, tenant user, bucket owner or host the item belongs to.
    pub account: Option<String>,
    /// The container inside the account: a folder root, bucket, mail folder, drive.
    pub container: Option<String>,
    /// The source's own identifier of the item (a path, key, message id, file id).
    pub id: String,
    /// The source's version identifier, if it has one.
    pub version: Option<String>,
    /// The item's name exactly as the source gives it.
    pub original_name: Option<String>,
    /// The item's path exactly as the source gives it.
    pub original_path: Option<String>,
}

/// What kind of thing an item is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ItemKind {
    /// Bytes to archive.
    File,
    /// A symbolic link: recorded with its target, never followed unless asked.
    Symlink {
        /// The link's target as stored in the link.
        target: String,
    },
    /// A folder with nothing in it, recorded so that it can be recreated.
    EmptyDirectory,
    /// Something that has no bytes to archive (a FIFO, socket or device; a delete marker).
    Other {
        /// What it is, in a word or two.
        what: String,
    },
}

/// A checksum the source itself states for an item's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceChecksum {
    /// How it was computed.
    pub algorithm: ChecksumAlgorithm,
    /// Its value as lowercase hex; for checksums over parts (S3 multipart ETags, composite
    /// checksums) followed by `-<number of parts>`.
    pub value: String,
    /// For checksums over parts: the size of every part but the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<u64>,
    /// True when the source is known to serve other bytes than it lists for some items
    /// (SharePoint adds metadata to Office files on download, so their listed size and
    /// quickXorHash describe bytes nobody can download). A mismatch is then recorded with both
    /// values and flagged, and the bytes served are kept, instead of failing the item.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub advisory: bool,
}

impl SourceChecksum {
    /// A whole-content checksum.
    pub fn new(algorithm: ChecksumAlgorithm, value: impl Into<String>) -> Self {
        SourceChecksum {
            algorithm,
            value: value.into().to_ascii_lowercase(),
            part_size: None,
            advisory: false,
        }
    }

    /// The same checksum, marked advisory (see [`SourceChecksum::advisory`]).
    pub fn advisory(mut self) -> Self {
        self.advisory = true;
        self
    }

    /// A checksum over parts of `part_size` bytes (the value ends in `-<parts>`).
    pub fn over_parts(
        algorithm: ChecksumAlgorithm,
        value: impl Into<String>,
        part_size: u64,
    ) -> Self {
        SourceChecksum {
            algorithm,
            value: value.into().to_ascii_lowercase(),
            part_size: Some(part_size),
            advisory: false,
        }
    }
}

/// Algorithms sources use for their checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ChecksumAlgorithm {
    /// MD5 (S3 single-part ETag, Drive md5Checksum). Over parts: the S3 multipart ETag, the
    /// MD5 of the concatenated part MD5s.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256 (Drive sha256Checksum, x-amz-checksum-sha256).
    Sha256,
    /// SHA-512.
    Sha512,
    /// CRC-32 (IEEE), as x-amz-checksum-crc32.
    Crc32,
    /// CRC-32C (Castagnoli), as x-amz-checksum-crc32c.
    Crc32c,
    /// CRC-64/NVME, as x-amz-checksum-crc64nvme.
    Crc64nvme,
    /// Microsoft's QuickXorHash (OneDrive for Business and SharePoint `quickXorHash`), as the
    /// hex of its 20 bytes (Graph states it in base64).
    #[serde(rename = "quickxor")]
    QuickXor,
}

impl ChecksumAlgorithm {
    /// The streaming digest that computes this checksum, when it is a plain digest.
    pub fn digest(self) -> Option<DigestAlgorithm> {
        match self {
            ChecksumAlgorithm::Md5 => Some(DigestAlgorithm::Md5),
            ChecksumAlgorithm::Sha1 => Some(DigestAlgorithm::Sha1),
            ChecksumAlgorithm::Sha256 => Some(DigestAlgorithm::Sha256),
            ChecksumAlgorithm::Sha512 => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }
}

/// One thing found at the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Provenance.
    pub source: SourceRef,
    /// File, link, empty folder, …
    #[serde(flatten)]
    pub kind: ItemKind,
    /// Where the item belongs in an archive, as path components below the source system,
    /// exactly as the source names them (the archive makes them safe). For `fs:/srv/share`,
    /// `share/reports/q1.pdf` is `["share", "reports", "q1.pdf"]`.
    pub path: Vec<String>,
    /// Size in bytes, if the source states it; a transfer of another length is an error.
    pub size: Option<u64>,
    /// Creation time at the source.
    #[serde(with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
    /// Last modification time at the source.
    #[serde(with = "time::serde::rfc3339::option")]
    pub modified: Option<OffsetDateTime>,
    /// Media type, if known.
    pub media_type: Option<String>,
    /// Checksums the source states, checked while the bytes stream in.
    pub source_checksums: Vec<SourceChecksum>,
    /// Source-specific metadata (file mode, storage class, message headers, …).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// A format conversion the source applied on the way out (a Google Doc exported as ODF):
    /// what it was, what it became and which source version was converted. `None` when the
    /// bytes are the source's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion: Option<serde_json::Value>,
}

impl Item {
    /// A file item with the given provenance and path; other fields empty.
    pub fn file(source: SourceRef, path: Vec<String>) -> Self {
        Item {
            source,
            kind: ItemKind::File,
            path,
            size: None,
            created: None,
            modified: None,
            media_type: None,
            source_checksums: Vec::new(),
            extra: serde_json::Map::new(),
            conversion: None,
        }
    }

    /// True when the item has bytes to archive.
    pub fn has_content(&self) -> bool {
        matches!(self.kind, ItemKind::File)
    }

    /// A short, human-readable name for logs and failure lists.
    pub fn display_name(&self) -> String {
        match &self.source.original_path {
            Some(p) => format!("{}:{}", self.source.system, p),
            None => format!("{}:{}", self.source.system, self.source.id),
        }
    }
}
