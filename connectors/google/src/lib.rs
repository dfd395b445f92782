//! ferry's Google Workspace connector: every user's Gmail (original MIME of each message, and
//! optionally one mboxrd file per label), My Drive and every shared drive, with binary files
//! checked against Drive's sha256/md5 and Google Docs, Sheets, Slides and Drawings exported to
//! open formats (ODF by default, OOXML and PDF on request).
//!
//! The data flow: [`directory`] resolves the users, [`gmail`] lists each mailbox by id and
//! [`drive`] each drive (folders first, so every file has its path), and
//! [`GoogleConnector::open`] streams one message (decoded from Gmail's JSON as it arrives,
//! [`raw_message`]), one file, one export or one mbox file ([`mbox`]). Every request goes through
//! [`api::Google`]: a service-account token per impersonated user and API ([`auth`]), the shared
//! retry policy, and a bound on requests at once per user. The history id and changes token
//! read *before* each listing (with each drive's folder map) are the cursors for incremental
//! runs: the next run reads each mailbox's history and each drive's changes feed from them; a
//! mailbox or drive with failures keeps the cursor its run started from, so that what failed is
//! read again. run.json reconciles each mailbox's own message count against what was archived.

pub mod api;
pub mod auth;
pub mod directory;
pub mod drive;
pub mod gmail;
pub mod mbox;
pub mod raw_message;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::{
    Connector, ContainerCounts, Error, Item, ListingStream, Opened, Result, RetryPolicy, SourceInfo,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

pub use api::Endpoints;
use api::{Api, ApiSettings, Google};
pub use auth::ServiceAccountKey;

/// Which users to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSelection {
    /// Every user of the domain (suspended users included and marked).
    All,
    /// These users (primary e-mail addresses).
    List(Vec<String>),
}

/// What to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Include {
    /// Gmail.
    pub gmail: bool,
    /// Each user's My Drive.
    pub drive: bool,
    /// Shared drives.
    pub shared_drives: bool,
}

impl Include {
    /// Everything.
    pub const ALL: Include = Include {
        gmail: true,
        drive: true,
        shared_drives: true,
    };

    /// Parses `gmail,drive,shared-drives` (any subset).
    pub fn parse(s: &str) -> std::result::Result<Include, String> {
        let mut inc = Include {
            gmail: false,
            drive: false,
            shared_drives: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.to_ascii_lowercase().as_str() {
                "gmail" | "mail" => inc.gmail = true,
                "drive" | "my-drive" => inc.drive = true,
                "shared-drives" | "shared_drives" | "shareddrives" => inc.shared_drives = true,
                other => {
                    return Err(format!(
                        "unknown --include {other:?}: choose from gmail, drive, shared-drives"
                    ))
                }
            }
        }
        if !(inc.gmail || inc.drive || inc.shared_drives) {
            return Err("--include needs at least one of gmail, drive, shared-drives".into());
        }
        Ok(inc)
    }
}

/// A family of formats Google's editor files are exported to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExportFormat {
    /// OpenDocument (odt, ods, odp; Drawings as SVG, which has no ODF export).
    Odf,
    /// Office Open XML (docx, xlsx, pptx; Drawings as PNG).
    Ooxml,
    /// PDF.
    Pdf,
}

impl ExportFormat {
    /// Parses `odf,ooxml,pdf` (any non-empty subset, in the order given, repeats dropped).
    pub fn parse_list(s: &str) -> std::result::Result<Vec<ExportFormat>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let f = match part.to_ascii_lowercase().as_str() {
                "odf" | "opendocument" => ExportFormat::Odf,
                "ooxml" | "office" | "msoffice" => ExportFormat::Ooxml,
                "pdf" => ExportFormat::Pdf,
                other => {
                    return Err(format!(
                        "unknown --export-formats {other:?}: choose from odf, ooxml, pdf"
                    ))
                }
            };
            if !out.contains(&f) {
                out.push(f);
            }
        }
        if out.is_empty() {
            return Err("--export-formats needs at least one of odf, ooxml, pdf".into());
        }
        Ok(out)
    }

    /// The name used in records.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Odf => "odf",
            ExportFormat::Ooxml => "ooxml",
            ExportFormat::Pdf => "pdf",
        }
    }
}

/// Settings of the connector.
#[derive(Debug, Clone)]
pub struct GoogleOptions {
    /// The primary domain (`example.no`).
    pub domain: String,
    /// An administrator to impersonate for the Directory API (and for listing shared drives).
    pub admin: String,
    /// Where the APIs are.
    pub endpoints: Endpoints,
    /// Users to read.
    pub users: UserSelection,
    /// What to read.
    pub include: Include,
    /// Formats for Google's editor files.
    pub export_formats: Vec<ExportFormat>,
    /// Also read messages in Spam and Trash.
    pub include_spam_trash: bool,
    /// Also read files in Drive's trash.
    pub include_trashed: bool,
    /// Also write one mboxrd file per label.
    pub mbox: bool,
    /// Requests at once per impersonated user.
    pub user_concurrency: usize,
    /// Users' mailboxes and drives listed at once.
    pub listing_concurrency: usize,
    /// Items per page to ask for (Gmail allows up to 500, Drive 1,000).
    pub page_size: usize,
    /// Timeout for a stalled answer.
    pub timeout: Duration,
    /// The shared retry policy.
    pub retry: RetryPolicy,
    /// What an earlier run reported (its run details, holding `cursors`): mailboxes are then
    /// read from their history id and drives from their changes token — only what changed,
    /// with deletions — for incremental backups. `None` lists everything.
    pub since: Option<Value>,
}

impl GoogleOptions {
    /// The history id an earlier run saved for a mailbox.
    pub(crate) fn history_cursor(&self, account: &str) -> Option<String> {
        self.since
            .as_ref()?
            .get("cursors")?
            .as_array()?
            .iter()
            .find(|c| c["type"] == "gmail_history" && c["account"].as_str() == Some(account))
            .and_then(|c| match &c["history_id"] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    }

    /// Defaults for Google's public endpoints.
    pub fn new(domain: &str, admin: &str) -> GoogleOptions {
        GoogleOptions {
            domain: domain.to_string(),
            admin: admin.to_string(),
            endpoints: Endpoints::google(),
            users: UserSelection::All,
            include: Include::ALL,
            export_formats: vec![ExportFormat::Odf],
            include_spam_trash: false,
            include_trashed: false,
            mbox: false,
            user_concurrency: 5,
            listing_concurrency: 8,
            page_size: 500,
            timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            since: None,
        }
    }
}

/// One mailbox as the listing found it, for the reconciliation.
#[derive(Debug, Clone)]
pub(crate) struct MailboxRecord {
    pub account: String,
    pub messages_total: Option<u64>,
    pub spam_trash_total: Option<u64>,
    pub listed: u64,
    pub listing_failed: bool,
    /// Read from the earlier run's history id: only what changed.
    pub incremental: bool,
    /// The cursor for the next run.
    pub cursor: Option<Value>,
    /// The cursor for the next run when this one has failures in the mailbox: the earlier
    /// run's (its history is read again), or none (the mailbox is listed whole).
    pub retry_cursor: Option<Value>,
}

/// One drive as the listing found it.
#[derive(Debug, Clone)]
pub(crate) struct DriveRecord {
    pub account: String,
    pub container: String,
    pub kind: &'static str,
    pub name: String,
    pub files: u64,
    pub folders: u64,
    pub exports: u64,
    pub references: u64,
    pub listing_failed: bool,
    /// Read from the earlier run's changes token: only what changed.
    pub incremental: bool,
    /// Why the drive was listed whole.
    pub listed_whole_because: Option<String>,
    /// Files the changes feed said are gone (deleted, trashed, out of view).
    pub removed: u64,
    /// The cursor for the next run.
    pub cursor: Option<Value>,
    /// The cursor for the next run when this one has failures in the drive: the earlier
    /// run's (its changes are read again), or none (the drive is listed whole).
    pub retry_cursor: Option<Value>,
}

/// What the listing learnt, for run.json.
#[derive(Default)]
pub(crate) struct RunState {
    pub mailboxes: Vec<MailboxRecord>,
    pub drives: Vec<DriveRecord>,
    pub cursors: Vec<Value>,
    pub notes: Vec<String>,
    pub users: Vec<Value>,
}

pub(crate) struct Inner {
    pub google: Google,
    pub options: GoogleOptions,
    pub state: Mutex<RunState>,
    /// Drive files already handed on by some user's listing (a file shared with several
    /// exported users is archived once), as id hashes.
    pub claimed_files: Mutex<HashSet<u64>>,
    /// Each mailbox's labels (id → name), read by its listing, for the records of its messages.
    pub labels: Mutex<HashMap<String, gmail::Labels>>,
}

impl Inner {
    pub(crate) fn note(&self, note: String) {
        tracing::warn!("{note}");
        self.state.lock().expect("state").notes.push(note);
    }

    pub(crate) fn cursor(&self, cursor: Value) {
        self.state.lock().expect("state").cursors.push(cursor);
    }
}

/// The connector.
pub struct GoogleConnector {
    inner: Arc<Inner>,
}

impl GoogleConnector {
    /// A connector; nothing is sent until [`Connector::check`] or [`Connector::list`].
    pub fn new(options: GoogleOptions, key: ServiceAccountKey) -> Result<GoogleConnector> {
        for (name, url) in [
            ("Drive", &options.endpoints.drive),
            ("Gmail", &options.endpoints.gmail),
            ("Directory", &options.endpoints.directory),
        ] {
            url::Url::parse(url).map_err(|_| {
                Error::fatal(format!(
                    "the {name} endpoint {url:?} is not a URL; --google-endpoint is an API root like https://www.googleapis.com"
                ))
            })?;
        }
        url::Url::parse(&key.token_uri).map_err(|_| {
            Error::fatal(format!(
                "the key file's token_uri {:?} is not a URL",
                key.token_uri
            ))
        })?;
        let http = ferry_http::api_client(options.timeout)?;
        let auth = Arc::new(auth::Auth::new(http.clone(), key));
        let google = Google::new(
            http,
            auth,
            options.endpoints.clone(),
            ApiSettings {
                user_concurrency: options.user_concurrency,
                retry: options.retry,
            },
        );
        Ok(GoogleConnector {
            inner: Arc::new(Inner {
                google,
                options,
                state: Mutex::new(RunState::default()),
                claimed_files: Mutex::new(HashSet::new()),
                labels: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Tokens fetched so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.inner.google.auth().tokens_fetched()
    }
}

/// Answers from the listing tasks.
pub(crate) type Sender = ferry_core::ListingSender;

enum Job {
    Gmail(directory::User),
    Drive(directory::User),
    SharedDrive(drive::SharedDrive),
    /// A shared drive an earlier run listed (its cursor) that is not among this run's.
    VanishedSharedDrive(Value),
}

impl Inner {
    async fn list_all(self: Arc<Self>, tx: Sender) {
        if let Err(e) = self.clone().list_jobs(tx.clone()).await {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn list_jobs(self: Arc<Self>, tx: Sender) -> Result<()> {
        let users = directory::resolve(&self, &tx).await?;
        let mut jobs = Vec::new();
        for u in &users {
            if self.options.include.gmail {
                jobs.push(Job::Gmail(u.clone()));
            }
            if self.options.include.drive {
                jobs.push(Job::Drive(u.clone()));
            }
        }
        if self.options.include.shared_drives {
            let drives = drive::shared_drives(&self, &users, &tx).await?;
            for c in drive::vanished_shared_drives(&self, &drives) {
                jobs.push(Job::VanishedSharedDrive(c));
            }
            for d in drives {
                jobs.push(Job::SharedDrive(d));
            }
        }
        // Users are listed side by side, so that downloads from many users run at once while
        // each user stays within its limit.
        let width = self.options.listing_concurrency.max(1);
        futures::stream::iter(jobs)
            .map(|job| {
                let me = self.clone();
                let tx = tx.clone();
                async move {
                    match job {
                        Job::Gmail(u) => gmail::list_user(&me, &u, &tx).await,
                        Job::Drive(u) => drive::list_my_drive(&me, &u, &tx).await,
                        Job::SharedDrive(d) => drive::list_shared_drive(&me, &d, &tx).await,
                        Job::VanishedSharedDrive(c) => {
                            drive::vanished_shared_drive(&me, &c, &tx).await
                        }
                    }
                }
            })
            .buffer_unordered(width)
            .try_for_each(|()| async { Ok(()) })
            .await
    }
}

/// Sends a listing entry; an error when the run is gone (stop listing).
pub(crate) use ferry_core::send_listing as send;

pub(crate) use ferry_core::send_listing_failure as fail_listing;

/// An RFC 3339 time.
pub(crate) fn parse_time(v: &Value) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

#[async_trait]
impl Connector for GoogleConnector {
    fn info(&self) -> SourceInfo {
        let o = &self.inner.options;
        let mut options = serde_json::Map::new();
        options.insert("admin".into(), o.admin.clone().into());
        options.insert("drive_endpoint".into(), o.endpoints.drive.clone().into());
        options.insert("gmail_endpoint".into(), o.endpoints.gmail.clone().into());
        options.insert(
            "directory_endpoint".into(),
            o.endpoints.directory.clone().into(),
        );
        options.insert(
            "service_account".into(),
            self.inner.google.auth().client_email().into(),
        );
        options.insert(
            "users".into(),
            match &o.users {
                UserSelection::All => "all".into(),
                UserSelection::List(l) => json!(l),
            },
        );
        let mut include = Vec::new();
        if o.include.gmail {
            include.push("gmail");
        }
        if o.include.drive {
            include.push("drive");
        }
        if o.include.shared_drives {
            include.push("shared-drives");
        }
        options.insert("include".into(), json!(include));
        options.insert(
            "export_formats".into(),
            json!(o
                .export_formats
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()),
        );
        options.insert("include_spam_trash".into(), o.include_spam_trash.into());
        options.insert("include_trashed".into(), o.include_trashed.into());
        options.insert("mbox".into(), o.mbox.into());
        options.insert("user_concurrency".into(), o.user_concurrency.into());
        SourceInfo {
            uri: format!("google:{}", o.domain),
            system: "google".into(),
            connector: concat!("ferry-google ", env!("CARGO_PKG_VERSION")).into(),
            options,
        }
    }

    async fn check(&self) -> Result<()> {
        // Signs in as the admin for every API the run needs and reads one user: a wrong key,
        // a scope missing from the delegation, a non-admin --admin or a wrong domain stop the
        // run here, before anything is written.
        let inner = &self.inner;
        let admin = inner.options.admin.clone();
        let mut apis = vec![Api::Directory];
        if inner.options.include.gmail {
            apis.push(Api::Gmail);
        }
        if inner.options.include.drive || inner.options.include.shared_drives {
            apis.push(Api::Drive);
        }
        for api in apis {
            inner.google.auth().token(&admin, api).await.map_err(|e| {
                if e.is_fatal() {
                    e
                } else {
                    Error::fatal(format!(
                        "{}; check --admin, the key file's token_uri and the network",
                        e.message()
                    ))
                }
            })?;
        }
        directory::check(inner).await
    }

    fn list(&self) -> ListingStream<'_> {
        let (tx, listing) = ferry_core::listing_channel(512);
        tokio::spawn(self.inner.clone().list_all(tx));
        listing
    }

    async fn open(&self, item: &Item, offset: u64) -> Result<Opened> {
        match item.extra.get("google_type").and_then(Value::as_str) {
            Some("message") => gmail::open(&self.inner, item, offset).await,
            Some("file") => drive::open_file(&self.inner, item, offset).await,
            Some("export") => drive::open_export(&self.inner, item, offset).await,
            Some("mbox") => mbox::open(&self.inner, item, offset).await,
            _ => Err(Error::permanent(format!(
                "{}: not an item of this connector",
                item.display_name()
            ))),
        }
    }

    fn resumable(&self) -> bool {
        // Binary Drive files resume by range; messages, exports and mbox files start again
        // (their `open` refuses an offset, and the pipeline then retries from the start).
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
        let mut cursors = state.cursors.clone();
        for m in &state.mailboxes {
            let counts = outcomes
                .get(&(m.account.clone(), "gmail".to_string()))
                .copied()
                .unwrap_or_default();
            // A mailbox with failures is read again from where this run started.
            let retry = m.listing_failed || counts.failed > 0;
            if let Some(c) = if retry { &m.retry_cursor } else { &m.cursor } {
                cursors.push(c.clone());
            }
            let expected = m
                .messages_total
                .map(|t| t.saturating_sub(m.spam_trash_total.unwrap_or(0)));
            let (status, explanation) = if m.incremental
                && !m.listing_failed
                && counts.failed == 0
                && counts.archived == m.listed
            {
                (
                    "incremental",
                    format!(
                        "read from the last run's history id: {} new messages",
                        m.listed
                    ),
                )
            } else if m.listing_failed {
                (
                    "failures",
                    "the mailbox could not be listed to the end; see ferry/failures.jsonl".into(),
                )
            } else if counts.failed > 0 {
                (
                    "failures",
                    format!(
                        "{} of {} messages failed; see ferry/failures.jsonl",
                        counts.failed, m.listed
                    ),
                )
            } else if counts.archived != m.listed {
                (
                    "incomplete",
                    format!("{} messages listed, {} archived", m.listed, counts.archived),
                )
            } else {
                match expected {
                    Some(e) if e == m.listed => ("ok", String::new()),
                    Some(e) if e < m.listed => (
                        "explained",
                        format!(
                            "{} more messages were listed than the profile counted before the listing: mail arrived during the run",
                            m.listed - e
                        ),
                    ),
                    Some(e) => (
                        "mismatch",
                        format!(
                            "the profile counts {e} messages{} and {} were listed",
                            if m.spam_trash_total.is_some() {
                                " outside Spam and Trash"
                            } else {
                                ""
                            },
                            m.listed
                        ),
                    ),
                    None => ("ok", String::new()),
                }
            };
            if status != "ok" && status != "explained" && status != "incremental" {
                all_green = false;
            }
            let mut r = json!({
                "type": "gmail",
                "account": m.account,
                "profile_messages_total": m.messages_total,
                "spam_trash_excluded": m.spam_trash_total,
                "expected": expected,
                "listed": m.listed,
                "archived": counts.archived,
                "failed": counts.failed,
                "status": status,
            });
            if !explanation.is_empty() {
                r["explanation"] = explanation.into();
            }
            recon.push(r);
        }
        for d in &state.drives {
            let counts = outcomes
                .get(&(d.account.clone(), d.container.clone()))
                .copied()
                .unwrap_or_default();
            // A drive with failures is read again from where this run started.
            let retry = d.listing_failed || counts.failed > 0;
            if let Some(c) = if retry { &d.retry_cursor } else { &d.cursor } {
                cursors.push(c.clone());
            }
            let status = if d.listing_failed || counts.failed > 0 {
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
                "type": d.kind,
                "account": d.account,
                "drive": d.container,
                "name": d.name,
                "files_listed": d.files,
                "folders_listed": d.folders,
                "exports": d.exports,
                "references_to_files_archived_under_their_owner": d.references,
                "listing": if d.incremental { "changes" } else { "whole" },
                "listed_whole_because": d.listed_whole_because,
                "removed": d.removed,
                "archived": counts.archived,
                "recorded_without_content": counts.skipped,
                "failed": counts.failed,
                "status": status,
            }));
        }
        out.insert(
            "reconciliation_status".into(),
            if all_green { "ok" } else { "problems" }.into(),
        );
        out.insert("reconciliation".into(), Value::Array(recon));
        out.insert("cursors".into(), Value::Array(cursors));
        out.insert("users".into(), Value::Array(state.users.clone()));
        if !state.notes.is_empty() {
            out.insert("notes".into(), json!(state.notes));
        }
        let (requests, retries) = self.inner.google.counters();
        out.insert("api_requests".into(), requests.into());
        out.insert("api_retries".into(), retries.into());
        out.insert(
            "tokens_fetched".into(),
            self.inner.google.auth().tokens_fetched().into(),
        );
        out
    }
}
