//! `ferry export s3://…` end to end, against real S3 servers on 127.0.0.1: the in-process
//! sandbox (s3s-fs) and, where installed, moto's server as an independent implementation.

use std::collections::HashMap;
use std::path::Path;

use ferry_e2e::s3::S3Fixture;
use ferry_e2e::*;
use serde_json::Value;

fn export_s3(fx: &S3Fixture, uri: &str, to: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "export".to_string(),
        uri.to_string(),
        "--to".into(),
        to.display().to_string(),
        "--endpoint-url".into(),
        fx.endpoint.clone(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ferry_env(&args, &fx.env())
}

fn pseudo_random(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn by_key(bag: &Path) -> HashMap<String, Value> {
    items(bag)
        .into_iter()
        .map(|r| (r["source"]["id"].as_str().unwrap().to_string(), r))
        .collect()
}

#[test]
fn a_bucket_exports_with_every_checksum_checked() {
    let fx = S3Fixture::sandbox();
    fx.bucket("photos");
    let mut expected: HashMap<String, Vec<u8>> = HashMap::new();
    let mut put = |key: &str, data: Vec<u8>| {
        fx.put(key_bucket(), key, &data);
        expected.insert(key.to_string(), data);
    };
    fn key_bucket() -> &'static str {
        "photos"
    }
    put("a.txt", b"hello".to_vec());
    put("empty", Vec::new());
    for i in 0..14 {
        put(
            &format!("pages/{i:02}.txt"),
            format!("page item {i}").into_bytes(),
        );
    }
    let big = pseudo_random(40 << 20, 7);
    put("big.bin", big.clone());
    fx.put_with("photos", "dir/photo.jpg", &pseudo_random(100_000, 3), |r| {
        r.content_type("image/jpeg")
            .metadata("owner", "ola")
            .cache_control("max-age=60")
    });
    expected.insert("dir/photo.jpg".into(), pseudo_random(100_000, 3));
    let multi = pseudo_random(12 << 20, 11);
    fx.put_multipart("photos", "multi.bin", &multi, 5 << 20);
    expected.insert("multi.bin".into(), multi);

    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    // 3 keys a page: 20 objects make 7 pages.
    let run = export_s3(
        &fx,
        "s3://photos",
        &bag,
        &[
            "--page-size",
            "3",
            "--json",
            "--part-size",
            "8MiB",
            "--parallel-parts",
            "3",
        ],
    );
    run.expect_code(0);
    assert_eq!(
        run.json()["archived_items"],
        expected.len(),
        "{}",
        run.stdout
    );
    ferry(["verify", bag.to_str().unwrap()]).expect_code(0);
    assert_bagit_py_valid(&bag);

    let records = by_key(&bag);
    assert_eq!(records.len(), expected.len());
    for (key, data) in &expected {
        let r = &records[key];
        assert_eq!(r["source"]["system"], "s3");
        assert_eq!(r["source"]["container"], "photos");
        let payload = std::fs::read(bag.join(r["path"].as_str().unwrap())).unwrap();
        assert!(payload == *data, "content of {key}");
        assert!(
            r["path"].as_str().unwrap().contains("/photos/"),
            "{}",
            r["path"]
        );
    }
    let a = &records["a.txt"];
    assert_eq!(a["extra"]["etag_check"], "md5");
    let md5 = &a["source_checksums"][0];
    assert_eq!(md5["algorithm"], "md5");
    assert_eq!(md5["verified"], true);
    assert_eq!(md5["value"], "5d41402abc4b2a76b9719d911017c592");
    let photo = &records["dir/photo.jpg"];
    assert_eq!(photo["media_type"], "image/jpeg");
    assert_eq!(photo["extra"]["user_metadata"]["owner"], "ola");
    assert_eq!(photo["extra"]["cache_control"], "max-age=60");
    assert!(records["big.bin"]["source_checksums"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["algorithm"] == "md5" && c["verified"] == true));
    let multi = &records["multi.bin"];
    assert!(
        multi["extra"]["etag"].as_str().unwrap().ends_with("-3"),
        "{multi}"
    );
    // The sandbox does not answer partNumber HEADs, so the part size is unknown: said, not hidden.
    let note = multi["extra"]["etag_check"].as_str().unwrap();
    assert!(
        note.starts_with("multipart md5") || note.contains("part size"),
        "{note}"
    );

    // The same bucket into a zip.
    let zip = tmp.path().join("photos.zip");
    export_s3(&fx, "s3://photos/pages/", &zip, &[]).expect_code(0);
    ferry(["verify", zip.to_str().unwrap()]).expect_code(0);
    let ls = ferry(["ls", "--json", zip.to_str().unwrap()]);
    assert_eq!(ls.stdout.lines().count(), 14, "only the prefix");
}

#[test]
fn globs_choose_keys_below_the_prefix() {
    let fx = S3Fixture::sandbox();
    fx.bucket("bkt");
    for k in ["docs/a.pdf", "docs/b.tmp", "docs/sub/c.pdf", "other/d.pdf"] {
        fx.put("bkt", k, k.as_bytes());
    }
    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    export_s3(
        &fx,
        "s3://bkt/docs/",
        &bag,
        &["--include", "*.pdf", "--exclude", "sub/*"],
    )
    .expect_code(0);
    let keys: Vec<String> = by_key(&bag).into_keys().collect();
    assert_eq!(keys, vec!["docs/a.pdf".to_string()]);
}

#[test]
fn every_bucket_with_s3_colon_slash_slash() {
    let fx = S3Fixture::sandbox();
    fx.bucket("one");
    fx.bucket("two");
    fx.put("one", "x", b"1");
    fx.put("two", "y", b"2");
    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    export_s3(&fx, "s3://", &bag, &[]).expect_code(0);
    let records = by_key(&bag);
    assert_eq!(records["x"]["source"]["container"], "one");
    assert_eq!(records["y"]["source"]["container"], "two");
}

#[test]
fn wrong_settings_get_one_clear_sentence_and_exit_2() {
    let fx = S3Fixture::sandbox();
    fx.bucket("real");
    let tmp = tempdir();
    let to = tmp.path().join("bag");

    let run = export_s3(&fx, "s3://no-such-bucket", &to, &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
    assert!(!to.exists(), "nothing is created for a wrong source");

    let mut env = fx.env();
    env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    env.push((
        "AWS_SECRET_ACCESS_KEY".into(),
        "wrong-secret-value-123".into(),
    ));
    let run = ferry_env(
        [
            "export",
            "s3://real",
            "--to",
            to.to_str().unwrap(),
            "--endpoint-url",
            &fx.endpoint,
        ],
        &env,
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("secret key") || run.stderr.contains("access key"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("wrong-secret-value-123")
            && !run.stdout.contains("wrong-secret-value-123"),
        "secrets never appear"
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let run = ferry_env(
        [
            "export",
            "s3://real",
            "--to",
            to.to_str().unwrap(),
            "--endpoint-url",
            &format!("http://127.0.0.1:{closed}"),
            "--retries",
            "1",
        ],
        &fx.env(),
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cannot reach"), "{}", run.stderr);
}

#[test]
fn large_objects_in_ranged_parts_into_a_zip_do_not_wait_for_each_other() {
    // A zip takes one large item at a time. Objects downloaded in ranged parts share one
    // budget of parts in memory: when every large object started at once, the ones waiting
    // for the zip held parts the one being written needed, and the export stalled until the
    // idle timeout (5 minutes) failed it.
    let fx = S3Fixture::sandbox();
    fx.bucket("big");
    let objects: Vec<Vec<u8>> = (0..4).map(|i| pseudo_random(3 << 20, 40 + i)).collect();
    for (i, data) in objects.iter().enumerate() {
        fx.put("big", &format!("o{i}.bin"), data);
    }
    let tmp = tempdir();
    let zip = tmp.path().join("big.zip");
    let mut cmd = std::process::Command::new(ferry_bin());
    cmd.args([
        "export",
        "s3://big",
        "--to",
        zip.to_str().unwrap(),
        "--endpoint-url",
        &fx.endpoint,
        "--part-size",
        "1MiB",
        "--parallel-parts",
        "2",
        "-q",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    for (k, v) in fx.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(90) {
            child.kill().unwrap();
            panic!("the export into a zip stalled");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
    ferry(["verify", zip.to_str().unwrap()]).expect_code(0);
    let out = tmp.path().join("unzipped");
    unzip_with_python(&zip, &out);
    let files = files_under(&out);
    for (i, data) in objects.iter().enumerate() {
        let name = format!("o{i}.bin");
        let file = files
            .iter()
            .find(|f| f.file_name().is_some_and(|n| n == name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not in the zip: {files:?}"));
        assert!(std::fs::read(file).unwrap() == *data, "{}", file.display());
    }
}

#[test]
fn bytes_changed_on_the_server_during_the_download_are_caught() {
    // The server inverts 4 KiB in the middle of the object's file right after the first
    // 256 KiB of its first GET have been read (size and stored ETag kept), so the change lands
    // mid-download whatever the timing: in one streaming GET (`--parallel-parts 1`), and
    // between ranged GETs of 1 MiB parts.
    for parallel in ["1", "3"] {
        let fx = S3Fixture::sandbox_with(ferry_sandbox::Faults {
            change_while_read: Some(("bkt".into(), "changing.bin".into())),
            ..Default::default()
        });
        fx.bucket("bkt");
        let data = pseudo_random(24 << 20, 5);
        fx.put("bkt", "changing.bin", &data);
        fx.put("bkt", "steady.txt", b"steady");
        let tmp = tempdir();
        let bag = tmp.path().join("bag");
        let bag_arg = bag.display().to_string();
        let run = ferry_env(
            [
                "export",
                "s3://bkt",
                "--to",
                &bag_arg,
                "--endpoint-url",
                &fx.endpoint,
                "--part-size",
                "1MiB",
                "--parallel-parts",
                parallel,
                "--retries",
                "2",
                "--json",
            ],
            &fx.env(),
        );
        assert_eq!(run.code, 1, "--parallel-parts {parallel}: {run:?}");
        let failures = std::fs::read_to_string(bag.join("ferry/failures.jsonl")).unwrap();
        assert!(
            failures.contains("changing.bin") && failures.contains("checksum mismatch"),
            "--parallel-parts {parallel}: {failures}"
        );
        let records = by_key(&bag);
        assert!(
            !records.contains_key("changing.bin"),
            "a changed object is never archived"
        );
        assert!(records.contains_key("steady.txt"), "the rest still is");
        assert_bagit_py_valid(&bag);
    }
}

/// A store whose ETag is not the MD5 of what it serves (AWS documents that an ETag may not be
/// one): here an object's file rewritten behind the sandbox's back, so it keeps serving the
/// old ETag with the new bytes, the same on every GET. By default the object fails, and the
/// summary says what that may mean and what to do; `--on-checksum-mismatch keep` archives it,
/// flagged with what the bytes gave, once two downloads agree.
#[test]
fn an_etag_that_is_not_the_md5_fails_unless_told_to_keep_it() {
    use md5::Digest as _;
    let fx = S3Fixture::sandbox();
    fx.bucket("bkt");
    let stated = pseudo_random(10_000, 7);
    let served = pseudo_random(10_000, 8);
    fx.put("bkt", "odd.bin", &stated);
    fx.put("bkt", "plain.txt", b"plain");
    let path = fx.sandbox.as_ref().unwrap().object_path("bkt", "odd.bin");
    std::fs::write(&path, &served).unwrap();
    let md5 = |d: &[u8]| hex::encode(md5::Md5::digest(d));
    let tmp = tempdir();

    let strict = tmp.path().join("strict");
    let run = export_s3(&fx, "s3://bkt", &strict, &["--retries", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("--on-checksum-mismatch keep"),
        "the summary says what to do: {}",
        run.stdout
    );
    let failures = std::fs::read_to_string(strict.join("ferry/failures.jsonl")).unwrap();
    assert!(failures.contains("odd.bin") && failures.contains("checksum mismatch"));
    assert!(!by_key(&strict).contains_key("odd.bin"));

    let kept = tmp.path().join("kept");
    let run = export_s3(
        &fx,
        "s3://bkt",
        &kept,
        &["--retries", "2", "--on-checksum-mismatch", "keep", "--json"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let summary: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["mismatched_items"], 1, "{summary}");
    assert_eq!(summary["archived_items"], 2, "{summary}");
    let records = by_key(&kept);
    let check = &records["odd.bin"]["source_checksums"][0];
    assert_eq!(check["algorithm"], "md5");
    assert_eq!(check["value"], md5(&stated).as_str());
    assert_eq!(check["verified"], false);
    assert_eq!(check["observed"], md5(&served).as_str());
    assert_eq!(
        records["plain.txt"]["source_checksums"][0]["verified"],
        true
    );
    let payload = records["odd.bin"]["path"].as_str().unwrap();
    assert_eq!(std::fs::read(kept.join(payload)).unwrap(), served);
    let run_json: Value =
        serde_json::from_slice(&std::fs::read(kept.join("ferry/run.json")).unwrap()).unwrap();
    assert_eq!(run_json["options"]["on_checksum_mismatch"], "keep");
    assert_bagit_py_valid(&kept);
}

/// Keys that S3 encodes in url-encoded listings (`+`, spaces, `%`, non-ASCII) on page
/// boundaries: the plain listing and the version listing (a bucket without versioning lists
/// each object once as version `null`) each give every key exactly once.
#[test]
fn pages_go_on_exactly_after_keys_that_listings_encode() {
    let fx = S3Fixture::sandbox();
    fx.bucket("enc");
    let keys = [
        "a b",
        "a b2",
        "a!",
        "a+b",
        "a%41",
        "a%2B",
        "caf\u{e9}",
        "caf\u{e9} 2",
        "plus+and space",
        "z",
    ];
    for (i, k) in keys.iter().enumerate() {
        fx.put("enc", k, format!("content {i}").as_bytes());
    }
    for extra in [
        &["--page-size", "2"][..],
        &["--page-size", "2", "--versions"][..],
    ] {
        let tmp = tempdir();
        let bag = tmp.path().join("bag");
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let run = export_s3(&fx, "s3://enc", &bag, &args);
        assert_eq!(run.code, 0, "{extra:?}: {run:?}");
        let ids: Vec<String> = items(&bag)
            .iter()
            .map(|r| r["source"]["id"].as_str().unwrap().to_string())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "{extra:?}: a key twice: {ids:?}");
        let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        want.sort();
        assert_eq!(sorted, want, "{extra:?}");
        if extra.contains(&"--versions") {
            assert!(items(&bag).iter().all(|r| r["source"]["version"] == "null"));
        }
    }
}

/// A store whose ListObjectsV2 says a page is truncated but gives no continuation token: the
/// listing goes on after the page's last key instead of stopping there unnoticed.
#[test]
fn a_listing_without_continuation_tokens_goes_on_after_the_last_key() {
    let fx = S3Fixture::sandbox_with(ferry_sandbox::Faults {
        list_without_continuation: true,
        ..Default::default()
    });
    fx.bucket("notoken");
    for i in 0..10 {
        fx.put("notoken", &format!("k{i:02}"), b"x");
    }
    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    let run = export_s3(&fx, "s3://notoken", &bag, &["--json", "--page-size", "3"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(items(&bag).len(), 10);
}

#[test]
fn a_large_object_streams_with_flat_memory() {
    let fx = S3Fixture::sandbox();
    fx.bucket("bkt");
    let tmp = tempdir();
    let src = tmp.path().join("big.img");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    fx.put_file("bkt", "disk/big.img", &src);
    std::fs::remove_file(&src).unwrap();
    let bag = tmp.path().join("bag");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let args: Vec<String> = [
        "export",
        "s3://bkt",
        "--to",
        bag.to_str().unwrap(),
        "--endpoint-url",
        &fx.endpoint,
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, rss) = ferry_peak_rss_env(&args, &logs, &fx.env());
    assert_eq!(
        code,
        0,
        "{}",
        std::fs::read_to_string(logs.join("stderr")).unwrap()
    );
    eprintln!("export of a 1 GiB object: peak RSS {rss} KiB");
    assert!(rss < 100 * 1024, "peak RSS {rss} KiB");
    let r = &items(&bag)[0];
    assert_eq!(r["size"], 1u64 << 30);
    assert!(r["source_checksums"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["verified"] == true));
}

// ---- moto: an independent S3 implementation in its own process ----

#[test]
fn hostile_keys_survive_exactly() {
    let Some(fx) = S3Fixture::moto() else { return };
    fx.bucket("hostile");
    let long = "k".repeat(1000);
    let keys: Vec<String> = vec![
        "a/../b".into(),
        "a//b".into(),
        "folder/".into(),
        "x".into(),
        "x/y".into(),
        "Case".into(),
        "case".into(),
        "100%.txt".into(),
        "%41%ff-not-utf8-escapes".into(),
        "back\\slash".into(),
        "tab\tand\u{1}control".into(),
        "plus+and space".into(),
        "/leading-slash".into(),
        "caf\u{e9}".into(),
        "cafe\u{301}".into(),
        format!("deep/{long}"),
    ];
    for (i, k) in keys.iter().enumerate() {
        fx.put("hostile", k, format!("content {i}").as_bytes());
    }
    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    let run = export_s3(&fx, "s3://hostile", &bag, &["--json", "--page-size", "4"]);
    run.expect_code(0);
    let records = by_key(&bag);
    for (i, k) in keys.iter().enumerate() {
        let r = records.get(k).unwrap_or_else(|| {
            panic!(
                "key {k:?} missing; have {:?}",
                records.keys().collect::<Vec<_>>()
            )
        });
        assert_eq!(r["source"]["original_path"], k.as_str());
        let payload = std::fs::read(bag.join(r["path"].as_str().unwrap())).unwrap();
        assert_eq!(payload, format!("content {i}").as_bytes(), "{k:?}");
    }
    ferry(["verify", bag.to_str().unwrap()]).expect_code(0);
    assert_bagit_py_valid(&bag);
}

#[test]
fn versions_and_delete_markers_sit_side_by_side() {
    let Some(fx) = S3Fixture::moto() else { return };
    fx.bucket("ver");
    fx.runtime
        .block_on(
            fx.client
                .put_bucket_versioning()
                .bucket("ver")
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send(),
        )
        .unwrap();
    fx.put("ver", "doc.txt", b"version one");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fx.put("ver", "doc.txt", b"version two");
    fx.put("ver", "gone.txt", b"soon deleted");
    fx.runtime
        .block_on(
            fx.client
                .delete_object()
                .bucket("ver")
                .key("gone.txt")
                .send(),
        )
        .unwrap();
    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    let run = export_s3(&fx, "s3://ver", &bag, &["--versions", "--json"]);
    run.expect_code(0);
    let records = items(&bag);
    let doc: Vec<&Value> = records
        .iter()
        .filter(|r| r["source"]["id"] == "doc.txt")
        .collect();
    assert_eq!(doc.len(), 2);
    let latest = doc
        .iter()
        .find(|r| r["extra"]["is_latest"] == true)
        .unwrap();
    let older = doc
        .iter()
        .find(|r| r["extra"]["is_latest"] == false)
        .unwrap();
    assert!(
        latest["path"].as_str().unwrap().ends_with("/doc.txt"),
        "the newest has the plain name"
    );
    assert_eq!(
        std::fs::read(bag.join(latest["path"].as_str().unwrap())).unwrap(),
        b"version two"
    );
    assert_eq!(
        std::fs::read(bag.join(older["path"].as_str().unwrap())).unwrap(),
        b"version one"
    );
    assert!(
        older["source"]["version"].is_string()
            && older["source"]["version"] != latest["source"]["version"]
    );
    let gone: Vec<&Value> = records
        .iter()
        .filter(|r| r["source"]["id"] == "gone.txt")
        .collect();
    let marker = gone
        .iter()
        .find(|r| r["extra"]["delete_marker"] == true)
        .expect("the delete marker is recorded");
    assert!(marker["path"].is_null() && marker["extra"]["is_latest"] == true);
    assert!(
        gone.iter().any(|r| r["path"].is_string()),
        "the deleted object's last version is archived"
    );
    assert_bagit_py_valid(&bag);
}

#[test]
fn cold_objects_fail_with_needs_restore_and_tags_are_kept() {
    let Some(fx) = S3Fixture::moto() else { return };
    fx.bucket("cold");
    fx.put_with("cold", "archive/old.tar", b"frozen", |r| {
        r.storage_class(aws_sdk_s3::types::StorageClass::Glacier)
    });
    fx.put_with("cold", "warm.txt", b"warm", |r| {
        r.tagging("dept=finance&keep=10y")
    });
    // moto answers HEAD ?partNumber=1, so here the multipart ETag is checked in full.
    let multi = pseudo_random(11 << 20, 9);
    fx.put_multipart("cold", "multi.bin", &multi, 5 << 20);
    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    let run = export_s3(
        &fx,
        "s3://cold",
        &bag,
        &["--tags", "--json", "--retries", "0"],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let failures = std::fs::read_to_string(bag.join("ferry/failures.jsonl")).unwrap();
    assert!(
        failures.contains("old.tar") && failures.contains("needs restore"),
        "{failures}"
    );
    let records = by_key(&bag);
    let m = &records["multi.bin"];
    assert_eq!(
        m["extra"]["etag_check"], "multipart md5 (3 parts of 5242880 bytes)",
        "{m}"
    );
    let check = m["source_checksums"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["value"].as_str().unwrap().ends_with("-3"))
        .expect("the multipart ETag");
    assert_eq!(check["verified"], true);
    assert_eq!(
        std::fs::read(bag.join(m["path"].as_str().unwrap())).unwrap(),
        multi
    );
    let warm = &records["warm.txt"];
    assert_eq!(warm["extra"]["tags"]["dept"], "finance");
    assert_eq!(warm["extra"]["tags"]["keep"], "10y");
}

#[test]
fn slow_down_answers_are_retried_after_the_time_the_server_asks() {
    // Every 3rd object request is answered 503 SlowDown, Retry-After: 1.
    let fx = S3Fixture::sandbox_with(ferry_sandbox::Faults {
        slow_down_every: 3,
        ..Default::default()
    });
    fx.bucket("busy");
    for i in 0..12 {
        fx.put(
            "busy",
            &format!("k{i:02}"),
            format!("object {i}").as_bytes(),
        );
    }
    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    let started = std::time::Instant::now();
    let run = export_s3(&fx, "s3://busy", &bag, &["--json", "--concurrency", "2"]);
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(summary["archived_items"], 12);
    assert!(summary["retries"].as_u64().unwrap() >= 3, "{summary}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After was waited for"
    );
    ferry(["verify", bag.to_str().unwrap()]).expect_code(0);
}

#[test]
fn a_tls_failure_is_one_clear_sentence() {
    let fx = S3Fixture::sandbox();
    fx.bucket("plain");
    let tmp = tempdir();
    // The sandbox speaks plain HTTP: a TLS handshake with it fails.
    let https = fx.endpoint.replace("http://", "https://");
    let run = ferry_env(
        [
            "export",
            "s3://plain",
            "--to",
            tmp.path().join("bag").to_str().unwrap(),
            "--endpoint-url",
            &https,
            "--retries",
            "0",
        ],
        &fx.env(),
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("TLS") || run.stderr.contains("cannot reach"),
        "{}",
        run.stderr
    );
}

#[test]
fn access_denied_on_some_objects_fails_them_and_keeps_the_rest() {
    let fx = S3Fixture::sandbox_with(ferry_sandbox::Faults {
        deny_read_prefix: Some("hr/".into()),
        ..Default::default()
    });
    fx.bucket("mixed");
    fx.put("mixed", "public/a.txt", b"a");
    fx.put("mixed", "hr/salaries.xlsx", b"secret");
    fx.put("mixed", "public/b.txt", b"b");
    let tmp = tempdir();
    let bag = tmp.path().join("bag");
    let run = export_s3(&fx, "s3://mixed", &bag, &["--json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let summary = run.json();
    assert_eq!(summary["archived_items"], 2);
    assert_eq!(summary["failed_items"], 1);
    let failures = std::fs::read_to_string(bag.join("ferry/failures.jsonl")).unwrap();
    assert!(
        failures.contains("hr/salaries.xlsx")
            && failures.contains("access denied")
            && failures.contains("s3:GetObject"),
        "{failures}"
    );
    assert_bagit_py_valid(&bag);
}
