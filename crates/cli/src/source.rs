//! Turns a source argument (`fs:/srv/share`, a plain path, later `s3://…`) into a connector.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use ferry_core::Connector;
use ferry_fs::{FsConnector, FsOptions};
use ferry_s3::{S3Connector, S3Location, S3Options};

use crate::cli::ExportArgs;

/// The connector for `args.source`.
pub fn connector_for(args: &ExportArgs) -> Result<Arc<dyn Connector>> {
    let source = args.source.as_str();
    if let Some(path) = source.strip_prefix("fs:") {
        if path.is_empty() {
            bail!("fs: needs a path, e.g. fs:/srv/share");
        }
        return fs_connector(Path::new(path), args);
    }
    if source.starts_with("s3://") {
        return s3_connector(args);
    }
    if let Some((scheme, _)) = source.split_once(':') {
        let known_later = ["m365", "google", "imap"];
        if known_later.contains(&scheme.to_ascii_lowercase().as_str()) {
            bail!("{scheme}: sources are not in this version of ferry yet; this version exports fs: (local folders)");
        }
        // A path with a colon in it: treat it as a path if it exists.
        if !Path::new(source).exists() {
            bail!(
                "unknown source {source:?}: use fs:/path/to/folder (or a plain path to a folder)"
            );
        }
    }
    fs_connector(Path::new(source), args)
}

/// An S3 connector from the `--endpoint-url`, `--region`, … options.
fn s3_connector(args: &ExportArgs) -> Result<Arc<dyn Connector>> {
    let s3 = &args.s3;
    let options = S3Options {
        endpoint_url: s3.endpoint_url.clone(),
        region: s3.region.clone(),
        profile: s3.profile.clone(),
        path_style: s3.addressing.as_deref().map(|a| a == "path"),
        no_sign_request: s3.no_sign_request,
        include: s3.include.clone(),
        exclude: s3.exclude.clone(),
        versions: s3.versions,
        tags: s3.tags,
        part_size: s3.part_size,
        parallel_parts: s3.parallel_parts.max(1),
        page_size: s3.page_size,
        retry: crate::commands::export::retry_policy(args),
        static_credentials: None,
    };
    Ok(Arc::new(S3Connector::new(
        S3Location::parse(&args.source)?,
        options,
    )?))
}

/// A folder connector, after making sure the bag will not be written inside the folder it
/// reads (the export would archive itself, forever).
fn fs_connector(root: &Path, args: &ExportArgs) -> Result<Arc<dyn Connector>> {
    if let (Ok(root), Some(dest)) = (root.canonicalize(), nearest_existing(&args.to)) {
        if root.is_dir() && dest.starts_with(&root) {
            bail!(
                "the destination {} is inside the source folder {}; choose a --to outside it",
                args.to.display(),
                root.display()
            );
        }
    }
    let options = FsOptions {
        follow_symlinks: args.follow_symlinks,
    };
    Ok(Arc::new(FsConnector::new(root, options)))
}

/// The canonical form of `path`, or of its nearest ancestor that exists.
fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    absolute.ancestors().find_map(|p| p.canonicalize().ok())
}
