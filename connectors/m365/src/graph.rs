//! A small Microsoft Graph client: GETs with the shared retry policy, token renewal on 401,
//! Retry-After on 429/503, paging through `@odata.nextLink` to the `@odata.deltaLink`, at most
//! N requests at once per mailbox (Outlook's MailboxConcurrency limit), and errors that name
//! the Graph permission to grant. (Why not graph-rs-sdk: docs/decisions/0006-graph-client.md.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::{Error, RetryPolicy};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RANGE};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Auth;
pub use ferry_http::{describe_reqwest, host_of, retry_after, segment};

/// What a request reads, to name the permission a 403 is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Users and groups (User.Read.All, GroupMember.Read.All).
    Users,
    /// Group membership.
    Groups,
    /// Mail (Mail.Read).
    Mail,
    /// OneDrive files (Files.Read.All).
    Files,
    /// SharePoint sites and libraries (Sites.Read.All).
    Sites,
}

impl Scope {
    fn permission(self) -> &'static str {
        match self {
            Scope::Users => "User.Read.All",
            Scope::Groups => "GroupMember.Read.All",
            Scope::Mail => "Mail.Read",
            Scope::Files => "Files.Read.All",
            Scope::Sites => "Sites.Read.All",
        }
    }
}

/// A failed Graph request, with what the caller may need to react (410 on deltas).
#[derive(Debug)]
pub struct GraphError {
    /// The HTTP status, if there was an answer.
    pub status: Option<u16>,
    /// Graph's error code (`ErrorItemNotFound`, `syncStateNotFound`, …).
    pub code: String,
    /// The `Location` header (a 410 on a drive delta points to a fresh start).
    pub location: Option<String>,
    /// The ferry error.
    pub error: Error,
}

impl From<GraphError> for Error {
    fn from(g: GraphError) -> Error {
        g.error
    }
}

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// Graph root including the version, e.g. `https://graph.microsoft.com/v1.0`.
    pub root: String,
    /// Requests at once per mailbox.
    pub mailbox_concurrency: usize,
    /// Items per page to ask for.
    pub page_size: usize,
    /// The shared retry policy.
    pub retry: RetryPolicy,
}

/// The client.
pub struct Graph {
    http: reqwest::Client,
    auth: Arc<Auth>,
    settings: GraphSettings,
    mailboxes: Mutex<HashMap<String, Arc<Semaphore>>>,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A streaming answer and, for mailbox requests, the concurrency permit it holds until the
/// body has been read or dropped.
pub struct Download {
    /// The answer.
    pub response: reqwest::Response,
    /// Held while the body streams.
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Graph {
    /// A client; `http` must not follow redirects (downloads handle the 302 themselves, so the
    /// bearer token never travels to the download host).
    pub fn new(http: reqwest::Client, auth: Arc<Auth>, settings: GraphSettings) -> Graph {
        Graph {
            http,
            auth,
            settings,
            mailboxes: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// The Graph root (`…/v1.0`).
    pub fn root(&self) -> &str {
        &self.settings.root
    }

    /// The beta root, for APIs only beta has (the in-place archive): `…/v1.0` → `…/beta`.
    pub fn beta_root(&self) -> String {
        let root = self.settings.root.trim_end_matches('/');
        match root.rsplit_once('/') {
            Some((base, _version)) => format!("{base}/beta"),
            None => format!("{root}/beta"),
        }
    }

    /// Requests sent and retried so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }

    /// The shared retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.settings.retry
    }

    fn mailbox_gate(&self, mailbox: &str) -> Arc<Semaphore> {
        let mut map = self.mailboxes.lock().expect("mailbox map");
        map.entry(mailbox.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.mailbox_concurrency.max(1))))
            .clone()
    }

    /// GETs JSON, retrying transient failures; `mailbox` is set for Outlook requests.
    pub async fn get_json(
        &self,
        url: &str,
        scope: Scope,
        mailbox: Option<&str>,
        what: &str,
    ) -> std::result::Result<Value, GraphError> {
        let policy = self.settings.retry;
        let mut attempt = 1;
        loop {
            match self.send(url, scope, mailbox, what, None, true).await {
                Ok(d) => {
                    let body = d.response.bytes().await.map_err(|e| GraphError {
                        status: None,
                        code: String::new(),
                        location: None,
                        error: Error::transient(format!(
                            "{what}: the answer broke off: {}",
                            describe_reqwest(&e)
                        )),
                    });
                    drop(d.permit);
                    match body.and_then(|b| {
                        serde_json::from_slice::<Value>(&b).map_err(|e| GraphError {
                            status: None,
                            code: String::new(),
                            location: None,
                            error: Error::transient(format!(
                                "{what}: Graph answered with something that is not JSON ({e})"
                            )),
                        })
                    }) {
                        Ok(v) => return Ok(v),
                        Err(e) if policy.should_retry(&e.error, attempt) => {
                            self.pause(&e.error, attempt, what).await;
                            attempt += 1;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) if policy.should_retry(&e.error, attempt) => {
                    self.pause(&e.error, attempt, what).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn pause(&self, e: &Error, attempt: u32, what: &str) {
        let delay = self.settings.retry.delay(attempt, e.retry_after());
        self.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("{what}: retrying in {delay:?}: {e}");
        tokio::time::sleep(delay).await;
    }

    /// Opens a streaming GET (no retries here: the pipeline retries whole transfers), from
    /// byte `offset`. Graph URLs get the bearer token; `authorized: false` is for
    /// pre-authenticated download URLs, which must not receive it.
    pub async fn open(
        &self,
        url: &str,
        scope: Scope,
        mailbox: Option<&str>,
        what: &str,
        offset: u64,
        authorized: bool,
    ) -> std::result::Result<Download, GraphError> {
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        match self
            .send(url, scope, mailbox, what, range.clone(), authorized)
            .await
        {
            // The token expired or was revoked: `send` dropped it, so the second try goes
            // out with a fresh one. Not worth a retry of the whole transfer.
            Err(g) if g.status == Some(401) && authorized => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                self.send(url, scope, mailbox, what, range, authorized)
                    .await
            }
            other => other,
        }
    }

    async fn send(
        &self,
        url: &str,
        scope: Scope,
        mailbox: Option<&str>,
        what: &str,
        range: Option<String>,
        authorized: bool,
    ) -> std::result::Result<Download, GraphError> {
        let permit = match mailbox {
            Some(m) => Some(
                self.mailbox_gate(m)
                    .acquire_owned()
                    .await
                    .expect("mailbox gates are never closed"),
            ),
            None => None,
        };
        let token = if authorized {
            Some(self.auth.token().await.map_err(|error| GraphError {
                status: None,
                code: String::new(),
                location: None,
                error,
            })?)
        } else {
            None
        };
        let mut req = self.http.get(url);
        if let Some(t) = &token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            // One Prefer header with both preferences (RFC 7240 allows a list).
            req = req.header(
                "Prefer",
                format!(
                    "odata.maxpagesize={}, IdType=\"ImmutableId\"",
                    self.settings.page_size
                ),
            );
        }
        if let Some(r) = range {
            req = req.header(RANGE, r);
        }
        req = req.header("client-request-id", HeaderValue::from_static("ferry"));
        self.requests.fetch_add(1, Ordering::Relaxed);
        let response = req.send().await.map_err(|e| GraphError {
            status: None,
            code: String::new(),
            location: None,
            error: Error::transient(format!(
                "{what}: cannot reach {}: {}",
                host_of(url),
                describe_reqwest(&e)
            )),
        })?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            return Ok(Download { response, permit });
        }
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        drop(permit);
        let (code, message) = error_body(&body);
        let location = headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if status == StatusCode::UNAUTHORIZED {
            if let Some(t) = &token {
                self.auth.reject(t).await;
            }
        }
        let error = classify(status, &code, &message, scope, what, &headers);
        Err(GraphError {
            status: Some(status.as_u16()),
            code,
            location,
            error,
        })
    }

    /// Pages of a collection or delta listing from `url`, one at a time (see [`Pages`]).
    pub fn pages<'a>(
        &'a self,
        url: &str,
        scope: Scope,
        mailbox: Option<&'a str>,
        what: &'a str,
    ) -> Pages<'a> {
        Pages {
            graph: self,
            restart: url.to_string(),
            next: Some(url.to_string()),
            scope,
            mailbox,
            what,
            resynced: false,
            delta_link: None,
        }
    }

    /// Every item of a listing, and the `@odata.deltaLink` if the last page had one.
    pub async fn collect(
        &self,
        url: &str,
        scope: Scope,
        mailbox: Option<&str>,
        what: &str,
    ) -> std::result::Result<(Vec<Value>, Option<String>), GraphError> {
        let mut pages = self.pages(url, scope, mailbox, what);
        let mut items = Vec::new();
        while let Some(values) = pages.next_page().await? {
            items.extend(values);
        }
        Ok((items, pages.delta_link))
    }
}

/// Walks a listing page by page through `@odata.nextLink` to the `@odata.deltaLink`, so
/// callers can hand items on without holding the whole listing. An expired delta state (410)
/// starts the listing again once — where the answer's `Location` says, else from the start —
/// and sets [`Pages::resynced`]; callers skip the repeats by id.
pub struct Pages<'a> {
    graph: &'a Graph,
    /// Where to list again after a 410 without `Location`: the start, or for a listing that
    /// began at an earlier run's delta link, the full listing's first page.
    restart: String,
    next: Option<String>,
    scope: Scope,
    mailbox: Option<&'a str>,
    what: &'a str,
    /// True once the listing had to start again.
    pub resynced: bool,
    /// The delta link of the last page, once it has been read.
    pub delta_link: Option<String>,
}

impl Pages<'_> {
    /// Where to list from when the delta state has expired (default: where the listing
    /// started).
    pub fn restart_from(mut self, url: String) -> Self {
        self.restart = url;
        self
    }

    /// The next page's items; `None` after the last page.
    pub async fn next_page(&mut self) -> std::result::Result<Option<Vec<Value>>, GraphError> {
        let Some(mut url) = self.next.take() else {
            return Ok(None);
        };
        loop {
            match self
                .graph
                .get_json(&url, self.scope, self.mailbox, self.what)
                .await
            {
                Ok(mut page) => {
                    let values = match page.get_mut("value").map(Value::take) {
                        Some(Value::Array(v)) => v,
                        _ => Vec::new(),
                    };
                    let link =
                        |key: &str| page.get(key).and_then(Value::as_str).map(str::to_string);
                    self.next = link("@odata.nextLink");
                    if self.next.as_deref() == Some(url.as_str()) {
                        // A page that links to itself would be listed forever.
                        return Err(GraphError {
                            status: None,
                            code: String::new(),
                            location: None,
                            error: Error::permanent(format!(
                                "{}: the listing's next page is the page just read (@odata.nextLink repeats); the rest was not listed",
                                self.what
                            )),
                        });
                    }
                    if self.next.is_none() {
                        self.delta_link = link("@odata.deltaLink");
                    }
                    return Ok(Some(values));
                }
                Err(g) if g.status == Some(410) && !self.resynced => {
                    tracing::info!("{}: delta state expired; listing again", self.what);
                    self.resynced = true;
                    url = g
                        .location
                        .filter(|l| l.starts_with("http"))
                        .unwrap_or_else(|| self.restart.clone());
                }
                Err(g) => return Err(g),
            }
        }
    }
}

/// Graph's error code and message from an error body.
fn error_body(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let code = e["code"].as_str().unwrap_or("").to_string();
    let message = e["message"].as_str().unwrap_or("").to_string();
    (code, message)
}

/// The right kind of ferry error for a Graph answer, in one sentence with what to do.
fn classify(
    status: StatusCode,
    code: &str,
    message: &str,
    scope: Scope,
    what: &str,
    headers: &HeaderMap,
) -> Error {
    let n = status.as_u16();
    let said = if message.is_empty() {
        format!("{n} {code}")
    } else {
        format!("{n} {code}: {message}")
    };
    match n {
        401 => Error::transient(format!(
            "{what}: Graph rejected the access token ({said}); renewing it"
        ))
        .with_retry_after(Some(Duration::ZERO)),
        403 => Error::permanent(format!(
            "{what}: access denied ({said}); grant the app the Microsoft Graph application permission {} (Entra ID → App registrations → API permissions) and admin consent{}",
            scope.permission(),
            if scope == Scope::Mail {
                ", and check that no Exchange application access policy excludes this mailbox"
            } else {
                ""
            }
        )),
        404 => Error::permanent(format!("{what}: not found ({said})")),
        410 => Error::permanent(format!("{what}: the delta state expired ({said})")),
        408 | 429 | 500 | 502 | 503 | 504 | 509 => {
            Error::transient(format!("{what}: Graph is busy or failing ({said})"))
                .with_retry_after(retry_after(headers))
        }
        _ => Error::permanent(format!("{what}: Graph answered {said}")),
    }
}
