//! A small client for the Google APIs ferry reads (Directory, Gmail, Drive): GETs with the
//! shared retry policy, token renewal on 401, backoff on 429, 5xx and the 403s Google uses for
//! rate limits (`rateLimitExceeded`, `userRateLimitExceeded`), a bound on requests at once per
//! impersonated user, paging by `pageToken`, and errors that name the scope to grant.
//! (Why not the generated google-* crates: docs/decisions/0007-google-client.md.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::{Error, RetryPolicy};
use ferry_http::{describe_reqwest, host_of, retry_after};
use reqwest::header::{HeaderMap, AUTHORIZATION, RANGE};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Auth;

/// Which API a request reads: decides the token's scope and names the scope a 403 lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Admin SDK Directory (users).
    Directory,
    /// Gmail.
    Gmail,
    /// Drive (My Drive, shared drives, exports).
    Drive,
}

impl Api {
    /// The read-only OAuth scope ferry asks for.
    pub fn scope(self) -> &'static str {
        match self {
            Api::Directory => "https://www.googleapis.com/auth/admin.directory.user.readonly",
            Api::Gmail => "https://www.googleapis.com/auth/gmail.readonly",
            Api::Drive => "https://www.googleapis.com/auth/drive.readonly",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Api::Directory => "Directory",
            Api::Gmail => "Gmail",
            Api::Drive => "Drive",
        }
    }
}

/// Where each API lives.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `…/drive/v3`.
    pub drive: String,
    /// `…/gmail/v1`.
    pub gmail: String,
    /// `…/admin/directory/v1`.
    pub directory: String,
}

impl Endpoints {
    /// Google's public endpoints.
    pub fn google() -> Endpoints {
        Endpoints {
            drive: "https://www.googleapis.com/drive/v3".into(),
            gmail: "https://gmail.googleapis.com/gmail/v1".into(),
            directory: "https://admin.googleapis.com/admin/directory/v1".into(),
        }
    }

    /// All three under one root (`--google-endpoint`: restricted or private endpoints, tests).
    pub fn under(root: &str) -> Endpoints {
        let root = root.trim_end_matches('/');
        Endpoints {
            drive: format!("{root}/drive/v3"),
            gmail: format!("{root}/gmail/v1"),
            directory: format!("{root}/admin/directory/v1"),
        }
    }
}

/// A failed request, with what callers react to.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status, if there was an answer.
    pub status: Option<u16>,
    /// The first `errors[].reason` (`notFound`, `exportSizeLimitExceeded`, …).
    pub reason: String,
    /// The ferry error.
    pub error: Error,
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Error {
        e.error
    }
}

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Requests at once per impersonated user.
    pub user_concurrency: usize,
    /// The shared retry policy.
    pub retry: RetryPolicy,
}

/// The client.
pub struct Google {
    http: reqwest::Client,
    auth: Arc<Auth>,
    /// Where the APIs are.
    pub endpoints: Endpoints,
    settings: ApiSettings,
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A streaming answer and the user's concurrency permit, held until the body is read or
/// dropped.
pub struct Download {
    /// The answer.
    pub response: reqwest::Response,
    /// Held while the body streams.
    pub permit: OwnedSemaphorePermit,
}

impl Google {
    /// A client.
    pub fn new(
        http: reqwest::Client,
        auth: Arc<Auth>,
        endpoints: Endpoints,
        settings: ApiSettings,
    ) -> Google {
        Google {
            http,
            auth,
            endpoints,
            settings,
            users: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Requests sent and retried so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }

    /// The sign-in.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    fn user_gate(&self, user: &str) -> Arc<Semaphore> {
        self.users
            .lock()
            .expect("user gates")
            .entry(user.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.user_concurrency.max(1))))
            .clone()
    }

    /// GETs JSON as `user`, retrying transient failures through the shared policy.
    pub async fn get_json(
        &self,
        url: &str,
        user: &str,
        api: Api,
        what: &str,
    ) -> std::result::Result<Value, ApiError> {
        let policy = self.settings.retry;
        let mut attempt = 1;
        loop {
            let result = match self.send(url, user, api, what, None).await {
                Ok(d) => {
                    let body = d.response.bytes().await;
                    drop(d.permit);
                    match body {
                        Ok(b) => serde_json::from_slice::<Value>(&b).map_err(|e| ApiError {
                            status: None,
                            reason: String::new(),
                            error: Error::transient(format!(
                                "{what}: {} answered with something that is not JSON ({e})",
                                api.name()
                            )),
                        }),
                        Err(e) => Err(ApiError {
                            status: None,
                            reason: String::new(),
                            error: Error::transient(format!(
                                "{what}: the answer broke off: {}",
                                describe_reqwest(&e)
                            )),
                        }),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if policy.should_retry(&e.error, attempt) => {
                    let delay = policy.delay(attempt, e.error.retry_after());
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("{what}: retrying in {delay:?}: {}", e.error);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a streaming GET as `user` from byte `offset` (no retries here: the pipeline
    /// retries whole transfers; a rejected token is renewed and the request sent once more).
    pub async fn open(
        &self,
        url: &str,
        user: &str,
        api: Api,
        what: &str,
        offset: u64,
    ) -> std::result::Result<Download, ApiError> {
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        match self.send(url, user, api, what, range.clone()).await {
            Err(e) if e.status == Some(401) => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                self.send(url, user, api, what, range).await
            }
            other => other,
        }
    }

    async fn send(
        &self,
        url: &str,
        user: &str,
        api: Api,
        what: &str,
        range: Option<String>,
    ) -> std::result::Result<Download, ApiError> {
        let permit = self
            .user_gate(user)
            .acquire_owned()
            .await
            .expect("user gates are never closed");
        let token = self.auth.token(user, api).await.map_err(|error| ApiError {
            status: None,
            reason: String::new(),
            error,
        })?;
        let mut req = self
            .http
            .get(url)
            .header(AUTHORIZATION, format!("Bearer {token}"));
        if let Some(r) = range {
            req = req.header(RANGE, r);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let response = req.send().await.map_err(|e| ApiError {
            status: None,
            reason: String::new(),
            error: Error::transient(format!(
                "{what}: cannot reach {}: {}",
                host_of(url),
                describe_reqwest(&e)
            )),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Download { response, permit });
        }
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        drop(permit);
        let (reason, message) = error_body(&body);
        if status.as_u16() == 401 {
            self.auth.reject(user, api, &token).await;
        }
        let error = classify(
            status.as_u16(),
            &reason,
            &message,
            api,
            user,
            what,
            &headers,
        );
        Err(ApiError {
            status: Some(status.as_u16()),
            reason,
            error,
        })
    }

    /// Pages of a list call: `url` (with its query) plus `pageToken`, until an answer has no
    /// `nextPageToken`.
    pub fn pages<'a>(&'a self, url: String, user: &'a str, api: Api, what: &'a str) -> Pages<'a> {
        Pages {
            google: self,
            url,
            user,
            api,
            what,
            token: None,
            done: false,
        }
    }
}

/// Walks a list call page by page, so callers can hand items on without holding the listing.
pub struct Pages<'a> {
    google: &'a Google,
    url: String,
    user: &'a str,
    api: Api,
    what: &'a str,
    token: Option<String>,
    done: bool,
}

impl Pages<'_> {
    /// The next page (the whole JSON answer); `None` after the last.
    pub async fn next_page(&mut self) -> std::result::Result<Option<Value>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let url = match &self.token {
            Some(t) => {
                let sep = if self.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}pageToken={}", self.url, ferry_http::query_value(t))
            }
            None => self.url.clone(),
        };
        let page = self
            .google
            .get_json(&url, self.user, self.api, self.what)
            .await?;
        match page.get("nextPageToken").and_then(Value::as_str) {
            Some(t) if !t.is_empty() && Some(t) == self.token.as_deref() => {
                // The same page again would be listed forever; stopping quietly would leave
                // the rest out unnoticed.
                return Err(ApiError {
                    status: None,
                    reason: String::new(),
                    error: Error::permanent(format!(
                        "{}: the listing's next page token is the one just used; the rest was not listed",
                        self.what
                    )),
                });
            }
            Some(t) if !t.is_empty() => self.token = Some(t.to_string()),
            _ => self.done = true,
        }
        Ok(Some(page))
    }
}

/// The first error reason and the message of a Google error body.
fn error_body(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    // API errors are objects; OAuth-style errors are a string.
    let reason = e["errors"][0]["reason"]
        .as_str()
        .or_else(|| e["status"].as_str())
        .or_else(|| e.as_str())
        .unwrap_or("")
        .to_string();
    let message = e["message"]
        .as_str()
        .or_else(|| v["error_description"].as_str())
        .unwrap_or("")
        .to_string();
    (reason, message)
}

/// Rate-limit reasons Google sends with 403 (and 429): wait and retry.
const RATE_LIMITS: &[&str] = &[
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "RATE_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "backendError",
    "sharingRateLimitExceeded",
];

/// The right kind of ferry error for an answer, in one sentence with what to do.
fn classify(
    status: u16,
    reason: &str,
    message: &str,
    api: Api,
    user: &str,
    what: &str,
    headers: &HeaderMap,
) -> Error {
    let said = match (reason.is_empty(), message.is_empty()) {
        (true, true) => format!("{status}"),
        (false, true) => format!("{status} {reason}"),
        (_, false) => format!("{status} {reason}: {message}"),
    };
    let busy = || {
        Error::transient(format!("{what}: {} is busy ({said})", api.name()))
            .with_retry_after(retry_after(headers))
    };
    match status {
        401 => Error::transient(format!(
            "{what}: {} rejected the access token ({said}); renewing it",
            api.name()
        ))
        .with_retry_after(Some(Duration::ZERO)),
        403 if RATE_LIMITS.contains(&reason) => busy(),
        403 if reason == "insufficientPermissions"
            || message.contains("insufficient authentication scopes") =>
        {
            Error::fatal(format!(
                "{what}: the token lacks the scope {} ({said}); add it to the service account's domain-wide delegation in the Admin console (Security → Access and data control → API controls)",
                api.scope()
            ))
        }
        403 if reason == "forbidden" && api == Api::Directory => Error::fatal(format!(
            "{what}: {user} may not read the domain's users ({said}); give --admin an administrator with the User Management privilege"
        )),
        403 if reason == "exportSizeLimitExceeded" => Error::permanent(format!(
            "{what}: the document is too large for Drive's export call ({said}) and has no export link for this format"
        )),
        403 if reason == "dailyLimitExceeded" || reason == "quotaExceeded" => Error::permanent(format!(
            "{what}: the project's daily {} quota is used up ({said}); run again tomorrow or raise the quota in the Cloud console",
            api.name()
        )),
        403 => Error::permanent(format!("{what}: access denied ({said})")),
        404 => Error::permanent(format!("{what}: not found ({said})")),
        408 | 429 | 500 | 502 | 503 | 504 => busy(),
        _ => Error::permanent(format!("{what}: {} answered {said}", api.name())),
    }
}
