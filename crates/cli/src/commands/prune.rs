//! `ferry prune --repo …`: retention for a repository.

use anyhow::Result;

use super::exit;
use crate::cli::{Cli, PruneArgs};

/// Prunes; returns the exit code.
pub async fn run(_cli: &Cli, args: &PruneArgs) -> Result<i32> {
    let _ = args;
    anyhow::bail!("ferry prune is not built yet");
    #[allow(unreachable_code)]
    Ok(exit::OK)
}
