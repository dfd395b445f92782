//! Bags written into S3-compatible storage (`--to s3://BUCKET/PREFIX`) and verified in place
//! (`ferry verify s3://…`), against the sandbox and moto.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::s3::S3Fixture;
use ferry_e2e::*;

fn with_endpoint(fx: &S3Fixture, args: &[&str]) -> Run {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--endpoint-url".to_string(), fx.endpoint.clone()]);
    ferry_env(&all, &fx.env())
}

/// Downloads every object under `prefix` into `into`, as files.
fn download(fx: &S3Fixture, bucket: &str, prefix: &str, into: &Path) -> usize {
    fx.runtime.block_on(async {
        let mut token = None;
        let mut n = 0;
        loop {
            let page = fx
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .unwrap();
            for o in page.contents() {
                let key = o.key().unwrap();
                let rel = key.strip_prefix(prefix).unwrap();
                let data = fx
                    .client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .unwrap()
                    .body
                    .collect()
                    .await
                    .unwrap()
                    .into_bytes();
                write(&into.join(rel), &data);
                n += 1;
            }
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_string()),
                None => return n,
            }
        }
    })
}

#[test]
fn a_folder_exported_into_s3_verifies_there_and_after_download() {
    let fx = S3Fixture::sandbox();
    fx.bucket("bags");
    let tmp = tempdir();
    let src = tmp.path().join("share");
    let mut files = hostile_tree(&src);
    // The sandbox keeps each object as a file plus a metadata file with a longer name: names
    // near 255 bytes are too long for it (not for S3; the moto tests cover long keys).
    files.retain(|f| {
        let long = f.rsplit(|&b| b == b'/').next().unwrap().len() > 200;
        if long {
            std::fs::remove_file(
                src.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(f)),
            )
            .unwrap();
        }
        !long
    });
    write(&src.join("big.bin"), &vec![42u8; 20 << 20]);
    let work = tmp.path().join("work");
    let run = with_endpoint(
        &fx,
        &[
            "export",
            &format!("fs:{}", src.display()),
            "--to",
            "s3://bags/share/2026-11-28",
            "--work-dir",
            work.to_str().unwrap(),
            "--json",
        ],
    );
    run.expect_code(0);
    assert_eq!(run.json()["payload_files"], files.len() + 1);
    assert!(!work.exists(), "the journal goes once the bag is complete");
    with_endpoint(&fx, &["verify", "s3://bags/share/2026-11-28"]).expect_code(0);
    let json = with_endpoint(&fx, &["verify", "--json", "s3://bags/share/2026-11-28"]);
    assert_eq!(json.json()["storage"], "object store");
    let ls = with_endpoint(&fx, &["ls", "--json", "s3://bags/share/2026-11-28"]);
    ls.expect_code(0);
    assert_eq!(
        ls.stdout.lines().count(),
        files.len() + 1,
        "ls reads items.jsonl from the store"
    );
    let local = tmp.path().join("downloaded");
    download(&fx, "bags", "share/2026-11-28/", &local);
    assert_bagit_py_valid(&local);
    ferry(["verify", local.to_str().unwrap()]).expect_code(0);

    // Exporting again into the same prefix is refused.
    let run = with_endpoint(
        &fx,
        &[
            "export",
            &format!("fs:{}", src.display()),
            "--to",
            "s3://bags/share/2026-11-28",
            "--work-dir",
            work.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("already holds"), "{}", run.stderr);

    // An object damaged in the store is found by verify.
    let sandbox = fx.sandbox.as_ref().unwrap();
    let victim = sandbox.object_path("bags", "share/2026-11-28/data/fs/share/big.bin");
    let mut data = std::fs::read(&victim).unwrap();
    data[1234] ^= 1;
    std::fs::write(&victim, data).unwrap();
    let run = with_endpoint(&fx, &["verify", "s3://bags/share/2026-11-28"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("big.bin"), "{}", run.stdout);
}

#[test]
fn an_interrupted_export_into_s3_is_incomplete_and_resumes() {
    let fx = S3Fixture::sandbox();
    fx.bucket("bags");
    let tmp = tempdir();
    let src = tmp.path().join("src");
    for i in 0..600 {
        write(
            &src.join(format!("d{}/f{i:04}", i % 7)),
            format!("file {i}").repeat(200).as_bytes(),
        );
    }
    let work = tmp.path().join("work");
    let mut cmd = Command::new(ferry_bin());
    cmd.args([
        "export",
        &format!("fs:{}", src.display()),
        "--to",
        "s3://bags/run",
        "--endpoint-url",
        &fx.endpoint,
        "--work-dir",
        work.to_str().unwrap(),
        "--checkpoint-interval",
        "0",
        "--concurrency",
        "1",
        "-q",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in fx.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = std::fs::read_to_string(work.join("checkpoint.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["journal_lines"].as_u64())
            .unwrap_or(0);
        if lines >= 30 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be interrupted"
        );
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: killing our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let run = with_endpoint(&fx, &["verify", "s3://bags/run"]);
    assert_eq!(
        run.code, 1,
        "an interrupted bag is never valid: {}",
        run.stdout
    );
    assert!(run.stdout.contains("INCOMPLETE"), "{}", run.stdout);

    let run = with_endpoint(
        &fx,
        &[
            "export",
            &format!("fs:{}", src.display()),
            "--to",
            "s3://bags/run",
            "--work-dir",
            work.to_str().unwrap(),
            "--json",
        ],
    );
    run.expect_code(0);
    let summary = run.json();
    assert!(
        summary["resumed_items"].as_u64().unwrap() >= 29,
        "{summary}"
    );
    assert_eq!(summary["payload_files"], 600);
    with_endpoint(&fx, &["verify", "s3://bags/run"]).expect_code(0);
    let local = tmp.path().join("downloaded");
    assert_eq!(
        download(&fx, "bags", "run/data/", &local.join("data")),
        600,
        "no leftovers from the killed run"
    );
}

#[test]
fn object_lock_retention_is_set_on_every_object() {
    let Some(fx) = S3Fixture::moto() else { return };
    fx.runtime
        .block_on(
            fx.client
                .create_bucket()
                .bucket("locked")
                .object_lock_enabled_for_bucket(true)
                .send(),
        )
        .unwrap();
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write(&src.join("record.pdf"), b"%PDF-1.7 record");
    write(&src.join("big.bin"), &vec![7u8; 12 << 20]);
    let work = tmp.path().join("work");
    let run = with_endpoint(
        &fx,
        &[
            "export",
            &format!("fs:{}", src.display()),
            "--to",
            "s3://locked/deposit",
            "--work-dir",
            work.to_str().unwrap(),
            "--object-lock-days",
            "30",
            "--object-lock-mode",
            "compliance",
        ],
    );
    run.expect_code(0);
    let keys: Vec<String> = fx.runtime.block_on(async {
        let page = fx
            .client
            .list_objects_v2()
            .bucket("locked")
            .prefix("deposit/")
            .send()
            .await
            .unwrap();
        page.contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect()
    });
    assert!(
        keys.iter().any(|k| k.ends_with("manifest-sha256.txt"))
            && keys.iter().any(|k| k.ends_with("big.bin")),
        "{keys:?}"
    );
    for key in &keys {
        // moto answers GetObjectRetention with the object itself; HEAD carries the same facts.
        let head = fx
            .runtime
            .block_on(fx.client.head_object().bucket("locked").key(key).send())
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("COMPLIANCE"),
            "{key}"
        );
        let until = head
            .object_lock_retain_until_date()
            .expect("retain-until date")
            .secs();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            until > now + 29 * 86400 && until < now + 31 * 86400,
            "{key}: {until}"
        );
    }
    with_endpoint(&fx, &["verify", "s3://locked/deposit"]).expect_code(0);
}

/// A bag of more than one listing page in a store whose ListObjectsV2 gives no continuation
/// tokens: verifying it in place lists every object (going on after each page's last key),
/// not the first page only.
#[test]
fn a_bag_of_many_pages_verifies_where_listings_give_no_tokens() {
    let fx = S3Fixture::sandbox_with(ferry_sandbox::Faults {
        list_without_continuation: true,
        ..Default::default()
    });
    fx.bucket("bags");
    let tmp = tempdir();
    let src = tmp.path().join("many");
    // 1,010 payload files and the bag's own files: two pages of 1,000 keys.
    for i in 0..1010 {
        write(&src.join(format!("d{}/f{i:04}.txt", i % 10)), b"x");
    }
    let run = with_endpoint(
        &fx,
        &[
            "export",
            &format!("fs:{}", src.display()),
            "--to",
            "s3://bags/many",
            "--work-dir",
            tmp.path().join("work").to_str().unwrap(),
            "--json",
        ],
    );
    run.expect_code(0);
    with_endpoint(&fx, &["verify", "s3://bags/many"]).expect_code(0);
}
