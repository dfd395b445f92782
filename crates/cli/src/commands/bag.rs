//! `ferry bag --repo … --run … --to BAG`: a repository run as a self-contained BagIt bag.

use anyhow::Result;

use super::exit;
use crate::cli::{BagArgs, Cli};

/// Writes the bag; returns the exit code.
pub async fn run(_cli: &Cli, args: &BagArgs) -> Result<i32> {
    let _ = args;
    anyhow::bail!("ferry bag is not built yet");
    #[allow(unreachable_code)]
    Ok(exit::OK)
}
