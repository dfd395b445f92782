//! The sandbox S3 server's own parts against what S3 documents, over HTTP with the AWS SDK (the
//! client ferry itself uses): ListObjectsV2 (paging, prefixes and delimiters, start-after,
//! ETags, URL encoding, listings that see writes made between them) and GetObject bodies
//! (whole, ranged, and the fault that changes an object while it is read).

use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::list_objects_v2::builders::ListObjectsV2FluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, EncodingType};
use aws_sdk_s3::Client;
use ferry_sandbox::{Faults, S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

fn client(endpoint: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
            None,
            None,
            "sandbox-test",
        ))
        .http_client(http)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    Client::from_conf(config)
}

struct Fixture {
    server: S3Server,
    client: Client,
    _root: tempfile::TempDir,
}

impl Fixture {
    async fn new(buckets: &[&str]) -> Fixture {
        Self::with_faults(buckets, Faults::default()).await
    }

    async fn with_faults(buckets: &[&str], faults: Faults) -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let server = S3Server::start_with(root.path(), 0, faults).await.unwrap();
        let client = client(&server.endpoint());
        for b in buckets {
            client.create_bucket().bucket(*b).send().await.unwrap();
        }
        Fixture {
            server,
            client,
            _root: root,
        }
    }

    /// Writes an object's file directly (fast seeding; such objects have no stored ETag).
    fn file(&self, bucket: &str, key: &str, data: &[u8]) {
        let path = self.server.object_path(bucket, key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// Uploads an object through the API; returns its ETag as S3 answered it.
    async fn put(&self, bucket: &str, key: &str, data: &[u8]) -> String {
        let out = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(data.to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key:?}: {e:?}"));
        out.e_tag().unwrap().to_string()
    }
}

/// One page as the test reads it.
#[derive(Debug, Default)]
struct Page {
    keys: Vec<String>,
    etags: Vec<Option<String>>,
    prefixes: Vec<String>,
    key_count: i32,
    truncated: bool,
    next: Option<String>,
}

async fn page(
    c: &Client,
    bucket: &str,
    f: impl FnOnce(ListObjectsV2FluentBuilder) -> ListObjectsV2FluentBuilder,
) -> Page {
    let out = f(c.list_objects_v2().bucket(bucket))
        .send()
        .await
        .unwrap_or_else(|e| panic!("listing {bucket}: {e:?}"));
    Page {
        keys: out
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect(),
        etags: out
            .contents()
            .iter()
            .map(|o| o.e_tag().map(str::to_string))
            .collect(),
        prefixes: out
            .common_prefixes()
            .iter()
            .map(|p| p.prefix().unwrap().to_string())
            .collect(),
        key_count: out.key_count().unwrap(),
        truncated: out.is_truncated().unwrap(),
        next: out.next_continuation_token().map(str::to_string),
    }
}

/// Every page of a listing, following continuation tokens.
async fn pages(
    c: &Client,
    bucket: &str,
    f: impl Fn(ListObjectsV2FluentBuilder) -> ListObjectsV2FluentBuilder,
) -> Vec<Page> {
    pages_from(c, bucket, None, f).await
}

/// The pages of a listing from `token` on (from its start if `None`).
async fn pages_from(
    c: &Client,
    bucket: &str,
    mut token: Option<String>,
    f: impl Fn(ListObjectsV2FluentBuilder) -> ListObjectsV2FluentBuilder,
) -> Vec<Page> {
    let mut all = Vec::new();
    loop {
        let p = page(c, bucket, |r| f(r).set_continuation_token(token.clone())).await;
        assert_eq!(
            p.key_count as usize,
            p.keys.len() + p.prefixes.len(),
            "KeyCount counts keys and common prefixes"
        );
        assert_eq!(
            p.truncated,
            p.next.is_some(),
            "a token exactly when truncated"
        );
        token = p.next.clone();
        all.push(p);
        if token.is_none() {
            return all;
        }
        assert!(all.len() < 10_000, "the listing does not end");
    }
}

fn keys(pages: &[Page]) -> Vec<String> {
    pages.iter().flat_map(|p| p.keys.iter().cloned()).collect()
}

/// Keys and common prefixes in the order the pages gave them.
fn entries(pages: &[Page]) -> Vec<String> {
    let mut out = Vec::new();
    for p in pages {
        let mut page: Vec<String> = p.keys.iter().chain(&p.prefixes).cloned().collect();
        page.sort();
        out.extend(page);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pages_list_every_key_once_in_order() {
    let fx = Fixture::new(&["big"]).await;
    let mut expected = Vec::new();
    for i in 0..2345 {
        let key = format!("p{}/o{i:05}", i % 10);
        fx.file("big", &key, b"x");
        expected.push(key);
    }
    for key in ["0-first", "p5/o00000-put", "zz-last"] {
        fx.put("big", key, key.as_bytes()).await;
        expected.push(key.to_string());
    }
    expected.sort();

    let small = pages(&fx.client, "big", |r| r.max_keys(500)).await;
    assert_eq!(small.len(), 5);
    for p in &small[..4] {
        assert_eq!(p.keys.len(), 500);
        assert!(p.truncated);
    }
    assert_eq!(small[4].keys.len(), 2348 - 4 * 500);
    assert!(!small[4].truncated);
    assert_eq!(keys(&small), expected);

    // The default page and the cap are both 1,000.
    let default = pages(&fx.client, "big", |r| r).await;
    let sizes: Vec<usize> = default.iter().map(|p| p.keys.len()).collect();
    assert_eq!(sizes, [1000, 1000, 348]);
    assert_eq!(keys(&default), expected);
    let capped = page(&fx.client, "big", |r| r.max_keys(5000)).await;
    assert_eq!(capped.keys.len(), 1000);
    assert!(capped.truncated);

    // Small pages, many of them.
    let tiny = pages(&fx.client, "big", |r| r.prefix("p3/").max_keys(7)).await;
    let want: Vec<String> = expected
        .iter()
        .filter(|k| k.starts_with("p3/"))
        .cloned()
        .collect();
    assert_eq!(tiny.len(), want.len().div_ceil(7));
    assert_eq!(keys(&tiny), want);

    // max-keys 0: nothing, and not truncated (as s3s-fs answered).
    let none = page(&fx.client, "big", |r| r.max_keys(0)).await;
    assert_eq!((none.key_count, none.truncated), (0, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_and_delimiter_give_common_prefixes() {
    let fx = Fixture::new(&["tree"]).await;
    for key in [
        "a.txt", "a/b/1", "a/b/2", "a/c", "a/d/e/f", "b/x", "bz", "c/d/e", "c/d/f",
    ] {
        fx.put("tree", key, key.as_bytes()).await;
    }

    let top = pages(&fx.client, "tree", |r| r.delimiter("/")).await;
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].keys, ["a.txt", "bz"]);
    assert_eq!(top[0].prefixes, ["a/", "b/", "c/"]);
    assert_eq!(top[0].key_count, 5);

    let a = pages(&fx.client, "tree", |r| r.prefix("a/").delimiter("/")).await;
    assert_eq!(a[0].keys, ["a/c"]);
    assert_eq!(a[0].prefixes, ["a/b/", "a/d/"]);

    // A prefix that is not a folder: keys and folders starting with it.
    let partial = pages(&fx.client, "tree", |r| r.prefix("a").delimiter("/")).await;
    assert_eq!(partial[0].keys, ["a.txt"]);
    assert_eq!(partial[0].prefixes, ["a/"]);

    // One entry a page: common prefixes take a place each and are never repeated.
    let one = pages(&fx.client, "tree", |r| r.delimiter("/").max_keys(1)).await;
    assert_eq!(one.len(), 5);
    assert_eq!(entries(&one), ["a.txt", "a/", "b/", "bz", "c/"]);
    assert!(one.iter().all(|p| p.key_count == 1));

    // Another delimiter groups on it.
    let d = pages(&fx.client, "tree", |r| r.delimiter("d")).await;
    assert_eq!(d[0].prefixes, ["a/d", "c/d"]);
    assert_eq!(d[0].keys, ["a.txt", "a/b/1", "a/b/2", "a/c", "b/x", "bz"]);

    // No delimiter: everything under the prefix.
    let all = pages(&fx.client, "tree", |r| r.prefix("c/")).await;
    assert_eq!(keys(&all), ["c/d/e", "c/d/f"]);
    let nothing = pages(&fx.client, "tree", |r| r.prefix("q")).await;
    assert_eq!((nothing[0].key_count, nothing[0].truncated), (0, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_after_skips_up_to_a_key() {
    let fx = Fixture::new(&["start"]).await;
    for i in 0..30 {
        fx.file("start", &format!("k{i:02}"), b"x");
    }
    fx.file("start", "dir/one", b"x");
    fx.file("start", "dir/two", b"x");

    let after = pages(&fx.client, "start", |r| r.start_after("k10").max_keys(4)).await;
    let want: Vec<String> = (11..30).map(|i| format!("k{i:02}")).collect();
    assert_eq!(keys(&after), want);
    assert_eq!(after.len(), 5);

    // A start that is not a key.
    let between = page(&fx.client, "start", |r| r.start_after("k105")).await;
    assert_eq!(between.keys.first().map(String::as_str), Some("k11"));
    let past = page(&fx.client, "start", |r| r.start_after("zzz")).await;
    assert_eq!((past.key_count, past.truncated), (0, false));

    // Starting after a common prefix skips everything under it.
    let cp = page(&fx.client, "start", |r| {
        r.delimiter("/").start_after("dir/")
    })
    .await;
    assert_eq!(cp.prefixes, Vec::<String>::new());
    assert_eq!(cp.keys.first().map(String::as_str), Some("k00"));
    let before = page(&fx.client, "start", |r| r.delimiter("/").start_after("d")).await;
    assert_eq!(before.prefixes, ["dir/"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_sees_writes_made_before_it_starts() {
    let fx = Fixture::new(&["writes"]).await;
    for i in 0..20 {
        fx.put("writes", &format!("k{i:02}"), b"x").await;
    }
    let first = pages(&fx.client, "writes", |r| r.max_keys(6)).await;
    assert_eq!(keys(&first).len(), 20);

    fx.put("writes", "k05a", b"new").await;
    fx.client
        .delete_object()
        .bucket("writes")
        .key("k07")
        .send()
        .await
        .unwrap();
    let second = pages(&fx.client, "writes", |r| r.max_keys(6)).await;
    let got = keys(&second);
    assert!(got.contains(&"k05a".to_string()), "{got:?}");
    assert!(!got.contains(&"k07".to_string()), "{got:?}");
    assert_eq!(got.len(), 20);

    // The pages of one listing come from the walk its first page made: a file that appears
    // behind the server's back after the first page is not in the later ones (no walk per
    // page), and the next listing has it.
    let p1 = page(&fx.client, "writes", |r| r.max_keys(6)).await;
    fx.file("writes", "k15a", b"behind");
    let rest = pages_from(&fx.client, "writes", p1.next.clone(), |r| r.max_keys(6)).await;
    let mut got: Vec<String> = p1.keys.clone();
    got.extend(keys(&rest));
    assert!(!got.contains(&"k15a".to_string()), "{got:?}");
    assert_eq!(got.len(), 20);
    let third = pages(&fx.client, "writes", |r| r.max_keys(6)).await;
    assert!(keys(&third).contains(&"k15a".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_carry_the_etags_s3_answered() {
    let fx = Fixture::new(&["etags"]).await;
    let single = fx.put("etags", "single", b"hello").await;
    assert_eq!(single, "\"5d41402abc4b2a76b9719d911017c592\"");

    // A multipart upload's ETag is the MD5 of its parts' MD5s, with the part count.
    let up = fx
        .client
        .create_multipart_upload()
        .bucket("etags")
        .key("multi")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_string();
    let mut parts = Vec::new();
    for (i, chunk) in [vec![1u8; 5 << 20], vec![2u8; 1000]]
        .into_iter()
        .enumerate()
    {
        let n = i as i32 + 1;
        let out = fx
            .client
            .upload_part()
            .bucket("etags")
            .key("multi")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(chunk))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    let done = fx
        .client
        .complete_multipart_upload()
        .bucket("etags")
        .key("multi")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let multi = done.e_tag().unwrap().to_string();
    assert!(multi.ends_with("-2\""), "{multi}");

    let copied = fx
        .client
        .copy_object()
        .bucket("etags")
        .key("copy")
        .copy_source("etags/single")
        .send()
        .await
        .unwrap();
    let copy = copied
        .copy_object_result()
        .unwrap()
        .e_tag()
        .unwrap()
        .to_string();

    // An object whose file was written behind the server's back has no stored ETag, and a
    // listing does not hash content to make one (HEAD does).
    fx.file("etags", "unstored", b"x");

    let p = page(&fx.client, "etags", |r| r).await;
    assert_eq!(p.keys, ["copy", "multi", "single", "unstored"]);
    assert_eq!(
        p.etags,
        [Some(copy), Some(multi.clone()), Some(single), None]
    );
    let head = fx
        .client
        .head_object()
        .bucket("etags")
        .key("multi")
        .send()
        .await
        .unwrap();
    assert_eq!(head.e_tag(), Some(multi.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sort_by_utf8_bytes_and_url_encoding_encodes_them() {
    let fx = Fixture::new(&["utf8"]).await;
    for key in ["é", "z", "Z", "a b+c%d", "dir/ü x"] {
        fx.put("utf8", key, b"x").await;
    }
    let plain = page(&fx.client, "utf8", |r| r).await;
    assert_eq!(plain.keys, ["Z", "a b+c%d", "dir/ü x", "z", "é"]);

    let encoded = page(&fx.client, "utf8", |r| r.encoding_type(EncodingType::Url)).await;
    assert_eq!(
        encoded.keys,
        ["Z", "a+b%2Bc%25d", "dir/%C3%BC+x", "z", "%C3%A9"]
    );
    let cps = page(&fx.client, "utf8", |r| {
        r.encoding_type(EncodingType::Url)
            .delimiter(" ")
            .prefix("dir/")
    })
    .await;
    assert_eq!(cps.prefixes, ["dir/%C3%BC+"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_buckets_and_bad_tokens_are_errors() {
    let fx = Fixture::new(&["bkt"]).await;
    let err = fx
        .client
        .list_objects_v2()
        .bucket("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NoSuchBucket"), "{err:?}");
    let err = fx
        .client
        .list_objects_v2()
        .bucket("bkt")
        .continuation_token("not a token")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidArgument"), "{err:?}");
}

/// Lists 20,000 objects (seeded through the API, so each has a stored ETag) and prints how
/// long it took: `cargo test --release -p ferry-sandbox --test s3 -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a timing, seeds 20,000 objects"]
async fn timing_20000_objects() {
    let fx = Fixture::new(&["many"]).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let c = fx.client.clone();
        tasks.spawn(async move {
            for i in (chunk..20_000).step_by(16) {
                c.put_object()
                    .bucket("many")
                    .key(format!("d{:02}/obj{i:06}", i % 40))
                    .body(ByteStream::from(vec![b'x'; 100]))
                    .send()
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eprintln!("seeded 20000 objects in {:?}", started.elapsed());
    assert_eq!(count_files(&fx.server.root().join("many")), 20_000);

    for run in 1..=2 {
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut token: Option<String> = None;
        let mut n = 0;
        let mut pages = 0;
        loop {
            let t = Instant::now();
            let p = page(&fx.client, "many", |r| {
                r.set_continuation_token(token.clone())
            })
            .await;
            slowest = slowest.max(t.elapsed());
            n += p.keys.len();
            pages += 1;
            token = p.next;
            if token.is_none() {
                break;
            }
        }
        assert_eq!(n, 20_000);
        eprintln!(
            "listing {run}: {n} objects, {pages} pages in {:?} (slowest page {slowest:?})",
            started.elapsed()
        );
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Bytes that differ at every offset of interest (not a repeating short pattern).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A GET's body, Content-Length, Content-Range and ETag.
async fn get(
    c: &Client,
    bucket: &str,
    key: &str,
    range: Option<&str>,
) -> (Vec<u8>, i64, Option<String>, String) {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_range(range.map(str::to_string))
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key:?} {range:?}: {e:?}"));
    let length = out.content_length().unwrap();
    let content_range = out.content_range().map(str::to_string);
    let etag = out.e_tag().unwrap().to_string();
    let body = out.body.collect().await.unwrap().into_bytes().to_vec();
    (body, length, content_range, etag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_whole_and_ranged_are_the_objects_bytes() {
    let f = Fixture::new(&["bkt"]).await;
    // Several of the server's 256 KiB reads, and not a multiple of them.
    let data = pseudo_random((1 << 20) + 12_345);
    let etag = f.put("bkt", "dir/obj.bin", &data).await;
    f.put("bkt", "empty", b"").await;
    let size = data.len();

    let (body, length, range, tag) = get(&f.client, "bkt", "dir/obj.bin", None).await;
    assert!(body == data, "whole body differs");
    assert_eq!((length, range, &tag), (size as i64, None, &etag));

    for (ask, from, to) in [
        ("bytes=100-299999".to_string(), 100, 300_000),
        ("bytes=262140-262150".into(), 262_140, 262_151),
        (format!("bytes={}-", size - 7), size - 7, size),
        ("bytes=-1000".into(), size - 1000, size),
        (format!("bytes=0-{}", size + 50), 0, size),
    ] {
        let (body, length, range, tag) = get(&f.client, "bkt", "dir/obj.bin", Some(&ask)).await;
        assert!(body == data[from..to], "{ask}: body differs");
        assert_eq!(length, (to - from) as i64, "{ask}");
        assert_eq!(
            range.as_deref(),
            Some(format!("bytes {from}-{}/{size}", to - 1).as_str()),
            "{ask}"
        );
        assert_eq!(tag, etag, "{ask}");
    }

    let (body, length, _, _) = get(&f.client, "bkt", "empty", None).await;
    assert_eq!((body.len(), length), (0, 0));

    let past = f
        .client
        .get_object()
        .bucket("bkt")
        .key("dir/obj.bin")
        .range(format!("bytes={}-", size + 10))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        past.raw_response().map(|r| r.status().as_u16()),
        Some(416),
        "{past:?}"
    );
    let missing = f
        .client
        .get_object()
        .bucket("bkt")
        .key("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("NoSuchKey"), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_changes_once_in_the_middle_of_its_next_get() {
    let f = Fixture::with_faults(
        &["bkt"],
        Faults {
            change_while_read: Some(("bkt".into(), "moving.bin".into())),
            ..Default::default()
        },
    )
    .await;
    let data = pseudo_random(2 << 20);
    let etag = f.put("bkt", "moving.bin", &data).await;
    f.put("bkt", "other.bin", &data).await;

    // Another object is not touched.
    let (body, ..) = get(&f.client, "bkt", "other.bin", None).await;
    assert!(body == data);

    // The first GET: its first 256 KiB as they were, the middle changed, size and ETag kept.
    let (first, length, _, tag) = get(&f.client, "bkt", "moving.bin", None).await;
    assert_eq!((length, &tag), (data.len() as i64, &etag));
    let mid = data.len() / 2;
    assert!(first[..256 << 10] == data[..256 << 10]);
    assert!(first[mid..mid + 4096] != data[mid..mid + 4096]);
    assert!(first[mid + 4096..] == data[mid + 4096..]);
    // Once: the next GET serves the changed bytes as they now are.
    let (second, ..) = get(&f.client, "bkt", "moving.bin", None).await;
    assert!(second == first);
}
