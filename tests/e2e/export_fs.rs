//! `ferry export fs:` end to end: hostile names, zips, links and special files, unreadable
//! files, metadata. Every bag is also checked by bagit-python.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ferry_e2e::*;
use serde_json::Value;

fn original_bytes(record: &Value) -> Vec<u8> {
    match record["extra"]["original_path_bytes_hex"].as_str() {
        Some(hex) => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect(),
        None => record["source"]["original_path"]
            .as_str()
            .unwrap()
            .as_bytes()
            .to_vec(),
    }
}

/// Checks that every source file is in the bag exactly once, byte for byte, under a distinct
/// (even case-insensitively) payload path, with its original path recorded.
fn check_bag_against_source(bag: &Path, src: &Path, files: &[Vec<u8>]) {
    let records = items(bag);
    let stored: Vec<&Value> = records.iter().filter(|r| r["path"].is_string()).collect();
    assert_eq!(stored.len(), files.len(), "one record per file");
    let mut by_original: BTreeMap<Vec<u8>, &Value> = BTreeMap::new();
    let mut folded = HashSet::new();
    for r in &stored {
        assert!(
            by_original.insert(original_bytes(r), r).is_none(),
            "duplicate record for {r}"
        );
        let path = r["path"].as_str().unwrap();
        assert!(
            folded.insert(path.to_lowercase()),
            "case-insensitive collision: {path}"
        );
        assert!(path.starts_with("data/fs/"), "{path}");
        for part in path.split('/') {
            assert!(
                !part.is_empty() && part != "." && part != ".." && part.trim() == part,
                "unsafe component in {path:?}"
            );
            assert!(
                !part.contains(['%', '\n', '\r', '\\', '\t']),
                "unsafe character in {path:?}"
            );
            assert!(part.len() <= 255, "component over 255 bytes in {path:?}");
        }
    }
    for rel in files {
        let r = by_original
            .get(rel)
            .unwrap_or_else(|| panic!("no record for {:?}", String::from_utf8_lossy(rel)));
        let payload = std::fs::read(bag.join(r["path"].as_str().unwrap())).unwrap();
        let source = std::fs::read(src.join(OsStr::from_bytes(rel))).unwrap();
        assert_eq!(
            payload,
            source,
            "content of {:?}",
            String::from_utf8_lossy(rel)
        );
        assert_eq!(r["size"].as_u64().unwrap(), source.len() as u64);
        let name = rel.rsplit(|&b| b == b'/').next().unwrap();
        if let Ok(name) = std::str::from_utf8(name) {
            assert_eq!(r["source"]["original_name"].as_str().unwrap(), name);
        }
    }
}

#[test]
fn hostile_names_survive_a_folder_export() {
    let tmp = tempdir();
    let src = tmp.path().join("share");
    let files = hostile_tree(&src);
    let bag = tmp.path().join("bag");
    let run = export(&src, &bag, &["--json"]);
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(summary["status"], "complete");
    assert_eq!(
        summary["archived_items"].as_u64().unwrap(),
        files.len() as u64
    );
    assert_eq!(summary["failed_items"], 0);
    check_bag_against_source(&bag, &src, &files);
    assert_bagit_py_valid(&bag);
    ferry(["verify".as_ref(), bag.as_os_str()]).expect_code(0);
    assert!(!bag.join(".ferry-partial").exists());
    let info = std::fs::read_to_string(bag.join("bag-info.txt")).unwrap();
    let total: u64 = files
        .iter()
        .map(|f| {
            std::fs::metadata(src.join(OsStr::from_bytes(f)))
                .unwrap()
                .len()
        })
        .sum();
    assert!(
        info.contains(&format!("Payload-Oxum: {total}.{}\n", files.len())),
        "{info}"
    );
}

#[test]
fn zip_export_holds_the_same_bag() {
    let tmp = tempdir();
    let src = tmp.path().join("share");
    let mut files = hostile_tree(&src);
    // The hostile names' contents are a few bytes each, too small for deflate to show against
    // the run-to-run variation of the (always deflated) tag files: one text file that does.
    std::fs::write(src.join("compressible.txt"), "ferry ".repeat(16 << 10)).unwrap();
    files.push(b"compressible.txt".to_vec());
    for (zip_name, extra) in [("stored.zip", None), ("deflated.zip", Some("--compress"))] {
        let zip = tmp.path().join(zip_name);
        let mut args = vec![
            "export".to_string(),
            format!("fs:{}", src.display()),
            "--to".into(),
            zip.display().to_string(),
        ];
        args.extend(extra.map(String::from));
        args.extend([
            "--digest".into(),
            "sha512".into(),
            "--digest".into(),
            "sha256".into(),
        ]);
        ferry(&args).expect_code(0);
        assert!(!tmp.path().join(format!("{zip_name}.partial")).exists());
        ferry(["verify".as_ref(), zip.as_os_str()]).expect_code(0);
        let out = tmp.path().join(format!("unzipped-{zip_name}"));
        unzip_with_python(&zip, &out);
        let top = out.join(zip_name.trim_end_matches(".zip"));
        let entries: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert_eq!(
            entries.len(),
            1,
            "exactly one top folder, named like the zip"
        );
        assert!(
            top.join("manifest-sha512.txt").exists() && top.join("manifest-sha256.txt").exists()
        );
        check_bag_against_source(&top, &src, &files);
        assert_bagit_py_valid(&top);
    }
    let stored = std::fs::metadata(tmp.path().join("stored.zip"))
        .unwrap()
        .len();
    let deflated = std::fs::metadata(tmp.path().join("deflated.zip"))
        .unwrap()
        .len();
    assert!(
        deflated + (64 << 10) < stored,
        "--compress deflates ({deflated} vs {stored})"
    );
}

#[test]
fn links_special_files_and_empty_folders_are_recorded_not_archived() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write(&src.join("real/file.txt"), b"content");
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("real/file.txt", src.join("link-to-file")).unwrap();
    std::os::unix::fs::symlink("real", src.join("link-to-dir")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
    std::os::unix::fs::symlink("..", src.join("real/loop")).unwrap();
    let fifo = src.join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

    let bag = tmp.path().join("bag");
    let run = export(&src, &bag, &["--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["skipped_items"], 6, "{}", run.stdout);
    let records = items(&bag);
    let by_name = |n: &str| {
        records
            .iter()
            .find(|r| r["source"]["original_path"] == n)
            .unwrap_or_else(|| panic!("no record {n}"))
    };
    assert_eq!(by_name("link-to-file")["type"], "symlink");
    assert_eq!(by_name("link-to-file")["target"], "real/file.txt");
    assert!(by_name("link-to-file")["path"].is_null());
    assert!(by_name("link-to-file")["skipped"]
        .as_str()
        .unwrap()
        .contains("not followed"));
    assert_eq!(by_name("dangling")["target"], "/nonexistent/target");
    assert_eq!(by_name("empty")["type"], "empty_directory");
    assert_eq!(by_name("pipe")["type"], "other");
    assert!(by_name("pipe")["what"].as_str().unwrap().contains("FIFO"));
    assert_eq!(records.iter().filter(|r| r["path"].is_string()).count(), 1);
    assert_bagit_py_valid(&bag);

    // --follow-symlinks archives what links point to, without looping.
    let bag2 = tmp.path().join("bag-followed");
    let run = export(&src, &bag2, &["--follow-symlinks", "--json"]);
    run.expect_code(0);
    let records = items(&bag2);
    let stored: HashSet<&str> = records
        .iter()
        .filter(|r| r["path"].is_string())
        .map(|r| r["source"]["original_path"].as_str().unwrap())
        .collect();
    assert!(
        stored.contains("link-to-file")
            && stored.contains("link-to-dir/file.txt")
            && stored.contains("real/file.txt"),
        "{stored:?}"
    );
    let looped = records
        .iter()
        .find(|r| r["source"]["original_path"] == "real/loop")
        .unwrap();
    assert_eq!(
        looped["type"], "other",
        "a link back up the tree is recorded, not followed"
    );
    assert_bagit_py_valid(&bag2);
}

#[test]
fn unreadable_files_fail_and_everything_else_is_archived() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write(&src.join("ok/a.txt"), b"a");
    write(&src.join("secret.txt"), b"s");
    write(&src.join("locked/inside.txt"), b"i");
    write(&src.join("zz-last.txt"), b"z");
    std::fs::set_permissions(
        src.join("secret.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    for d in [&src, &src.join("ok")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let bag = tmp.path().join("bag");
    let args = [
        "export".to_string(),
        format!("fs:{}", src.display()),
        "--to".into(),
        bag.display().to_string(),
        "--json".into(),
        "--retries".into(),
        "0".into(),
    ];
    let run = ferry_unprivileged(&args, tmp.path());
    run.expect_code(1);
    let summary = run.json();
    assert_eq!(summary["status"], "completed_with_failures");
    assert_eq!(summary["failed_items"], 2, "{}", run.stdout);
    assert_eq!(summary["archived_items"], 2);
    let failures = std::fs::read_to_string(bag.join("ferry/failures.jsonl")).unwrap();
    assert!(
        failures.contains("secret.txt") && failures.contains("locked"),
        "{failures}"
    );
    assert!(failures.contains("ermission denied"), "{failures}");
    let paths: Vec<String> = items(&bag)
        .iter()
        .filter_map(|r| r["path"].as_str().map(String::from))
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("ok/a.txt"))
            && paths.iter().any(|p| p.ends_with("zz-last.txt"))
    );
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_bagit_py_valid(&bag);
    ferry(["verify", bag.to_str().unwrap()]).expect_code(0);
}

#[test]
fn metadata_is_recorded_and_kept() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write(&src.join("script.sh"), b"#!/bin/sh\n");
    std::fs::set_permissions(
        src.join("script.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    std::fs::File::options()
        .write(true)
        .open(src.join("script.sh"))
        .unwrap()
        .set_modified(when)
        .unwrap();
    let bag = tmp.path().join("bag");
    export(
        &src,
        &bag,
        &[
            "--source-organization",
            "Eksempel kommune",
            "--external-identifier",
            "2026/114",
            "--bag-info",
            "Internal-Sender-Identifier=ark-7",
        ],
    )
    .expect_code(0);
    let r = &items(&bag)[0];
    assert_eq!(r["extra"]["mode"], "750");
    assert_eq!(r["modified"], "2017-07-14T02:40:00Z");
    assert_eq!(r["source"]["system"], "fs");
    assert!(r["retrieved_at"].is_string());
    let payload = bag.join(r["path"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&payload).unwrap().mtime(),
        1_500_000_000,
        "payload keeps the source's mtime"
    );
    let info = std::fs::read_to_string(bag.join("bag-info.txt")).unwrap();
    for line in [
        "Source-Organization: Eksempel kommune",
        "External-Identifier: 2026/114",
        "Internal-Sender-Identifier: ark-7",
        "Bagging-Date: ",
        "Bag-Size: ",
        "BagIt-Profile-Identifier: ",
        "Bag-Software-Agent: ferry ",
    ] {
        assert!(info.contains(line), "{line:?} missing from\n{info}");
    }
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(bag.join("ferry/run.json")).unwrap())
            .unwrap();
    assert_eq!(run["counts"]["archived_items"], 1);
    assert_eq!(run["sources"][0]["system"], "fs");
    assert_eq!(run["complete"], true);
}

#[test]
fn a_single_file_can_be_exported() {
    let tmp = tempdir();
    write(&tmp.path().join("one.pdf"), b"%PDF-1.7");
    let bag = tmp.path().join("bag");
    ferry([
        "export",
        &format!("fs:{}", tmp.path().join("one.pdf").display()),
        "--to",
        bag.to_str().unwrap(),
    ])
    .expect_code(0);
    assert_eq!(
        std::fs::read(bag.join("data/fs/one.pdf")).unwrap(),
        b"%PDF-1.7"
    );
    assert_bagit_py_valid(&bag);
}
