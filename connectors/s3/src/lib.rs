//! The `s3://` source: buckets of any S3-compatible store (AWS S3, Ceph RGW, MinIO, Garage, …).
//!
//! - Lists with ListObjectsV2 (continuation tokens), or with ListObjectVersions for every
//!   version and delete marker (`versions`); `s3://` lists every bucket the credentials see.
//! - Reads with GetObject, streaming; objects larger than two parts are fetched as parallel
//!   ranged GETs, in order, with a bound on the parts held in memory across all transfers.
//! - Every read after the first is conditional (`If-Match` on the ETag), so an object that
//!   changes while it is read is caught instead of being archived half old, half new.
//! - Checks what the store states: a single-part ETag is an MD5, a multipart ETag is the MD5
//!   of the part MD5s (checked when the part size can be learnt), `x-amz-checksum-*` are
//!   requested and checked. `items.jsonl` records which check was made (`extra.etag_check`).
//! - Keeps the metadata: ETag, version id, storage class, content headers, user metadata,
//!   encryption, object lock, and tags with `tags`.
//! - Objects in storage classes that need a restore fail with "needs restore".
//!
//! Keys are kept exactly: the payload path is built from the key's `/`-separated parts (the
//! archive makes each part safe), the exact key is the item's `source.id`.

mod client;
mod errors;
pub mod location;
pub mod store;

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType, EncodingType, ServerSideEncryption};
use base64::Engine as _;
use bytes::Bytes;
use ferry_core::{
    BufferPool, ChecksumAlgorithm, Connector, Error, Failure, Item, ItemKind, ItemUpdate, Listing,
    ListingStream, Opened, Result, RetryPolicy, SourceChecksum, SourceInfo, SourceRef,
};
use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::{mpsc, OnceCell, Semaphore};

use errors::{classify, send_with_retry, Context, Scope};
pub use location::S3Location;
pub use store::{ObjectLock, S3Store};

/// Options of the S3 connector.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// A custom endpoint (`--endpoint-url`, or `AWS_ENDPOINT_URL` through the SDK).
    pub endpoint_url: Option<String>,
    /// The region (else from the environment or profile; `us-east-1` as a last resort).
    pub region: Option<String>,
    /// A profile of the shared config and credentials files.
    pub profile: Option<String>,
    /// Path-style addressing; `None`: on for custom endpoints, off for AWS.
    pub path_style: Option<bool>,
    /// Send unsigned requests (public buckets).
    pub no_sign_request: bool,
    /// Only keys (relative to the prefix) matching one of these globs; empty: all.
    pub include: Vec<String>,
    /// Leave out keys (relative to the prefix) matching any of these globs.
    pub exclude: Vec<String>,
    /// Every version and delete marker, not just the current objects.
    pub versions: bool,
    /// Fetch each object's tags (one more request per object).
    pub tags: bool,
    /// Size of the ranged GETs for large objects.
    pub part_size: u64,
    /// Ranged GETs in flight (and parts held in memory) across all transfers.
    pub parallel_parts: usize,
    /// Keys per listing page (the server may return fewer); `None`: the server's default.
    pub page_size: Option<i32>,
    /// How listing requests are retried (object transfers are retried by the pipeline).
    pub retry: RetryPolicy,
    /// Fixed credentials (access key, secret key) instead of the standard chain: for the
    /// sandbox and tests. Users' credentials come from the environment, profiles or roles,
    /// never from the command line.
    pub static_credentials: Option<(String, String)>,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint_url: None,
            region: None,
            profile: None,
            path_style: None,
            no_sign_request: false,
            include: Vec::new(),
            exclude: Vec::new(),
            versions: false,
            tags: false,
            part_size: 4 << 20,
            parallel_parts: 4,
            page_size: None,
            retry: RetryPolicy::default(),
            static_credentials: None,
        }
    }
}

/// Reads S3 buckets.
pub struct S3Connector {
    inner: Arc<Inner>,
}

struct Inner {
    location: S3Location,
    options: S3Options,
    client: OnceCell<client::Built>,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    parts: PartBudget,
}

/// The parts of large objects held in memory over the whole run: `--parallel-parts` places,
/// and the buffers of parts already written, kept for the next parts. (Spare buffers never
/// outnumber the places, so they add no memory beyond the budget.)
#[derive(Clone)]
struct PartBudget {
    places: Arc<Semaphore>,
    spare: BufferPool,
}

impl PartBudget {
    fn new(places: usize) -> Self {
        let places = places.max(1);
        PartBudget {
            places: Arc::new(Semaphore::new(places)),
            spare: BufferPool::new(places),
        }
    }

    /// Waits for a place; gives it with an empty buffer.
    async fn take(&self) -> Result<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)> {
        let permit = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::fatal("internal error: part budget closed"))?;
        let mut data = self.spare.take();
        data.clear();
        Ok((data, permit))
    }
}

fn globs(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| Error::fatal(format!("bad glob {p:?}: {e}")))?);
    }
    b.build()
        .map(Some)
        .map_err(|e| Error::fatal(format!("bad globs: {e}")))
}

fn to_time(t: Option<&aws_smithy_types::DateTime>) -> Option<OffsetDateTime> {
    let t = t?;
    OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `application/x-www-form-urlencoded` decoding, as S3 applies it with `EncodingType=url`.
pub(crate) fn url_decode(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

/// Where a ListObjectsV2 listing goes on: the page's continuation token, or, from a store
/// that says a page is truncated but gives no new token (its v2 listing does not page as S3
/// documents), after the page's last key, as the first version of the listing pages.
/// Shared by the connector's listing and the store's.
#[derive(Default)]
pub(crate) struct ListCursor {
    /// The next request's continuation token.
    pub(crate) token: Option<String>,
    /// The next request's start-after, when there is no token to go on with.
    pub(crate) start_after: Option<String>,
}

impl ListCursor {
    /// Moves on past a page whose last key (decoded) was `last_key`: `Ok(true)` when another
    /// page follows, `Ok(false)` after the last, `Err(())` when the store says more follow
    /// but gives no way to reach them (stopping quietly would leave the rest out unnoticed,
    /// asking again would never end).
    pub(crate) fn advance(
        &mut self,
        page: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output,
        last_key: Option<String>,
    ) -> std::result::Result<bool, ()> {
        if page.is_truncated() != Some(true) {
            return Ok(false);
        }
        match (page.next_continuation_token(), last_key) {
            (Some(next), _) if self.token.as_deref() != Some(next) => {
                self.token = Some(next.to_string());
                self.start_after = None;
            }
            (_, Some(last)) if self.start_after.as_deref() < Some(last.as_str()) => {
                tracing::debug!("a truncated listing page without a new continuation token; going on after {last:?}");
                self.token = None;
                self.start_after = Some(last);
            }
            _ => return Err(()),
        }
        Ok(true)
    }
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// An entity tag as HTTP wants it in If-Match: in quotes.
fn quoted(etag: &str) -> String {
    format!("\"{}\"", unquote(etag))
}

/// Storage classes whose objects must be restored before they can be read.
fn needs_restore(class: &str) -> bool {
    matches!(class, "GLACIER" | "DEEP_ARCHIVE")
}

fn b64_to_hex(v: &str) -> Option<String> {
    let (b64, parts) = match v.split_once('-') {
        Some((b, n)) => (b, Some(n)),
        None => (v, None),
    };
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(match parts {
        Some(n) => format!("{}-{n}", hex::encode(raw)),
        None => hex::encode(raw),
    })
}

/// One listed object or version, before it becomes an [`Item`].
struct Listed<'a> {
    bucket: &'a str,
    key: String,
    version: Option<String>,
    is_latest: Option<bool>,
    size: Option<i64>,
    modified: Option<OffsetDateTime>,
    etag: Option<String>,
    storage_class: Option<String>,
    delete_marker: bool,
}

impl S3Connector {
    /// A connector for `location`. No request is made until the run starts.
    pub fn new(location: S3Location, options: S3Options) -> Result<Self> {
        let include = globs(&options.include)?;
        let exclude = globs(&options.exclude)?;
        let parts = PartBudget::new(options.parallel_parts);
        Ok(S3Connector {
            inner: Arc::new(Inner {
                location,
                options,
                client: OnceCell::new(),
                include,
                exclude,
                parts,
            }),
        })
    }
}

impl Inner {
    async fn built(&self) -> &client::Built {
        self.client
            .get_or_init(|| client::build(&self.options))
            .await
    }

    fn wanted(&self, key: &str) -> bool {
        let rel = key
            .strip_prefix(self.location.prefix.as_str())
            .unwrap_or(key);
        if let Some(inc) = &self.include {
            if !inc.is_match(rel) {
                return false;
            }
        }
        if let Some(exc) = &self.exclude {
            if exc.is_match(rel) {
                return false;
            }
        }
        true
    }

    fn item(&self, host: &str, l: Listed<'_>) -> Item {
        let mut parts: Vec<String> = l.key.split('/').map(str::to_string).collect();
        // Older versions sit beside the current one, named with their time and version id,
        // so the newest is the one with the plain name.
        if l.is_latest == Some(false) || (l.delete_marker && l.is_latest != Some(true)) {
            let when = l
                .modified
                .map(|t| {
                    format!(
                        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                        t.year(),
                        u8::from(t.month()),
                        t.day(),
                        t.hour(),
                        t.minute(),
                        t.second()
                    )
                })
                .unwrap_or_default();
            let last = parts.pop().unwrap_or_default();
            parts.push(format!(
                "{last}@{when}~{}",
                l.version.as_deref().unwrap_or("null")
            ));
        }
        let mut path = vec![host.to_string(), l.bucket.to_string()];
        path.extend(parts);
        let name = l.key.rsplit('/').next().unwrap_or(&l.key).to_string();
        let mut item = Item::file(
            SourceRef {
                system: "s3".into(),
                account: Some(host.to_string()),
                container: Some(l.bucket.to_string()),
                id: l.key.clone(),
                version: l.version.clone(),
                original_name: Some(name),
                original_path: Some(l.key.clone()),
            },
            path,
        );
        item.size = l.size.map(|s| s.max(0) as u64);
        item.modified = l.modified;
        let extra = &mut item.extra;
        extra.insert("key".into(), l.key.clone().into());
        if let Some(v) = &l.version {
            extra.insert("version_id".into(), v.clone().into());
        }
        if let Some(latest) = l.is_latest {
            extra.insert("is_latest".into(), latest.into());
        }
        if let Some(etag) = &l.etag {
            extra.insert("etag".into(), unquote(etag).into());
        }
        if let Some(class) = &l.storage_class {
            extra.insert("storage_class".into(), class.clone().into());
        }
        if l.delete_marker {
            extra.insert("delete_marker".into(), true.into());
            item.kind = ItemKind::Other {
                what: "delete marker".into(),
            };
            item.size = None;
        }
        item
    }

    fn failure(&self, name: String, error: &Error) -> Failure {
        Failure {
            source: None,
            name,
            stage: "list".into(),
            error: error.to_string(),
            attempts: self.options.retry.max_attempts,
            at: OffsetDateTime::now_utc(),
        }
    }

    /// Lists everything into `tx`; stops early if the receiver goes away.
    async fn walk(self: Arc<Self>, tx: mpsc::Sender<Result<Listing>>) {
        let built = self.built().await;
        let buckets = match &self.location.bucket {
            Some(b) => vec![b.clone()],
            None => match self.list_buckets(built).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            },
        };
        for bucket in buckets {
            let done = if self.options.versions {
                self.list_versions(built, &bucket, &tx).await
            } else {
                self.list_objects(built, &bucket, &tx).await
            };
            if done.is_err() {
                return;
            }
        }
    }

    async fn list_buckets(&self, built: &client::Built) -> Result<Vec<String>> {
        let ctx = Context {
            endpoint: &built.endpoint,
            what: "listing the buckets (s3://)",
            scope: Scope::Bucket,
        };
        let out = send_with_retry(&self.options.retry, &ctx, "ListBuckets", || {
            built.client.list_buckets().send()
        })
        .await?;
        let mut names: Vec<String> = out
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Sends a listing entry; `Err` when the run is over (receiver gone) or the error is fatal.
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<Listing>>,
        entry: Result<Listing>,
    ) -> std::result::Result<(), ()> {
        let fatal = entry.is_err();
        if tx.send(entry).await.is_err() || fatal {
            return Err(());
        }
        Ok(())
    }

    /// A listing page failed after its retries. Without it the rest of the bucket cannot be
    /// listed: a fatal error stops the run, anything else is recorded as a listing failure.
    async fn page_failed(
        &self,
        tx: &mpsc::Sender<Result<Listing>>,
        bucket: &str,
        what: &str,
        e: Error,
    ) -> std::result::Result<(), ()> {
        if e.is_fatal() {
            return self.send(tx, Err(e)).await;
        }
        let name = format!("s3://{bucket}/{} ({what})", self.location.prefix);
        let _ = self
            .send(tx, Ok(Listing::Failed(self.failure(name, &e))))
            .await;
        Ok(())
    }

    async fn list_objects(
        &self,
        built: &client::Built,
        bucket: &str,
        tx: &mpsc::Sender<Result<Listing>>,
    ) -> std::result::Result<(), ()> {
        let what = format!("listing s3://{bucket}/{}", self.location.prefix);
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Bucket,
        };
        let mut cursor = ListCursor::default();
        loop {
            let page = send_with_retry(&self.options.retry, &ctx, "a listing page", || {
                let mut req = built
                    .client
                    .list_objects_v2()
                    .bucket(bucket)
                    .encoding_type(EncodingType::Url)
                    .set_continuation_token(cursor.token.clone())
                    .set_start_after(cursor.start_after.clone());
                if !self.location.prefix.is_empty() {
                    req = req.prefix(&self.location.prefix);
                }
                if let Some(n) = self.options.page_size {
                    req = req.max_keys(n);
                }
                req.send()
            })
            .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => return self.page_failed(tx, bucket, "listing", e).await,
            };
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            let mut last_key: Option<String> = None;
            for o in page.contents() {
                let Some(raw) = o.key() else { continue };
                let key = if encoded {
                    url_decode(raw)
                } else {
                    raw.to_string()
                };
                last_key = Some(key.clone());
                if !self.wanted(&key) {
                    continue;
                }
                let listed = Listed {
                    bucket,
                    key,
                    version: None,
                    is_latest: None,
                    size: o.size(),
                    modified: to_time(o.last_modified()),
                    etag: o.e_tag().map(str::to_string),
                    storage_class: o.storage_class().map(|c| c.as_str().to_string()),
                    delete_marker: false,
                };
                self.send(tx, Ok(Listing::Item(self.item(&built.host, listed))))
                    .await?;
            }
            match cursor.advance(&page, last_key) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(()) => {
                    let e = Error::permanent(
                        "the store says the listing goes on but gives no way to continue it (no new continuation token, no keys to start after); the keys after this point were not listed",
                    );
                    return self.page_failed(tx, bucket, "listing", e).await;
                }
            }
        }
    }

    async fn list_versions(
        &self,
        built: &client::Built,
        bucket: &str,
        tx: &mpsc::Sender<Result<Listing>>,
    ) -> std::result::Result<(), ()> {
        let what = format!(
            "listing the versions in s3://{bucket}/{}",
            self.location.prefix
        );
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Bucket,
        };
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = send_with_retry(&self.options.retry, &ctx, "a version listing page", || {
                let mut req = built
                    .client
                    .list_object_versions()
                    .bucket(bucket)
                    .encoding_type(EncodingType::Url)
                    .set_key_marker(key_marker.clone())
                    .set_version_id_marker(version_marker.clone());
                if !self.location.prefix.is_empty() {
                    req = req.prefix(&self.location.prefix);
                }
                if let Some(n) = self.options.page_size {
                    req = req.max_keys(n);
                }
                req.send()
            })
            .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => return self.page_failed(tx, bucket, "version listing", e).await,
            };
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            let decode = |k: &str| {
                if encoded {
                    url_decode(k)
                } else {
                    k.to_string()
                }
            };
            // Versions and delete markers come in two lists; merge them so each key's history
            // is together, newest first, as S3 orders each list.
            let mut entries: Vec<Listed<'_>> = Vec::new();
            for v in page.versions() {
                let Some(k) = v.key() else { continue };
                entries.push(Listed {
                    bucket,
                    key: decode(k),
                    version: v.version_id().map(str::to_string),
                    is_latest: v.is_latest(),
                    size: v.size(),
                    modified: to_time(v.last_modified()),
                    etag: v.e_tag().map(str::to_string),
                    storage_class: v.storage_class().map(|c| c.as_str().to_string()),
                    delete_marker: false,
                });
            }
            for m in page.delete_markers() {
                let Some(k) = m.key() else { continue };
                entries.push(Listed {
                    bucket,
                    key: decode(k),
                    version: m.version_id().map(str::to_string),
                    is_latest: m.is_latest(),
                    size: None,
                    modified: to_time(m.last_modified()),
                    etag: None,
                    storage_class: None,
                    delete_marker: true,
                });
            }
            entries.sort_by(|a, b| a.key.cmp(&b.key).then(b.modified.cmp(&a.modified)));
            for l in entries {
                if !self.wanted(&l.key) {
                    continue;
                }
                self.send(tx, Ok(Listing::Item(self.item(&built.host, l))))
                    .await?;
            }
            if page.is_truncated() != Some(true) {
                return Ok(());
            }
            // With EncodingType=url the markers come encoded like the keys; the request takes
            // the key itself.
            let next = (
                page.next_key_marker().map(decode),
                page.next_version_id_marker().map(str::to_string),
            );
            if next.0.is_none() || next == (key_marker.clone(), version_marker.clone()) {
                // Stopping quietly would leave the rest out unnoticed; going round again would
                // never end.
                let e = Error::permanent(
                    "the store says the version listing goes on but gives no new NextKeyMarker to continue from; the versions after this point were not listed",
                );
                return self.page_failed(tx, bucket, "version listing", e).await;
            }
            (key_marker, version_marker) = next;
        }
    }

    /// The size of every part but the last of a multipart object, if the store tells it: HEAD
    /// with `partNumber` (AWS, Ceph, MinIO, Garage and moto answer it) for the first and the
    /// last part. Parts are taken to be equal but the last, as every common uploader makes
    /// them; the last part's size must agree, else the layout is called unknown.
    #[allow(clippy::too_many_arguments)]
    async fn part_size(
        &self,
        built: &client::Built,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        etag: &str,
        parts: u64,
        total: u64,
    ) -> Option<u64> {
        let head = |n: i32| {
            built
                .client
                .head_object()
                .bucket(bucket)
                .key(key)
                .set_version_id(version.map(str::to_string))
                .part_number(n)
                .send()
        };
        let first = match head(1).await {
            Ok(out) => out,
            Err(e) => {
                tracing::debug!("HEAD partNumber=1 of {key}: {}", DisplayErrorContext(&e));
                return None;
            }
        };
        // No If-Match here: some stores compare it with the part's own ETag. A part HEAD that
        // belongs to another version of the object fails the final check anyway.
        if first.e_tag().is_some_and(|e| unquote(e) == unquote(etag)) && parts > 1 {
            // The whole object came back: partNumber was ignored.
            return None;
        }
        let part = first.content_length()? as u64;
        if let Some(count) = first.parts_count() {
            if count as u64 != parts {
                return None;
            }
        }
        // A server that ignores partNumber answers with the whole object.
        if part == 0 || (parts > 1 && part >= total) || part.checked_mul(parts - 1)? >= total {
            return None;
        }
        let last_expected = total - part * (parts - 1);
        if parts > 1 {
            let last = head(i32::try_from(parts).ok()?).await.ok()?;
            if last.content_length()? as u64 != last_expected || last_expected > part {
                return None;
            }
        }
        Some(part)
    }

    /// What a GET or HEAD says about the object: metadata, and which checksums can be checked.
    #[allow(clippy::too_many_arguments)]
    async fn update_from(
        &self,
        built: &client::Built,
        item: &Item,
        h: &ObjectHeaders,
        whole_body: bool,
    ) -> ItemUpdate {
        let mut update = ItemUpdate {
            size: h.size,
            media_type: h.content_type.clone(),
            ..ItemUpdate::default()
        };
        let extra = &mut update.extra;
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                extra.insert(k.into(), v);
            }
        };
        put("etag", h.etag.clone().map(Value::from));
        put(
            "content_encoding",
            h.content_encoding.clone().map(Value::from),
        );
        put(
            "content_disposition",
            h.content_disposition.clone().map(Value::from),
        );
        put(
            "content_language",
            h.content_language.clone().map(Value::from),
        );
        put("cache_control", h.cache_control.clone().map(Value::from));
        put("expires", h.expires.clone().map(Value::from));
        put("storage_class", h.storage_class.clone().map(Value::from));
        put("server_side_encryption", h.sse.clone().map(Value::from));
        put("sse_kms_key_id", h.sse_kms_key_id.clone().map(Value::from));
        put(
            "sse_customer_algorithm",
            h.sse_customer_algorithm.clone().map(Value::from),
        );
        put("object_lock_mode", h.lock_mode.clone().map(Value::from));
        put(
            "object_lock_retain_until",
            h.lock_until.clone().map(Value::from),
        );
        put(
            "object_lock_legal_hold",
            h.legal_hold.clone().map(Value::from),
        );
        put("checksum_type", h.checksum_type.clone().map(Value::from));
        put("restore", h.restore.clone().map(Value::from));
        if !h.metadata.is_empty() {
            let mut m = Map::new();
            for (k, v) in &h.metadata {
                m.insert(k.clone(), v.clone().into());
            }
            put("user_metadata", Some(Value::Object(m)));
        }
        let bucket = item.source.container.as_deref().unwrap_or_default();
        // The ETag: an MD5 unless the object is encrypted with KMS or a customer key, or was
        // uploaded in parts (then the MD5 of the part MD5s, with the part count).
        let mut check_note = None;
        if let Some(etag) = &h.etag {
            let kms = matches!(h.sse.as_deref(), Some("aws:kms") | Some("aws:kms:dsse"));
            let customer_key = h.sse_customer_algorithm.is_some();
            let lower = etag.to_ascii_lowercase();
            let plain_md5 = lower.len() == 32 && lower.bytes().all(|b| b.is_ascii_hexdigit());
            let multipart = lower.split_once('-').and_then(|(h, n)| {
                (h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| n.parse::<u64>().ok())
                    .flatten()
            });
            if kms || customer_key {
                check_note = Some("not checked: the ETag of an object encrypted with KMS or a customer key is not an MD5".to_string());
            } else if plain_md5 {
                update
                    .source_checksums
                    .push(SourceChecksum::new(ChecksumAlgorithm::Md5, lower.clone()));
                check_note = Some("md5".into());
            } else if let Some(parts) = multipart {
                let total = h.size.or(item.size).unwrap_or(0);
                match self.part_size(built, bucket, &item.source.id, item.source.version.as_deref(), etag, parts, total).await {
                    Some(part) => {
                        update.source_checksums.push(SourceChecksum::over_parts(ChecksumAlgorithm::Md5, lower.clone(), part));
                        check_note = Some(format!("multipart md5 ({parts} parts of {part} bytes)"));
                    }
                    None => check_note = Some(format!("not checked: multipart ETag of {parts} parts, and the store does not tell the part size")),
                }
            } else {
                check_note = Some("not checked: the ETag is not an MD5".into());
            }
        }
        if let Some(note) = check_note {
            update.extra.insert("etag_check".into(), note.into());
        }
        // x-amz-checksum-*: whole-object values are checked directly; composite ones (over the
        // upload's parts) need the part size, like multipart ETags.
        if whole_body || h.checksum_type.is_some() {
            for (alg, value) in &h.checksums {
                let Some(hexv) = b64_to_hex(value) else {
                    continue;
                };
                let composite =
                    h.checksum_type.as_deref() == Some("COMPOSITE") || hexv.contains('-');
                if composite {
                    if let Some(SourceChecksum {
                        part_size: Some(part),
                        ..
                    }) = update
                        .source_checksums
                        .iter()
                        .find(|c| c.part_size.is_some())
                        .cloned()
                    {
                        update
                            .source_checksums
                            .push(SourceChecksum::over_parts(*alg, hexv, part));
                    } else {
                        update.extra.insert(
                            format!("{}_check", alg_name(*alg)),
                            "not checked: composite checksum, part size unknown".into(),
                        );
                    }
                } else {
                    update
                        .source_checksums
                        .push(SourceChecksum::new(*alg, hexv));
                }
            }
        }
        if self.options.tags {
            let ctx_what = format!("s3://{bucket}/{}", item.source.id);
            let ctx = Context {
                endpoint: &built.endpoint,
                what: &ctx_what,
                scope: Scope::Object,
            };
            match built
                .client
                .get_object_tagging()
                .bucket(bucket)
                .key(&item.source.id)
                .set_version_id(item.source.version.clone())
                .send()
                .await
            {
                Ok(out) => {
                    let mut tags = Map::new();
                    for t in out.tag_set() {
                        tags.insert(t.key().to_string(), t.value().to_string().into());
                    }
                    update.extra.insert("tags".into(), Value::Object(tags));
                }
                Err(e) => {
                    let e = classify(e, &ctx);
                    update
                        .extra
                        .insert("tags_error".into(), e.to_string().into());
                }
            }
        }
        update
    }
}

fn alg_name(a: ChecksumAlgorithm) -> &'static str {
    match a {
        ChecksumAlgorithm::Crc32 => "crc32",
        ChecksumAlgorithm::Crc32c => "crc32c",
        ChecksumAlgorithm::Crc64nvme => "crc64nvme",
        ChecksumAlgorithm::Sha1 => "sha1",
        ChecksumAlgorithm::Sha256 => "sha256",
        _ => "checksum",
    }
}

/// The headers of a GET or HEAD that matter here, in one shape for both.
#[derive(Default)]
struct ObjectHeaders {
    size: Option<u64>,
    etag: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    expires: Option<String>,
    storage_class: Option<String>,
    sse: Option<String>,
    sse_kms_key_id: Option<String>,
    sse_customer_algorithm: Option<String>,
    lock_mode: Option<String>,
    lock_until: Option<String>,
    legal_hold: Option<String>,
    checksum_type: Option<String>,
    restore: Option<String>,
    metadata: Vec<(String, String)>,
    checksums: Vec<(ChecksumAlgorithm, String)>,
}

macro_rules! headers_from {
    ($o:expr, $size:expr) => {{
        let o = $o;
        let mut checksums = Vec::new();
        for (alg, v) in [
            (ChecksumAlgorithm::Crc32, o.checksum_crc32()),
            (ChecksumAlgorithm::Crc32c, o.checksum_crc32_c()),
            (ChecksumAlgorithm::Crc64nvme, o.checksum_crc64_nvme()),
            (ChecksumAlgorithm::Sha1, o.checksum_sha1()),
            (ChecksumAlgorithm::Sha256, o.checksum_sha256()),
        ] {
            if let Some(v) = v {
                checksums.push((alg, v.to_string()));
            }
        }
        let mut metadata: Vec<(String, String)> = o
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        metadata.sort();
        ObjectHeaders {
            size: $size,
            etag: o.e_tag().map(|e| unquote(e).to_string()),
            content_type: o.content_type().map(str::to_string),
            content_encoding: o.content_encoding().map(str::to_string),
            content_disposition: o.content_disposition().map(str::to_string),
            content_language: o.content_language().map(str::to_string),
            cache_control: o.cache_control().map(str::to_string),
            expires: o.expires_string().map(str::to_string),
            storage_class: o.storage_class().map(|c| c.as_str().to_string()),
            sse: o
                .server_side_encryption()
                .map(|s: &ServerSideEncryption| s.as_str().to_string()),
            sse_kms_key_id: o.ssekms_key_id().map(str::to_string),
            sse_customer_algorithm: o.sse_customer_algorithm().map(str::to_string),
            lock_mode: o.object_lock_mode().map(|m| m.as_str().to_string()),
            lock_until: to_time(o.object_lock_retain_until_date()).map(rfc3339),
            legal_hold: o
                .object_lock_legal_hold_status()
                .map(|s| s.as_str().to_string()),
            checksum_type: o
                .checksum_type()
                .map(|t: &ChecksumType| t.as_str().to_string()),
            restore: o.restore().map(str::to_string),
            metadata,
            checksums,
        }
    }};
}

/// The total size from a `Content-Range: bytes a-b/total` header.
fn total_from_range(range: Option<&str>) -> Option<u64> {
    range?.rsplit_once('/')?.1.parse().ok()
}

/// Turns a GetObject body into a stream of chunks; errors in the middle are transient (the
/// pipeline resumes by range).
fn body_stream(
    body: aws_smithy_types::byte_stream::ByteStream,
    what: String,
) -> ferry_core::ByteStream {
    futures::stream::unfold((body, what), |(mut body, what)| async move {
        let next = body.next().await?;
        let next =
            next.map_err(|e| Error::transient(format!("{what}: the download broke off: {e}")));
        Some((next, (body, what)))
    })
    .boxed()
}

/// Aborts a spawned part download when the transfer that wanted it is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn wait(mut self) -> std::result::Result<T, tokio::task::JoinError> {
        let handle = &mut self.0;
        handle.await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Holds a part's bytes and its place in the global budget of parts in memory: the place and
/// the buffer are given back when the last piece of the part has been written.
struct PartOwner {
    data: ferry_core::buffers::Recycled,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for PartOwner {
    fn as_ref(&self) -> &[u8] {
        self.data.as_ref()
    }
}

#[async_trait]
impl Connector for S3Connector {
    fn info(&self) -> SourceInfo {
        let o = &self.inner.options;
        let mut options = Map::new();
        let mut put = |k: &str, v: Value| {
            options.insert(k.into(), v);
        };
        put(
            "endpoint_url",
            o.endpoint_url
                .clone()
                .map(Value::from)
                .unwrap_or(Value::Null),
        );
        put(
            "region",
            o.region.clone().map(Value::from).unwrap_or(Value::Null),
        );
        put(
            "profile",
            o.profile.clone().map(Value::from).unwrap_or(Value::Null),
        );
        put("versions", o.versions.into());
        put("tags", o.tags.into());
        put("include", o.include.clone().into());
        put("exclude", o.exclude.clone().into());
        put("part_size", o.part_size.into());
        put("no_sign_request", o.no_sign_request.into());
        SourceInfo {
            uri: self.inner.location.uri(),
            system: "s3".into(),
            connector: format!("ferry-s3 {}", env!("CARGO_PKG_VERSION")),
            options,
        }
    }

    async fn check(&self) -> Result<()> {
        let inner = &self.inner;
        let built = inner.built().await;
        let Some(bucket) = &inner.location.bucket else {
            inner.list_buckets(built).await?;
            return Ok(());
        };
        built
            .check_bucket(bucket, &format!("s3://{bucket}"), &inner.options.retry)
            .await
    }

    fn list(&self) -> ListingStream<'_> {
        let (tx, mut rx) = mpsc::channel(1024);
        tokio::spawn(self.inner.clone().walk(tx));
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    fn resumable(&self) -> bool {
        true
    }

    async fn open(&self, item: &Item, offset: u64) -> Result<Opened> {
        let inner = self.inner.clone();
        let built = inner.built().await;
        let bucket = item.source.container.clone().unwrap_or_default();
        let key = item.source.id.clone();
        let version = item.source.version.clone();
        let what = format!("s3://{bucket}/{key}");
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Object,
        };
        if let Some(class) = item.extra.get("storage_class").and_then(Value::as_str) {
            if needs_restore(class) && item.extra.get("restore").is_none() {
                // Try anyway: a restored copy may be readable; the store says if not.
                tracing::debug!("{what} is in {class}; trying to read it");
            }
        }
        let etag = item
            .extra
            .get("etag")
            .and_then(Value::as_str)
            .map(str::to_string);
        let get = |range: Option<String>, if_match: Option<String>| {
            built
                .client
                .get_object()
                .bucket(&bucket)
                .key(&key)
                .set_version_id(version.clone())
                .set_range(range)
                .set_if_match(if_match)
                .checksum_mode(ChecksumMode::Enabled)
        };
        if offset > 0 {
            // Going on after a break: the same bytes or nothing (If-Match).
            let out = get(
                Some(format!("bytes={offset}-")),
                etag.as_deref().map(quoted),
            )
            .send()
            .await
            .map_err(|e| classify(e, &ctx))?;
            return Ok(Opened::bytes(body_stream(out.body, what)));
        }
        let part = inner.options.part_size.max(1 << 20);
        let large = item.size.is_some_and(|s| s > 2 * part) && inner.options.parallel_parts > 1;
        if !large {
            let out = get(None, None)
                .send()
                .await
                .map_err(|e| classify(e, &ctx))?;
            let headers = headers_from!(&out, out.content_length().map(|l| l.max(0) as u64));
            let update = inner.update_from(built, item, &headers, true).await;
            return Ok(Opened {
                bytes: body_stream(out.body, what),
                update,
                trailer: None,
            });
        }
        // A large object: HEAD for the metadata and checksums, then parallel ranged GETs, all
        // conditional on the ETag the HEAD saw.
        let head = built
            .client
            .head_object()
            .bucket(&bucket)
            .key(&key)
            .set_version_id(version.clone())
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| classify(e, &ctx))?;
        let headers = headers_from!(&head, head.content_length().map(|l| l.max(0) as u64));
        let size = headers.size.unwrap_or(0);
        let etag = headers.etag.as_deref().map(quoted);
        let update = inner.update_from(built, item, &headers, true).await;
        let ranges: Vec<(u64, u64)> = (0..size)
            .step_by(part as usize)
            .map(|start| (start, (start + part).min(size) - 1))
            .collect();
        let depth = inner.options.parallel_parts.clamp(1, 16);
        let client = built.client.clone();
        let endpoint = built.endpoint.clone();
        let parts = inner.parts.clone();
        let stream = futures::stream::iter(ranges)
            .map(move |(start, end)| {
                let client = client.clone();
                let (bucket, key, version, etag, what, endpoint, parts) = (
                    bucket.clone(),
                    key.clone(),
                    version.clone(),
                    etag.clone(),
                    what.clone(),
                    endpoint.clone(),
                    parts.clone(),
                );
                async move {
                    let (mut data, permit) = parts.take().await?;
                    let pool = parts.spare.clone();
                    // The part is read on its own task, so its body is drained into our buffer
                    // (which the permit accounts for) even while the consumer is busy: left
                    // unread, the HTTP client buffers it again on its side.
                    let task = tokio::spawn(async move {
                        let ctx = Context {
                            endpoint: &endpoint,
                            what: &what,
                            scope: Scope::Object,
                        };
                        let out = client
                            .get_object()
                            .bucket(&bucket)
                            .key(&key)
                            .set_version_id(version)
                            .range(format!("bytes={start}-{end}"))
                            .set_if_match(etag)
                            .send()
                            .await
                            .map_err(|e| classify(e, &ctx))?;
                        if let Some(total) = total_from_range(out.content_range()) {
                            if total != size {
                                return Err(Error::permanent(format!(
                                    "{what}: it changed at the source while it was being read"
                                )));
                            }
                        }
                        data.reserve((end - start + 1) as usize);
                        let mut body = out.body;
                        while let Some(chunk) = body.next().await {
                            let chunk = chunk.map_err(|e| {
                                Error::transient(format!("{what}: the download broke off: {e}"))
                            })?;
                            data.extend_from_slice(&chunk);
                        }
                        if data.len() as u64 != end - start + 1 {
                            return Err(Error::transient(format!(
                                "{what}: bytes {start}-{end} came back with {} bytes",
                                data.len()
                            )));
                        }
                        let len = data.len();
                        Ok(Bytes::from_owner(PartOwner {
                            data: pool.recycled(data, len),
                            _permit: permit,
                        }))
                    });
                    let guard = AbortOnDrop(task);
                    match guard.wait().await {
                        Ok(result) => result,
                        Err(e) => Err(Error::fatal(format!(
                            "internal error: a part download panicked: {e}"
                        ))),
                    }
                }
            })
            .buffered(depth)
            .boxed();
        Ok(Opened {
            bytes: stream,
            update,
            trailer: None,
        })
    }
}

/// Why these helpers exist at all: the key decoding must follow S3's form encoding exactly.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding_follows_s3() {
        assert_eq!(url_decode("a+b%2Bc%25d%0A"), "a b+c%d\n");
        assert_eq!(url_decode("%E2%9C%93"), "✓");
    }

    #[test]
    fn checksum_values_become_hex() {
        assert_eq!(b64_to_hex("AAAAAA==").unwrap(), "00000000");
        assert_eq!(b64_to_hex("AAAAAA==-3").unwrap(), "00000000-3");
        assert!(b64_to_hex("!!").is_none());
    }

    #[test]
    fn content_range_total() {
        assert_eq!(total_from_range(Some("bytes 0-99/1000")), Some(1000));
        assert_eq!(total_from_range(Some("bytes */1000")), Some(1000));
        assert_eq!(total_from_range(None), None);
    }

    fn connector() -> S3Connector {
        S3Connector::new(
            S3Location::parse("s3://b/pre/").unwrap(),
            S3Options {
                exclude: vec!["*.tmp".into()],
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn globs_apply_below_the_prefix() {
        let c = connector();
        assert!(c.inner.wanted("pre/a.txt"));
        assert!(!c.inner.wanted("pre/x/y.tmp"));
        let c = S3Connector::new(
            S3Location::parse("s3://b/pre/").unwrap(),
            S3Options {
                include: vec!["x/**".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(c.inner.wanted("pre/x/a"));
        assert!(!c.inner.wanted("pre/y/a"));
    }

    #[test]
    fn items_keep_exact_keys_and_versions_sit_side_by_side() {
        let c = connector();
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mk = |key: &str, v: Option<&str>, latest: Option<bool>, dm: bool| {
            c.inner.item(
                "host:9000",
                Listed {
                    bucket: "b",
                    key: key.into(),
                    version: v.map(String::from),
                    is_latest: latest,
                    size: Some(3),
                    modified: Some(t),
                    etag: Some("\"abc\"".into()),
                    storage_class: Some("STANDARD".into()),
                    delete_marker: dm,
                },
            )
        };
        let i = mk("a//b/../c/", None, None, false);
        assert_eq!(i.path, ["host:9000", "b", "a", "", "b", "..", "c", ""]);
        assert_eq!(i.source.id, "a//b/../c/");
        assert_eq!(i.extra["etag"], "abc");
        let old = mk("x/y.txt", Some("v1"), Some(false), false);
        assert_eq!(old.path.last().unwrap(), "y.txt@20231114T221320Z~v1");
        let cur = mk("x/y.txt", Some("v2"), Some(true), false);
        assert_eq!(cur.path.last().unwrap(), "y.txt");
        let dm = mk("x/y.txt", Some("v3"), Some(false), true);
        assert!(matches!(dm.kind, ItemKind::Other { .. }));
        assert_eq!(dm.extra["delete_marker"], true);
    }
}
