//! The sandbox S3 server's backend: s3s-fs for everything it implements, listings of its own,
//! and GetObject bodies read in large pieces.
//!
//! s3s-fs answers every ListObjectsV2 page by walking the whole bucket with one tokio::fs call
//! (a blocking-pool hop) per entry, then sorting and skipping to the continuation token: about
//! 0.8 s a page at 20,000 objects, so a full listing grows with the square of the bucket. Real
//! S3 answers a page in tens of milliseconds, and benchmarks of ferry against the sandbox ended
//! up measuring the sandbox. Here a listing walks once (std::fs, one blocking task), keeps the
//! sorted keys as a snapshot, and serves its later pages from the snapshot by binary search.
//!
//! s3s-fs also streams every GetObject body in 4 KiB reads, each a hop to tokio's blocking pool:
//! the server then spends more CPU per byte than a client that hashes everything it receives
//! (1.3 cores at 175 MB/s for 256 MiB objects), and a benchmark on one machine measures the
//! server again. Here s3s-fs answers the GET (headers, ranges, errors, checksums) and the body
//! is read from the same file in 256 KiB pieces.
//!
//! s3s-fs has no versioning and no ListObjectVersions; here a bucket lists its versions as S3
//! lists those of a bucket that never had versioning (each object once, version `null`, which
//! GET and HEAD accept), so version listings page against the sandbox too.
//!
//! Keys are exactly those s3s-fs lists: the files under the bucket's folder, their paths joined
//! with `/`, names that are not UTF-8 skipped (folders alone are not objects). s3s-fs keeps its
//! own files (metadata, ETags, upload parts, temporary files) at the root, outside the buckets.

use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

/// Page size when the request names none, and the most a page holds (as S3).
const MAX_KEYS: i32 = 1000;
/// How many listings' snapshots are kept for their continuation pages.
const SNAPSHOTS: usize = 8;
/// A continuation after this long walks again: a client paging slowly through a bucket that
/// changes sees the changes in its later pages, as it would on S3.
const SNAPSHOT_TTL: Duration = Duration::from_secs(180);

/// How much of an object's file one read of a GetObject body takes.
const BODY_READ: usize = 256 << 10;
/// Bodies up to this size keep s3s-fs's reads.
const SMALL_BODY: u64 = 16 << 10;

/// s3s-fs with ListObjects and ListObjectsV2 answered from one walk per listing, and GetObject
/// bodies read in [`BODY_READ`] pieces.
pub(crate) struct SandboxS3 {
    fs: s3s_fs::FileSystem,
    /// The served folder, resolved as s3s-fs resolves it.
    root: PathBuf,
    snapshots: Mutex<Snapshots>,
    /// The object (bucket, key) whose bytes change during its next GET, once.
    change_while_read: Mutex<Option<(String, String)>>,
    /// ListObjectsV2 pages that say they are truncated give no continuation token.
    list_without_continuation: bool,
}

/// The recent listings' snapshots, oldest first.
#[derive(Default)]
struct Snapshots {
    next_id: u64,
    recent: VecDeque<Arc<Snapshot>>,
}

/// The objects under a bucket's prefix when a listing started, sorted by key.
struct Snapshot {
    id: u64,
    bucket: String,
    prefix: String,
    taken: Instant,
    objects: Vec<Listed>,
}

/// One object as a listing shows it.
struct Listed {
    key: String,
    size: u64,
    modified: SystemTime,
    /// As s3s-fs stored it when the object was written; `None` for a file written behind the
    /// server's back (s3s-fs's HEAD would hash it; a listing does not read content).
    etag: Option<String>,
}

impl SandboxS3 {
    /// Serves `root` (which must exist) as s3s-fs does.
    pub(crate) fn new(root: &Path) -> io::Result<SandboxS3> {
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| io::Error::other(format!("{e:?}")))?;
        // s3s-fs resolves the root this way and keeps it to itself; object paths must match.
        let root = std::env::current_dir()?.join(root).canonicalize()?;
        Ok(SandboxS3 {
            fs,
            root,
            snapshots: Mutex::default(),
            change_while_read: Mutex::default(),
            list_without_continuation: false,
        })
    }

    /// Truncated ListObjectsV2 pages leave out their continuation token, as a store whose v2
    /// listing does not page as S3 documents might: a client must notice, and can go on with
    /// start-after.
    pub(crate) fn list_without_continuation(mut self, on: bool) -> Self {
        self.list_without_continuation = on;
        self
    }

    /// One page of a listing that resumes after a marker (ListObjects v1, ListObjectVersions):
    /// each page walks, as there is no token to name a snapshot by. Also whether the answer's
    /// keys are to be url-encoded.
    async fn marker_page(
        &self,
        bucket: &str,
        prefix: Option<&str>,
        delimiter: Option<&str>,
        marker: Option<&str>,
        max_keys: Option<i32>,
        encoding: Option<&EncodingType>,
    ) -> S3Result<(Listing, bool)> {
        let listing = self
            .list(Query {
                bucket,
                prefix: prefix.unwrap_or("").trim_start_matches('/'),
                delimiter,
                marker,
                max_keys,
                snapshot: None,
            })
            .await?;
        Ok((listing, wants_url(encoding)))
    }

    /// Changes some bytes of `bucket`/`key` in its file (same size, same stored ETag) right
    /// after the first piece of its next GET's body has gone out, as a writer behind the
    /// store's back would: a client that does not check what it read archives a mix.
    pub(crate) fn change_while_read(mut self, object: Option<(String, String)>) -> Self {
        self.change_while_read = Mutex::new(object);
        self
    }

    /// The file behind `bucket`/`key` when the key maps onto a path plainly (no empty, `.` or
    /// `..` segments, no leading or trailing `/`): then it is the file s3s-fs resolves too.
    /// Other keys keep s3s-fs's own body.
    fn plain_object_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.split('/')
                    .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
                && !s.contains('\\')
        };
        (plain(bucket) && !bucket.contains('/') && plain(key))
            .then(|| self.root.join(bucket).join(key))
    }

    fn snapshots(&self) -> std::sync::MutexGuard<'_, Snapshots> {
        // A panic while holding the lock leaves the cache consistent (every change is one
        // push or pop), so a poisoned lock is still usable.
        self.snapshots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot `id` if it is still kept, fresh, and of this bucket and prefix.
    fn cached(&self, id: u64, bucket: &str, prefix: &str) -> Option<Arc<Snapshot>> {
        let snapshots = self.snapshots();
        snapshots
            .recent
            .iter()
            .find(|s| s.id == id)
            .filter(|s| s.bucket == bucket && s.prefix == prefix)
            .filter(|s| s.taken.elapsed() < SNAPSHOT_TTL)
            .cloned()
    }

    /// Walks the bucket and keeps the result for the listing's later pages.
    async fn walk(&self, bucket: &str, prefix: &str) -> S3Result<Arc<Snapshot>> {
        let (root, b, p) = (self.root.clone(), bucket.to_string(), prefix.to_string());
        let objects = tokio::task::spawn_blocking(move || walk(&root, &b, &p))
            .await
            .map_err(|e| s3_error!(InternalError, "listing: {e}"))?
            .map_err(|e| s3_error!(InternalError, "listing: {e}"))?;
        let mut snapshots = self.snapshots();
        let id = snapshots.next_id;
        snapshots.next_id += 1;
        let snapshot = Arc::new(Snapshot {
            id,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            taken: Instant::now(),
            objects,
        });
        snapshots.recent.push_back(snapshot.clone());
        while snapshots.recent.len() > SNAPSHOTS {
            snapshots.recent.pop_front();
        }
        Ok(snapshot)
    }

    /// One page of a listing: from the snapshot the query names if it is still kept, else
    /// from a fresh walk (which later pages of this listing then use).
    async fn list(&self, q: Query<'_>) -> S3Result<Listing> {
        if !s3s::path::check_bucket_name(q.bucket) {
            return Err(s3_error!(InvalidBucketName));
        }
        if !self.root.join(q.bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let max_keys = match q.max_keys {
            None => MAX_KEYS,
            Some(n) if n < 0 => {
                return Err(s3_error!(InvalidArgument, "max-keys must not be negative"))
            }
            Some(n) => n.min(MAX_KEYS),
        };
        let snapshot = match q
            .snapshot
            .and_then(|id| self.cached(id, q.bucket, q.prefix))
        {
            Some(s) => s,
            // A first page, or a continuation whose snapshot is gone: walk now and resume
            // after the token's last entry.
            None => self.walk(q.bucket, q.prefix).await?,
        };
        let mut page = page(
            &snapshot.objects,
            q.prefix,
            q.delimiter,
            q.marker,
            max_keys as usize,
        );
        page.snapshot = snapshot.id;
        page.max_keys = max_keys;
        Ok(page)
    }
}

/// The first byte of a `Content-Range: bytes a-b/total`.
fn range_start(range: &str) -> Option<u64> {
    range
        .strip_prefix("bytes ")?
        .split_once('-')?
        .0
        .parse()
        .ok()
}

/// Reads `len` bytes of `file` from where it stands, [`BODY_READ`] at a time on the blocking
/// pool. A file that ends early ends the body early (the client sees a short answer, as it
/// would from a store that broke off). With `change`, that file's middle is changed right
/// after the first piece has been read (see [`SandboxS3::change_while_read`]).
fn file_body(
    file: std::fs::File,
    len: u64,
    change: Option<PathBuf>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold((file, len, change), |(file, left, change)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = left.min(BODY_READ as u64) as usize;
        let (file, buf) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut buf = Vec::with_capacity(want);
            // Up to `want` bytes, fewer only at the end of the file.
            (&mut file).take(want as u64).read_to_end(&mut buf)?;
            if let Some(path) = change {
                change_middle(&path)?;
            }
            Ok::<_, io::Error>((file, buf))
        })
        .await
        .map_err(io::Error::other)??;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the object's file ended before its stated length",
            ));
        }
        let left = left - buf.len() as u64;
        Ok(Some((Bytes::from(buf), (file, left, None))))
    })
}

/// Inverts 4 KiB in the middle of the file at `path`, in place: same size, and s3s-fs keeps
/// the ETag it stored when the object was written.
fn change_middle(path: &Path) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let size = file.metadata()?.len();
    let start = size / 2;
    let mut block = vec![0u8; 4096.min((size - start) as usize)];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut block)?;
    block.iter_mut().for_each(|b| *b ^= 0xFF);
    file.seek(SeekFrom::Start(start))?;
    file.write_all(&block)?;
    file.sync_data()
}

/// What one listing request asks, ListObjects or ListObjectsV2.
struct Query<'a> {
    bucket: &'a str,
    /// s3s-fs drops leading slashes (no key starts with one).
    prefix: &'a str,
    delimiter: Option<&'a str>,
    /// Where the page resumes: start-after, marker, or the token's last entry.
    marker: Option<&'a str>,
    max_keys: Option<i32>,
    snapshot: Option<u64>,
}

/// One page: objects and common prefixes in key order.
struct Listing {
    objects: Vec<Object>,
    common_prefixes: Vec<String>,
    /// The last entry (key or common prefix) when more follow.
    next: Option<String>,
    snapshot: u64,
    max_keys: i32,
}

/// Every file under the bucket's folder whose key starts with `prefix`, sorted by key (UTF-8
/// byte order, as S3 sorts).
fn walk(root: &Path, bucket: &str, prefix: &str) -> io::Result<Vec<Listed>> {
    let bucket_b64 = URL_SAFE_NO_PAD.encode(bucket);
    let mut objects = Vec::new();
    let mut dirs = vec![(root.join(bucket), String::new())];
    while let Some((dir, dir_key)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A folder emptied and removed by a concurrent delete: nothing to list there.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir_key.is_empty() => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            // s3s-fs lists no key with a name that is not UTF-8 (nor anything under one).
            let Some(name) = name.to_str() else { continue };
            let key = format!("{dir_key}{name}");
            // The entry itself, not what a symlink points at, as s3s-fs looks at it.
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                let sub = format!("{key}/");
                // Only folders that can hold keys under the prefix.
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    dirs.push((entry.path(), sub));
                }
                continue;
            }
            if !key.starts_with(prefix) {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let etag = stored_etag(root, &bucket_b64, &key);
            objects.push(Listed {
                key,
                size: meta.len(),
                modified: meta.modified()?,
                etag,
            });
        }
    }
    objects.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

/// The ETag s3s-fs stored for an object when it wrote it (PUT, copy, multipart completion): the
/// `e_tag` of `.bucket-{bucket}.object-{key}.internal.json` at the root, both base64url.
fn stored_etag(root: &Path, bucket_b64: &str, key: &str) -> Option<String> {
    let name = format!(
        ".bucket-{bucket_b64}.object-{}.internal.json",
        URL_SAFE_NO_PAD.encode(key)
    );
    let bytes = std::fs::read(root.join(name)).ok()?;
    let info: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    info.get("e_tag")?.as_str().map(str::to_string)
}

/// The common prefix `key` rolls up into: the prefix and the key up to and including the first
/// delimiter after it.
fn common_prefix<'k>(key: &'k str, prefix: &str, delimiter: Option<&str>) -> Option<&'k str> {
    // s3s drops an empty delimiter before it gets here; an empty one would roll every key up.
    let delimiter = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.get(prefix.len()..)?;
    let at = rest.find(delimiter)?;
    Some(&key[..prefix.len() + at + delimiter.len()])
}

/// One page of the listing `objects` (the keys under `prefix`, sorted): the entries — keys, and
/// common prefixes standing for every key under them — after `marker`, at most `max_keys`.
///
/// An entry is listed when its name sorts after the marker, as in s3s-fs: a common prefix that
/// is the marker (the last entry of the previous page) or before it is not listed again, though
/// keys under it sort after it. Keys under one common prefix are contiguous once sorted, so
/// a page costs a binary search per common prefix and a step per key.
fn page(
    objects: &[Listed],
    prefix: &str,
    delimiter: Option<&str>,
    marker: Option<&str>,
    max_keys: usize,
) -> Listing {
    let under =
        |from: usize, cp: &str| from + objects[from..].partition_point(|o| o.key.starts_with(cp));
    let mut i = match marker {
        Some(m) => objects.partition_point(|o| o.key.as_str() <= m),
        None => 0,
    };
    // Only the common prefix the marker itself falls under can sort before the marker and
    // still hold keys after it.
    if let (Some(m), Some(o)) = (marker, objects.get(i)) {
        if let Some(cp) = common_prefix(&o.key, prefix, delimiter) {
            if cp <= m {
                i = under(i, cp);
            }
        }
    }
    let mut listing = Listing {
        objects: Vec::new(),
        common_prefixes: Vec::new(),
        next: None,
        snapshot: 0,
        max_keys: 0,
    };
    let mut last: Option<&str> = None;
    let mut count = 0;
    while count < max_keys && i < objects.len() {
        let o = &objects[i];
        if let Some(cp) = common_prefix(&o.key, prefix, delimiter) {
            listing.common_prefixes.push(cp.to_string());
            last = Some(cp);
            i = under(i, cp);
        } else {
            listing.objects.push(Object {
                key: Some(o.key.clone()),
                last_modified: Some(Timestamp::from(o.modified)),
                size: Some(o.size as i64),
                e_tag: o.etag.clone().map(ETag::Strong),
                ..Default::default()
            });
            last = Some(&o.key);
            i += 1;
        }
        count += 1;
    }
    if i < objects.len() && count > 0 {
        listing.next = last.map(str::to_string);
    }
    listing
}

/// A continuation token: the listing's snapshot and the page's last entry, opaque to clients
/// (base64url of `ID:ENTRY`), as S3's are.
fn token(snapshot: u64, last: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{snapshot}:{last}"))
}

fn parse_token(token: &str) -> S3Result<(u64, String)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The continuation token provided is incorrect"
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (id, last) = text.split_once(':').ok_or_else(bad)?;
    Ok((id.parse().map_err(|_| bad())?, last.to_string()))
}

/// What S3 leaves as is when it URL-encodes a listing (`encoding-type=url`): unreserved
/// characters and `/`; a space becomes `+`.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/')
    .remove(b' ');

/// Encodes `s` as S3 does for `encoding-type=url`, or leaves it when the request did not ask.
fn encode(s: String, url: bool) -> String {
    if url {
        utf8_percent_encode(&s, KEY_ENCODE)
            .to_string()
            .replace(' ', "+")
    } else {
        s
    }
}

fn wants_url(e: Option<&EncodingType>) -> bool {
    e.is_some_and(|e| e.as_str() == EncodingType::URL)
}

/// The listing's entries as S3 answers them, encoded if asked.
fn entries(
    listing: &mut Listing,
    url: bool,
) -> (Option<Vec<Object>>, Option<Vec<CommonPrefix>>, i32) {
    let count = (listing.objects.len() + listing.common_prefixes.len()) as i32;
    let objects: Vec<Object> = std::mem::take(&mut listing.objects)
        .into_iter()
        .map(|mut o| {
            o.key = o.key.map(|k| encode(k, url));
            o
        })
        .collect();
    let prefixes: Vec<CommonPrefix> = std::mem::take(&mut listing.common_prefixes)
        .into_iter()
        .map(|p| CommonPrefix {
            prefix: Some(encode(p, url)),
        })
        .collect();
    // S3 leaves out empty Contents and CommonPrefixes, as s3s-fs does.
    (
        (!objects.is_empty()).then_some(objects),
        (!prefixes.is_empty()).then_some(prefixes),
        count,
    )
}

/// `impl S3 for SandboxS3`: the operations listed under `delegate` go to s3s-fs unchanged, the
/// rest are written out after. (One macro for the whole impl, so that `async_trait` sees the
/// delegating methods already expanded.)
macro_rules! impl_s3 {
    (delegate { $($method:ident($input:ty) -> $output:ty;)* } $($own:tt)*) => {
        #[async_trait::async_trait]
        impl S3 for SandboxS3 {
            $(
                async fn $method(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$method(req).await
                }
            )*
            $($own)*
        }
    };
}

// Every operation s3s-fs 0.14.1 implements, but the listings, GetObject and HeadObject.
impl_s3! {
    delegate {
        create_bucket(CreateBucketInput) -> CreateBucketOutput;
        copy_object(CopyObjectInput) -> CopyObjectOutput;
        delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
        delete_object(DeleteObjectInput) -> DeleteObjectOutput;
        delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
        get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
        head_bucket(HeadBucketInput) -> HeadBucketOutput;
        list_buckets(ListBucketsInput) -> ListBucketsOutput;
        put_object(PutObjectInput) -> PutObjectOutput;
        create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
        upload_part(UploadPartInput) -> UploadPartOutput;
        upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
        list_parts(ListPartsInput) -> ListPartsOutput;
        complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
        abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let resume = input.continuation_token.as_deref().map(parse_token).transpose()?;
        // The token's entry is after start-after (its listing started there), but take the
        // greater as s3s-fs does, should a client send a start-after of its own.
        let marker = match (&resume, input.start_after.as_deref()) {
            (Some((_, last)), Some(sa)) => Some(last.as_str().max(sa)),
            (Some((_, last)), None) => Some(last.as_str()),
            (None, sa) => sa,
        };
        let mut listing = self
            .list(Query {
                bucket: &input.bucket,
                prefix: input.prefix.as_deref().unwrap_or("").trim_start_matches('/'),
                delimiter: input.delimiter.as_deref(),
                marker,
                max_keys: input.max_keys,
                snapshot: resume.as_ref().map(|(id, _)| *id),
            })
            .await?;
        let url = wants_url(input.encoding_type.as_ref());
        let (contents, common_prefixes, key_count) = entries(&mut listing, url);
        let next = listing.next.as_deref().map(|l| token(listing.snapshot, l));
        Ok(S3Response::new(ListObjectsV2Output {
            key_count: Some(key_count),
            max_keys: Some(listing.max_keys),
            is_truncated: Some(next.is_some()),
            contents,
            common_prefixes,
            continuation_token: input.continuation_token,
            next_continuation_token: next.filter(|_| !self.list_without_continuation),
            delimiter: input.delimiter.map(|d| encode(d, url)),
            encoding_type: input.encoding_type,
            name: Some(input.bucket),
            prefix: input.prefix.map(|p| encode(p, url)),
            start_after: input.start_after.map(|s| encode(s, url)),
            ..Default::default()
        }))
    }

    /// s3s-fs answers (errors, headers, the range, checksums); the body is read here in large
    /// pieces from the same file (see the module's notes).
    async fn get_object(
        &self,
        mut req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        // Version `null`: the one version of an object in a bucket without versioning.
        if req.input.version_id.as_deref() == Some("null") {
            req.input.version_id = None;
        }
        let path = self.plain_object_path(&req.input.bucket, &req.input.key);
        let change = {
            let mut pending = self
                .change_while_read
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let this = path.is_some()
                && pending
                    .as_ref()
                    .is_some_and(|(b, k)| *b == req.input.bucket && *k == req.input.key);
            if this {
                pending.take();
            }
            this
        };
        let mut resp = self.fs.get_object(req).await?;
        let Some(path) = path else {
            return Ok(resp);
        };
        let len = resp.output.content_length.unwrap_or(0).max(0) as u64;
        if len <= SMALL_BODY && !change {
            // One or two 4 KiB reads: s3s-fs's own body costs less than opening the file again.
            return Ok(resp);
        }
        let start = resp
            .output
            .content_range
            .as_deref()
            .and_then(range_start)
            .unwrap_or(0);
        let opened = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, PathBuf)> {
            let mut file = std::fs::File::open(&path)?;
            if file.metadata()?.len() < start + len {
                return Err(io::Error::other("the file is shorter than s3s-fs saw"));
            }
            file.seek(SeekFrom::Start(start))?;
            Ok((file, path))
        })
        .await;
        if let Ok(Ok((file, path))) = opened {
            let change = change.then_some(path);
            resp.output.body = Some(StreamingBlob::wrap(file_body(file, len, change)));
        }
        Ok(resp)
    }

    /// ListObjects (version 1) pages by marker, the last entry of the previous page.
    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let (mut listing, url) = self
            .marker_page(
                &input.bucket,
                input.prefix.as_deref(),
                input.delimiter.as_deref(),
                input.marker.as_deref(),
                input.max_keys,
                input.encoding_type.as_ref(),
            )
            .await?;
        let (contents, common_prefixes, _) = entries(&mut listing, url);
        let truncated = listing.next.is_some();
        Ok(S3Response::new(ListObjectsOutput {
            max_keys: Some(listing.max_keys),
            is_truncated: Some(truncated),
            contents,
            common_prefixes,
            next_marker: listing.next.map(|m| encode(m, url)),
            marker: input.marker.map(|m| encode(m, url)),
            delimiter: input.delimiter.map(|d| encode(d, url)),
            encoding_type: input.encoding_type,
            name: Some(input.bucket),
            prefix: input.prefix.map(|p| encode(p, url)),
            ..Default::default()
        }))
    }

    /// ListObjectVersions as S3 answers it for a bucket that never had versioning (s3s-fs
    /// keeps one version of each object): every object once, version id `null`, the latest;
    /// pages by key marker, markers encoded like the keys when asked.
    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        let (mut listing, url) = self
            .marker_page(
                &input.bucket,
                input.prefix.as_deref(),
                input.delimiter.as_deref(),
                input.key_marker.as_deref(),
                input.max_keys,
                input.encoding_type.as_ref(),
            )
            .await?;
        let (contents, common_prefixes, _) = entries(&mut listing, url);
        let versions: Vec<ObjectVersion> = contents
            .unwrap_or_default()
            .into_iter()
            .map(|o| ObjectVersion {
                e_tag: o.e_tag,
                is_latest: Some(true),
                key: o.key,
                last_modified: o.last_modified,
                size: o.size,
                version_id: Some("null".into()),
                ..Default::default()
            })
            .collect();
        let truncated = listing.next.is_some();
        Ok(S3Response::new(ListObjectVersionsOutput {
            max_keys: Some(listing.max_keys),
            is_truncated: Some(truncated),
            versions: (!versions.is_empty()).then_some(versions),
            common_prefixes,
            next_key_marker: listing.next.map(|m| encode(m, url)),
            next_version_id_marker: truncated.then(|| "null".to_string()),
            key_marker: input.key_marker.map(|m| encode(m, url)),
            version_id_marker: input.version_id_marker,
            delimiter: input.delimiter.map(|d| encode(d, url)),
            encoding_type: input.encoding_type,
            name: Some(input.bucket),
            prefix: input.prefix.map(|p| encode(p, url)),
            ..Default::default()
        }))
    }

    /// s3s-fs's HeadObject, with version id `null` (the only version of an object in a bucket
    /// without versioning, as S3 names it) taken as no version id.
    async fn head_object(
        &self,
        mut req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        if req.input.version_id.as_deref() == Some("null") {
            req.input.version_id = None;
        }
        self.fs.head_object(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(keys: &[&str]) -> Vec<Listed> {
        let mut v: Vec<Listed> = keys
            .iter()
            .map(|k| Listed {
                key: k.to_string(),
                size: 1,
                modified: SystemTime::UNIX_EPOCH,
                etag: None,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    fn names(l: &Listing) -> Vec<String> {
        let mut v: Vec<String> = l
            .objects
            .iter()
            .map(|o| o.key.clone().unwrap())
            .chain(l.common_prefixes.iter().cloned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn pages_resume_after_the_marker_whatever_it_names() {
        let o = objects(&["a", "a/1", "a/2", "ab", "b/1", "b/2/3", "c"]);
        let all = page(&o, "", Some("/"), None, 1000);
        assert_eq!(names(&all), ["a", "a/", "ab", "b/", "c"]);
        assert_eq!(all.next, None);
        // Resuming after a common prefix skips its keys; after a key, the prefix it starts.
        let after_cp = page(&o, "", Some("/"), Some("a/"), 2);
        assert_eq!(names(&after_cp), ["ab", "b/"]);
        assert_eq!(after_cp.next.as_deref(), Some("b/"));
        let after_key = page(&o, "", Some("/"), Some("a"), 1);
        assert_eq!(names(&after_key), ["a/"]);
        // A marker inside a common prefix: the prefix sorts before it, so is not listed.
        let inside = page(&o, "", Some("/"), Some("b/1"), 10);
        assert_eq!(names(&inside), ["c"]);
        // The last page has no next entry, even when it is exactly full.
        let full = page(&o, "", Some("/"), Some("b/"), 1);
        assert_eq!((names(&full), full.next), (vec!["c".to_string()], None));
        // Under a prefix, the delimiter counts after it.
        let b = objects(&["b/1", "b/2/3", "b/2/4"]);
        assert_eq!(names(&page(&b, "b/", Some("/"), None, 9)), ["b/1", "b/2/"]);
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(
            parse_token(&token(7, "a:b/é")).unwrap(),
            (7, "a:b/é".into())
        );
        assert!(parse_token("not a token").is_err());
        assert!(parse_token(&URL_SAFE_NO_PAD.encode("x:y")).is_err());
    }

    #[tokio::test]
    async fn a_continuation_without_its_snapshot_walks_and_resumes() {
        let root = tempfile::tempdir().unwrap();
        let bucket = root.path().join("bkt");
        for k in ["k1", "k2", "k3", "d/k4"] {
            let p = bucket.join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let s3 = SandboxS3::new(root.path()).unwrap();
        let q = |marker, snapshot| Query {
            bucket: "bkt",
            prefix: "",
            delimiter: None,
            marker,
            max_keys: Some(2),
            snapshot,
        };
        let first = s3.list(q(None, None)).await.unwrap();
        assert_eq!(names(&first), ["d/k4", "k1"]);
        // A snapshot that no longer exists: a fresh walk, after the token's entry.
        let next = s3.list(q(Some("k1"), Some(999))).await.unwrap();
        assert_eq!(names(&next), ["k2", "k3"]);
        assert_ne!(next.snapshot, first.snapshot);
        // The cache is bounded.
        for _ in 0..SNAPSHOTS + 3 {
            s3.list(q(None, None)).await.unwrap();
        }
        assert_eq!(s3.snapshots().recent.len(), SNAPSHOTS);
        assert!(s3.cached(first.snapshot, "bkt", "").is_none());
    }
}
