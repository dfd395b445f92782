//! A local Google Workspace — Drive v3, Gmail v1, Admin SDK Directory v1 and the OAuth 2.0
//! token endpoint for service accounts — on 127.0.0.1, serving a seeded domain whose ground
//! truth ([`GoogleTruth`]) tests compare exports against byte for byte.
//!
//! # What is served, and after which documentation
//!
//! OAuth 2.0 for service accounts (developers.google.com/identity/protocols/oauth2/service-account):
//! - `POST /token`, `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, `assertion` = an
//!   RS256 JWT signed with the key of [`GoogleServer::service_account_key_json`] (checked with
//!   ring): `iss` the client email, `sub` the impersonated user, `scope` space-separated, `aud`
//!   the token URI, `exp − iat` ≤ 3600 s, not expired, `iat` at most 60 s ahead. Answers
//!   `{"access_token":"ya29.…","expires_in":3599,"token_type":"Bearer"}`; errors are
//!   `{"error","error_description"}`: `invalid_grant` (unknown `iss` "Invalid grant: account not
//!   found", "Invalid JWT Signature.", "Invalid audience", the short-lived-token message for
//!   time problems, "Invalid email or User ID" for an unknown `sub`), 401 `unauthorized_client`
//!   for scopes domain-wide delegation does not grant ([`GoogleConfig::granted_scopes`]),
//!   `invalid_scope`, `unsupported_grant_type`. Without `sub` the token is the service account's
//!   own (Gmail answers it 400 `failedPrecondition`, Drive shows it nothing).
//!
//! Common to the APIs:
//! - Bearer tokens bound to (subject, scopes); missing, unknown, expired or revoked → 401
//!   `authError` with `WWW-Authenticate`; scopes not covering the API → 403
//!   `insufficientPermissions`. Errors use `{"error":{"code","message","errors":[{"message",
//!   "domain","reason"[,"location","locationType"]}],"status"}}`.
//! - Page tokens are opaque; page sizes are min(requested, [`GoogleConfig::page_size`]); some
//!   pages are deliberately short (and one Drive page empty) while more follow.
//! - Faults ([`GoogleFaults`]): 403 `userRateLimitExceeded` (no `Retry-After`) and 429
//!   `rateLimitExceeded` (`Retry-After: 1`), 503 `backendError`, truncated and corrupted
//!   downloads, token revocation, a page token answered with itself. Gmail's per-user concurrency limit (Gmail and Drive requests
//!   of one subject together, held until the body is sent) → 429 `rateLimitExceeded` "Too many
//!   concurrent requests for user."
//!
//! Admin SDK Directory (developers.google.com/admin-sdk/directory/reference/rest/v1/users):
//! `GET /admin/directory/v1/users?domain=|customer=my_customer` (`maxResults` 1–500, default
//! 100; ordered by email) and `/users/{userKey}`; only the admin may call it (others 403
//! `forbidden` "Not Authorized to access this resource/api").
//!
//! Gmail (developers.google.com/gmail/api/reference/rest): under `/gmail/v1/users/{me|email}/`:
//! `profile` (`messagesTotal` counts every message, spam and trash included), `labels`,
//! `labels/{id}` (with counts), `messages` (`maxResults` default 100, max 500; `labelIds`
//! repeatable, all must match; `includeSpamTrash`; `q` understands `in:anywhere`,
//! `in:<label>`, `label:<name>`, `is:unread`, `is:starred` and ignores other terms; newest first;
//! an empty result is `{"resultSizeEstimate":0}`), `messages/{id}` (`format=raw` with padded
//! base64url, `minimal`, `metadata` with `metadataHeaders`; `full` is answered like `metadata`),
//! `history` (`startHistoryId` older than the retained window → 404). Another user's mailbox →
//! 403 "Delegation denied for …". The suspended user → 400 `failedPrecondition` "Mail service
//! not enabled" (what Gmail answers for users without Gmail service).
//!
//! Drive (developers.google.com/drive/api/reference/rest/v3, …/guides/search-files,
//! …/guides/manage-downloads, …/guides/ref-export-formats): `about` (`fields` required),
//! `files` (`q` with `and`-joined clauses: `trashed = true|false`, `'<id>' in parents`,
//! `'<email>'|'me' in owners`, `mimeType =|!= '…'`, `name =|!=|contains '…'`; anything else 400
//! `invalid` at `q`; `corpora` user|drive|allDrives|domain — domain is answered like user;
//! `fields` honoured like Google, default `kind,id,name,mimeType` per file; `orderBy` accepted
//! and ignored: items come in id order), `files/{id}` (`root` works), `files/{id}?alt=media`
//! (`Range` → 206, 416 on an empty file; 403 `fileNotDownloadable` for Docs Editors files,
//! folders, shortcuts, forms), `files/{id}/export` (10 MB limit → 403
//! `exportSizeLimitExceeded`), the `exportLinks` URLs under `/feeds/download/…` (no limit),
//! `drives` (`useDomainAdminAccess` for the admin), `drives/{id}`, `changes/startPageToken`,
//! `changes` (…/guides/manage-changes: each file's latest change since the token, in change
//! order, `nextPageToken` while more follow and `newStartPageToken` on the last page;
//! `removed: true` without `file` for deletions, trashing is a change of the file; `driveId`
//! with `supportsAllDrives=true` for a shared drive's feed, `includeItemsFromAllDrives` to add
//! member drives to a user's; `includeRemoved`, `restrictToMyDrive`; `fields` checked for the
//! change and its file; a rejected token → 400 `invalid` at `pageToken`). Metadata changes
//! (rename, move, trash) raise `version` but not `modifiedTime` or `headRevisionId`. A shared
//! drive renamed or deleted (with its files) at run time is so in `drives`, `drives/{id}`,
//! file visibility and feeds (a deleted drive's feed → 404); `changeType: drive` entries are not
//! served.
//! Shared-drive items without `supportsAllDrives=true` → 404. The suspended user → 403
//! `forbidden` "The user has been suspended."
//!
//! - `GET /_sandbox/stats` (no token): the [`GoogleStats`], configured limits and the seeded
//!   domain's totals as JSON.
//!
//! Not served: writes, Gmail threads/drafts/attachments endpoints, batch requests, Drive
//! permissions/revisions listings.

// Route helpers return the error response itself (`Result<_, Resp>`): it is built once per
// request and sent at once, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod directory;
mod domain;
mod drive;
mod export;
mod gmail;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::Digest;
use tokio::net::TcpListener;

pub use domain::{
    GFile, GLabel, GMailbox, GMessage, GSharedDrive, GUser, GoogleTruth, DOCUMENT, DRAWING, FOLDER,
    FORM, PRESENTATION, SHORTCUT, SPREADSHEET,
};

use crate::graph::content::{key_of, ContentKind, ContentSpec, Rng};
use crate::graph::{full, now_unix, Resp};

/// The service account's client email (the `iss` of its JWTs).
pub const GOOGLE_SA_CLIENT_EMAIL: &str = "ferry-export@ferry-sandbox.iam.gserviceaccount.com";

/// The service account's private key, PKCS#8 PEM (a test value, not a secret).
const SA_KEY_PEM: &str = include_str!("service-account-test-key.pem");
const SA_KEY_ID: &str = "5f1e0c9d2b8a7e6f4d3c2b1a0f9e8d7c6b5a4f3e";
const SA_CLIENT_ID: &str = "104857600000000000042";

/// Directory scope (read-only).
pub const SCOPE_DIRECTORY: &str = "https://www.googleapis.com/auth/admin.directory.user.readonly";
/// Gmail scope (read-only).
pub const SCOPE_GMAIL: &str = "https://www.googleapis.com/auth/gmail.readonly";
/// Drive scope (read-only).
pub const SCOPE_DRIVE: &str = "https://www.googleapis.com/auth/drive.readonly";

/// Scopes the token endpoint knows (others are `invalid_scope`).
const KNOWN_SCOPES: &[&str] = &[
    SCOPE_DIRECTORY,
    SCOPE_GMAIL,
    SCOPE_DRIVE,
    "https://www.googleapis.com/auth/admin.directory.user",
    "https://www.googleapis.com/auth/admin.directory.group.readonly",
    "https://www.googleapis.com/auth/drive",
    "https://www.googleapis.com/auth/drive.file",
    "https://www.googleapis.com/auth/drive.metadata.readonly",
    "https://www.googleapis.com/auth/drive.meet.readonly",
    "https://mail.google.com/",
    "https://www.googleapis.com/auth/gmail.modify",
    "https://www.googleapis.com/auth/gmail.metadata",
    "https://www.googleapis.com/auth/gmail.addons.current.message.readonly",
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/userinfo.email",
    "openid",
    "email",
    "profile",
];

/// What the sandbox domain holds and how the server behaves.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    /// Same seed → same domain, ids and bytes.
    pub seed: u64,
    /// Primary domain.
    pub domain: String,
    /// Active users (user 0 is the admin `admin@<domain>`); one suspended user is added.
    pub users: usize,
    /// Regular messages per user (2 spam and 2 trash are added).
    pub messages_per_user: usize,
    /// Extra seeded My Drive items per user (binary files, Docs, Sheets in the user's
    /// folders), on top of a fixed set every user has (folders three deep, every native type,
    /// a shortcut, a trashed file, an empty file, hostile names, a file shared with another user).
    pub files_per_user: usize,
    /// Shared drives with members (one member-less "Orphaned drive" is added).
    pub shared_drives: usize,
    /// If > 0, `Large/big-file.bin` of this size in user 0's My Drive.
    pub large_file_bytes: u64,
    /// If > 0, a Google Doc "Big report" in user 0's My Drive whose every export is this many
    /// bytes (over 10 MB, `files.export` refuses it).
    pub large_export_bytes: u64,
    /// If > 0, user 0's Inbox also holds "Large attachment", a message with an attachment of
    /// this many bytes (its raw form is about 4/3 larger, its `format=raw` answer 16/9).
    pub large_message_bytes: u64,
    /// Cap on server page sizes: a page holds min(requested or Google's default, this).
    pub page_size: usize,
    /// Access token lifetime.
    pub token_lifetime: Duration,
    /// Requests served at once per impersonated user (Gmail and Drive together); one more is
    /// answered 429.
    pub user_concurrency: usize,
    /// Scopes domain-wide delegation grants the service account.
    pub granted_scopes: Vec<String>,
    /// Injected faults.
    pub faults: GoogleFaults,
    /// Added latency per API request, while it holds the user's concurrency slot.
    pub api_latency: Duration,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        GoogleConfig {
            seed: 1,
            domain: "example.no".into(),
            users: 3,
            messages_per_user: 20,
            files_per_user: 10,
            shared_drives: 1,
            large_file_bytes: 0,
            large_export_bytes: 0,
            large_message_bytes: 0,
            page_size: 1000,
            token_lifetime: Duration::from_secs(3600),
            user_concurrency: 10,
            granted_scopes: vec![
                SCOPE_DIRECTORY.into(),
                SCOPE_GMAIL.into(),
                SCOPE_DRIVE.into(),
            ],
            faults: GoogleFaults::default(),
            api_latency: Duration::ZERO,
        }
    }
}

/// Faults the Google sandbox injects. "API request" means anything but `/token` and
/// `/_sandbox/…`; "download" means `alt=media`, `files.export` and `exportLinks` URLs.
#[derive(Debug, Clone, Default)]
pub struct GoogleFaults {
    /// Every Nth API request → alternately 403 `userRateLimitExceeded` (no `Retry-After`) and
    /// 429 `rateLimitExceeded` (`Retry-After: 1`); 0 = never.
    pub throttle_every: u64,
    /// Every Nth API request → 503 `backendError`; 0 = never.
    pub unavailable_every: u64,
    /// Seeded probability of a 429, 403 rate limit or 503 on any API request or download.
    pub random_throttle: f64,
    /// Every Nth download sends half its `Content-Length` and closes the connection; 0 = never.
    pub truncate_every: u64,
    /// Every Nth `alt=media` download flips one byte; 0 = never.
    pub corrupt_every: u64,
    /// A subject whose messages' `messages.get` always answers 500 `backendError` (changed
    /// later by [`GoogleServer::set_failing`]).
    pub fail_message_always: Option<String>,
    /// A Drive file name whose `alt=media` always answers 500 (changed later by
    /// [`GoogleServer::set_failing`]).
    pub fail_file_always: Option<String>,
    /// At every multiple of N API requests, every token issued so far is revoked (→ 401).
    pub expire_tokens_after_requests: u64,
    /// A list call asked for a later page answers with the very `pageToken` it was given as
    /// its `nextPageToken`, as a broken server might: a client that follows it blindly never
    /// ends, one that stops quietly leaves the rest out.
    pub repeat_page_token: bool,
}

/// Counters, from [`GoogleServer::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoogleStats {
    /// Every request received (token, API, `/_sandbox` excluded).
    pub requests: u64,
    /// API requests (authenticated).
    pub api_requests: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Token requests refused.
    pub token_errors: u64,
    /// 401 responses on API requests.
    pub unauthorized: u64,
    /// 403/429/503 responses sent by fault injection.
    pub throttled: u64,
    /// Downloads served (`alt=media`, `files.export`, `exportLinks`).
    pub downloads: u64,
    /// Exports served (`files.export` and `exportLinks`).
    pub exports: u64,
    /// Downloads cut short on purpose.
    pub truncated: u64,
    /// Downloads corrupted on purpose.
    pub corrupted: u64,
    /// The most requests in flight at once for any one user.
    pub max_concurrent_per_user: usize,
    /// Requests refused for the per-user concurrency limit.
    pub concurrency_rejections: u64,
    /// `messages.get` calls answered.
    pub messages_get: u64,
    /// `messages.list` pages answered.
    pub messages_list_pages: u64,
    /// `history.list` pages answered.
    pub history_pages: u64,
    /// `files.list` pages answered.
    pub files_list_pages: u64,
    /// `changes.list` pages answered.
    pub changes_pages: u64,
    /// `files.get` calls answered with metadata (not `alt=media`).
    pub files_get: u64,
    /// Directory `users.list` pages answered.
    pub directory_pages: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    api_requests: AtomicU64,
    tokens_issued: AtomicU64,
    token_errors: AtomicU64,
    unauthorized: AtomicU64,
    throttled: AtomicU64,
    downloads: AtomicU64,
    exports: AtomicU64,
    truncated: AtomicU64,
    corrupted: AtomicU64,
    max_concurrent: AtomicUsize,
    concurrency_rejections: AtomicU64,
    messages_get: AtomicU64,
    messages_list_pages: AtomicU64,
    history_pages: AtomicU64,
    files_list_pages: AtomicU64,
    changes_pages: AtomicU64,
    files_get: AtomicU64,
    directory_pages: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::SeqCst) + 1
}

// ---------------------------------------------------------------------------------------------
// Live state.

pub(crate) struct LiveMsg {
    pub m: GMessage,
    pub deleted: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistKind {
    Added,
    Deleted,
}

pub(crate) struct HistRec {
    pub id: u64,
    pub kind: HistKind,
    pub msg_id: String,
    pub thread_id: String,
    pub labels: Vec<String>,
}

pub(crate) struct LiveMailbox {
    pub labels: Vec<GLabel>,
    pub msgs: Vec<LiveMsg>,
    pub history: Vec<HistRec>,
    pub history_id: u64,
    /// Records at or below this id are gone: an older `startHistoryId` → 404.
    pub floor: u64,
}

pub(crate) struct LiveFile {
    pub f: GFile,
    pub deleted: bool,
}

pub(crate) struct Change {
    pub seq: u64,
    pub file_id: String,
    pub removed: bool,
    pub time_ms: i64,
}

pub(crate) struct Live {
    pub mailboxes: BTreeMap<String, LiveMailbox>,
    pub files: Vec<LiveFile>,
    /// Shared drives now (deleted ones gone, renamed ones renamed).
    pub drives: Vec<GSharedDrive>,
    pub changes: Vec<Change>,
    pub change_seq: u64,
    /// Changes page tokens of earlier epochs are refused.
    pub change_epoch: u64,
    pub rng: Rng,
}

impl Live {
    /// The changes page token for change number `seq` (`<seq>`, or `<epoch>.<seq>` once
    /// tokens were invalidated).
    pub fn change_token(&self, seq: u64) -> String {
        match self.change_epoch {
            0 => seq.to_string(),
            e => format!("{e}.{seq}"),
        }
    }

    /// The change number of a token of the current epoch.
    pub fn read_change_token(&self, token: &str) -> Option<u64> {
        let (epoch, seq) = match token.split_once('.') {
            Some((e, s)) => (e.parse().ok()?, s),
            None => (0, token),
        };
        (epoch == self.change_epoch).then_some(())?;
        seq.parse().ok()
    }

    pub fn file(&self, id: &str) -> Option<&GFile> {
        self.files
            .iter()
            .find(|l| !l.deleted && l.f.id == id)
            .map(|l| &l.f)
    }
}

struct TokenInfo {
    serial: u64,
    expires: Instant,
    subject: String,
    scopes: Vec<String>,
}

pub(crate) struct State {
    pub cfg: GoogleConfig,
    pub truth: GoogleTruth,
    pub base: String,
    pub live: Mutex<Live>,
    tokens: Mutex<HashMap<String, TokenInfo>>,
    token_serial: AtomicU64,
    revoked_below: AtomicU64,
    inflight: Mutex<HashMap<String, usize>>,
    throttle_hits: AtomicU64,
    pub download_count: AtomicU64,
    pub media_count: AtomicU64,
    /// The message subject and file name that always fail, from the faults until changed.
    pub failing: Mutex<(Option<String>, Option<String>)>,
    fault_rng: Mutex<Rng>,
    pub secret: u64,
    public_key: Vec<u8>,
    c: Counters,
}

/// An API request, authenticated.
pub(crate) struct Req {
    pub method: http::Method,
    /// Percent-decoded path segments.
    pub segs: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: http::HeaderMap,
    /// The impersonated user (lowercase email), or the service account itself.
    pub subject: String,
}

impl Req {
    /// The first value of a query parameter.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable query parameter (comma-separated values split too).
    pub fn q_all(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A boolean parameter (`true`, case-insensitive).
    pub fn flag(&self, name: &str) -> bool {
        self.q(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

// ---------------------------------------------------------------------------------------------
// Responses.

/// A JSON response as Google's APIs send it.
pub(crate) fn json_resp(status: u16, v: &Value) -> Resp {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8")
        .header("vary", "Origin, X-Origin, Referer")
        .body(full(v.to_string()))
        .expect("valid response")
}

fn status_text(status: u16, reason: &str) -> &'static str {
    match status {
        400 if reason == "failedPrecondition" => "FAILED_PRECONDITION",
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        416 => "OUT_OF_RANGE",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// A Google API error, built up.
pub(crate) struct GErr {
    status: u16,
    domain: &'static str,
    reason: String,
    message: String,
    location: Option<(String, &'static str)>,
    headers: Vec<(&'static str, String)>,
}

/// An error with domain `global`.
pub(crate) fn gerr(status: u16, reason: &str, message: impl Into<String>) -> GErr {
    GErr {
        status,
        domain: "global",
        reason: reason.to_string(),
        message: message.into(),
        location: None,
        headers: Vec::new(),
    }
}

impl GErr {
    pub fn domain(mut self, d: &'static str) -> GErr {
        self.domain = d;
        self
    }

    /// A parameter the error is about.
    pub fn param(mut self, name: &str) -> GErr {
        self.location = Some((name.to_string(), "parameter"));
        self
    }

    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> GErr {
        self.headers.push((k, v.into()));
        self
    }

    pub fn resp(self) -> Resp {
        let mut item =
            json!({"message": self.message, "domain": self.domain, "reason": self.reason});
        if let Some((loc, kind)) = &self.location {
            item["locationType"] = json!(kind);
            item["location"] = json!(loc);
        }
        let body = json!({"error": {
            "code": self.status,
            "message": self.message,
            "errors": [item],
            "status": status_text(self.status, &self.reason),
        }});
        let mut b = http::Response::builder()
            .status(self.status)
            .header("content-type", "application/json; charset=UTF-8");
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        b.body(full(body.to_string())).expect("valid response")
    }
}

/// 404 `notFound` "Requested entity was not found." (Gmail's wording).
pub(crate) fn not_found() -> Resp {
    gerr(404, "notFound", "Requested entity was not found.").resp()
}

/// `400 invalid "Invalid Value"` at a parameter.
pub(crate) fn invalid_param(name: &str) -> Resp {
    gerr(400, "invalid", "Invalid Value").param(name).resp()
}

// ---------------------------------------------------------------------------------------------
// Paging.

/// How many items page number `page` (0-based) takes: the second of every four pages is
/// two-thirds size while more follow; with `allow_empty`, the fourth page is empty.
pub(crate) fn page_take(page: u64, size: usize, allow_empty: bool) -> usize {
    if allow_empty && page == 3 {
        0
    } else if page % 4 == 1 && size > 2 {
        size * 2 / 3
    } else {
        size
    }
}

impl State {
    /// An opaque page token for (`scope`, offset, page number).
    pub fn page_token(&self, scope: &str, offset: usize, page: u64) -> String {
        let payload = format!("{offset}:{page}");
        let mac = sha2::Sha256::digest(format!("{}|{scope}|{payload}", self.secret).as_bytes());
        let mac: String = mac[..6].iter().map(|b| format!("{b:02x}")).collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{payload}:{mac}"))
    }

    /// The (offset, page number) of a page token issued for `scope`.
    pub fn read_page_token(&self, scope: &str, token: &str) -> Option<(usize, u64)> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .ok()?;
        let s = String::from_utf8(raw).ok()?;
        let mut it = s.split(':');
        let (o, p, _) = (it.next()?, it.next()?, it.next()?);
        let (offset, page) = (o.parse().ok()?, p.parse().ok()?);
        (self.page_token(scope, offset, page) == token.trim_end_matches('='))
            .then_some((offset, page))
    }

    /// One page of `items`: (offset of the page, its items, the next token) for the request's
    /// `pageToken`; Err(400) if the token is bad.
    pub fn page<'a, T>(
        &self,
        r: &Req,
        scope: &str,
        items: &'a [T],
        size: usize,
        allow_empty: bool,
    ) -> Result<(&'a [T], Option<String>), Resp> {
        let (offset, page) = match r.q("pageToken").filter(|t| !t.is_empty()) {
            None => (0, 0),
            Some(t) => self
                .read_page_token(scope, t)
                .ok_or_else(|| invalid_param("pageToken"))?,
        };
        let size = size.min(self.cfg.page_size.max(1)).max(1);
        let start = offset.min(items.len());
        let mut take = page_take(page, size, allow_empty);
        if start + take >= items.len() && take < size {
            // Short pages only while more follow.
            take = size;
        }
        let end = (start + take).min(items.len());
        let next = (end < items.len()).then(|| match r.q("pageToken") {
            Some(given) if self.cfg.faults.repeat_page_token && !given.is_empty() => {
                given.to_string()
            }
            _ => self.page_token(scope, end, page + 1),
        });
        Ok((&items[start..end], next))
    }

    /// The page size a request asks for with `param`, Google's `default` if absent, clamped to
    /// `max`; Err(400) if not a positive number.
    pub fn requested_size(
        &self,
        r: &Req,
        param: &str,
        default: usize,
        max: usize,
    ) -> Result<usize, Resp> {
        match r.q(param) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 1 => Ok((n as usize).min(max)),
                _ => Err(invalid_param(param)),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server.

/// The sandbox Google server on 127.0.0.1, until dropped.
pub struct GoogleServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("test key PEM is base64")
}

impl State {
    fn new(cfg: GoogleConfig, truth: GoogleTruth, base: String) -> State {
        let key = ring::signature::RsaKeyPair::from_pkcs8(&pem_der(SA_KEY_PEM))
            .expect("test key is PKCS#8 RSA");
        let public_key = key.public().as_ref().to_vec();
        let mut mailboxes = BTreeMap::new();
        let floor = domain::history_floor(cfg.seed);
        for (email, mb) in &truth.mailboxes {
            let mut history: Vec<HistRec> = mb
                .messages
                .iter()
                .map(|m| HistRec {
                    id: m.history_id,
                    kind: HistKind::Added,
                    msg_id: m.id.clone(),
                    thread_id: m.thread_id.clone(),
                    labels: m.label_ids.clone(),
                })
                .collect();
            history.sort_by_key(|h| h.id);
            mailboxes.insert(
                email.clone(),
                LiveMailbox {
                    labels: mb.labels.clone(),
                    msgs: mb
                        .messages
                        .iter()
                        .map(|m| LiveMsg {
                            m: m.clone(),
                            deleted: false,
                        })
                        .collect(),
                    history,
                    history_id: mb.history_id,
                    floor,
                },
            );
        }
        let changes: Vec<Change> = truth
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| Change {
                seq: i as u64 + 1,
                file_id: f.id.clone(),
                removed: false,
                time_ms: parse_ms(&f.modified_time),
            })
            .collect();
        let seed = cfg.seed;
        State {
            live: Mutex::new(Live {
                mailboxes,
                files: truth
                    .files
                    .iter()
                    .map(|f| LiveFile {
                        f: f.clone(),
                        deleted: false,
                    })
                    .collect(),
                change_seq: changes.len() as u64,
                change_epoch: 0,
                drives: truth.shared_drives.clone(),
                changes,
                rng: Rng::new(seed ^ 0x6A11E),
            }),
            tokens: Mutex::new(HashMap::new()),
            token_serial: AtomicU64::new(0),
            revoked_below: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            throttle_hits: AtomicU64::new(0),
            download_count: AtomicU64::new(0),
            media_count: AtomicU64::new(0),
            failing: Mutex::new((
                cfg.faults.fail_message_always.clone(),
                cfg.faults.fail_file_always.clone(),
            )),
            fault_rng: Mutex::new(Rng::new(seed ^ 0xFA17)),
            secret: key_of(seed, "google-sandbox-secret"),
            public_key,
            c: Counters::default(),
            cfg,
            truth,
            base,
        }
    }

    fn stats(&self) -> GoogleStats {
        let c = &self.c;
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        GoogleStats {
            requests: g(&c.requests),
            api_requests: g(&c.api_requests),
            tokens_issued: g(&c.tokens_issued),
            token_errors: g(&c.token_errors),
            unauthorized: g(&c.unauthorized),
            throttled: g(&c.throttled),
            downloads: g(&c.downloads),
            exports: g(&c.exports),
            truncated: g(&c.truncated),
            corrupted: g(&c.corrupted),
            max_concurrent_per_user: c.max_concurrent.load(Ordering::SeqCst),
            concurrency_rejections: g(&c.concurrency_rejections),
            messages_get: g(&c.messages_get),
            messages_list_pages: g(&c.messages_list_pages),
            history_pages: g(&c.history_pages),
            files_list_pages: g(&c.files_list_pages),
            changes_pages: g(&c.changes_pages),
            files_get: g(&c.files_get),
            directory_pages: g(&c.directory_pages),
        }
    }

    fn stats_json(&self) -> Value {
        let s = self.stats();
        let t = &self.truth;
        let messages: usize = t.mailboxes.values().map(|m| m.messages.len()).sum();
        let message_bytes: u64 = t
            .mailboxes
            .values()
            .flat_map(|m| m.messages.iter())
            .map(|m| m.size_estimate)
            .sum();
        let binary: Vec<&GFile> = t.files.iter().filter(|f| f.size.is_some()).collect();
        json!({
            "stats": {
                "requests": s.requests,
                "api_requests": s.api_requests,
                "tokens_issued": s.tokens_issued,
                "token_errors": s.token_errors,
                "unauthorized": s.unauthorized,
                "throttled": s.throttled,
                "downloads": s.downloads,
                "exports": s.exports,
                "truncated": s.truncated,
                "corrupted": s.corrupted,
                "max_concurrent_per_user": s.max_concurrent_per_user,
                "concurrency_rejections": s.concurrency_rejections,
                "messages_get": s.messages_get,
                "messages_list_pages": s.messages_list_pages,
                "history_pages": s.history_pages,
                "files_list_pages": s.files_list_pages,
                "changes_pages": s.changes_pages,
                "files_get": s.files_get,
                "directory_pages": s.directory_pages,
            },
            "limits": {
                "user_concurrency": self.cfg.user_concurrency,
                "page_size": self.cfg.page_size,
                "api_latency_ms": self.cfg.api_latency.as_millis() as u64,
                "token_lifetime_s": self.cfg.token_lifetime.as_secs(),
            },
            "domain": {
                "domain": t.domain,
                "users": t.users.len(),
                "active_users": t.users.iter().filter(|u| !u.suspended).count(),
                "messages": messages,
                "message_bytes": message_bytes,
                "files": t.files.len(),
                "binary_files": binary.len(),
                "binary_bytes": binary.iter().filter_map(|f| f.size).sum::<u64>(),
                "native_files": t.files.iter().filter(|f| !f.export_formats().is_empty()).count(),
                "shared_drives": t.shared_drives.len(),
            },
        })
    }

    /// The token's subject if it is valid, else the reason it is not.
    fn check_auth(&self, headers: &http::HeaderMap) -> Result<(String, Vec<String>), ()> {
        let v = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(())?;
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or(())?
            .trim();
        let tokens = self.tokens.lock().expect("tokens lock");
        let t = tokens.get(token).ok_or(())?;
        if t.expires <= Instant::now() || t.serial < self.revoked_below.load(Ordering::SeqCst) {
            return Err(());
        }
        Ok((t.subject.clone(), t.scopes.clone()))
    }

    fn issue_token(&self, subject: String, scopes: Vec<String>) -> String {
        let serial = self.token_serial.fetch_add(1, Ordering::SeqCst);
        bump(&self.c.tokens_issued);
        let mut rng = Rng::new(self.secret ^ serial.wrapping_mul(0x9E37_79B9));
        let token = format!(
            "ya29.c.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rng.bytes(96))
        );
        self.tokens.lock().expect("tokens lock").insert(
            token.clone(),
            TokenInfo {
                serial,
                expires: Instant::now() + self.cfg.token_lifetime,
                subject,
                scopes,
            },
        );
        token
    }

    /// A rate-limit or unavailability response from fault injection.
    fn fault(&self, kind: u8) -> Resp {
        bump(&self.c.throttled);
        match kind {
            0 => gerr(403, "userRateLimitExceeded", "User Rate Limit Exceeded. Rate of requests for user exceed configured project quota. You may consider re-evaluating expected per-user traffic to the API and adjust project quota limits accordingly. You may monitor aggregate quota usage and adjust limits in the API Console.")
                .domain("usageLimits")
                .resp(),
            1 => gerr(429, "rateLimitExceeded", "Rate Limit Exceeded")
                .domain("usageLimits")
                .header("retry-after", "1")
                .resp(),
            _ => gerr(503, "backendError", "The service is currently unavailable.").resp(),
        }
    }

    /// A random fault, if the seeded dice say so.
    pub fn random_fault(&self) -> Option<Resp> {
        let p = self.cfg.faults.random_throttle;
        if p <= 0.0 {
            return None;
        }
        let kind = {
            let mut rng = self.fault_rng.lock().expect("rng lock");
            if !rng.chance(p) {
                return None;
            }
            rng.below(3) as u8
        };
        Some(self.fault(kind))
    }

    /// Takes a concurrency slot for `subject`, or None if it has too many requests in flight.
    fn enter(self: &Arc<Self>, subject: &str) -> Option<UserSlot> {
        let mut m = self.inflight.lock().expect("inflight lock");
        let n = m.get(subject).copied().unwrap_or(0);
        if n >= self.cfg.user_concurrency.max(1) {
            bump(&self.c.concurrency_rejections);
            return None;
        }
        m.insert(subject.to_string(), n + 1);
        self.c.max_concurrent.fetch_max(n + 1, Ordering::SeqCst);
        Some(UserSlot {
            state: self.clone(),
            subject: subject.to_string(),
        })
    }

    /// Counts a download; true if this one is to be truncated.
    pub fn download_truncates(&self) -> bool {
        bump(&self.c.downloads);
        let n = bump(&self.download_count);
        let every = self.cfg.faults.truncate_every;
        let t = every > 0 && n.is_multiple_of(every);
        if t {
            bump(&self.c.truncated);
        }
        t
    }

    /// Counts an `alt=media` download; true if this one is to be corrupted.
    pub fn media_corrupts(&self) -> bool {
        let n = bump(&self.media_count);
        let every = self.cfg.faults.corrupt_every;
        every > 0 && n.is_multiple_of(every)
    }
}

/// One request in flight for a user; released when dropped (with the response body).
struct UserSlot {
    state: Arc<State>,
    subject: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut m = self.state.inflight.lock().expect("inflight lock");
        if let Some(n) = m.get_mut(&self.subject) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.subject);
            }
        }
    }
}

pub(crate) fn parse_ms(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl GoogleServer {
    /// Generates the domain for `config` and serves it on `port` (0: a free one), on the
    /// current tokio runtime.
    pub async fn start(config: GoogleConfig, port: u16) -> io::Result<GoogleServer> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let truth = domain::generate(&config);
        let state = Arc::new(State::new(config, truth, format!("http://{addr}")));
        let st = state.clone();
        let svc = hyper::service::service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(handle(st, req).await) }
        });
        let task = crate::serve(listener, svc);
        Ok(GoogleServer { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`: Drive at `<root>/drive/v3/`, Gmail at `<root>/gmail/v1/`,
    /// Directory at `<root>/admin/directory/v1/`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `<root>/token`.
    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A complete service-account key file, as the Cloud console downloads it, whose
    /// `token_uri` is this server's.
    pub fn service_account_key_json(&self) -> String {
        let v = json!({
            "type": "service_account",
            "project_id": "ferry-sandbox",
            "private_key_id": SA_KEY_ID,
            "private_key": SA_KEY_PEM,
            "client_email": GOOGLE_SA_CLIENT_EMAIL,
            "client_id": SA_CLIENT_ID,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": format!("https://www.googleapis.com/robot/v1/metadata/x509/{}", GOOGLE_SA_CLIENT_EMAIL.replace('@', "%40")),
            "universe_domain": "googleapis.com",
        });
        serde_json::to_string_pretty(&v).expect("JSON")
    }

    /// `admin@<domain>`.
    pub fn admin_email(&self) -> String {
        self.state.truth.admin().email.clone()
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The ground truth as seeded.
    pub fn truth(&self) -> &GoogleTruth {
        &self.state.truth
    }

    /// The ground truth now: seeded content plus additions and modifications, minus deletions.
    pub fn current_truth(&self) -> GoogleTruth {
        let mut t = self.state.truth.clone();
        let live = self.state.live.lock().expect("live lock");
        for (email, mb) in t.mailboxes.iter_mut() {
            if let Some(l) = live.mailboxes.get(email) {
                let mut msgs: Vec<GMessage> = l
                    .msgs
                    .iter()
                    .filter(|m| !m.deleted)
                    .map(|m| m.m.clone())
                    .collect();
                msgs.sort_by_key(|m| std::cmp::Reverse(m.internal_date_ms));
                mb.messages = msgs;
                mb.history_id = l.history_id;
            }
        }
        t.files = live
            .files
            .iter()
            .filter(|f| !f.deleted)
            .map(|f| f.f.clone())
            .collect();
        t.shared_drives = live.drives.clone();
        t
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GoogleStats {
        self.state.stats()
    }

    /// Waits until the server stops (it runs until dropped or the process ends).
    pub async fn serve_forever(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Adds a message (labels as given) to a user's mailbox, dated now; history records it as
    /// `messagesAdded`. None if the user has no mailbox.
    pub fn add_message(
        &self,
        user_email: &str,
        label_ids: &[&str],
        subject: &str,
    ) -> Option<GMessage> {
        let email = self.state.truth.user(user_email)?.email.clone();
        let mut live = self.state.live.lock().expect("live lock");
        let Live { mailboxes, rng, .. } = &mut *live;
        let mb = mailboxes.get_mut(&email)?;
        let ms = now_ms();
        let id = domain::message_id(rng, ms);
        let template = self.state.truth.mailboxes.get(&email)?.messages.first()?;
        let mut spec = template.spec.clone();
        spec.key = key_of(self.state.cfg.seed, &id);
        spec.subject = subject.to_string();
        spec.date = ms / 1000;
        spec.message_id = format!("{id}.added@mail.gmail.com");
        spec.attachments.clear();
        mb.history_id += 1;
        let m = GMessage {
            id: id.clone(),
            thread_id: id.clone(),
            label_ids: label_ids.iter().map(|s| s.to_string()).collect(),
            internal_date_ms: ms,
            history_id: mb.history_id,
            subject: subject.to_string(),
            size_estimate: crate::graph::content::build_mime(&spec).len() as u64,
            spec,
        };
        mb.history.push(HistRec {
            id: mb.history_id,
            kind: HistKind::Added,
            msg_id: id.clone(),
            thread_id: id,
            labels: m.label_ids.clone(),
        });
        mb.msgs.insert(
            0,
            LiveMsg {
                m: m.clone(),
                deleted: false,
            },
        );
        Some(m)
    }

    /// Deletes a message permanently; history records it as `messagesDeleted`. False if not
    /// found.
    pub fn delete_message(&self, user_email: &str, message_id: &str) -> bool {
        let Some(u) = self.state.truth.user(user_email) else {
            return false;
        };
        let mut live = self.state.live.lock().expect("live lock");
        let Some(mb) = live.mailboxes.get_mut(&u.email) else {
            return false;
        };
        let Some(m) = mb
            .msgs
            .iter_mut()
            .find(|m| !m.deleted && m.m.id == message_id)
        else {
            return false;
        };
        m.deleted = true;
        let rec = (m.m.thread_id.clone(), m.m.label_ids.clone());
        mb.history_id += 1;
        let id = mb.history_id;
        mb.history.push(HistRec {
            id,
            kind: HistKind::Deleted,
            msg_id: message_id.to_string(),
            thread_id: rec.0,
            labels: rec.1,
        });
        true
    }

    /// From now on, `messages.get` of messages with this subject and `alt=media` of files of
    /// this name always answer 500 (None: none fail), whatever the faults said.
    pub fn set_failing(&self, message_subject: Option<&str>, file_name: Option<&str>) {
        *self.state.failing.lock().expect("failing lock") = (
            message_subject.map(str::to_string),
            file_name.map(str::to_string),
        );
    }

    /// Makes every history id issued so far too old: `history.list` with an older
    /// `startHistoryId` answers 404.
    pub fn invalidate_history(&self) {
        let mut live = self.state.live.lock().expect("live lock");
        for mb in live.mailboxes.values_mut() {
            mb.floor = mb.history_id;
        }
    }

    /// Adds a binary file of `size` generated bytes owned by `owner_email`, in `parent_id` (a
    /// folder of theirs, or a shared drive or one of its folders; None: their My Drive root).
    /// It appears in `changes.list`. None if the owner or parent is unknown.
    pub fn add_file(
        &self,
        owner_email: &str,
        parent_id: Option<&str>,
        name: &str,
        size: u64,
    ) -> Option<GFile> {
        self.add_item(owner_email, parent_id, name, Some(size))
    }

    /// Adds a folder owned by `owner_email` in `parent_id` (as for [`GoogleServer::add_file`]).
    /// It appears in `changes.list`. None if the owner or parent is unknown.
    pub fn add_folder(
        &self,
        owner_email: &str,
        parent_id: Option<&str>,
        name: &str,
    ) -> Option<GFile> {
        self.add_item(owner_email, parent_id, name, None)
    }

    /// A binary file (`size`) or a folder (None).
    fn add_item(
        &self,
        owner_email: &str,
        parent_id: Option<&str>,
        name: &str,
        size: Option<u64>,
    ) -> Option<GFile> {
        let owner = self.state.truth.user(owner_email)?.clone();
        let seed = self.state.cfg.seed;
        let mut live = self.state.live.lock().expect("live lock");
        let (parent, drive_id, mut path) = self.place(&live, &owner, parent_id)?;
        path.push(name.to_string());
        let id = domain::file_id(&mut live.rng);
        let now = now_ms();
        let mut f = GFile {
            id: id.clone(),
            name: name.to_string(),
            mime_type: "application/octet-stream".into(),
            parents: vec![parent],
            owner: drive_id.is_none().then(|| owner.email.clone()),
            drive_id,
            trashed: false,
            size: None,
            md5: None,
            sha1: None,
            sha256: None,
            created_time: domain::rfc3339_ms(now),
            modified_time: domain::rfc3339_ms(now),
            version: 1,
            head_revision_id: None,
            shortcut_target: None,
            shared_with: Vec::new(),
            path,
            content: ContentSpec {
                key: key_of(seed, &id) ^ 1,
                len: size.unwrap_or(0),
                kind: ContentKind::Binary,
            },
            export_len: None,
        };
        match size {
            Some(_) => domain::set_binary_meta(&mut f, seed, false),
            None => f.mime_type = FOLDER.into(),
        }
        live.files.push(LiveFile {
            f: f.clone(),
            deleted: false,
        });
        record_change(&mut live, &id, false, now);
        Some(f)
    }

    /// Where a new item of `owner` goes: (parent id, shared drive id, folder path) for
    /// `parent_id` — their My Drive root (None, `root` or its id), one of their folders, a
    /// shared drive or one of its folders.
    fn place(
        &self,
        live: &Live,
        owner: &GUser,
        parent_id: Option<&str>,
    ) -> Option<(String, Option<String>, Vec<String>)> {
        Some(match parent_id {
            None => (owner.root_folder_id.clone(), None, Vec::new()),
            Some(p) if p == owner.root_folder_id || p == "root" => {
                (owner.root_folder_id.clone(), None, Vec::new())
            }
            Some(p) => {
                if let Some(d) = live.drives.iter().find(|d| d.id == p) {
                    (d.id.clone(), Some(d.id.clone()), Vec::new())
                } else {
                    let f = live.file(p).filter(|f| f.is_folder())?;
                    if f.drive_id.is_none() && f.owner.as_deref() != Some(owner.email.as_str()) {
                        return None;
                    }
                    (f.id.clone(), f.drive_id.clone(), f.path.clone())
                }
            }
        })
    }

    /// Gives a file new content (binary: new bytes of the same size, checksums and revision;
    /// native: new export bytes), a new `modifiedTime` and version. False if not found.
    pub fn modify_file(&self, file_id: &str) -> bool {
        let seed = self.state.cfg.seed;
        let mut live = self.state.live.lock().expect("live lock");
        let Some(lf) = live
            .files
            .iter_mut()
            .find(|l| !l.deleted && l.f.id == file_id)
        else {
            return false;
        };
        let f = &mut lf.f;
        let now = now_ms().max(parse_ms(&f.modified_time) + 1);
        f.version += 1;
        f.modified_time = domain::rfc3339_ms(now);
        f.content.key = key_of(seed, &f.id) ^ f.version;
        if f.size.is_some() {
            let md5_only = f.sha256.is_none();
            domain::set_binary_meta(f, seed, md5_only);
        }
        record_change(&mut live, file_id, false, now);
        true
    }

    /// Renames a file or folder (the paths under a folder follow). Like Drive, a metadata
    /// change raises `version`; `modifiedTime`, content and `headRevisionId` stay. False if not
    /// found.
    pub fn rename_file(&self, file_id: &str, new_name: &str) -> bool {
        self.change_metadata(file_id, |f, _| {
            f.name = new_name.to_string();
            true
        })
    }

    /// Moves a file or folder to `new_parent` in the same drive (None: the root of its My Drive
    /// or shared drive); the paths under a folder follow, `version` rises as for a rename.
    /// False if either is not found, the parent is in another drive, or under the item itself.
    pub fn move_file(&self, file_id: &str, new_parent: Option<&str>) -> bool {
        self.change_metadata(file_id, |f, live| {
            let root = match (&f.drive_id, &f.owner) {
                (Some(d), _) => d.clone(),
                (None, Some(o)) => match self.state.truth.user(o) {
                    Some(u) => u.root_folder_id.clone(),
                    None => return false,
                },
                (None, None) => return false,
            };
            let parent = match new_parent {
                None => root,
                Some(p) if p == root || p == "root" => root,
                Some(p) => {
                    let Some(target) = live.file(p).filter(|t| t.is_folder()) else {
                        return false;
                    };
                    if target.drive_id != f.drive_id
                        || (f.drive_id.is_none() && target.owner != f.owner)
                    {
                        return false;
                    }
                    // Not into itself or one of its own folders.
                    let mut at = Some(target.id.clone());
                    while let Some(id) = at {
                        if id == f.id {
                            return false;
                        }
                        at = live.file(&id).and_then(|x| x.parents.first().cloned());
                    }
                    target.id.clone()
                }
            };
            f.parents = vec![parent];
            true
        })
    }

    /// Moves a file or folder to the trash (with everything in a folder: Drive trashes the
    /// contents too, and reports each). False if not found.
    pub fn trash_file(&self, file_id: &str) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        if live.file(file_id).is_none() {
            return false;
        }
        let doomed = subtree(&live, file_id);
        let now = now_ms();
        for l in live.files.iter_mut() {
            if !l.deleted && doomed.contains(&l.f.id) && !l.f.trashed {
                l.f.trashed = true;
                l.f.version += 1;
            }
        }
        for id in doomed {
            record_change(&mut live, &id, false, now);
        }
        true
    }

    /// Applies a metadata change to a file or folder (`change` says whether it applied), raises
    /// its version, records the change and recomputes the paths.
    fn change_metadata(
        &self,
        file_id: &str,
        change: impl FnOnce(&mut GFile, &Live) -> bool,
    ) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        let Some(mut f) = live.file(file_id).cloned() else {
            return false;
        };
        if !change(&mut f, &live) {
            return false;
        }
        f.version += 1;
        if let Some(l) = live
            .files
            .iter_mut()
            .find(|l| !l.deleted && l.f.id == file_id)
        {
            l.f = f;
        }
        recompute_paths(&mut live);
        record_change(&mut live, file_id, false, now_ms());
        true
    }

    /// Deletes a file permanently (a folder with everything in it); `changes.list` reports
    /// `removed: true`. False if not found.
    pub fn delete_file(&self, file_id: &str) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        if live.file(file_id).is_none() {
            return false;
        }
        let doomed = subtree(&live, file_id);
        let now = now_ms();
        for l in live.files.iter_mut() {
            if doomed.contains(&l.f.id) {
                l.deleted = true;
            }
        }
        for id in doomed {
            record_change(&mut live, &id, true, now);
        }
        true
    }

    /// Deletes a shared drive with its files: drives.list and drives.get no longer know it, its
    /// changes feed answers 404. False if not found.
    pub fn delete_shared_drive(&self, drive_id: &str) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        let Some(i) = live.drives.iter().position(|d| d.id == drive_id) else {
            return false;
        };
        live.drives.remove(i);
        let now = now_ms();
        let mut gone = Vec::new();
        for l in live.files.iter_mut() {
            if !l.deleted && l.f.drive_id.as_deref() == Some(drive_id) {
                l.deleted = true;
                gone.push(l.f.id.clone());
            }
        }
        for id in gone {
            record_change(&mut live, &id, true, now);
        }
        true
    }

    /// Renames a shared drive. False if not found.
    pub fn rename_shared_drive(&self, drive_id: &str, name: &str) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        match live.drives.iter_mut().find(|d| d.id == drive_id) {
            Some(d) => {
                d.name = name.to_string();
                true
            }
            None => false,
        }
    }

    /// Makes every changes page token issued so far unusable: `changes.list` answers them
    /// 400 `invalid` at `pageToken`, as Drive answers a token it rejects.
    pub fn invalidate_change_tokens(&self) {
        let mut live = self.state.live.lock().expect("live lock");
        live.change_epoch += 1;
    }
}

/// The item and everything under it (live items only).
fn subtree(live: &Live, id: &str) -> Vec<String> {
    let mut out = vec![id.to_string()];
    let mut grew = true;
    while grew {
        grew = false;
        for l in live.files.iter().filter(|l| !l.deleted) {
            if !out.contains(&l.f.id) && l.f.parents.iter().any(|p| out.contains(p)) {
                out.push(l.f.id.clone());
                grew = true;
            }
        }
    }
    out
}

/// Each live item's `path` from its drive's root again, after a rename or move.
fn recompute_paths(live: &mut Live) {
    let index: HashMap<String, (String, Option<String>)> = live
        .files
        .iter()
        .filter(|l| !l.deleted)
        .map(|l| {
            (
                l.f.id.clone(),
                (l.f.name.clone(), l.f.parents.first().cloned()),
            )
        })
        .collect();
    for l in live.files.iter_mut().filter(|l| !l.deleted) {
        let mut path = vec![l.f.name.clone()];
        let mut at = l.f.parents.first().cloned();
        let mut guard = 0;
        while let Some(p) = at {
            let Some((name, parent)) = index.get(&p) else {
                break;
            };
            guard += 1;
            if guard > index.len() {
                break;
            }
            path.push(name.clone());
            at = parent.clone();
        }
        path.reverse();
        l.f.path = path;
    }
}

fn record_change(live: &mut Live, file_id: &str, removed: bool, time_ms: i64) {
    live.change_seq += 1;
    let seq = live.change_seq;
    live.changes.push(Change {
        seq,
        file_id: file_id.to_string(),
        removed,
        time_ms,
    });
}

impl Drop for GoogleServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Directory,
    Gmail,
    Drive,
}

fn scope_covers(api: Api, scopes: &[String]) -> bool {
    let ok: &[&str] = match api {
        Api::Directory => &[
            SCOPE_DIRECTORY,
            "https://www.googleapis.com/auth/admin.directory.user",
        ],
        Api::Gmail => &[
            SCOPE_GMAIL,
            "https://www.googleapis.com/auth/gmail.modify",
            "https://mail.google.com/",
        ],
        Api::Drive => &[SCOPE_DRIVE, "https://www.googleapis.com/auth/drive"],
    };
    scopes.iter().any(|s| ok.contains(&s.as_str()))
}

async fn handle(state: Arc<State>, req: http::Request<hyper::body::Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    if path == "/_sandbox/stats" {
        return json_resp(200, &state.stats_json());
    }
    bump(&state.c.requests);
    if path == "/token" {
        let resp = token_endpoint(&state, req).await;
        if resp.status() != 200 {
            bump(&state.c.token_errors);
        }
        return resp;
    }
    let api = if path.starts_with("/drive/v3/") || path.starts_with("/feeds/download/") {
        Api::Drive
    } else if path.starts_with("/gmail/v1/") {
        Api::Gmail
    } else if path.starts_with("/admin/directory/v1/") {
        Api::Directory
    } else {
        return gerr(404, "notFound", format!("Not Found: {path}")).resp();
    };
    let (subject, scopes) = match state.check_auth(req.headers()) {
        Ok(v) => v,
        Err(()) => {
            bump(&state.c.unauthorized);
            return gerr(401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.")
                .header("www-authenticate", "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"")
                .resp();
        }
    };
    let n = bump(&state.c.api_requests);
    let f = &state.cfg.faults;
    if f.expire_tokens_after_requests > 0 && n.is_multiple_of(f.expire_tokens_after_requests) {
        // Every token issued so far stops working after this request.
        state
            .revoked_below
            .store(state.token_serial.load(Ordering::SeqCst), Ordering::SeqCst);
    }
    if !scope_covers(api, &scopes) {
        return gerr(
            403,
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
        )
        .header(
            "www-authenticate",
            "Bearer realm=\"https://accounts.google.com/\", error=\"insufficient_scope\"",
        )
        .resp();
    }
    if f.throttle_every > 0 && n.is_multiple_of(f.throttle_every) {
        let hit = bump(&state.throttle_hits);
        return state.fault(if hit % 2 == 1 { 0 } else { 1 });
    }
    if f.unavailable_every > 0 && n.is_multiple_of(f.unavailable_every) {
        return state.fault(2);
    }
    if let Some(r) = state.random_fault() {
        return r;
    }
    let slot = if api == Api::Directory {
        None
    } else {
        match state.enter(&subject) {
            Some(s) => Some(s),
            None => {
                return gerr(
                    429,
                    "rateLimitExceeded",
                    "Too many concurrent requests for user.",
                )
                .resp()
            }
        }
    };
    if !state.cfg.api_latency.is_zero() {
        tokio::time::sleep(state.cfg.api_latency).await;
    }
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let r = Req {
        method: req.method().clone(),
        segs,
        query,
        headers: req.headers().clone(),
        subject,
    };
    let resp = if r.method != http::Method::GET {
        gerr(405, "httpMethodNotAllowed", "Method Not Allowed").resp()
    } else {
        match api {
            Api::Directory => directory::route(&state, &r),
            Api::Gmail => gmail::route(&state, &r),
            Api::Drive => drive::route(&state, &r),
        }
    };
    match slot {
        None => resp,
        Some(slot) => {
            // The slot is released when hyper drops the body: sent, failed or abandoned.
            let (parts, body) = resp.into_parts();
            let body = body
                .map_frame(move |frame| {
                    let _held = &slot;
                    frame
                })
                .boxed();
            http::Response::from_parts(parts, body)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint.

fn oauth_error(status: u16, error: &str, description: &str) -> Resp {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "cache-control",
            "no-cache, no-store, max-age=0, must-revalidate",
        )
        .body(full(
            json!({"error": error, "error_description": description}).to_string(),
        ))
        .expect("valid response")
}

const SHORT_LIVED: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.";

async fn token_endpoint(state: &Arc<State>, req: http::Request<hyper::body::Incoming>) -> Resp {
    if req.method() != http::Method::POST {
        return oauth_error(405, "invalid_request", "Method not allowed; use POST.");
    }
    let body: Bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return oauth_error(400, "invalid_request", "Could not read the request."),
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    match form.get("grant_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {}
        Some(g) => {
            return oauth_error(
                400,
                "unsupported_grant_type",
                &format!("Invalid grant_type: {g}"),
            )
        }
        None => return oauth_error(400, "unsupported_grant_type", "Invalid grant_type: "),
    }
    let Some(jwt) = form.get("assertion") else {
        return oauth_error(
            400,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    match verify_jwt(state, jwt) {
        Err((status, error, text)) => oauth_error(status, error, &text),
        Ok((subject, scopes)) => {
            let token = state.issue_token(subject, scopes);
            let body = json!({
                "access_token": token,
                "expires_in": state.cfg.token_lifetime.as_secs().saturating_sub(1).max(1),
                "token_type": "Bearer",
            });
            http::Response::builder()
                .status(200)
                .header("content-type", "application/json; charset=utf-8")
                .header(
                    "cache-control",
                    "no-cache, no-store, max-age=0, must-revalidate",
                )
                .body(full(body.to_string()))
                .expect("valid response")
        }
    }
}

type TokenError = (u16, &'static str, String);

/// Checks a service account's JWT grant; the (subject, scopes) the token is for.
fn verify_jwt(state: &State, jwt: &str) -> Result<(String, Vec<String>), TokenError> {
    let grant = |t: &str| Err((400, "invalid_grant", t.to_string()));
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return grant("Invalid JWT: Malformed.");
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |s: &str| b64.decode(s.trim_end_matches('='));
    let (Ok(h), Ok(c), Ok(sig)) = (decode(parts[0]), decode(parts[1]), decode(parts[2])) else {
        return grant("Invalid JWT: Malformed.");
    };
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Value>(&h),
        serde_json::from_slice::<Value>(&c),
    ) else {
        return grant("Invalid JWT: Malformed.");
    };
    if claims["iss"].as_str() != Some(GOOGLE_SA_CLIENT_EMAIL) {
        return grant("Invalid grant: account not found");
    }
    if header["alg"] != "RS256" {
        return grant("Invalid JWT Signature.");
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &state.public_key,
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    if key.verify(signed.as_bytes(), &sig).is_err() {
        return grant("Invalid JWT Signature.");
    }
    let token_uri = format!("{}/token", state.base);
    if claims["aud"].as_str() != Some(token_uri.as_str()) {
        return grant("Invalid audience");
    }
    let now = now_unix();
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return grant(SHORT_LIVED);
    };
    if exp <= now || iat > now + 60 || exp - iat > 3600 || exp < iat {
        return grant(SHORT_LIVED);
    }
    let scopes: Vec<String> = claims["scope"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if scopes.is_empty() || scopes.iter().any(|s| !KNOWN_SCOPES.contains(&s.as_str())) {
        return Err((
            400,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.".into(),
        ));
    }
    let subject = match claims["sub"].as_str() {
        None => GOOGLE_SA_CLIENT_EMAIL.to_string(),
        Some(s) => match state.truth.user(s) {
            Some(u) if u.email.eq_ignore_ascii_case(s) => u.email.clone(),
            _ => return grant("Invalid email or User ID"),
        },
    };
    if scopes
        .iter()
        .any(|s| !state.cfg.granted_scopes.iter().any(|g| g == s))
    {
        return Err((401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.".into()));
    }
    Ok((subject, scopes))
}
