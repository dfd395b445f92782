//! ferry's backup repository (`manifests/repository.md`): content stored once by its SHA-256,
//! each run's added, changed and removed items with full provenance, a full state now and
//! then, in a folder or an object store — readable with `ls`, `zcat`, `jq` and `sha256sum`.
//!
//! The data flow of a backup: [`backup::Backup::start`] takes the [`lock`], reads the job's
//! last state into a compact index; the pipeline feeds [`backup::BackupSink`], which answers
//! "already stored" for every item whose fingerprint did not change (so it is never read), and
//! stores new content as [`format::blob_key`] blobs; [`backup::Backup::finish`] writes the
//! run's changes, a state when due, and the run record last. [`restore`] and [`verify`] read
//! it back; [`prune`] applies retention.

pub mod backup;
pub mod entries;
pub mod folder;
pub mod format;
pub mod lock;
pub mod prune;
pub mod repository;
pub mod restore;
pub mod source;
pub mod verify;

pub use backup::{Backup, BackupOptions, BackupSink};
pub use folder::FolderStore;
pub use repository::{Repository, StoredRun};
