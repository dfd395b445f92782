//! `ferry backup` / `ferry runs` / `ferry restore` end to end through the CLI: a first full run,
//! then a run after adds, changes, moves and deletions that reads only what changed (counted
//! by the source: file reads by the run's own counts, object GETs by the S3 server), restores
//! of the new and the old state byte for byte, an S3 bucket with versions whose overwritten
//! object's older version is not read again, a run killed with SIGKILL and run again, and a
//! repository in use by another writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_e2e::s3::S3Fixture;
use ferry_e2e::*;
use serde_json::Value;

/// Every file under `root`, relative path → bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.strip_prefix(root).unwrap().to_path_buf(), bytes)
        })
        .collect()
}

fn backup(src: &Path, repo: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "backup".to_string(),
        format!("fs:{}", src.display()),
        "--repo".into(),
        repo.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = ferry(&args);
    run.expect_code(0);
    run.json()
}

fn restore(repo: &Path, run: &str, to: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "restore".to_string(),
        "--repo".into(),
        repo.display().to_string(),
        "--run".into(),
        run.into(),
        "--to".into(),
        to.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ferry(&args)
}

fn seed(src: &Path) {
    for i in 0..40 {
        write(
            &src.join(format!("docs/d{}/file{i}.txt", i % 4)),
            format!("file {i}\n").repeat(100 + i).as_bytes(),
        );
    }
    write(&src.join("same-a.bin"), &[7u8; 50_000]);
    write(&src.join("same-b.bin"), &[7u8; 50_000]);
    write(&src.join("Café.txt"), b"nfc name");
}

#[test]
fn a_second_run_reads_only_what_changed_and_both_runs_restore_exactly() {
    let dir = tempdir();
    let src = dir.path().join("share");
    let repo = dir.path().join("repo");
    seed(&src);
    let before = tree(&src);
    let s1 = backup(&src, &repo, &[]);
    let c1 = &s1["counts"];
    assert_eq!(c1["added"], 43, "{s1:#}");
    // Two files with the same bytes are stored once.
    assert_eq!(c1["blobs_written"], 42, "{s1:#}");
    let run1 = s1["run"].as_str().unwrap().to_string();

    // Nothing changed: nothing is read, almost nothing written.
    let s2 = backup(&src, &repo, &[]);
    let c2 = &s2["counts"];
    assert_eq!(c2["unchanged"], 43, "{s2:#}");
    assert_eq!(c2["bytes_read"], 0);
    assert_eq!(
        c2["added"].as_u64().unwrap() + c2["changed"].as_u64().unwrap(),
        0
    );
    assert!(c2["bytes_written"].as_u64().unwrap() < 1024, "{s2:#}");

    // Add, change, move, delete.
    write(&src.join("docs/d0/file0.txt"), b"changed content");
    write(&src.join("new/added.txt"), b"a new file");
    std::fs::rename(src.join("docs/d1/file1.txt"), src.join("moved.txt")).unwrap();
    std::fs::remove_file(src.join("docs/d2/file2.txt")).unwrap();
    let after = tree(&src);
    let s3 = backup(&src, &repo, &[]);
    let c3 = &s3["counts"];
    assert_eq!(c3["changed"], 1, "{s3:#}");
    assert_eq!(c3["added"], 2, "{s3:#}"); // new/added.txt and moved.txt
    assert_eq!(c3["removed"], 2, "{s3:#}"); // docs/d1/file1.txt and docs/d2/file2.txt
    assert_eq!(c3["unchanged"], 40, "{s3:#}");
    // Only the changed and added files were read; the moved file's content was stored before.
    let read = "changed content".len() + "a new file".len() + "file 1\n".repeat(101).len();
    assert_eq!(c3["bytes_read"], read as u64, "{s3:#}");
    assert_eq!(c3["blobs_written"], 2, "{s3:#}");
    let run3 = s3["run"].as_str().unwrap().to_string();

    // The latest run restores the new state, the first run the old one, byte for byte.
    let out = dir.path().join("restore-latest");
    restore(&repo, "latest", &out, &[]).expect_code(0);
    assert_eq!(tree(&out.join("fs/share")), after);
    let out = dir.path().join("restore-1");
    restore(&repo, &run1, &out, &[]).expect_code(0);
    assert_eq!(tree(&out.join("fs/share")), before);
    // A glob restores part of a run.
    let out = dir.path().join("restore-part");
    restore(&repo, &run3, &out, &["--path", "fs/share/docs/d0/**"]).expect_code(0);
    let part = tree(&out.join("fs/share"));
    assert_eq!(part.len(), 10);
    assert!(part.keys().all(|p| p.starts_with("docs/d0")));
    // The source's modification times come back.
    let m_src = std::fs::metadata(src.join("moved.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let m_out = std::fs::metadata(dir.path().join("restore-latest/fs/share/moved.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(m_src, m_out);

    // The run list.
    let runs = ferry(["runs", "--repo", repo.to_str().unwrap(), "--json"]);
    runs.expect_code(0);
    let records: Vec<Value> = runs
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["previous"], Value::Null);
    assert_eq!(records[1]["previous"]["id"], run1.as_str());
    assert!(records.iter().all(|r| r["status"] == "completed"));
    // The repository explains itself.
    let readme = std::fs::read_to_string(repo.join("README.txt")).unwrap();
    assert!(readme.contains("sha256sum"));
    // Each blob is named by its content's SHA-256.
    let blob = files_under(&repo.join("blobs")).into_iter().next().unwrap();
    let bytes = std::fs::read(&blob).unwrap();
    use sha2::Digest as _;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        blob.file_name().unwrap().to_str().unwrap()
    );
}

#[test]
fn an_s3_bucket_backed_up_twice_is_read_once_by_the_server_count() {
    let fx = S3Fixture::sandbox();
    fx.bucket("photos");
    for i in 0..30 {
        fx.put(
            "photos",
            &format!("2024/img{i}.jpg"),
            format!("jpeg {i}").repeat(300).as_bytes(),
        );
    }
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let server = fx.sandbox.as_ref().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "backup".to_string(),
            "s3://photos".into(),
            "--endpoint-url".into(),
            fx.endpoint.clone(),
            "--repo".into(),
            repo.display().to_string(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let r = ferry_env(&args, &fx.env());
        r.expect_code(0);
        r.json()
    };
    let gets = || {
        server
            .counters()
            .object_gets
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let g0 = gets();
    let s1 = run(&[]);
    assert_eq!(s1["counts"]["added"], 30, "{s1:#}");
    assert_eq!(gets() - g0, 30, "one GET per object");
    let requests = || {
        server
            .counters()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (g1, r1) = (gets(), requests());
    let s2 = run(&[]);
    assert_eq!(s2["counts"]["unchanged"], 30, "{s2:#}");
    assert_eq!(gets() - g1, 0, "a no-change run reads no object");
    assert_eq!(
        requests() - r1,
        2,
        "a no-change run asks one bucket check and one listing page"
    );
    fx.put("photos", "2024/img3.jpg", b"new bytes");
    fx.put("photos", "2025/new.jpg", b"another");
    let g2 = gets();
    let s3 = run(&[]);
    assert_eq!(s3["counts"]["changed"], 1, "{s3:#}");
    assert_eq!(s3["counts"]["added"], 1, "{s3:#}");
    assert_eq!(
        gets() - g2,
        2,
        "only the changed and the new object are read"
    );
    let out = dir.path().join("out");
    restore(&repo, "latest", &out, &[]).expect_code(0);
    // The layout below s3/ is the connector's (host and bucket); find the object there.
    let f = files_under(&out)
        .into_iter()
        .find(|p| p.ends_with("photos/2024/img3.jpg"))
        .expect("img3.jpg restored");
    assert_eq!(std::fs::read(f).unwrap(), b"new bytes");
}

#[test]
fn a_run_killed_mid_way_is_not_recorded_and_the_next_run_completes() {
    let dir = tempdir();
    let src = dir.path().join("big");
    let repo = dir.path().join("repo");
    // Enough files that the run is still going when it is killed.
    for i in 0..3000 {
        write(
            &src.join(format!("d{}/f{i}.bin", i % 30)),
            &vec![(i % 251) as u8; 4096 + i],
        );
    }
    let mut child = std::process::Command::new(ferry_bin())
        .args([
            "backup",
            &format!("fs:{}", src.display()),
            "--repo",
            repo.to_str().unwrap(),
            "--concurrency",
            "2",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some content is in the repository.
    let t0 = std::time::Instant::now();
    while files_under(&repo.join("blobs")).len() < 200 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    // The killed run is not a run, and its lock does not block the next one.
    let runs = ferry(["runs", "--repo", repo.to_str().unwrap(), "--json"]);
    runs.expect_code(0);
    assert_eq!(runs.stdout.trim(), "", "a killed run must not be listed");
    assert!(repo.join("locks/repository.lock").exists());
    let s = backup(&src, &repo, &[]);
    assert_eq!(s["counts"]["added"], 3000, "{s:#}");
    // Content the killed run stored was not written again.
    assert!(
        s["counts"]["blobs_written"].as_u64().unwrap() < 3000,
        "{s:#}"
    );
    assert!(!repo.join("locks/repository.lock").exists());
    let out = dir.path().join("out");
    restore(&repo, "latest", &out, &[]).expect_code(0);
    assert_eq!(tree(&out.join("fs/big")), tree(&src));
}

#[test]
fn a_repository_in_use_is_refused_with_who_uses_it() {
    let dir = tempdir();
    let src = dir.path().join("src");
    write(&src.join("a.txt"), b"a");
    let repo = dir.path().join("repo");
    backup(&src, &repo, &[]);
    // A live writer: this test process.
    let lock = serde_json::json!({
        "host": hostname(),
        "pid": std::process::id(),
        "run": "2026-11-28T020000Z-other",
        "started": "2026-11-28T02:00:00Z",
        "heartbeat": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
    });
    std::fs::create_dir_all(repo.join("locks")).unwrap();
    std::fs::write(repo.join("locks/repository.lock"), lock.to_string()).unwrap();
    let run = ferry([
        "backup",
        &format!("fs:{}", src.display()),
        "--repo",
        repo.to_str().unwrap(),
    ]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("in use") && run.stderr.contains("2026-11-28T020000Z-other"),
        "{}",
        run.stderr
    );
    // Not a repository, and a missing run: one sentence each.
    let run = ferry(["runs", "--repo", src.to_str().unwrap()]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("not a ferry repository"),
        "{}",
        run.stderr
    );
    std::fs::remove_file(repo.join("locks/repository.lock")).unwrap();
    let run = restore(&repo, "1999-01-01", &dir.path().join("x"), &[]);
    run.expect_code(2);
    assert!(run.stderr.contains("no run"), "{}", run.stderr);
}

#[test]
fn a_damaged_or_missing_blob_stops_the_restore_and_leaves_nothing_half_written() {
    use sha2::Digest as _;
    let dir = tempdir();
    let src = dir.path().join("src");
    let content = b"bravo: the one whose blob goes wrong\n".repeat(2000);
    write(&src.join("a.txt"), b"alpha");
    write(&src.join("b.txt"), &content);
    let repo = dir.path().join("repo");
    backup(&src, &repo, &[]);
    let digest = hex::encode(sha2::Sha256::digest(&content));
    let blob = repo.join("blobs/sha256").join(&digest[..2]).join(&digest);
    let leftovers = |out: &Path| -> Vec<PathBuf> {
        files_under(out)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".ferry-restore-"))
            })
            .collect()
    };

    // A restore that stops on b.txt's blob, saying `why`, and leaves no part of it behind.
    let stopped_cleanly = |why: &str| {
        let out = dir.path().join(format!("restore-{why}"));
        let run = restore(&repo, "latest", &out, &[]);
        assert_ne!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.contains(why), "{}", run.stderr);
        assert!(!out.join("fs/src/b.txt").exists());
        assert_eq!(leftovers(&out), Vec::<PathBuf>::new());
    };

    // Damaged: found by its SHA-256 as it is written.
    let mut bytes = std::fs::read(&blob).expect("the blob of b.txt");
    bytes[100] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    stopped_cleanly("damaged");

    // Missing: the read fails before any byte; the file made for it goes too.
    std::fs::remove_file(&blob).unwrap();
    stopped_cleanly("missing");
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Unmounts a test filesystem when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_one_sentence_and_leaves_the_repository_as_it_was() {
    if !is_root() {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    }
    let dir = tempdir();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _mount = Mount(small.clone());
    let src = dir.path().join("src");
    for i in 0..5 {
        write(
            &src.join(format!("f{i}.txt")),
            format!("small {i}").as_bytes(),
        );
    }
    let repo = small.join("repo");
    backup(&src, &repo, &[]);
    let before = tree(&src);
    // Now far more than fits.
    for i in 0..8 {
        write(&src.join(format!("big{i}.bin")), &vec![i as u8; 300_000]);
    }
    let run = ferry([
        "backup",
        &format!("fs:{}", src.display()),
        "--repo",
        repo.to_str().unwrap(),
    ]);
    run.expect_code(2);
    assert!(run.stderr.contains("disk is full"), "{}", run.stderr);
    // The failed run is not recorded, the lock is gone, the earlier run restores as it was.
    let runs = ferry(["runs", "--repo", repo.to_str().unwrap(), "--json"]);
    runs.expect_code(0);
    assert_eq!(runs.stdout.lines().count(), 1, "{}", runs.stdout);
    assert!(!repo.join("locks/repository.lock").exists());
    let out = dir.path().join("out");
    restore(&repo, "latest", &out, &[]).expect_code(0);
    assert_eq!(tree(&out.join("fs/src")), before);
}

#[test]
fn a_repository_in_s3_takes_runs_and_restores_them() {
    for fx in [Some(S3Fixture::sandbox()), S3Fixture::moto()]
        .into_iter()
        .flatten()
    {
        fx.bucket("backups");
        let dir = tempdir();
        let src = dir.path().join("share");
        seed(&src);
        let repo = "s3://backups/ferry/nightly";
        let run = |extra: &[&str]| {
            let mut args = vec![
                "backup".to_string(),
                format!("fs:{}", src.display()),
                "--repo".into(),
                repo.into(),
                "--endpoint-url".into(),
                fx.endpoint.clone(),
                "--work-dir".into(),
                dir.path().join("work").display().to_string(),
                "--json".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            ferry_env(&args, &fx.env())
        };
        let r1 = run(&[]);
        r1.expect_code(0);
        assert_eq!(r1.json()["counts"]["added"], 43, "{}", r1.stdout);
        write(&src.join("docs/d3/file3.txt"), b"edited");
        let r2 = run(&[]);
        r2.expect_code(0);
        assert_eq!(r2.json()["counts"]["changed"], 1, "{}", r2.stdout);
        assert_eq!(r2.json()["counts"]["unchanged"], 42, "{}", r2.stdout);
        let out = dir.path().join("out");
        let args = vec![
            "restore".to_string(),
            "--repo".into(),
            repo.into(),
            "--endpoint-url".into(),
            fx.endpoint.clone(),
            "--to".into(),
            out.display().to_string(),
        ];
        ferry_env(&args, &fx.env()).expect_code(0);
        assert_eq!(tree(&out.join("fs/share")), tree(&src));
        // Another writer's lock is respected in S3 too.
        fx.put(
            "backups",
            "ferry/nightly/locks/repository.lock",
            serde_json::json!({
                "host": "elsewhere", "pid": 1, "run": "someone-else",
                "started": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
                "heartbeat": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
            })
            .to_string()
            .as_bytes(),
        );
        let r3 = run(&[]);
        r3.expect_code(2);
        assert!(r3.stderr.contains("in use: someone-else"), "{}", r3.stderr);
    }
}

#[test]
fn an_s3_bucket_with_versions_reads_each_version_once() {
    // The sandbox (s3s-fs) keeps no versions; moto does.
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
    fx.put("ver", "keep.txt", b"kept");
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let run = || {
        let args = vec![
            "backup".to_string(),
            "s3://ver".into(),
            "--versions".into(),
            "--endpoint-url".into(),
            fx.endpoint.clone(),
            "--repo".into(),
            repo.display().to_string(),
            "--json".into(),
        ];
        let r = ferry_env(&args, &fx.env());
        r.expect_code(0);
        r.json()
    };
    let s1 = run();
    assert_eq!(s1["counts"]["added"], 2, "{s1:#}");
    // Versions are named by their time to the second.
    std::thread::sleep(Duration::from_millis(1100));
    fx.put("ver", "doc.txt", b"version two");
    let s2 = run();
    let c = &s2["counts"];
    assert_eq!(c["listed"], 3, "{s2:#}");
    assert_eq!(c["unchanged"], 1, "keep.txt: {s2:#}");
    // doc.txt now holds version two; version one moved to a name of its own, and its content is
    // the one stored by the first run.
    assert_eq!(
        (&c["changed"], &c["added"]),
        (&1.into(), &1.into()),
        "{s2:#}"
    );
    assert_eq!(c["bytes_read"], 11, "only version two is read: {s2:#}");
    assert_eq!(c["blobs_written"], 1, "{s2:#}");
    assert_eq!(c["state_entries"], 3, "{s2:#}");
    let s3 = run();
    assert_eq!(s3["counts"]["unchanged"], 3, "{s3:#}");
    assert_eq!(s3["counts"]["bytes_read"], 0, "{s3:#}");
    // The latest run restores both versions as the connector names them; the first, the one.
    let versions = fx
        .runtime
        .block_on(fx.client.list_object_versions().bucket("ver").send())
        .unwrap();
    let v1 = versions
        .versions()
        .iter()
        .find(|v| v.key() == Some("doc.txt") && v.is_latest() == Some(false))
        .and_then(|v| v.version_id())
        .unwrap()
        .to_string();
    let out = dir.path().join("out");
    restore(&repo, "latest", &out, &[]).expect_code(0);
    let files: BTreeMap<String, Vec<u8>> = files_under(&out)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    assert_eq!(files.len(), 3, "{:?}", files.keys());
    assert_eq!(files["doc.txt"], b"version two");
    assert_eq!(files["keep.txt"], b"kept");
    let (old, bytes) = files
        .iter()
        .find(|(n, _)| n.starts_with("doc.txt@"))
        .expect("the older version restored");
    assert!(old.ends_with(&format!("~{v1}")), "{old}");
    assert_eq!(bytes, b"version one");
    let first = dir.path().join("first");
    restore(&repo, s1["run"].as_str().unwrap(), &first, &[]).expect_code(0);
    let files = files_under(&first);
    assert_eq!(files.len(), 2, "{files:?}");
    let doc = files.iter().find(|p| p.ends_with("doc.txt")).unwrap();
    assert_eq!(std::fs::read(doc).unwrap(), b"version one");
    // The entry that took the earlier content is whole: verify reads every blob.
    let v = ferry(["verify", repo.to_str().unwrap(), "--json"]);
    v.expect_code(0);
    assert_eq!(v.json()["status"], "valid", "{}", v.stdout);
}

#[test]
fn a_source_that_does_not_answer_makes_no_repository() {
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let missing = dir.path().join("no-such-folder");
    let run = ferry([
        "backup",
        &format!("fs:{}", missing.display()),
        "--repo",
        repo.to_str().unwrap(),
    ]);
    run.expect_code(2);
    assert!(run.stderr.contains("no-such-folder"), "{}", run.stderr);
    assert!(
        !repo.exists(),
        "the repository was made before the source answered"
    );
}
