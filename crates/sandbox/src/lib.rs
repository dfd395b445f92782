//! Local stand-ins for the services ferry reads, on 127.0.0.1.
//!
//! [`S3Server`] serves a folder as an S3-compatible store with
//! [s3s-fs](https://crates.io/crates/s3s-fs) (the `s3s` crate's sample backend: a real S3 REST
//! implementation — SigV4 authentication, XML listings with paging, ranged GETs, multipart
//! uploads, checksums — over files). Buckets are folders under the root and objects are files,
//! so it cannot hold keys that a filesystem cannot (`x` and `x/y` both); tests that need those
//! use an independent server process as well. Listings are the sandbox's own (one walk per
//! listing, pages served from it, ETags, `encoding-type=url`): s3s-fs's walk the whole bucket for
//! every page.
//!
//! [`GraphServer`] is a Microsoft Graph stand-in (mail, OneDrive, SharePoint, the identity
//! platform's token endpoint) over a seeded tenant whose [`graph::Truth`] tests compare exports
//! against; see the [`graph`] module for what it serves.
//!
//! [`GoogleServer`] is a Google Workspace stand-in (Drive v3, Gmail v1, Admin SDK Directory v1,
//! the OAuth 2.0 token endpoint for service accounts) over a seeded domain whose
//! [`GoogleTruth`] tests compare exports against; see the [`google`] module for what it serves.

pub mod google;
pub mod graph;
mod s3;

pub use google::{
    GoogleConfig, GoogleFaults, GoogleServer, GoogleStats, GoogleTruth, GOOGLE_SA_CLIENT_EMAIL,
};
pub use graph::{
    ClientCertificate, GraphConfig, GraphFaults, GraphServer, GraphStats, Truth, GRAPH_CLIENT_ID,
    GRAPH_CLIENT_SECRET,
};

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

/// The access key the sandbox S3 server accepts.
pub const S3_ACCESS_KEY: &str = "FERRYSANDBOXKEY";
/// The secret key the sandbox S3 server accepts (a test value, not a secret).
pub const S3_SECRET_KEY: &str = "ferry-sandbox-secret-key-not-a-secret";

/// Faults the sandbox S3 server injects, to test that clients back off, retry and report.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every Nth request for an object (GET or HEAD) is answered `503 SlowDown` with
    /// `Retry-After: 1`, as S3 does under load; 0 for never.
    pub slow_down_every: u64,
    /// Reading objects whose key starts with this is answered `403 AccessDenied`, as a bucket
    /// policy that denies `s3:GetObject` on part of a bucket would.
    pub deny_read_prefix: Option<String>,
    /// The object (bucket, key — a key that maps plainly onto a path) whose bytes change in
    /// the middle of its next GET: 4 KiB in the middle of its file are inverted right after
    /// the answer's first 256 KiB have been read, keeping its size and stored ETag. Once.
    pub change_while_read: Option<(String, String)>,
    /// Every request waits this long before it is answered, as requests to a store across a
    /// network do (S3 in a region: tens of milliseconds to the first byte). Clients that keep
    /// few requests in flight then run as slowly against the sandbox as against the cloud.
    pub latency: std::time::Duration,
    /// Truncated ListObjectsV2 pages give no continuation token, as a store whose v2 listing
    /// does not page as S3 documents might (a client can go on with start-after).
    pub list_without_continuation: bool,
}

/// Denies reads of part of a bucket; otherwise lets every signed request through.
struct DenyReads {
    prefix: Option<String>,
}

#[async_trait::async_trait]
impl s3s::access::S3Access for DenyReads {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3s::S3Error::new(s3s::S3ErrorCode::AccessDenied));
        }
        if let (Some(prefix), s3s::path::S3Path::Object { key, .. }) = (&self.prefix, cx.s3_path())
        {
            let read = matches!(cx.s3_op().name(), "GetObject" | "HeadObject");
            if read && key.starts_with(prefix.as_str()) {
                return Err(s3s::S3Error::new(s3s::S3ErrorCode::AccessDenied));
            }
        }
        Ok(())
    }
}

/// The s3s service with [`Faults`] in front.
#[derive(Clone)]
struct FaultyService {
    inner: s3s::service::S3Service,
    faults: Faults,
    count: Arc<AtomicU64>,
    counters: Arc<S3Counters>,
}

/// What the sandbox S3 server has been asked, for tests that check what a client read.
#[derive(Debug, Default)]
pub struct S3Counters {
    /// Every request.
    pub requests: AtomicU64,
    /// GETs of objects (content reads, ranged or not).
    pub object_gets: AtomicU64,
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for FaultyService {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        // An object request: /bucket/key… with GET or HEAD.
        // An object has a key after the bucket (`/bucket/` with a query is a listing).
        let object = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split_once('/')
            .is_some_and(|(_, key)| !key.is_empty());
        let read = req.method() == http::Method::GET || req.method() == http::Method::HEAD;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if object && req.method() == http::Method::GET {
            self.counters.object_gets.fetch_add(1, Ordering::Relaxed);
        }
        if self.faults.slow_down_every > 0 && object && read {
            let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(self.faults.slow_down_every) {
                let resp = http::Response::builder()
                    .status(503)
                    .header("retry-after", "1")
                    .header("content-type", "application/xml")
                    .body(s3s::Body::from(SLOW_DOWN.to_string()))
                    .expect("static response");
                return Box::pin(async move { Ok(resp) });
            }
        }
        let answer = hyper::service::Service::call(&self.inner, req);
        let latency = self.faults.latency;
        if latency.is_zero() {
            return answer;
        }
        Box::pin(async move {
            // Waits while the answer is prepared, as a remote store's time to first byte does.
            let (resp, _) = tokio::join!(answer, tokio::time::sleep(latency));
            resp
        })
    }
}

/// An S3-compatible server on 127.0.0.1, serving a folder, until dropped.
pub struct S3Server {
    addr: SocketAddr,
    root: PathBuf,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<S3Counters>,
}

impl S3Server {
    /// Starts serving `root` (created if missing; each subfolder is a bucket) on a free port,
    /// on the current tokio runtime.
    pub async fn start(root: &Path) -> io::Result<S3Server> {
        Self::start_on(root, 0).await
    }

    /// Like [`S3Server::start`], on a given port (0: a free one).
    pub async fn start_on(root: &Path, port: u16) -> io::Result<S3Server> {
        Self::start_with(root, port, Faults::default()).await
    }

    /// Like [`S3Server::start_on`], injecting `faults`.
    pub async fn start_with(root: &Path, port: u16, faults: Faults) -> io::Result<S3Server> {
        std::fs::create_dir_all(root)?;
        let counters = Arc::new(S3Counters::default());
        let backend = s3::SandboxS3::new(root)?
            .change_while_read(faults.change_while_read.clone())
            .list_without_continuation(faults.list_without_continuation);
        let service = {
            let mut b = S3ServiceBuilder::new(backend);
            b.set_auth(SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET_KEY));
            b.set_access(DenyReads {
                prefix: faults.deny_read_prefix.clone(),
            });
            FaultyService {
                inner: b.build(),
                faults,
                count: Arc::new(AtomicU64::new(0)),
                counters: counters.clone(),
            }
        };
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let task = serve(listener, service);
        Ok(S3Server {
            addr,
            root: root.to_path_buf(),
            task,
            counters,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The folder served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the server has been asked so far.
    pub fn counters(&self) -> &S3Counters {
        &self.counters
    }

    /// Waits until the server stops (it runs until dropped or the process ends).
    pub async fn serve_forever(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Creates a bucket (a folder) directly.
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.root.join(name))
    }

    /// The file that holds an object, for tests that change bytes behind the server's back.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `service` on every connection `listener` accepts (HTTP/1.1 and HTTP/2), until the
/// returned task is aborted.
pub(crate) fn serve<S, B>(listener: TcpListener, service: S) -> tokio::task::JoinHandle<()>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            // Without this, a response written in two pieces (headers, then body) waits for
            // the client's delayed ACK: ~40 ms per small GET on a reused connection.
            let _ = socket.set_nodelay(true);
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    })
}
