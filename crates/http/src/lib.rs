//! What ferry's HTTP connectors share, so that each cloud's connector holds only what is special
//! to that cloud: transport errors described in one sentence without secrets, `Retry-After`,
//! response bodies streamed while they hold a concurrency permit, path segments, and
//! RS256-signed JWTs (Entra ID client assertions, Google service-account grants).

pub mod jwt;
pub mod oauth;

use std::time::{Duration, SystemTime};

use ferry_core::retry::parse_retry_after;
use ferry_core::{ByteStream, Error};
use futures::StreamExt;
use reqwest::header::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;

pub use jwt::{pem_blocks, Rs256Key};
pub use oauth::{token_from_answer, AccessToken, OAuthError};

/// An HTTP client for API calls: no redirects followed (downloads that redirect handle it
/// themselves, so bearer tokens never travel to other hosts), a connect timeout, a read
/// timeout for stalled answers, and ferry's user agent.
pub fn api_client(read_timeout: Duration) -> ferry_core::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(read_timeout)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::fatal(format!("cannot set up HTTPS: {e}")))
}

/// Retry-After of an answer, in seconds or as an HTTP-date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?;
    parse_retry_after(v, SystemTime::now())
}

/// One sentence for a transport error, without URLs' query strings (download URLs and some
/// API URLs carry tokens).
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        let mut clean = u.clone();
        clean.set_query(None);
        s = s.replace(u.as_str(), clean.as_str());
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// `host[:port]` of a URL, for errors that say which server could not be reached.
pub fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| {
                format!(
                    "{h}{}",
                    u.port().map(|p| format!(":{p}")).unwrap_or_default()
                )
            })
        })
        .unwrap_or_else(|| "the server".into())
}

/// Characters escaped in a path segment: everything but RFC 3986's unreserved characters and
/// the sub-delimiters cloud ids use (`,` `=` `@` `:` `!` `$` `'` `(` `)`).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'+')
    .add(b'&')
    .add(b';')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

/// Percent-encodes a path segment (mail ids may contain `/` and `+`).
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// Percent-encodes a query value.
pub fn query_value(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A response body as a byte stream that holds `permit` (a per-mailbox or per-user slot) until
/// the body ends or is dropped; a transport error becomes a transient error naming `what`.
pub fn body_stream(
    response: reqwest::Response,
    permit: Option<OwnedSemaphorePermit>,
    what: String,
) -> ByteStream {
    response
        .bytes_stream()
        .map(move |chunk| {
            let _hold = &permit;
            chunk.map_err(|e| {
                Error::transient(format!(
                    "{what}: the download broke off: {}",
                    describe_reqwest(&e)
                ))
            })
        })
        .boxed()
}

/// A 64-bit hash of an id (SHA-256's first 8 bytes: the same on every run and machine), so
/// listings can remember which items they already handed on without keeping the ids: memory
/// per item stays 8 bytes whatever the id's length.
pub fn id_hash(id: &str) -> u64 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(id.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}
