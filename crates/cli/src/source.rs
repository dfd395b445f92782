//! Turns a source argument (`fs:/srv/share`, a plain path, later `s3://…`) into a connector.

use std::sync::Arc;

use anyhow::{bail, Result};
use ferry_core::Connector;
use ferry_fs::{FsConnector, FsOptions};

use crate::cli::ExportArgs;

/// The connector for `args.source`.
pub fn connector_for(args: &ExportArgs) -> Result<Arc<dyn Connector>> {
    let source = args.source.as_str();
    if let Some(path) = source.strip_prefix("fs:") {
        if path.is_empty() {
            bail!("fs: needs a path, e.g. fs:/srv/share");
        }
        return Ok(Arc::new(FsConnector::new(
            path,
            FsOptions {
                follow_symlinks: args.follow_symlinks,
            },
        )));
    }
    if let Some((scheme, _)) = source.split_once(':') {
        let known_later = ["s3", "m365", "google", "imap"];
        if known_later.contains(&scheme.to_ascii_lowercase().as_str()) {
            bail!("{scheme}: sources are not in this version of ferry yet; this version exports fs: (local folders)");
        }
        // "C:" style or a path with a colon in it: treat as a path if it exists.
        if !std::path::Path::new(source).exists() {
            bail!(
                "unknown source {source:?}: use fs:/path/to/folder (or a plain path to a folder)"
            );
        }
    }
    Ok(Arc::new(FsConnector::new(
        source,
        FsOptions {
            follow_symlinks: args.follow_symlinks,
        },
    )))
}
