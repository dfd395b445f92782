//! `ferry verify`.
use crate::cli::{Cli, VerifyArgs};
use anyhow::Result;
/// Runs verify.
pub async fn run(_cli: &Cli, _args: &VerifyArgs) -> Result<i32> {
    anyhow::bail!("verify: not built yet")
}
