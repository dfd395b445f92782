//! `ferry ls`.
use crate::cli::{Cli, LsArgs};
use anyhow::Result;
/// Runs ls.
pub fn run(_cli: &Cli, _args: &LsArgs) -> Result<i32> {
    anyhow::bail!("ls: not built yet")
}
