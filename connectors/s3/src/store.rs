//! S3-compatible storage as a place to write bags (`--to s3://BUCKET/PREFIX`) and to verify
//! them in place: an [`ObjectStore`] over a bucket and prefix.
//!
//! Objects are uploaded in one PUT when small, else as a multipart upload with parts of
//! `part_size`; an object exists only once its upload completes, so a crash never leaves a
//! half-written object. Every PUT and part carries Content-MD5, so the store rejects a body
//! damaged on the way. With object lock, every object gets a retention mode and date.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream as SdkBody;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectLockMode};
use base64::Engine as _;
use bytes::Bytes;
use ferry_core::{ByteStream, Error, ObjectStore, ObjectWriter, Result, RetryPolicy, StoredObject};
use md5::Digest as _;
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::errors::{classify, send_with_retry, Context, Scope};
use crate::{client, S3Location, S3Options};

/// Retention to set on every object written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// `true` for compliance mode (nobody can shorten it), `false` for governance mode.
    pub compliance: bool,
    /// Days from the upload.
    pub days: u32,
}

/// A bucket and prefix to write bags into and read them from.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    location: S3Location,
    options: S3Options,
    lock: Option<ObjectLock>,
    client: OnceCell<client::Built>,
}

impl S3Store {
    /// A store at `s3://bucket/prefix` (the prefix is the bag's root; a trailing `/` is added).
    pub fn new(location: S3Location, options: S3Options, lock: Option<ObjectLock>) -> Result<Self> {
        if location.bucket.is_none() {
            return Err(Error::fatal(
                "a bag needs a bucket to go to: use s3://BUCKET/PREFIX",
            ));
        }
        Ok(S3Store {
            inner: Arc::new(StoreInner {
                location,
                options,
                lock,
                client: OnceCell::new(),
            }),
        })
    }
}

impl StoreInner {
    async fn built(&self) -> &client::Built {
        self.client
            .get_or_init(|| client::build(&self.options))
            .await
    }
    fn bucket(&self) -> &str {
        self.location.bucket.as_deref().unwrap_or_default()
    }
    fn root(&self) -> String {
        let p = self.location.prefix.trim_end_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        }
    }
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root())
    }
    fn retry(&self) -> RetryPolicy {
        self.options.retry
    }
}

fn content_md5(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

#[async_trait]
impl ObjectStore for S3Store {
    fn uri(&self) -> String {
        format!(
            "s3://{}/{}",
            self.inner.bucket(),
            self.inner.root().trim_end_matches('/')
        )
    }

    async fn check(&self) -> Result<()> {
        let inner = &self.inner;
        let built = inner.built().await;
        built
            .check_bucket(inner.bucket(), &self.uri(), &inner.retry())
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>> {
        let inner = &self.inner;
        let built = inner.built().await;
        let root = inner.root();
        let full_prefix = format!("{root}{prefix}");
        let what = format!("listing {}", self.uri());
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Bucket,
        };
        let mut out = Vec::new();
        let mut cursor = crate::ListCursor::default();
        loop {
            let page = send_with_retry(&inner.retry(), &ctx, "a listing page", || {
                built
                    .client
                    .list_objects_v2()
                    .bucket(inner.bucket())
                    .prefix(&full_prefix)
                    .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                    .set_continuation_token(cursor.token.clone())
                    .set_start_after(cursor.start_after.clone())
                    .send()
            })
            .await?;
            let encoded = page.encoding_type() == Some(&aws_sdk_s3::types::EncodingType::Url);
            let mut last_key = None;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let key = if encoded {
                    crate::url_decode(k)
                } else {
                    k.to_string()
                };
                last_key = Some(key.clone());
                let Some(rel) = key.strip_prefix(&root) else {
                    continue;
                };
                out.push(StoredObject {
                    key: rel.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
            match cursor.advance(&page, last_key) {
                Ok(true) => {}
                Ok(false) => break,
                Err(()) => {
                    // An error rather than half a listing.
                    return Err(Error::permanent(format!(
                        "{what}: the store says the listing goes on but gives no way to continue it"
                    )));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn put_new(&self, key: &str, bytes: Bytes) -> Result<bool> {
        // Checked first (any S3), then written with `If-None-Match: *`, so that on stores with
        // conditional writes (AWS, MinIO, recent Ceph) two writers racing cannot both win.
        if self.exists(key).await? {
            return Ok(false);
        }
        let inner = &self.inner;
        let built = inner.built().await;
        let full = inner.full(key);
        let what = format!("s3://{}/{full}", inner.bucket());
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Object,
        };
        let md5 = content_md5(&bytes);
        let sent = built
            .client
            .put_object()
            .bucket(inner.bucket())
            .key(&full)
            .content_md5(&md5)
            .if_none_match("*")
            .body(SdkBody::from(bytes))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => Ok(false),
            Err(e) => Err(classify(e, &ctx)),
        }
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let part_size = self.inner.options.part_size.max(5 << 20) as usize;
        Ok(Box::new(S3Upload {
            store: self.inner.clone(),
            key: self.inner.full(key),
            buffer: Vec::new(),
            part_size,
            upload_id: None,
            parts: Vec::new(),
        }))
    }

    async fn read(&self, key: &str, offset: u64) -> Result<ByteStream> {
        let inner = &self.inner;
        let built = inner.built().await;
        let full = inner.full(key);
        let what = format!("s3://{}/{full}", inner.bucket());
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Object,
        };
        let mut req = built.client.get_object().bucket(inner.bucket()).key(&full);
        if offset > 0 {
            req = req.range(format!("bytes={offset}-"));
        }
        let out = req.send().await.map_err(|e| classify(e, &ctx))?;
        Ok(crate::body_stream(out.body, what))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        let built = inner.built().await;
        let full = inner.full(key);
        let what = format!("deleting s3://{}/{full}", inner.bucket());
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Object,
        };
        send_with_retry(&inner.retry(), &ctx, "a delete", || {
            built
                .client
                .delete_object()
                .bucket(inner.bucket())
                .key(&full)
                .send()
        })
        .await
        .map(|_| ())
    }
}

/// One object being uploaded.
struct S3Upload {
    store: Arc<StoreInner>,
    key: String,
    buffer: Vec<u8>,
    part_size: usize,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
}

impl S3Upload {
    fn lock(&self) -> (Option<ObjectLockMode>, Option<aws_smithy_types::DateTime>) {
        match self.store.lock {
            None => (None, None),
            Some(l) => {
                let until = OffsetDateTime::now_utc() + time::Duration::days(i64::from(l.days));
                let mode = if l.compliance {
                    ObjectLockMode::Compliance
                } else {
                    ObjectLockMode::Governance
                };
                (
                    Some(mode),
                    Some(aws_smithy_types::DateTime::from_secs(
                        until.unix_timestamp(),
                    )),
                )
            }
        }
    }

    fn what(&self) -> String {
        format!("writing s3://{}/{}", self.store.bucket(), self.key)
    }

    /// Sends the buffer as the next part (starting the multipart upload on the first one).
    async fn send_part(&mut self) -> Result<()> {
        let store = self.store.clone();
        let built = store.built().await;
        let what = self.what();
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Object,
        };
        if self.upload_id.is_none() {
            let (mode, until) = self.lock();
            let out = send_with_retry(&store.retry(), &ctx, "CreateMultipartUpload", || {
                built
                    .client
                    .create_multipart_upload()
                    .bucket(store.bucket())
                    .key(&self.key)
                    .set_object_lock_mode(mode.clone())
                    .set_object_lock_retain_until_date(until)
                    .send()
            })
            .await?;
            self.upload_id = out.upload_id().map(str::to_string);
            if self.upload_id.is_none() {
                return Err(Error::fatal(format!(
                    "{what}: the store started a multipart upload without an id"
                )));
            }
        }
        let number = self.parts.len() as i32 + 1;
        let data = Bytes::from(std::mem::take(&mut self.buffer));
        let md5 = content_md5(&data);
        let id = self.upload_id.clone().expect("upload id");
        let out = send_with_retry(&store.retry(), &ctx, "UploadPart", || {
            built
                .client
                .upload_part()
                .bucket(store.bucket())
                .key(&self.key)
                .upload_id(&id)
                .part_number(number)
                .content_md5(&md5)
                .body(SdkBody::from(data.clone()))
                .send()
        })
        .await?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
        self.buffer = Vec::with_capacity(self.part_size);
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let room = self.part_size - self.buffer.len();
            let take = room.min(rest.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() == self.part_size {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let store = self.store.clone();
        let built = store.built().await;
        let what = self.what();
        let ctx = Context {
            endpoint: &built.endpoint,
            what: &what,
            scope: Scope::Object,
        };
        if self.upload_id.is_none() {
            let data = Bytes::from(std::mem::take(&mut self.buffer));
            let md5 = content_md5(&data);
            let (mode, until) = self.lock();
            return send_with_retry(&store.retry(), &ctx, "PutObject", || {
                built
                    .client
                    .put_object()
                    .bucket(store.bucket())
                    .key(&self.key)
                    .content_md5(&md5)
                    .set_object_lock_mode(mode.clone())
                    .set_object_lock_retain_until_date(until)
                    .body(SdkBody::from(data.clone()))
                    .send()
            })
            .await
            .map(|_| ());
        }
        if !self.buffer.is_empty() {
            self.send_part().await?;
        }
        let id = self.upload_id.clone().expect("upload id");
        let parts = std::mem::take(&mut self.parts);
        let count = parts.len();
        let result = store
            .retry()
            .run(
                |_| {
                    let req = built
                        .client
                        .complete_multipart_upload()
                        .bucket(store.bucket())
                        .key(&self.key)
                        .upload_id(&id)
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .set_parts(Some(parts.clone()))
                                .build(),
                        );
                    let ctx = &ctx;
                    let store = &store;
                    let key = &self.key;
                    async move {
                        match req.send().await {
                            Ok(_) => Ok(()),
                            // A 200 whose body cannot be read (some servers name its root
                            // element wrongly): the upload completed if the object now exists
                            // with a multipart ETag of our part count.
                            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 200 => {
                                let head = built
                                    .client
                                    .head_object()
                                    .bucket(store.bucket())
                                    .key(key)
                                    .send()
                                    .await;
                                match head {
                                    Ok(h)
                                        if h.e_tag().is_some_and(|t| {
                                            t.trim_matches('"').ends_with(&format!("-{count}"))
                                        }) =>
                                    {
                                        Ok(())
                                    }
                                    _ => Err(Error::transient(format!(
                                        "{}: completing the upload gave an unreadable answer",
                                        ctx.what
                                    ))),
                                }
                            }
                            Err(e) => Err(classify(e, ctx)),
                        }
                    }
                },
                |e, d| tracing::debug!("retrying CompleteMultipartUpload in {d:?}: {e}"),
            )
            .await;
        if result.is_err() {
            self.abort_upload().await;
            return result;
        }
        self.upload_id = None;
        // Retention was asked for at CreateMultipartUpload, but not every store honours it
        // there: set it on the finished object as well (the same mode and date, so harmless
        // where it is already set).
        if let (Some(mode), Some(until)) = self.lock() {
            let retention = aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(mode.as_str().into())
                .retain_until_date(until)
                .build();
            send_with_retry(&store.retry(), &ctx, "PutObjectRetention", || {
                built
                    .client
                    .put_object_retention()
                    .bucket(store.bucket())
                    .key(&self.key)
                    .retention(retention.clone())
                    .send()
            })
            .await
            .map(|_| ())?;
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_upload().await;
    }
}

impl S3Upload {
    async fn abort_upload(&mut self) {
        if let Some(id) = self.upload_id.take() {
            let built = self.store.built().await;
            if let Err(e) = built
                .client
                .abort_multipart_upload()
                .bucket(self.store.bucket())
                .key(&self.key)
                .upload_id(id)
                .send()
                .await
            {
                tracing::warn!("could not abort the upload of {}: {e}", self.key);
            }
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // An upload abandoned without abort (the transfer's task was cancelled) would linger,
        // invisible but stored, on the server: abort it in the background.
        if let (Some(id), Ok(handle)) =
            (self.upload_id.take(), tokio::runtime::Handle::try_current())
        {
            let store = self.store.clone();
            let key = self.key.clone();
            handle.spawn(async move {
                let built = store.built().await;
                let _ = built
                    .client
                    .abort_multipart_upload()
                    .bucket(store.bucket())
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await;
            });
        }
    }
}
