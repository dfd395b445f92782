//! `ferry demo`.
use crate::cli::{Cli, DemoArgs};
use anyhow::Result;
/// Runs demo.
pub async fn run(_cli: &Cli, _args: &DemoArgs) -> Result<i32> {
    anyhow::bail!("demo: not built yet")
}
