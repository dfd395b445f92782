//! A local Microsoft Graph v1.0 (and the bits of beta ferry needs) plus the Microsoft identity
//! platform token endpoint, on 127.0.0.1, serving a seeded tenant whose ground truth
//! ([`Truth`]) tests compare exports against byte for byte.
//!
//! # What is served, and after which documentation
//!
//! Identity platform (learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow,
//! …/certificate-credentials):
//! - `POST /login/{tenant name or id}/oauth2/v2.0/token`, `grant_type=client_credentials`, a
//!   scope ending in `/.default`, and `client_secret` or an RS256 `client_assertion` (header
//!   `x5t` or `x5t#S256` naming the configured certificate; `aud` the token URL, `iss` = `sub` =
//!   client id, `exp` in the future, `nbf` not in the future; signature checked with ring).
//!   Errors carry `error`, `error_description` (`AADSTS…`), `error_codes`, `trace_id`, …:
//!   AADSTS90002 unknown tenant, AADSTS700016 unknown client, AADSTS7000215 wrong secret,
//!   AADSTS700027 bad assertion, AADSTS1002012 bad scope, AADSTS70003 bad grant type.
//!
//! Graph (learn.microsoft.com/graph/api/…; all under `/v1.0`, and `/beta` as well):
//! - Bearer tokens required; missing, unknown, expired or revoked → 401
//!   `InvalidAuthenticationToken`. Errors use Graph's `{"error":{"code","message","innerError":
//!   {"date","request-id","client-request-id"}}}` with `request-id`/`client-request-id` headers.
//! - Paging (graph/paging): `@odata.nextLink` absolute and opaque (`$skiptoken`); page size from
//!   `$top` or `Prefer: odata.maxpagesize` (echoed in `Preference-Applied`), capped at 999.
//!   Some pages are deliberately short while more follow. (Fault: a next link to the page
//!   just served, [`GraphFaults::repeat_next_link`].)
//! - `GET /users` (`$filter` on `userPrincipalName`/`mail eq`, `accountEnabled eq true`,
//!   `assignedLicenses/$count ne 0`), `/users/{id|upn}`, `/groups`, `/groups/{id}/members`.
//! - Mail (user-list-mailfolders, mailfolder-list-childfolders, message-delta, message-get
//!   "Get MIME content", outlook-immutable-id): `/users/{u}/mailFolders[?includeHiddenFolders=true]`
//!   (children of msgfolderroot only), `/mailFolders/{id|well-known}`, `…/childFolders`,
//!   `…/messages`, `…/messages/delta` (also `delta()`/`microsoft.graph.delta()`) with
//!   `$skiptoken` next links and a `$deltatoken` delta link, `@removed` for deletions,
//!   `Prefer: IdType="ImmutableId"`, `$expand=singleValueExtendedProperties($filter=id eq
//!   'Integer 0x0E08')` (PR_MESSAGE_SIZE), `…/messages/{id}` and `…/messages/{id}/$value`.
//!   Per-mailbox concurrency limit (graph/throttling-limits, Outlook: 4 concurrent) → 429
//!   `ApplicationThrottled` "MailboxConcurrency"; optionally a per-mailbox request-rate limit
//!   (Outlook: 10,000 per 10 minutes, [`GraphConfig::mailbox_requests_per_10min`]) → 429
//!   `ApplicationThrottled` "MailboxRequests" with `Retry-After`. Users without a mailbox → 404
//!   `MailboxNotEnabledForRESTAPI`.
//! - In-place archive (graph/archive-mailbox-mail-api, beta only): `GET /beta/users/{u}/settings/exchange`
//!   gives `primaryMailboxId`/`inPlaceArchiveMailboxId` (`MBX:<guid>@<tenant id>`), and
//!   `/beta/users/{MBX:…}/mailFolders…` reads the archive like a mailbox.
//! - Files (driveitem-delta, driveitem-get-content, driveitem-list-children, drive-get,
//!   site-getallsites, site-get, drive-list): `/users/{u}/drive`, `/users/{u}/drives`,
//!   `/drives/{d}`, `/sites/{s}/drive`, `/sites/{s}/drives`, `…/root`, `…/items/{i}`,
//!   `…/children`, `…/root/delta` (next links `delta(token='…')`, delta links `delta?token=…`,
//!   `token=latest`; no `path` in delta's parentReference; repeats; a folder listed after its
//!   children — the docs promise no order; deletions as a `deleted` facet without `name`; 410
//!   `resyncRequired` / `resyncChangesApplyDifferences` with `Location` after
//!   [`GraphServer::invalidate_delta_tokens`]), `…/items/{i}/content` → 302 to a
//!   pre-authenticated `@microsoft.graph.downloadUrl` (valid one hour, `Range` → 206).
//!   Business drives list `quickXorHash` only.
//! - `GET /sites/getAllSites`, `/sites?search=`, `/sites/root`, `/sites/{host,guid,guid}`,
//!   `/sites/{hostname}:/{server-relative path}` (site-getbypath).
//! - Throttling (graph/throttling): 429/503 with `Retry-After: 1` per [`GraphFaults`].
//! - Permissions ([`GraphConfig::denied_scopes`]): 403 `ErrorAccessDenied` (mail),
//!   `accessDenied` (files/sites), `Authorization_RequestDenied` (directory).
//!
//! - `GET /_sandbox/stats` (not Graph; no token): the [`GraphStats`] as JSON, with the
//!   configured limits and the seeded tenant's totals, for scripts such as the benchmark.
//!
//! Not served: writes, `$search`, `$orderby`, calendars/contacts, Teams, batching (`$batch`).

pub(crate) mod api;
pub(crate) mod content;
mod quickxor;
mod tenant;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub use content::ContentReader;
pub use quickxor::{quick_xor_hash, QuickXorHash};
pub use tenant::{
    Drive, DriveFolder, DriveOwner, File, Group, MailFolder, Mailbox, Message, MessageEntry, Site,
    Truth, User,
};

use content::{ContentSpec, Rng};

/// The application (client) id the sandbox token endpoint accepts.
pub const GRAPH_CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
/// The client secret the sandbox token endpoint accepts (a test value, not a secret).
pub const GRAPH_CLIENT_SECRET: &str = "ferry-sandbox-graph-secret-not-a-secret";

/// What the sandbox tenant holds and how the server behaves.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// Same seed → same tenant, same ids, same bytes.
    pub seed: u64,
    /// Tenant domain, e.g. `contoso.onmicrosoft.com` (the tenant id GUID works in token URLs).
    pub tenant: String,
    /// Licensed users with a mailbox and a OneDrive (one unlicensed user is added).
    pub users: usize,
    /// Messages per primary mailbox, spread over folders (plus 3 in Recoverable Items).
    pub messages_per_user: usize,
    /// OneDrive files per user, in nested folders.
    pub files_per_user: usize,
    /// SharePoint sites (the first is the root site), each with 1–2 document libraries.
    pub sites: usize,
    /// If > 0, one OneDrive file of this size (`Large/big-file.bin`) for the first user.
    pub large_file_bytes: u64,
    /// Default page size of collections and delta (clients may ask for 1–999).
    pub page_size: usize,
    /// Access token lifetime.
    pub token_lifetime: Duration,
    /// Concurrent requests served per mailbox; one more is answered 429.
    pub mailbox_concurrency: usize,
    /// Requests accepted per mailbox within any sliding 10 minutes (Outlook's published limit
    /// per app and mailbox is 10,000); one more is answered 429 `ApplicationThrottled` with a
    /// `Retry-After` of the seconds until the oldest leaves the window. 0 = no limit.
    pub mailbox_requests_per_10min: u64,
    /// Injected faults.
    pub faults: GraphFaults,
    /// The certificate accepted for client-assertion (certificate) authentication.
    pub client_certificate: Option<ClientCertificate>,
    /// Application permissions the app lacks: `Mail.Read`, `Files.Read.All`,
    /// `Sites.Read.All` (either of these two denies drives and sites), `User.Read.All`.
    pub denied_scopes: Vec<String>,
    /// Added latency of every mail request (while it holds its mailbox concurrency slot), as a
    /// busy Exchange server has; zero by default.
    pub mail_latency: Duration,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            seed: 1,
            tenant: "contoso.onmicrosoft.com".into(),
            users: 3,
            messages_per_user: 20,
            files_per_user: 10,
            sites: 1,
            large_file_bytes: 0,
            page_size: 10,
            token_lifetime: Duration::from_secs(3600),
            mailbox_concurrency: 4,
            mailbox_requests_per_10min: 0,
            faults: GraphFaults::default(),
            client_certificate: None,
            denied_scopes: Vec::new(),
            mail_latency: Duration::ZERO,
        }
    }
}

/// A certificate registered on the app, for `client_assertion` authentication.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// The X.509 certificate, DER (`x5t` = base64url(SHA-1(cert_der))).
    pub cert_der: Vec<u8>,
    /// Its RSA public key as PKCS#1 `RSAPublicKey`, DER.
    pub public_key_pkcs1_der: Vec<u8>,
}

/// Faults the Graph sandbox injects. Counters are per server; "API request" means a request
/// under `/v1.0` or `/beta` (not the token endpoint, not download URLs).
#[derive(Debug, Clone, Default)]
pub struct GraphFaults {
    /// Every Nth API request → 429 `TooManyRequests`, `Retry-After: 1`; 0 = never.
    pub throttle_every: u64,
    /// Every Nth API request → 503 `serviceNotAvailable`, `Retry-After: 1`; 0 = never.
    pub unavailable_every: u64,
    /// Probability (seeded) of a 429 or 503 with `Retry-After: 1` on any API request or
    /// download; 0.0 = never.
    pub random_throttle: f64,
    /// Every Nth download (message `$value` or file download URL) sends half its
    /// `Content-Length` and closes the connection; 0 = never.
    pub truncate_every: u64,
    /// Every Nth file download flips one byte (right length, wrong bytes); 0 = never.
    pub corrupt_every: u64,
    /// A file name whose download is always corrupted.
    pub corrupt_always: Option<String>,
    /// A message subject whose `$value` always answers 500.
    pub fail_message_always: Option<String>,
    /// At every multiple of N API requests, every token issued so far is revoked (→ 401);
    /// 0 = never.
    pub expire_tokens_after_requests: u64,
    /// One SharePoint `.docx` (`Proposal.docx` in the first site's first library) serves bytes
    /// that differ from its listed size and quickXorHash.
    pub sharepoint_size_mismatch: bool,
    /// Paged collections (users, folders, sites, drives…; not delta listings) link to the page
    /// just served as their `@odata.nextLink`, as a broken server might: a client that follows
    /// it blindly never ends.
    pub repeat_next_link: bool,
}

/// Counters, from [`GraphServer::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Every request received (token, API, downloads).
    pub requests: u64,
    /// The highest number of requests served at once for any one mailbox.
    pub max_concurrent_per_mailbox: usize,
    /// Requests refused with 429 for the mailbox concurrency limit.
    pub mailbox_concurrency_rejections: u64,
    /// Requests refused with 429 for the per-mailbox request-rate limit
    /// ([`GraphConfig::mailbox_requests_per_10min`]).
    pub mailbox_rate_rejections: u64,
    /// Mail requests received (accepted or refused), all mailboxes together.
    pub mailbox_requests: u64,
    /// Mailboxes (primary and archive count apart) that received any request.
    pub mailboxes_touched: usize,
    /// The most requests any one mailbox received (accepted or refused).
    pub max_requests_per_mailbox: u64,
    /// The most requests any one mailbox had accepted within a sliding 10 minutes.
    pub max_requests_per_mailbox_10min: u64,
    /// The highest number of distinct mailboxes with requests in flight at the same moment.
    pub max_busy_mailboxes: usize,
    /// 429 and 503 responses sent by fault injection.
    pub throttled: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// 401 responses sent.
    pub unauthorized: u64,
    /// Downloads served (message `$value` and file download URLs).
    pub downloads: u64,
    /// Drive delta requests that enumerate a drive from the start (no token).
    pub drive_enumerations: u64,
}

// ---------------------------------------------------------------------------------------------
// Live state.

/// A message in the live store, with the change sequence numbers delta needs.
#[derive(Clone)]
pub(crate) struct LiveMsg {
    pub m: Message,
    pub created: u64,
    pub deleted: Option<u64>,
}

pub(crate) struct LiveMailbox {
    pub user_id: String,
    pub mailbox_id: String,
    pub is_archive: bool,
    pub folders: Vec<MailFolder>,
    pub msgs: Vec<LiveMsg>,
}

#[derive(Clone)]
pub(crate) enum DItem {
    Folder(DriveFolder),
    File(File),
}

impl DItem {
    pub fn id(&self) -> &str {
        match self {
            DItem::Folder(f) => &f.id,
            DItem::File(f) => &f.id,
        }
    }
    pub fn parent_id(&self) -> Option<&str> {
        match self {
            DItem::Folder(f) => f.parent_id.as_deref(),
            DItem::File(f) => Some(&f.parent_id),
        }
    }
}

#[derive(Clone)]
pub(crate) struct LiveItem {
    pub item: DItem,
    pub created: u64,
    pub changed: u64,
    pub deleted: Option<u64>,
}

pub(crate) struct LiveDrive {
    pub drive: Drive,
    pub items: Vec<LiveItem>,
}

pub(crate) struct Live {
    /// Change sequence: seeded content is 1; every change takes the next number.
    pub seq: u64,
    pub mailboxes: Vec<LiveMailbox>,
    pub drives: Vec<LiveDrive>,
    pub rng: Rng,
    /// Ids of users deleted from the directory ([`GraphServer::delete_user`]).
    pub deleted_users: std::collections::HashSet<String>,
    /// Names of files whose downloads are corrupted from now on ([`GraphServer::corrupt_file`]).
    pub corrupt: std::collections::HashSet<String>,
}

struct TokenInfo {
    serial: u64,
    expires: Instant,
}

pub(crate) struct State {
    pub cfg: GraphConfig,
    pub truth: Truth,
    pub base: String,
    pub live: Mutex<Live>,
    tokens: Mutex<HashMap<String, TokenInfo>>,
    token_serial: AtomicU64,
    revoked_below: AtomicU64,
    api_requests: AtomicU64,
    pub download_count: AtomicU64,
    pub file_download_count: AtomicU64,
    pub epoch: AtomicU64,
    mailboxes: Mutex<MailboxLoad>,
    fault_rng: Mutex<Rng>,
    pub secret: u64,
    // Stats.
    requests: AtomicU64,
    max_concurrent: AtomicUsize,
    concurrency_rejections: AtomicU64,
    rate_rejections: AtomicU64,
    pub throttled: AtomicU64,
    tokens_issued: AtomicU64,
    unauthorized: AtomicU64,
    pub downloads: AtomicU64,
    pub drive_enumerations: AtomicU64,
}

/// A response body: any body, boxed.
pub(crate) type RespBody = BoxBody<Bytes, io::Error>;
pub(crate) type Resp = http::Response<RespBody>;

pub(crate) fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Per-request context: ids echoed in headers and error bodies, and applied preferences.
pub(crate) struct Ctx {
    pub request_id: String,
    pub client_request_id: String,
    pub applied: Vec<String>,
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Ctx {
    fn builder(&self, status: u16) -> http::response::Builder {
        let mut b = http::Response::builder()
            .status(status)
            .header("request-id", &self.request_id)
            .header("client-request-id", &self.client_request_id)
            .header(
                "x-ms-ags-diagnostic",
                r#"{"ServerInfo":{"DataCenter":"Sandbox","Slice":"E","Ring":"1","ScaleUnit":"000","RoleInstance":"FERRY-SANDBOX"}}"#,
            );
        if !self.applied.is_empty() {
            b = b.header("preference-applied", self.applied.join(","));
        }
        b
    }

    /// A JSON response as Graph sends it.
    pub fn json(&self, status: u16, v: &Value) -> Resp {
        self.builder(status)
            .header(
                "content-type",
                "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8",
            )
            .body(full(v.to_string()))
            .expect("valid response")
    }

    /// A Graph error response.
    pub fn error(&self, status: u16, code: &str, message: &str) -> Resp {
        self.error_with(status, code, message, Vec::new())
    }

    /// A Graph error response with extra headers.
    pub fn error_with(
        &self,
        status: u16,
        code: &str,
        message: &str,
        headers: Vec<(&str, String)>,
    ) -> Resp {
        let body = json!({"error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": content::iso(now_unix()),
                "request-id": self.request_id,
                "client-request-id": self.client_request_id,
            }
        }});
        let mut b = self
            .builder(status)
            .header("content-type", "application/json");
        for (k, v) in headers {
            b = b.header(k, v);
        }
        b.body(full(body.to_string())).expect("valid response")
    }
}

/// Decrements a mailbox's in-flight count when the response body is finished or dropped.
/// How long the per-mailbox request-rate window is.
const MAILBOX_WINDOW: Duration = Duration::from_secs(600);

/// Per-mailbox load: requests in flight, and what the stats and the rate limit need.
#[derive(Default)]
struct MailboxLoad {
    /// Requests in flight per mailbox key (absent: none).
    inflight: HashMap<String, usize>,
    /// Every mailbox that received a request.
    seen: HashMap<String, MailboxRecord>,
    requests: u64,
    max_received: u64,
    max_window: u64,
    max_busy: usize,
}

#[derive(Default)]
struct MailboxRecord {
    received: u64,
    /// When the requests accepted within the last 10 minutes arrived.
    window: VecDeque<Instant>,
}

/// Why a mailbox request is refused.
pub(crate) enum MailboxRefusal {
    Concurrency,
    Rate { retry_after: u64 },
}

pub(crate) struct InflightGuard {
    state: Arc<State>,
    key: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut m = self.state.mailboxes.lock().expect("mailboxes lock");
        if let Some(n) = m.inflight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.inflight.remove(&self.key);
            }
        }
    }
}

/// A body that holds an [`InflightGuard`] until it is done.
struct Guarded {
    inner: RespBody,
    guard: Option<InflightGuard>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = r {
            // Fully sent (or failed): the request no longer counts against the mailbox.
            self.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The end of a truncated body: wait a moment so hyper flushes the headers and the bytes sent
/// so far, then fail, which makes hyper close the connection short of `Content-Length`.
#[derive(Default)]
pub(crate) struct Cutoff {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Cutoff {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
        match std::future::Future::poll(sleep.as_mut(), cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                Poll::Ready(Some(Err(io::Error::other("sandbox: truncated download"))))
            }
        }
    }
}

/// Generated file content for `start..end`, streamed in 64 KiB frames; optionally stops early
/// with an error (hyper then closes the connection: a truncated body) or flips one byte.
pub(crate) struct ContentBody {
    pub spec: ContentSpec,
    pub pos: u64,
    pub end: u64,
    pub stop_at: Option<u64>,
    pub corrupt_at: Option<u64>,
    pub cutoff: Cutoff,
}

impl Body for ContentBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(stop) = this.stop_at {
            if this.pos >= stop {
                return this.cutoff.poll(cx);
            }
        }
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        let limit = this.stop_at.unwrap_or(this.end).min(this.end);
        let n = (limit - this.pos).min(64 * 1024) as usize;
        let mut buf = vec![0u8; n];
        this.spec.fill(this.pos, &mut buf);
        if let Some(c) = this.corrupt_at {
            if c >= this.pos && c < this.pos + n as u64 {
                buf[(c - this.pos) as usize] ^= 0x5a;
            }
        }
        this.pos += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end && self.stop_at.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.pos)
    }
}

/// Bytes, possibly cut short with an error (a truncated response).
pub(crate) struct BytesBody {
    pub data: Option<Bytes>,
    pub fail_after: bool,
    pub cutoff: Cutoff,
}

impl Body for BytesBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if self.fail_after {
            return self.cutoff.poll(cx);
        }
        Poll::Ready(None)
    }
}

impl State {
    fn new(cfg: GraphConfig, truth: Truth, base: String) -> State {
        let mut mailboxes = Vec::new();
        let mut drives = Vec::new();
        for u in &truth.users {
            for mb in u.mailbox.iter().chain(u.archive.iter()) {
                mailboxes.push(LiveMailbox {
                    user_id: u.id.clone(),
                    mailbox_id: mb.mailbox_id.clone(),
                    is_archive: mb.is_archive,
                    folders: mb.folders.clone(),
                    msgs: mb
                        .messages
                        .iter()
                        .map(|m| LiveMsg {
                            m: m.clone(),
                            created: 1,
                            deleted: None,
                        })
                        .collect(),
                });
            }
        }
        for d in &truth.drives {
            let mut items: Vec<LiveItem> = truth
                .drive_folders
                .iter()
                .filter(|f| f.drive_id == d.id)
                .map(|f| LiveItem {
                    item: DItem::Folder(f.clone()),
                    created: 1,
                    changed: 1,
                    deleted: None,
                })
                .collect();
            items.extend(
                truth
                    .files
                    .iter()
                    .filter(|f| f.drive_id == d.id)
                    .map(|f| LiveItem {
                        item: DItem::File(f.clone()),
                        created: 1,
                        changed: 1,
                        deleted: None,
                    }),
            );
            drives.push(LiveDrive {
                drive: d.clone(),
                items,
            });
        }
        let seed = cfg.seed;
        State {
            live: Mutex::new(Live {
                seq: 1,
                mailboxes,
                drives,
                rng: Rng::new(seed ^ 0x11FE),
                deleted_users: Default::default(),
                corrupt: Default::default(),
            }),
            tokens: Mutex::new(HashMap::new()),
            token_serial: AtomicU64::new(0),
            revoked_below: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            download_count: AtomicU64::new(0),
            file_download_count: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            mailboxes: Mutex::new(MailboxLoad::default()),
            fault_rng: Mutex::new(Rng::new(seed ^ 0xFA17)),
            secret: content::mix(seed ^ 0x5EC2E7),
            requests: AtomicU64::new(0),
            max_concurrent: AtomicUsize::new(0),
            concurrency_rejections: AtomicU64::new(0),
            rate_rejections: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            tokens_issued: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            downloads: AtomicU64::new(0),
            drive_enumerations: AtomicU64::new(0),
            cfg,
            truth,
            base,
        }
    }

    /// A random 429/503, if the dice say so (seeded).
    pub fn random_fault(&self) -> Option<u16> {
        let p = self.cfg.faults.random_throttle;
        if p <= 0.0 {
            return None;
        }
        let mut rng = self.fault_rng.lock().expect("rng lock");
        if rng.chance(p) {
            Some(if rng.below(2) == 0 { 429 } else { 503 })
        } else {
            None
        }
    }

    pub fn throttle_response(&self, ctx: &Ctx, status: u16) -> Resp {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let (code, msg) = if status == 429 {
            (
                "TooManyRequests",
                "Too many requests. Please retry after the time in the Retry-After header.",
            )
        } else {
            ("serviceNotAvailable", "The service is temporarily unavailable. Please retry after the time in the Retry-After header.")
        };
        ctx.error_with(status, code, msg, vec![("retry-after", "1".into())])
    }

    /// Checks the Bearer token; None if valid.
    fn check_auth(&self, headers: &http::HeaderMap) -> Option<&'static str> {
        let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Some("Access token is empty.");
        };
        let Some(token) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        else {
            return Some("Access token is empty.");
        };
        let tokens = self.tokens.lock().expect("tokens lock");
        match tokens.get(token.trim()) {
            None => Some("IDX14100: JWT is not well formed, there are no dots (.). The token needs to be in JWS or JWE Compact Serialization Format."),
            Some(t) if t.expires <= Instant::now() => Some("Lifetime validation failed, the token is expired."),
            Some(t) if t.serial < self.revoked_below.load(Ordering::SeqCst) => {
                Some("Access token has expired or is not yet valid.")
            }
            Some(_) => None,
        }
    }

    fn issue_token(&self) -> String {
        let serial = self.token_serial.fetch_add(1, Ordering::SeqCst);
        self.tokens_issued.fetch_add(1, Ordering::Relaxed);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let exp = now_unix() + self.cfg.token_lifetime.as_secs() as i64;
        let header = b64.encode(r#"{"typ":"JWT","alg":"RS256","x5t":"sandbox","kid":"sandbox"}"#);
        let payload = b64.encode(
            json!({
                "aud": "https://graph.microsoft.com",
                "iss": format!("https://sts.windows.net/{}/", self.truth.tenant_id),
                "iat": now_unix(), "nbf": now_unix(), "exp": exp,
                "appid": GRAPH_CLIENT_ID, "tid": self.truth.tenant_id,
                "roles": ["Mail.Read", "Files.Read.All", "Sites.Read.All", "User.Read.All"],
                "uti": serial,
            })
            .to_string(),
        );
        let mut rng = Rng::new(self.secret ^ serial.wrapping_mul(0x9E37));
        let sig = b64.encode(rng.bytes(64));
        let token = format!("{header}.{payload}.{sig}");
        self.tokens.lock().expect("tokens lock").insert(
            token.clone(),
            TokenInfo {
                serial,
                expires: Instant::now() + self.cfg.token_lifetime,
            },
        );
        token
    }

    /// Takes a slot for `key`'s mailbox, or says which limit refuses it. Only accepted
    /// requests count against the 10-minute window.
    pub fn enter_mailbox(self: &Arc<Self>, key: &str) -> Result<InflightGuard, MailboxRefusal> {
        let now = Instant::now();
        let mut guard = self.mailboxes.lock().expect("mailboxes lock");
        let m = &mut *guard;
        m.requests += 1;
        let rec = m.seen.entry(key.to_string()).or_default();
        rec.received += 1;
        m.max_received = m.max_received.max(rec.received);
        while rec
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MAILBOX_WINDOW)
        {
            rec.window.pop_front();
        }
        let inflight = m.inflight.get(key).copied().unwrap_or(0);
        if inflight >= self.cfg.mailbox_concurrency.max(1) {
            self.concurrency_rejections.fetch_add(1, Ordering::Relaxed);
            return Err(MailboxRefusal::Concurrency);
        }
        let limit = self.cfg.mailbox_requests_per_10min;
        if limit > 0 && rec.window.len() as u64 >= limit {
            self.rate_rejections.fetch_add(1, Ordering::Relaxed);
            let oldest = rec.window.front().copied().unwrap_or(now);
            let left = MAILBOX_WINDOW.saturating_sub(now.duration_since(oldest));
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(MailboxRefusal::Rate {
                retry_after: secs.max(1),
            });
        }
        rec.window.push_back(now);
        m.max_window = m.max_window.max(rec.window.len() as u64);
        m.inflight.insert(key.to_string(), inflight + 1);
        m.max_busy = m.max_busy.max(m.inflight.len());
        self.max_concurrent
            .fetch_max(inflight + 1, Ordering::SeqCst);
        Ok(InflightGuard {
            state: self.clone(),
            key: key.to_string(),
        })
    }

    /// A snapshot of the counters.
    fn stats(&self) -> GraphStats {
        let m = self.mailboxes.lock().expect("mailboxes lock");
        GraphStats {
            requests: self.requests.load(Ordering::Relaxed),
            max_concurrent_per_mailbox: self.max_concurrent.load(Ordering::SeqCst),
            mailbox_concurrency_rejections: self.concurrency_rejections.load(Ordering::Relaxed),
            mailbox_rate_rejections: self.rate_rejections.load(Ordering::Relaxed),
            mailbox_requests: m.requests,
            mailboxes_touched: m.seen.len(),
            max_requests_per_mailbox: m.max_received,
            max_requests_per_mailbox_10min: m.max_window,
            max_busy_mailboxes: m.max_busy,
            throttled: self.throttled.load(Ordering::Relaxed),
            tokens_issued: self.tokens_issued.load(Ordering::Relaxed),
            unauthorized: self.unauthorized.load(Ordering::Relaxed),
            downloads: self.downloads.load(Ordering::Relaxed),
            drive_enumerations: self.drive_enumerations.load(Ordering::Relaxed),
        }
    }

    /// `GET /_sandbox/stats`: the counters, the limits and the seeded tenant's totals.
    fn stats_json(&self) -> Value {
        let s = self.stats();
        let t = &self.truth;
        let (mut od_files, mut od_bytes, mut sp_files, mut sp_bytes) = (0u64, 0u64, 0u64, 0u64);
        for f in t.files() {
            let onedrive = t
                .drive(&f.drive_id)
                .is_some_and(|d| matches!(d.owner, tenant::DriveOwner::User(_)));
            if onedrive {
                od_files += 1;
                od_bytes += f.size;
            } else {
                sp_files += 1;
                sp_bytes += f.size;
            }
        }
        let (mut msgs, mut msg_bytes, mut recoverable, mut archived) = (0u64, 0u64, 0u64, 0u64);
        for e in t.messages() {
            msgs += 1;
            msg_bytes += e.message.size;
            if e.folder
                .path
                .first()
                .is_some_and(|p| p == "Recoverable Items")
            {
                recoverable += 1;
            }
            if e.mailbox.is_archive {
                archived += 1;
            }
        }
        json!({
            "stats": {
                "requests": s.requests,
                "max_concurrent_per_mailbox": s.max_concurrent_per_mailbox,
                "mailbox_concurrency_rejections": s.mailbox_concurrency_rejections,
                "mailbox_rate_rejections": s.mailbox_rate_rejections,
                "mailbox_requests": s.mailbox_requests,
                "mailboxes_touched": s.mailboxes_touched,
                "max_requests_per_mailbox": s.max_requests_per_mailbox,
                "max_requests_per_mailbox_10min": s.max_requests_per_mailbox_10min,
                "max_busy_mailboxes": s.max_busy_mailboxes,
                "throttled": s.throttled,
                "tokens_issued": s.tokens_issued,
                "unauthorized": s.unauthorized,
                "downloads": s.downloads,
                "drive_enumerations": s.drive_enumerations,
            },
            "limits": {
                "mailbox_concurrency": self.cfg.mailbox_concurrency,
                "mailbox_requests_per_10min": self.cfg.mailbox_requests_per_10min,
                "mail_latency_ms": self.cfg.mail_latency.as_millis() as u64,
            },
            "tenant": {
                "licensed_users": t.licensed_users().count(),
                "mailboxes": t.users.iter().map(|u| usize::from(u.mailbox.is_some()) + usize::from(u.archive.is_some())).sum::<usize>(),
                "messages": msgs,
                "message_bytes": msg_bytes,
                "messages_recoverable_items": recoverable,
                "messages_archive": archived,
                "onedrive_files": od_files,
                "onedrive_bytes": od_bytes,
                "sharepoint_files": sp_files,
                "sharepoint_bytes": sp_bytes,
            },
        })
    }

    pub fn denied(&self, scope: &str) -> bool {
        self.cfg
            .denied_scopes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scope))
    }
}

/// A request, parsed.
pub(crate) struct Req {
    pub method: http::Method,
    /// Percent-decoded path segments after the version.
    pub segs: Vec<String>,
    /// `v1.0` or `beta`.
    pub version: String,
    pub query: Vec<(String, String)>,
    pub headers: http::HeaderMap,
}

impl Req {
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Prefer` header values, split.
    pub fn prefers(&self) -> Vec<String> {
        self.headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn immutable_ids(&self) -> bool {
        self.prefers().iter().any(|p| {
            let p = p.replace(' ', "");
            p.eq_ignore_ascii_case("IdType=\"ImmutableId\"")
                || p.eq_ignore_ascii_case("IdType=ImmutableId")
        })
    }

    pub fn max_page_size(&self) -> Option<usize> {
        self.prefers().iter().find_map(|p| {
            let (k, v) = p.split_once('=')?;
            if k.trim().eq_ignore_ascii_case("odata.maxpagesize") {
                v.trim().trim_matches('"').parse().ok()
            } else {
                None
            }
        })
    }
}

/// The sandbox Microsoft Graph server on 127.0.0.1, until dropped.
pub struct GraphServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl GraphServer {
    /// Generates the tenant for `config` and starts serving it on `port` (0: a free one), on
    /// the current tokio runtime.
    pub async fn start(config: GraphConfig, port: u16) -> io::Result<GraphServer> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let truth = tenant::generate(&config);
        let state = Arc::new(State::new(config, truth, format!("http://{addr}")));
        let st = state.clone();
        let svc = hyper::service::service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(handle(st, req).await) }
        });
        let task = crate::serve(listener, svc);
        Ok(GraphServer { addr, state, task })
    }

    /// `http://127.0.0.1:PORT/v1.0`.
    pub fn graph_endpoint(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }

    /// `http://127.0.0.1:PORT/beta`.
    pub fn beta_endpoint(&self) -> String {
        format!("http://{}/beta", self.addr)
    }

    /// `http://127.0.0.1:PORT/login` (token URL: `<login>/<tenant>/oauth2/v2.0/token`).
    pub fn login_endpoint(&self) -> String {
        format!("http://{}/login", self.addr)
    }

    /// The token URL for the configured tenant name.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.login_endpoint(),
            self.state.truth.tenant
        )
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The ground truth as seeded.
    pub fn truth(&self) -> &Truth {
        &self.state.truth
    }

    /// The ground truth now: seeded content plus [`GraphServer::add_message`] /
    /// [`GraphServer::add_file`], minus deletions.
    pub fn current_truth(&self) -> Truth {
        let mut t = self.state.truth.clone();
        let live = self.state.live.lock().expect("live lock");
        for u in &mut t.users {
            for mb in u.mailbox.iter_mut().chain(u.archive.iter_mut()) {
                if let Some(lm) = live
                    .mailboxes
                    .iter()
                    .find(|l| l.mailbox_id == mb.mailbox_id)
                {
                    mb.messages = lm
                        .msgs
                        .iter()
                        .filter(|m| m.deleted.is_none())
                        .map(|m| m.m.clone())
                        .collect();
                }
            }
        }
        t.files.clear();
        t.drive_folders.clear();
        for d in &live.drives {
            for it in d.items.iter().filter(|i| i.deleted.is_none()) {
                match &it.item {
                    DItem::Folder(f) => t.drive_folders.push(f.clone()),
                    DItem::File(f) => t.files.push(f.clone()),
                }
            }
        }
        t
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GraphStats {
        self.state.stats()
    }

    /// Waits until the server stops (it runs until dropped or the process ends).
    pub async fn serve_forever(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Makes every delta and next link issued so far stale: mail delta answers 410
    /// `SyncStateNotFound`, drive delta 410 `resyncRequired` with a `Location` header.
    pub fn invalidate_delta_tokens(&self) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Adds a message to a user's primary mailbox (user id or UPN; folder id or well-known
    /// name); it appears in later deltas. Returns it, or None if the user or folder is unknown.
    pub fn add_message(&self, user: &str, folder: &str, subject: &str) -> Option<Message> {
        let user = self.state.truth.user(user)?.clone();
        let mut live = self.state.live.lock().expect("live lock");
        let Live {
            seq,
            mailboxes,
            rng,
            ..
        } = &mut *live;
        let mb = mailboxes
            .iter_mut()
            .find(|m| m.user_id == user.id && !m.is_archive)?;
        let f = mb
            .folders
            .iter()
            .find(|f| {
                f.id == folder
                    || f.well_known_name
                        .as_deref()
                        .is_some_and(|w| w.eq_ignore_ascii_case(folder))
            })?
            .clone();
        let template = mb.msgs.first()?.m.clone();
        let suffix = base64::engine::general_purpose::URL_SAFE.encode(rng.bytes(30));
        let key = content::key_of(self.state.cfg.seed, &suffix);
        let mut spec = template.spec.clone();
        spec.key = key;
        spec.subject = subject.to_string();
        spec.date = now_unix();
        spec.message_id = format!("{key:016x}.added@{}", self.state.truth.tenant);
        spec.attachments.clear();
        let size = content::build_mime(&spec).len() as u64;
        *seq += 1;
        let m = Message {
            id: format!("{}{suffix}", tenant::IMMUTABLE_PREFIX),
            rest_id: format!("{}{suffix}", tenant::REST_PREFIX),
            folder_id: f.id.clone(),
            internet_message_id: format!("<{}>", spec.message_id),
            subject: subject.to_string(),
            size,
            received: spec.date,
            is_read: false,
            has_attachments: false,
            categories: vec![],
            spec,
        };
        mb.msgs.push(LiveMsg {
            m: m.clone(),
            created: *seq,
            deleted: None,
        });
        Some(m)
    }

    /// Deletes a message (immutable or REST id) from a user's mailboxes; later deltas report
    /// it `@removed`. False if not found.
    pub fn delete_message(&self, user: &str, id: &str) -> bool {
        let Some(user) = self.state.truth.user(user) else {
            return false;
        };
        let mut live = self.state.live.lock().expect("live lock");
        live.seq += 1;
        let seq = live.seq;
        for mb in live.mailboxes.iter_mut().filter(|m| m.user_id == user.id) {
            if let Some(m) = mb
                .msgs
                .iter_mut()
                .find(|m| m.deleted.is_none() && (m.m.id == id || m.m.rest_id == id))
            {
                m.deleted = Some(seq);
                return true;
            }
        }
        false
    }

    /// Adds a file (binary, generated) under `dir` (folder names from the drive root; they must
    /// exist) of a drive. Returns it, or None if the drive or folder is unknown.
    pub fn add_file(&self, drive_id: &str, dir: &[&str], name: &str, size: u64) -> Option<File> {
        let mut live = self.state.live.lock().expect("live lock");
        let Live {
            seq, drives, rng, ..
        } = &mut *live;
        let d = drives.iter_mut().find(|d| d.drive.id == drive_id)?;
        let parent = d.items.iter().find_map(|i| match &i.item {
            DItem::Folder(f)
                if i.deleted.is_none()
                    && f.path.iter().map(String::as_str).eq(dir.iter().copied()) =>
            {
                Some(f.clone())
            }
            _ => None,
        })?;
        let id = tenant::item_id(rng);
        let spec = ContentSpec {
            key: content::key_of(self.state.cfg.seed, &id),
            len: size,
            kind: content::ContentKind::Binary,
        };
        let hash = spec.quick_xor_hash();
        let mut path = parent.path.clone();
        path.push(name.to_string());
        let f = File {
            id,
            drive_id: drive_id.to_string(),
            parent_id: parent.id.clone(),
            name: name.to_string(),
            path,
            size,
            quick_xor_hash: hash.clone(),
            listed_size: size,
            listed_quick_xor_hash: hash,
            mime_type: "application/octet-stream".into(),
            created: now_unix(),
            modified: now_unix(),
            content: spec,
        };
        *seq += 1;
        d.items.push(LiveItem {
            item: DItem::File(f.clone()),
            created: *seq,
            changed: *seq,
            deleted: None,
        });
        touch_ancestors(d, Some(&parent.id), *seq);
        Some(f)
    }

    /// Deletes a user (id or UPN) from the directory: `/users` no longer lists it and
    /// `/users/{id}` answers 404. False if unknown.
    pub fn delete_user(&self, user: &str) -> bool {
        let Some(u) = self.state.truth.user(user) else {
            return false;
        };
        let mut live = self.state.live.lock().expect("live lock");
        live.deleted_users.insert(u.id.clone())
    }

    /// From now on every download of a file called `name` flips a byte (`false`: stops).
    pub fn corrupt_file(&self, name: &str, on: bool) {
        let mut live = self.state.live.lock().expect("live lock");
        if on {
            live.corrupt.insert(name.to_string());
        } else {
            live.corrupt.remove(name);
        }
    }

    /// Deletes a drive (a site's document library) with everything in it: the site no longer
    /// lists it and its routes answer 404. False if unknown.
    pub fn delete_drive(&self, drive_id: &str) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        let before = live.drives.len();
        live.drives.retain(|d| d.drive.id != drive_id);
        live.drives.len() < before
    }

    /// Adds a folder `name` under `dir` (folder names from the drive root; they must exist).
    /// Returns its id, or None if the drive or `dir` is unknown.
    pub fn add_drive_folder(&self, drive_id: &str, dir: &[&str], name: &str) -> Option<String> {
        let mut live = self.state.live.lock().expect("live lock");
        let Live {
            seq, drives, rng, ..
        } = &mut *live;
        let d = drives.iter_mut().find(|d| d.drive.id == drive_id)?;
        let parent = folder_at(d, dir)?;
        let id = tenant::item_id(rng);
        let mut path = parent.path.clone();
        path.push(name.to_string());
        *seq += 1;
        d.items.push(LiveItem {
            item: DItem::Folder(DriveFolder {
                id: id.clone(),
                drive_id: drive_id.to_string(),
                parent_id: Some(parent.id.clone()),
                name: name.to_string(),
                path,
                created: now_unix(),
            }),
            created: *seq,
            changed: *seq,
            deleted: None,
        });
        touch_ancestors(d, Some(&parent.id), *seq);
        Some(id)
    }

    /// Gives a file new content of `size` bytes (new hash, new cTag); later deltas list it.
    /// False if not found.
    pub fn modify_file(&self, item_id: &str, size: u64) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        let Live {
            seq, drives, rng, ..
        } = &mut *live;
        for d in drives.iter_mut() {
            let Some(it) = d
                .items
                .iter_mut()
                .find(|i| i.deleted.is_none() && i.item.id() == item_id)
            else {
                continue;
            };
            let DItem::File(f) = &mut it.item else {
                return false;
            };
            let salt = tenant::item_id(rng);
            f.content = ContentSpec {
                key: content::key_of(self.state.cfg.seed, &format!("{item_id}/{salt}")),
                len: size,
                kind: content::ContentKind::Binary,
            };
            f.size = size;
            f.listed_size = size;
            f.quick_xor_hash = f.content.quick_xor_hash();
            f.listed_quick_xor_hash = f.quick_xor_hash.clone();
            f.modified = now_unix();
            *seq += 1;
            it.changed = *seq;
            let parent = f.parent_id.clone();
            touch_ancestors(d, Some(&parent), *seq);
            return true;
        }
        false
    }

    /// Moves and/or renames a drive item: into the folder at `dir` (names from the drive root)
    /// under `name`. Like OneDrive, a later delta lists the item itself (and its old and new
    /// ancestors), not the descendants of a moved folder, whose paths change silently. False
    /// if the item or folder is unknown.
    pub fn move_drive_item(&self, item_id: &str, dir: &[&str], name: &str) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        live.seq += 1;
        let seq = live.seq;
        for d in live.drives.iter_mut() {
            let Some(at) = d
                .items
                .iter()
                .position(|i| i.deleted.is_none() && i.item.id() == item_id)
            else {
                continue;
            };
            let Some(parent) = folder_at(d, dir) else {
                return false;
            };
            let old_parent = d.items[at].item.parent_id().map(str::to_string);
            let mut new_path = parent.path.clone();
            new_path.push(name.to_string());
            let old_path = {
                let it = &mut d.items[at];
                it.changed = seq;
                match &mut it.item {
                    DItem::File(f) => {
                        f.parent_id = parent.id.clone();
                        f.name = name.to_string();
                        std::mem::replace(&mut f.path, new_path.clone())
                    }
                    DItem::Folder(f) => {
                        f.parent_id = Some(parent.id.clone());
                        f.name = name.to_string();
                        std::mem::replace(&mut f.path, new_path.clone())
                    }
                }
            };
            // Descendants keep their ids and cTags; only their paths change.
            for i in d.items.iter_mut() {
                if i.item.id() == item_id {
                    continue;
                }
                let p = match &mut i.item {
                    DItem::File(f) => &mut f.path,
                    DItem::Folder(f) => &mut f.path,
                };
                if p.len() > old_path.len() && p.starts_with(&old_path) {
                    let rest = p.split_off(old_path.len());
                    *p = new_path.clone();
                    p.extend(rest);
                }
            }
            touch_ancestors(d, old_parent.as_deref(), seq);
            touch_ancestors(d, Some(&parent.id), seq);
            return true;
        }
        false
    }

    /// Deletes a drive item (file or folder — a folder's descendants go with it); later deltas
    /// report it with a `deleted` facet. False if not found.
    pub fn delete_drive_item(&self, item_id: &str) -> bool {
        let mut live = self.state.live.lock().expect("live lock");
        live.seq += 1;
        let seq = live.seq;
        for d in &mut live.drives {
            if !d
                .items
                .iter()
                .any(|i| i.item.id() == item_id && i.deleted.is_none())
            {
                continue;
            }
            let mut doomed = vec![item_id.to_string()];
            let mut changed = true;
            while changed {
                changed = false;
                for i in &d.items {
                    if i.deleted.is_none()
                        && !doomed.iter().any(|x| x == i.item.id())
                        && i.item
                            .parent_id()
                            .is_some_and(|p| doomed.iter().any(|x| x == p))
                    {
                        doomed.push(i.item.id().to_string());
                        changed = true;
                    }
                }
            }
            let parent = d
                .items
                .iter()
                .find(|i| i.item.id() == item_id)
                .and_then(|i| i.item.parent_id().map(str::to_string));
            for i in &mut d.items {
                if i.deleted.is_none() && doomed.iter().any(|x| x == i.item.id()) {
                    i.deleted = Some(seq);
                }
            }
            touch_ancestors(d, parent.as_deref(), seq);
            return true;
        }
        false
    }
}

/// The live folder at `dir` (names from the drive root; empty for the root).
fn folder_at(d: &LiveDrive, dir: &[&str]) -> Option<DriveFolder> {
    d.items.iter().find_map(|i| match &i.item {
        DItem::Folder(f)
            if i.deleted.is_none() && f.path.iter().map(String::as_str).eq(dir.iter().copied()) =>
        {
            Some(f.clone())
        }
        _ => None,
    })
}

/// A change below a folder changes the folder too (its size, cTag), so OneDrive's delta lists
/// the folder and every ancestor up to the root along with the changed item.
fn touch_ancestors(d: &mut LiveDrive, from: Option<&str>, seq: u64) {
    let mut at = from.map(str::to_string);
    for _ in 0..1000 {
        let Some(id) = at.take() else { break };
        let Some(it) = d
            .items
            .iter_mut()
            .find(|i| i.deleted.is_none() && i.item.id() == id)
        else {
            break;
        };
        it.changed = seq;
        at = it.item.parent_id().map(str::to_string);
    }
}

impl Drop for GraphServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn new_guid(state: &State) -> String {
    let mut live = state.live.lock().expect("live lock");
    live.rng.guid()
}

async fn handle(state: Arc<State>, req: http::Request<hyper::body::Incoming>) -> Resp {
    if req.uri().path() == "/_sandbox/stats" {
        // Not counted: reading the counters does not change them.
        return http::Response::builder()
            .status(200)
            .header("content-type", "application/json; charset=utf-8")
            .body(full(state.stats_json().to_string()))
            .expect("valid response");
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    let client_request_id = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| new_guid(&state));
    let mut ctx = Ctx {
        request_id: new_guid(&state),
        client_request_id,
        applied: Vec::new(),
    };
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(raw_query.as_bytes())
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

    if segs.first().map(String::as_str) == Some("login") {
        let resp = token_endpoint(&state, &ctx, &segs, req).await;
        if resp.status() == 401 {
            state.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        return resp;
    }
    if segs.first().map(String::as_str) == Some("download") {
        return api::download(&state, &ctx, &query, req.headers());
    }
    let version = match segs.first().map(String::as_str) {
        Some("v1.0") => "v1.0",
        Some("beta") => "beta",
        _ => return ctx.error(400, "BadRequest", "Invalid version."),
    };
    let headers = req.headers().clone();
    if let Some(reason) = state.check_auth(&headers) {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
        return ctx.error_with(
            401,
            "InvalidAuthenticationToken",
            reason,
            vec![("www-authenticate", format!("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"{GRAPH_CLIENT_ID}\""))],
        );
    }
    let n = state.api_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let f = &state.cfg.faults;
    if f.expire_tokens_after_requests > 0 && n.is_multiple_of(f.expire_tokens_after_requests) {
        // Every token issued so far stops working after this request.
        state
            .revoked_below
            .store(state.token_serial.load(Ordering::SeqCst), Ordering::SeqCst);
    }
    if f.throttle_every > 0 && n.is_multiple_of(f.throttle_every) {
        return state.throttle_response(&ctx, 429);
    }
    if f.unavailable_every > 0 && n.is_multiple_of(f.unavailable_every) {
        return state.throttle_response(&ctx, 503);
    }
    if let Some(status) = state.random_fault() {
        return state.throttle_response(&ctx, status);
    }
    let r = Req {
        method: req.method().clone(),
        segs: segs[1..].to_vec(),
        version: version.to_string(),
        query,
        headers,
    };
    if let Some(n) = r.max_page_size() {
        ctx.applied
            .push(format!("odata.maxpagesize={}", n.clamp(1, 999)));
    }
    if r.immutable_ids() {
        ctx.applied.push("IdType=\"ImmutableId\"".into());
    }
    // Per-mailbox concurrency: mail requests hold a slot until their body is sent.
    let mut guard = None;
    if r.segs.len() >= 3
        && r.segs[0].eq_ignore_ascii_case("users")
        && (r.segs[2].eq_ignore_ascii_case("mailFolders")
            || r.segs[2].eq_ignore_ascii_case("messages"))
    {
        let key = api::mailbox_key(&state, &r.segs[1]);
        match state.enter_mailbox(&key) {
            Ok(g) => guard = Some(g),
            Err(MailboxRefusal::Concurrency) => {
                return ctx.error_with(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    vec![("retry-after", "1".into())],
                );
            }
            Err(MailboxRefusal::Rate { retry_after }) => {
                return ctx.error_with(
                    429,
                    "ApplicationThrottled",
                    "Application is over its MailboxRequests limit.",
                    vec![("retry-after", retry_after.to_string())],
                );
            }
        }
    }
    if guard.is_some() && !state.cfg.mail_latency.is_zero() {
        tokio::time::sleep(state.cfg.mail_latency).await;
    }
    let resp = api::route(&state, &ctx, &r);
    match guard {
        None => resp,
        Some(g) => {
            let (parts, body) = resp.into_parts();
            http::Response::from_parts(
                parts,
                Guarded {
                    inner: body,
                    guard: Some(g),
                }
                .boxed(),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token endpoint.

fn aad_error(ctx: &Ctx, status: u16, error: &str, code: u32, text: &str) -> Resp {
    let trace = ctx.request_id.clone();
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {} Timestamp: {}", ctx.client_request_id, content::iso(now_unix())),
        "error_codes": [code],
        "timestamp": content::iso(now_unix()),
        "trace_id": trace,
        "correlation_id": ctx.client_request_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("cache-control", "no-store, no-cache")
        .header("x-ms-request-id", &ctx.request_id)
        .body(full(body.to_string()))
        .expect("valid response")
}

async fn token_endpoint(
    state: &Arc<State>,
    ctx: &Ctx,
    segs: &[String],
    req: http::Request<hyper::body::Incoming>,
) -> Resp {
    // /login/{tenant}/oauth2/v2.0/token
    let ok_path = segs.len() == 5 && segs[2] == "oauth2" && segs[3] == "v2.0" && segs[4] == "token";
    if !ok_path {
        return aad_error(
            ctx,
            404,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests to /{tenant}/oauth2/v2.0/token.",
        );
    }
    if req.method() != http::Method::POST {
        return aad_error(
            ctx,
            405,
            "invalid_request",
            900561,
            "The endpoint only accepts POST, OPTIONS requests. Received a GET request.",
        );
    }
    let tenant = &segs[1];
    let t = &state.truth;
    if !(tenant.eq_ignore_ascii_case(&t.tenant) || tenant.eq_ignore_ascii_case(&t.tenant_id)) {
        return aad_error(ctx, 400, "invalid_request", 90002, &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return aad_error(
                ctx,
                400,
                "invalid_request",
                900144,
                "Could not read the request body.",
            )
        }
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str);
    match get("grant_type") {
        Some("client_credentials") => {}
        None => {
            return aad_error(
                ctx,
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        }
        Some(g) => {
            return aad_error(
                ctx,
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{g}'."),
            )
        }
    }
    let Some(client_id) = get("client_id") else {
        return aad_error(
            ctx,
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    if client_id != GRAPH_CLIENT_ID {
        return aad_error(ctx, 400, "unauthorized_client", 700016, &format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", t.tenant));
    }
    match get("scope") {
        Some(s) if s.trim().ends_with("/.default") => {}
        None => return aad_error(ctx, 400, "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."),
        Some(s) => return aad_error(ctx, 400, "invalid_scope", 1002012, &format!("The provided value for scope {s} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).")),
    }
    if let Some(secret) = get("client_secret") {
        if secret != GRAPH_CLIENT_SECRET {
            return aad_error(ctx, 401, "invalid_client", 7000215, &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{GRAPH_CLIENT_ID}'."));
        }
    } else if let Some(assertion) = get("client_assertion") {
        if get("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return aad_error(ctx, 400, "invalid_request", 50027, "Invalid JWT token. The client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.");
        }
        let token_url = format!("{}/login/{tenant}/oauth2/v2.0/token", state.base);
        if let Err((code, text)) = verify_assertion(state, assertion, &token_url) {
            return aad_error(ctx, 401, "invalid_client", code, &text);
        }
    } else {
        return aad_error(ctx, 401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
    }
    let token = state.issue_token();
    let secs = state.cfg.token_lifetime.as_secs();
    let body = json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": token,
    });
    http::Response::builder()
        .status(200)
        .header("content-type", "application/json; charset=utf-8")
        .header("cache-control", "no-store, no-cache")
        .header("x-ms-request-id", &ctx.request_id)
        .body(full(body.to_string()))
        .expect("valid response")
}

/// Checks an RS256 client assertion the way the identity platform documents it.
fn verify_assertion(state: &State, jwt: &str, token_url: &str) -> Result<(), (u32, String)> {
    let bad = |code: u32, t: &str| Err((code, t.to_string()));
    let Some(cert) = &state.cfg.client_certificate else {
        return bad(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found.]",
        );
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return bad(
            50027,
            "Invalid JWT token. The token is not in JWS Compact Serialization format.",
        );
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decode = |s: &str| b64.decode(s.trim_end_matches('='));
    let (Ok(h), Ok(c), Ok(sig)) = (decode(parts[0]), decode(parts[1]), decode(parts[2])) else {
        return bad(
            50027,
            "Invalid JWT token. The token is not valid base64url.",
        );
    };
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Value>(&h),
        serde_json::from_slice::<Value>(&c),
    ) else {
        return bad(
            50027,
            "Invalid JWT token. The header or payload is not JSON.",
        );
    };
    if header["alg"] != "RS256" && header["alg"] != "PS256" {
        return bad(5002738, "Invalid JWT token. 'alg' must be RS256 or PS256.");
    }
    use sha1::Digest as _;
    let x5t = b64.encode(sha1::Sha1::digest(&cert.cert_der));
    let x5t256 = b64.encode(sha2::Sha256::digest(&cert.cert_der));
    let thumb_ok = header["x5t"]
        .as_str()
        .is_some_and(|t| t.trim_end_matches('=') == x5t)
        || header["x5t#S256"]
            .as_str()
            .is_some_and(|t| t.trim_end_matches('=') == x5t256);
    if !thumb_ok {
        return bad(700027, "The certificate with identifier used to sign the client assertion is not registered on application.");
    }
    let alg: &dyn ring::signature::VerificationAlgorithm = if header["alg"] == "PS256" {
        &ring::signature::RSA_PSS_2048_8192_SHA256
    } else {
        &ring::signature::RSA_PKCS1_2048_8192_SHA256
    };
    let key = ring::signature::UnparsedPublicKey::new(alg, &cert.public_key_pkcs1_der);
    let signed = format!("{}.{}", parts[0], parts[1]);
    if key.verify(signed.as_bytes(), &sig).is_err() {
        return bad(700027, "Client assertion failed signature validation.");
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a.trim_end_matches('/') == token_url,
        Value::Array(v) => v.iter().any(|a| a.as_str() == Some(token_url)),
        _ => false,
    };
    if !aud_ok {
        return bad(700212, &format!("No matching federated identity record found for presented assertion audience '{}'. The audience must be {token_url}.", claims["aud"]));
    }
    if claims["iss"] != GRAPH_CLIENT_ID || claims["sub"] != GRAPH_CLIENT_ID {
        return bad(700023, "Client assertion audience claim does not match Realm issuer, or 'iss' and 'sub' are not the client id.");
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return bad(700021, "Client assertion application identifier doesn't match 'client_id' parameter or has no 'jti'.");
    }
    let now = now_unix();
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let nbf = claims["nbf"].as_i64().unwrap_or(0);
    if exp <= now {
        return bad(
            700024,
            "Client assertion is not within its valid time range.",
        );
    }
    if nbf > now + 300 {
        return bad(
            700024,
            "Client assertion is not within its valid time range.",
        );
    }
    Ok(())
}
