//! Turns a source argument (`fs:/srv/share`, a plain path, later `s3://…`) into a connector.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ferry_core::Connector;
use ferry_core::ObjectStore;
use ferry_fs::{FsConnector, FsOptions};
use ferry_s3::{ObjectLock, S3Connector, S3Location, S3Options, S3Store};

use crate::cli::{S3ConnectionArgs, SourceArgs, LARGE_CONCURRENCY};

/// The connector for `source`; `to` is where its items go (a bag or a repository: a path or
/// an `s3://` URI), so that a folder is never archived into itself. `since` is what the
/// source's previous backup run reported (its cursors), for sources that can list only what
/// changed.
pub fn connector_for(
    source: &str,
    args: &SourceArgs,
    to: &str,
    since: Option<serde_json::Value>,
) -> Result<Arc<dyn Connector>> {
    if let Some(path) = source.strip_prefix("fs:") {
        if path.is_empty() {
            bail!("fs: needs a path, e.g. fs:/srv/share");
        }
        return fs_connector(Path::new(path), args, to);
    }
    if source.starts_with("s3://") {
        return s3_connector(source, args);
    }
    if let Some(tenant) = source.strip_prefix("m365:") {
        return m365_connector(tenant, args, since);
    }
    if let Some(domain) = source.strip_prefix("google:") {
        return google_connector(domain, args, since);
    }
    if let Some((scheme, _)) = source.split_once(':') {
        let known_later = ["imap"];
        if known_later.contains(&scheme.to_ascii_lowercase().as_str()) {
            bail!("{scheme}: sources are not in this version of ferry yet; this version exports fs: (local folders), s3://, m365: and google:");
        }
        // A path with a colon in it: treat it as a path if it exists.
        if !Path::new(source).exists() {
            bail!(
                "unknown source {source:?}: use fs:/path/to/folder (or a plain path to a folder)"
            );
        }
    }
    fs_connector(Path::new(source), args, to)
}

/// S3 options for a connection (no listing options).
pub fn s3_options(conn: &S3ConnectionArgs, retry: ferry_core::RetryPolicy) -> S3Options {
    S3Options {
        endpoint_url: conn.endpoint_url.clone(),
        region: conn.region.clone(),
        profile: conn.profile.clone(),
        path_style: conn.addressing.as_deref().map(|a| a == "path"),
        no_sign_request: conn.no_sign_request,
        retry,
        ..S3Options::default()
    }
}

/// An S3 connector from the `--endpoint-url`, `--region`, … options.
fn s3_connector(source: &str, args: &SourceArgs) -> Result<Arc<dyn Connector>> {
    let s3 = &args.s3;
    let options = S3Options {
        include: args.include.clone(),
        exclude: args.exclude.clone(),
        versions: s3.versions,
        tags: s3.tags,
        part_size: s3.part_size,
        parallel_parts: s3.parallel_parts.max(1),
        page_size: s3.page_size,
        ..s3_options(&s3.conn, retry_policy(args))
    };
    Ok(Arc::new(S3Connector::new(
        S3Location::parse(source)?,
        options,
    )?))
}

/// The object store for `--to s3://…` or `ferry verify s3://…`.
pub fn s3_store(
    uri: &str,
    conn: &S3ConnectionArgs,
    retry: ferry_core::RetryPolicy,
    part_size: u64,
    lock: Option<ObjectLock>,
) -> Result<Arc<dyn ObjectStore>> {
    let options = S3Options {
        part_size: part_size.max(8 << 20),
        ..s3_options(conn, retry)
    };
    Ok(Arc::new(S3Store::new(
        S3Location::parse(uri)?,
        options,
        lock,
    )?))
}

/// The bag at `uri` in an object store, for reading (`ferry verify`, `ferry ls`), checked to
/// exist and be readable.
pub async fn s3_bag_to_read(uri: &str, conn: &S3ConnectionArgs) -> Result<Arc<dyn ObjectStore>> {
    let store = s3_store(uri, conn, ferry_core::RetryPolicy::default(), 8 << 20, None)?;
    store.check().await?;
    Ok(store)
}

/// A folder connector, after making sure the bag will not be written inside the folder it
/// reads (the export would archive itself, forever).
fn fs_connector(root: &Path, args: &SourceArgs, to: &str) -> Result<Arc<dyn Connector>> {
    let to_store = to.starts_with("s3://");
    if let (false, Ok(root), Some(dest)) = (
        to_store,
        root.canonicalize(),
        nearest_existing(Path::new(to)),
    ) {
        if root.is_dir() && dest.starts_with(&root) {
            bail!(
                "the destination {to} is inside the source folder {}; choose one outside it",
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

/// A Microsoft 365 connector from the `--client-id`, `--certificate`, … options.
fn m365_connector(
    tenant: &str,
    args: &SourceArgs,
    since: Option<serde_json::Value>,
) -> Result<Arc<dyn Connector>> {
    use ferry_m365::{
        Credential, Include, M365Connector, M365Options, SiteSelection, UserSelection,
    };
    let m = &args.m365;
    let tenant = tenant.trim().trim_matches('/');
    if tenant.is_empty() {
        bail!("m365: needs the tenant, e.g. m365:contoso.onmicrosoft.com (its primary domain or tenant id)");
    }
    let Some(client_id) = m.client_id.clone() else {
        bail!("m365: needs --client-id (the app registration's Application ID; or set FERRY_M365_CLIENT_ID)");
    };
    let credential = if let Some(path) = &m.certificate {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --certificate {}", path.display()))?;
        Credential::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("--certificate {}: {e}", path.display()))?
    } else if let Some(path) = &m.client_secret_file {
        let secret = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --client-secret-file {}", path.display()))?;
        Credential::Secret(secret.trim().to_string())
    } else {
        match std::env::var("FERRY_M365_CLIENT_SECRET") {
            Ok(s) if !s.trim().is_empty() => Credential::Secret(s.trim().to_string()),
            _ => bail!("m365: needs the app's credential: set FERRY_M365_CLIENT_SECRET, or give --client-secret-file FILE or --certificate app.pem"),
        }
    };
    let users = match args.users.trim() {
        "" | "all" => UserSelection::All,
        g if g.starts_with("group:") => UserSelection::Group(g["group:".len()..].to_string()),
        list => UserSelection::List(comma_list(list)),
    };
    let sites = match m.sites.trim() {
        "" | "all" => SiteSelection::All,
        list => SiteSelection::Urls(comma_list(list)),
    };
    let include = if args.include.is_empty() {
        Include::ALL
    } else {
        Include::parse(&args.include.join(",")).map_err(anyhow::Error::msg)?
    };
    if !args.exclude.is_empty() {
        bail!(
            "--exclude is for s3:// sources; for m365: choose with --include, --users and --sites"
        );
    }
    let options = M365Options {
        graph_endpoint: m.graph_endpoint.clone(),
        login_endpoint: m.login_endpoint.clone(),
        users,
        include,
        sites,
        include_recoverable: m.include_recoverable,
        mailbox_concurrency: m.mailbox_concurrency as usize,
        listing_concurrency: (args.concurrency_for("m365:") as usize / 2).clamp(2, 16),
        page_size: args.s3.page_size.map_or(100, |n| n as usize),
        retry: retry_policy(args),
        since,
        ..M365Options::new(tenant, &client_id)
    };
    Ok(Arc::new(M365Connector::new(options, credential)?))
}

/// A Google Workspace connector from the `--service-account`, `--admin`, … options.
fn google_connector(
    domain: &str,
    args: &SourceArgs,
    since: Option<serde_json::Value>,
) -> Result<Arc<dyn Connector>> {
    use ferry_google::{
        Endpoints, ExportFormat, GoogleConnector, GoogleOptions, Include, ServiceAccountKey,
        UserSelection,
    };
    let g = &args.google;
    let domain = domain.trim().trim_matches('/');
    if domain.is_empty() || !domain.contains('.') {
        bail!("google: needs the primary domain, e.g. google:example.no");
    }
    let Some(key_path) = &g.service_account else {
        bail!("google: needs --service-account key.json (a service account's JSON key with domain-wide delegation; or set FERRY_GOOGLE_SERVICE_ACCOUNT)");
    };
    let Some(admin) = g.admin.clone() else {
        bail!("google: needs --admin EMAIL, an administrator of {domain} to list its users (or set FERRY_GOOGLE_ADMIN)");
    };
    let text = std::fs::read_to_string(key_path)
        .with_context(|| format!("cannot read --service-account {}", key_path.display()))?;
    let key = ServiceAccountKey::from_json(&text)
        .map_err(|e| anyhow::anyhow!("--service-account {}: {e}", key_path.display()))?;
    let users = match args.users.trim() {
        "" | "all" => UserSelection::All,
        g if g.starts_with("group:") => {
            bail!(
                "--users group:… is for m365: sources; for google: give all or a list of addresses"
            )
        }
        list => UserSelection::List(comma_list(list)),
    };
    let include = if args.include.is_empty() {
        Include::ALL
    } else {
        Include::parse(&args.include.join(",")).map_err(anyhow::Error::msg)?
    };
    if !args.exclude.is_empty() {
        bail!("--exclude is for s3:// sources; for google: choose with --include and --users");
    }
    let export_formats = ExportFormat::parse_list(&g.export_formats).map_err(anyhow::Error::msg)?;
    let endpoints = match &g.google_endpoint {
        Some(root) => Endpoints::under(root),
        None => Endpoints::google(),
    };
    let options = GoogleOptions {
        endpoints,
        users,
        include,
        export_formats,
        include_spam_trash: g.include_spam_trash,
        include_trashed: g.include_trashed,
        mbox: g.mbox,
        user_concurrency: g.user_concurrency as usize,
        listing_concurrency: (args.concurrency_for("google:") as usize / 2).clamp(2, 16),
        page_size: args.s3.page_size.map_or(500, |n| n as usize),
        retry: retry_policy(args),
        since,
        ..GoogleOptions::new(domain, &admin)
    };
    Ok(Arc::new(GoogleConnector::new(options, key)?))
}

/// The non-empty, trimmed parts of a comma-separated list.
fn comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// How the pipeline runs `source`: `--concurrency` (or its default for the source),
/// `--retries` and `--on-checksum-mismatch`.
pub fn pipeline_options(args: &SourceArgs, source: &str) -> ferry_core::PipelineOptions {
    ferry_core::PipelineOptions {
        concurrency: args.concurrency_for(source) as usize,
        large_concurrency: LARGE_CONCURRENCY as usize,
        retry: retry_policy(args),
        keep_mismatched: args.on_checksum_mismatch == "keep",
        ..ferry_core::PipelineOptions::default()
    }
}

/// The shared retry policy with `--retries`.
pub fn retry_policy(args: &SourceArgs) -> ferry_core::RetryPolicy {
    ferry_core::RetryPolicy {
        max_attempts: args.retries + 1,
        ..ferry_core::RetryPolicy::default()
    }
}
