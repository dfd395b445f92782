//! ferry's Microsoft 365 connector: every mailbox (as the original MIME of each message), each
//! user's OneDrive and every SharePoint document library, read through Microsoft Graph with an
//! app-only sign-in.
//!
//! The data flow: [`users`] resolves the accounts, [`mail`] walks each mailbox's folders and
//! lists each folder with a message delta query, [`drive`] lists each drive with a drive delta
//! query, and [`M365Connector::open`] streams one message's `$value` or one file's content.
//! Every Graph request goes through [`graph::Graph`]: token renewal, retries with Retry-After,
//! and at most four requests at once per mailbox. The delta links the listings end with are
//! returned in the run record as cursors for incremental runs, with a reconciliation of each
//! folder's own item count against what was archived.

pub mod auth;
pub mod drive;
pub mod graph;
pub mod mail;
pub mod users;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::{
    ByteStream, Connector, ContainerCounts, Error, Item, ListingStream, Opened, Result,
    RetryPolicy, SourceInfo,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

pub use auth::Credential;
use graph::{Graph, GraphSettings, Scope};

/// Which users to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSelection {
    /// Every user with a license.
    All,
    /// These users (user principal names, mail addresses or ids).
    List(Vec<String>),
    /// The members of a group (by id).
    Group(String),
}

/// Which SharePoint sites to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteSelection {
    /// Every site (`/sites/getAllSites`).
    All,
    /// These sites, by URL (`https://contoso.sharepoint.com/sites/hr`).
    Urls(Vec<String>),
}

/// What to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Include {
    /// Mailboxes.
    pub mail: bool,
    /// Each user's OneDrive.
    pub onedrive: bool,
    /// SharePoint document libraries.
    pub sharepoint: bool,
}

impl Include {
    /// Everything.
    pub const ALL: Include = Include {
        mail: true,
        onedrive: true,
        sharepoint: true,
    };

    /// Parses `mail,onedrive,sharepoint` (any subset).
    pub fn parse(s: &str) -> std::result::Result<Include, String> {
        let mut inc = Include {
            mail: false,
            onedrive: false,
            sharepoint: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.to_ascii_lowercase().as_str() {
                "mail" => inc.mail = true,
                "onedrive" => inc.onedrive = true,
                "sharepoint" => inc.sharepoint = true,
                other => {
                    return Err(format!(
                        "unknown --include {other:?}: choose from mail, onedrive, sharepoint"
                    ))
                }
            }
        }
        if !(inc.mail || inc.onedrive || inc.sharepoint) {
            return Err("--include needs at least one of mail, onedrive, sharepoint".into());
        }
        Ok(inc)
    }
}

/// Settings of the connector.
#[derive(Debug, Clone)]
pub struct M365Options {
    /// The tenant: its primary domain (`contoso.onmicrosoft.com`) or id.
    pub tenant: String,
    /// The app registration's client id.
    pub client_id: String,
    /// Graph root including the version (national clouds: `https://graph.microsoft.us/v1.0`).
    pub graph_endpoint: String,
    /// The sign-in authority host (`https://login.microsoftonline.com`).
    pub login_endpoint: String,
    /// Users to read.
    pub users: UserSelection,
    /// What to read.
    pub include: Include,
    /// SharePoint sites to read.
    pub sites: SiteSelection,
    /// Also read each mailbox's Recoverable Items (Deletions).
    pub include_recoverable: bool,
    /// Requests at once per mailbox (Outlook allows 4).
    pub mailbox_concurrency: usize,
    /// Mailboxes and drives listed at once.
    pub listing_concurrency: usize,
    /// Items per page to ask Graph for.
    pub page_size: usize,
    /// Timeout for connecting and for a stalled answer.
    pub timeout: Duration,
    /// The shared retry policy.
    pub retry: RetryPolicy,
    /// What an earlier run reported (its run details, holding `cursors`): mail folders and
    /// drives are then listed from their delta links — only what changed, with deletions —
    /// for incremental backups. `None` lists everything.
    pub since: Option<Value>,
}

impl M365Options {
    /// Defaults for the commercial cloud.
    pub fn new(tenant: &str, client_id: &str) -> M365Options {
        M365Options {
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            graph_endpoint: "https://graph.microsoft.com/v1.0".into(),
            login_endpoint: "https://login.microsoftonline.com".into(),
            users: UserSelection::All,
            include: Include::ALL,
            sites: SiteSelection::All,
            include_recoverable: false,
            mailbox_concurrency: 4,
            listing_concurrency: 8,
            page_size: 100,
            timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            since: None,
        }
    }

    /// The earlier run's cursors.
    pub(crate) fn previous_cursors(&self) -> impl Iterator<Item = &Value> + '_ {
        self.since
            .as_ref()
            .and_then(|s| s["cursors"].as_array())
            .into_iter()
            .flatten()
    }

    /// The earlier run's cursor of one drive.
    pub(crate) fn drive_cursor(&self, account: &str, drive_id: &str) -> Option<&Value> {
        self.since.as_ref()?["cursors"]
            .as_array()?
            .iter()
            .find(|c| {
                c["type"] == "drive"
                    && c["account"].as_str() == Some(account)
                    && c["drive_id"].as_str() == Some(drive_id)
            })
    }

    /// The earlier run's cursor of one mail folder.
    pub(crate) fn mail_cursor<'a>(
        &'a self,
        account: &'a str,
        mailbox: &'a str,
        folder_id: &str,
    ) -> Option<&'a Value> {
        self.mail_cursors(account, mailbox)
            .find(|c| c["folder_id"].as_str() == Some(folder_id))
    }

    /// The earlier run's cursors of one mailbox's folders.
    pub(crate) fn mail_cursors<'a>(
        &'a self,
        account: &'a str,
        mailbox: &'a str,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.since
            .as_ref()
            .and_then(|s| s["cursors"].as_array())
            .into_iter()
            .flatten()
            .filter(move |c| {
                c["type"] == "mail_folder"
                    && c["account"].as_str() == Some(account)
                    && c["mailbox"].as_str() == Some(mailbox)
            })
    }
}

/// One mail folder as the listing found it, for the reconciliation.
#[derive(Debug, Clone)]
pub(crate) struct FolderRecord {
    pub account: String,
    pub mailbox: &'static str,
    pub folder_id: String,
    pub path: Vec<String>,
    pub hidden: bool,
    pub total_item_count: Option<u64>,
    pub listed: u64,
    pub resynced: bool,
    /// The listing broke off (the failure is in failures.jsonl).
    pub listing_failed: bool,
    /// Listed from the earlier run's delta link: only what changed since.
    pub incremental: bool,
}

/// One drive as the listing found it.
#[derive(Debug, Clone)]
pub(crate) struct DriveRecord {
    pub account: String,
    pub drive_id: String,
    pub drive_type: String,
    pub name: String,
    pub files: u64,
    pub folders: u64,
    pub deleted_seen: u64,
    pub repeats: u64,
    pub resynced: bool,
}

/// What the listing learnt, for run.json.
#[derive(Default)]
pub(crate) struct RunState {
    pub folders: Vec<FolderRecord>,
    pub drives: Vec<DriveRecord>,
    pub cursors: Vec<Value>,
    pub notes: Vec<String>,
    pub users: u64,
    pub users_skipped: Vec<String>,
    pub sites: u64,
}

pub(crate) struct Inner {
    pub graph: Graph,
    pub options: M365Options,
    pub state: Mutex<RunState>,
    /// In-place archive mailbox id per user id.
    pub archives: Mutex<HashMap<String, String>>,
}

impl Inner {
    pub(crate) fn note(&self, note: String) {
        tracing::warn!("{note}");
        self.state.lock().expect("state").notes.push(note);
    }
}

/// The connector.
pub struct M365Connector {
    inner: Arc<Inner>,
    auth: Arc<auth::Auth>,
}

impl M365Connector {
    /// A connector; nothing is sent until [`Connector::check`] or [`Connector::list`].
    pub fn new(options: M365Options, credential: Credential) -> Result<M365Connector> {
        let graph_url = url::Url::parse(&options.graph_endpoint).map_err(|_| {
            Error::fatal(format!(
                "--graph-endpoint {:?} is not a URL; it is the Graph root with its version, like https://graph.microsoft.com/v1.0",
                options.graph_endpoint
            ))
        })?;
        url::Url::parse(&options.login_endpoint).map_err(|_| {
            Error::fatal(format!(
                "--login-endpoint {:?} is not a URL; it is the sign-in host, like https://login.microsoftonline.com",
                options.login_endpoint
            ))
        })?;
        let http = ferry_http::api_client(options.timeout)?;
        // The token's audience is the Graph host: https://graph.microsoft.com/.default.
        let scope = format!("{}/.default", graph_url.origin().ascii_serialization());
        let auth = Arc::new(auth::Auth::new(
            http.clone(),
            &options.login_endpoint,
            &options.tenant,
            &options.client_id,
            scope,
            credential,
        ));
        let graph = Graph::new(
            http,
            auth.clone(),
            GraphSettings {
                root: options.graph_endpoint.trim_end_matches('/').to_string(),
                mailbox_concurrency: options.mailbox_concurrency,
                page_size: options.page_size,
                retry: options.retry,
            },
        );
        Ok(M365Connector {
            inner: Arc::new(Inner {
                graph,
                options,
                state: Mutex::new(RunState::default()),
                archives: Mutex::new(HashMap::new()),
            }),
            auth,
        })
    }

    /// Tokens fetched so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.auth.tokens_fetched()
    }
}

/// Answers from the listing tasks.
pub(crate) type Sender = ferry_core::ListingSender;

impl Inner {
    async fn list_all(self: Arc<Self>, tx: Sender) {
        let users = match users::resolve(&self).await {
            Ok(u) => u,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        self.state.lock().expect("state").users = users.len() as u64;
        if let Err(e) = self.users_gone(&users, &tx).await {
            let _ = tx.send(Err(e)).await;
            return;
        }
        let mut jobs: Vec<Job> = Vec::new();
        for u in &users {
            if self.options.include.mail {
                jobs.push(Job::Mailbox(u.clone()));
            }
            if self.options.include.onedrive {
                jobs.push(Job::OneDrive(u.clone()));
            }
        }
        if self.options.include.sharepoint {
            jobs.push(Job::Sites);
        }
        // Mailboxes and drives are listed side by side, so that downloads from many
        // mailboxes run at once while each mailbox stays within its limit.
        let width = self.options.listing_concurrency.max(1);
        let result = futures::stream::iter(jobs)
            .map(|job| {
                let me = self.clone();
                let tx = tx.clone();
                async move { me.run_job(job, tx).await }
            })
            .buffer_unordered(width)
            .try_for_each(|()| async { Ok(()) })
            .await;
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    }

    /// Users the earlier run read that the directory no longer has (deleted, not merely
    /// unlicensed): their mail folders and OneDrive are gone, so each is reported complete
    /// with nothing in it and a backup marks their items removed. Only when every user is
    /// read: a narrower selection says nothing about the others.
    async fn users_gone(&self, users: &[users::User], tx: &Sender) -> Result<()> {
        if !matches!(self.options.users, UserSelection::All) {
            return Ok(());
        }
        let present: HashSet<String> = {
            let st = self.state.lock().expect("state");
            users
                .iter()
                .map(|u| u.upn.to_lowercase())
                .chain(st.users_skipped.iter().map(|u| u.to_lowercase()))
                .collect()
        };
        let mut gone: Vec<(String, String)> = Vec::new();
        for c in self.options.previous_cursors() {
            let container = match c["type"].as_str() {
                Some("mail_folder") => c["folder_id"].as_str(),
                Some("drive") if c["owner"] == "user" => c["drive_id"].as_str(),
                _ => None,
            };
            let (Some(account), Some(container)) = (c["account"].as_str(), container) else {
                continue;
            };
            if !present.contains(&account.to_lowercase()) {
                gone.push((account.to_string(), container.to_string()));
            }
        }
        let mut noted = HashSet::new();
        for (account, container) in gone {
            if noted.insert(account.clone()) {
                self.note(format!(
                    "{account} is no longer in the tenant: its mail and OneDrive are marked removed (earlier runs keep them)"
                ));
            }
            send(
                tx,
                ferry_core::Listing::Complete {
                    system: "m365".into(),
                    account: Some(account),
                    container: Some(container),
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn run_job(self: Arc<Self>, job: Job, tx: Sender) -> Result<()> {
        match job {
            Job::Mailbox(u) => mail::list_user(&self, &u, &tx).await,
            Job::OneDrive(u) => drive::list_user_drive(&self, &u, &tx).await,
            Job::Sites => drive::list_sites(&self, &tx).await,
        }
    }
}

enum Job {
    Mailbox(users::User),
    OneDrive(users::User),
    Sites,
}

/// Sends a listing entry; false when the run is gone (stop listing).
pub(crate) use ferry_core::send_listing as send;

#[async_trait]
impl Connector for M365Connector {
    fn info(&self) -> SourceInfo {
        let o = &self.inner.options;
        let mut options = serde_json::Map::new();
        options.insert("graph_endpoint".into(), o.graph_endpoint.clone().into());
        options.insert("login_endpoint".into(), o.login_endpoint.clone().into());
        options.insert("client_id".into(), o.client_id.clone().into());
        options.insert(
            "users".into(),
            match &o.users {
                UserSelection::All => "all".into(),
                UserSelection::List(l) => json!(l),
                UserSelection::Group(g) => format!("group:{g}").into(),
            },
        );
        let mut include = Vec::new();
        if o.include.mail {
            include.push("mail");
        }
        if o.include.onedrive {
            include.push("onedrive");
        }
        if o.include.sharepoint {
            include.push("sharepoint");
        }
        options.insert("include".into(), json!(include));
        options.insert(
            "sites".into(),
            match &o.sites {
                SiteSelection::All => "all".into(),
                SiteSelection::Urls(u) => json!(u),
            },
        );
        options.insert("include_recoverable".into(), o.include_recoverable.into());
        options.insert("mailbox_concurrency".into(), o.mailbox_concurrency.into());
        SourceInfo {
            uri: format!("m365:{}", o.tenant),
            system: "m365".into(),
            connector: concat!("ferry-m365 ", env!("CARGO_PKG_VERSION")).into(),
            options,
        }
    }

    async fn check(&self) -> Result<()> {
        // Signs in and reads one user: wrong tenant, app, secret, endpoint or a missing
        // User.Read.All stop the run here, before anything is written.
        self.auth.token().await.map_err(|e| {
            if e.is_fatal() {
                e
            } else {
                Error::fatal(format!(
                    "{}; check --login-endpoint and the network",
                    e.message()
                ))
            }
        })?;
        let url = format!("{}/users?$top=1&$select=id", self.inner.graph.root());
        self.inner
            .graph
            .get_json(&url, Scope::Users, None, "reading the tenant's users")
            .await
            .map(|_| ())
            .map_err(|g| {
                let e = g.error;
                Error::fatal(format!("{}; check --graph-endpoint", e.message()))
            })
    }

    fn list(&self) -> ListingStream<'_> {
        let (tx, listing) = ferry_core::listing_channel(512);
        tokio::spawn(self.inner.clone().list_all(tx));
        listing
    }

    async fn open(&self, item: &Item, offset: u64) -> Result<Opened> {
        match item.extra.get("m365_type").and_then(Value::as_str) {
            Some("message") => mail::open(&self.inner, item, offset).await,
            Some("driveItem") => drive::open(&self.inner, item, offset).await,
            _ => Err(Error::permanent(format!(
                "{}: not an item of this connector",
                item.display_name()
            ))),
        }
    }

    fn resumable(&self) -> bool {
        true
    }

    fn run_details(
        &self,
        outcomes: &BTreeMap<(String, String), ContainerCounts>,
    ) -> serde_json::Map<String, Value> {
        let state = self.inner.state.lock().expect("state");
        let mut out = serde_json::Map::new();
        let mut recon = Vec::new();
        let mut all_green = true;
        for f in &state.folders {
            let counts = outcomes
                .get(&(f.account.clone(), f.folder_id.clone()))
                .copied()
                .unwrap_or_default();
            let total = f.total_item_count.unwrap_or(f.listed);
            let (status, explanation) = if f.incremental
                && !f.listing_failed
                && counts.failed == 0
                && counts.archived == f.listed
            {
                (
                    "incremental",
                    format!(
                        "listed from the last run's delta link: {} new or changed messages",
                        f.listed
                    ),
                )
            } else if f.listing_failed {
                (
                    "failures",
                    "the folder could not be listed to the end; see ferry/failures.jsonl"
                        .to_string(),
                )
            } else if counts.failed > 0 {
                (
                    "failures",
                    format!(
                        "{} of {} messages failed; see ferry/failures.jsonl",
                        counts.failed, f.listed
                    ),
                )
            } else if counts.archived != f.listed {
                (
                    "incomplete",
                    format!("{} messages listed, {} archived", f.listed, counts.archived),
                )
            } else if total == f.listed {
                ("ok", String::new())
            } else if total > f.listed {
                (
                    "explained",
                    format!(
                        "the folder counts {total} items and the messages API lists {}: the other {} are items of other types (contacts, calendar items, notes, …), which the folder's count includes and Graph's mail API does not serve as messages",
                        f.listed,
                        total - f.listed
                    ),
                )
            } else {
                (
                    "explained",
                    format!(
                        "{} more messages were listed than the folder counted before the listing: mail arrived during the run",
                        f.listed - total
                    ),
                )
            };
            if status != "ok" && status != "explained" && status != "incremental" {
                all_green = false;
            }
            let mut r = json!({
                "type": "mail_folder",
                "account": f.account,
                "mailbox": f.mailbox,
                "folder_id": f.folder_id,
                "folder_path": f.path,
                "hidden": f.hidden,
                "total_item_count": f.total_item_count,
                "listed": f.listed,
                "archived": counts.archived,
                "failed": counts.failed,
                "non_message_items": total.saturating_sub(f.listed),
                "status": status,
            });
            if !explanation.is_empty() {
                r["explanation"] = explanation.into();
            }
            if f.resynced {
                r["resynced"] = true.into();
            }
            recon.push(r);
        }
        for d in &state.drives {
            let counts = outcomes
                .get(&(d.account.clone(), d.drive_id.clone()))
                .copied()
                .unwrap_or_default();
            let status = if counts.failed > 0 {
                "failures"
            } else if counts.archived + counts.skipped != counts.listed {
                "incomplete"
            } else {
                "ok"
            };
            if status != "ok" {
                all_green = false;
            }
            recon.push(json!({
                "type": "drive",
                "account": d.account,
                "drive_id": d.drive_id,
                "drive_type": d.drive_type,
                "name": d.name,
                "files_listed": d.files,
                "folders_listed": d.folders,
                "archived": counts.archived,
                "recorded_without_content": counts.skipped,
                "failed": counts.failed,
                "deleted_entries_ignored": d.deleted_seen,
                "repeated_entries_merged": d.repeats,
                "resynced": d.resynced,
                "status": status,
            }));
        }
        out.insert(
            "reconciliation_status".into(),
            if all_green { "ok" } else { "problems" }.into(),
        );
        out.insert("reconciliation".into(), Value::Array(recon));
        // A mail folder or drive where an item failed keeps no cursor: the next run lists it
        // whole and reads what the repository does not hold, the failed item included (a delta
        // from here would never list it again).
        let cursors: Vec<Value> = state
            .cursors
            .iter()
            .filter(|c| {
                let container = c["folder_id"].as_str().or(c["drive_id"].as_str());
                let (Some(account), Some(container)) = (c["account"].as_str(), container) else {
                    return true;
                };
                outcomes
                    .get(&(account.to_string(), container.to_string()))
                    .is_none_or(|o| o.failed == 0)
            })
            .cloned()
            .collect();
        out.insert("cursors".into(), Value::Array(cursors));
        out.insert("users".into(), state.users.into());
        if !state.users_skipped.is_empty() {
            out.insert("users_skipped".into(), json!(state.users_skipped));
        }
        out.insert("sites".into(), state.sites.into());
        if !state.notes.is_empty() {
            out.insert("notes".into(), json!(state.notes));
        }
        let (requests, retries) = self.inner.graph.counters();
        out.insert("graph_requests".into(), requests.into());
        out.insert("graph_retries".into(), retries.into());
        out
    }
}

/// Records that part of the source could not be listed (a fatal error stops the run instead).
pub(crate) async fn fail_listing(tx: &Sender, name: &str, g: graph::GraphError) -> Result<()> {
    ferry_core::send_listing_failure(tx, name, g.error).await
}

pub(crate) use ferry_http::id_hash;

/// An RFC 3339 time from Graph.
pub(crate) fn parse_time(v: &Value) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

/// A byte stream of a response body that holds its mailbox permit until it ends or is dropped.
pub(crate) fn body_stream(d: graph::Download, what: String) -> ByteStream {
    ferry_http::body_stream(d.response, d.permit, what)
}
