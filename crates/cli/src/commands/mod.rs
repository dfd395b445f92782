//! One module per command.

pub mod backup;
pub mod backup_config;
pub mod bag;
pub mod demo;
pub mod export;
pub mod ls;
pub mod prune;
pub mod run;
pub mod sandbox;
pub mod verify;

/// Exit codes (documented in `ferry --help` and the README).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Finished, but items failed, or the bag is invalid or incomplete.
    pub const PROBLEMS: i32 = 1;
    /// Could not run.
    pub const ERROR: i32 = 2;
    /// Interrupted; rerun to resume.
    pub const INTERRUPTED: i32 = 130;
}
