//! The command line itself: help that teaches, clear errors with exit code 2, `ls`, `--json`
//! summaries, and the demo.

use ferry_e2e::*;

#[test]
fn help_teaches_and_lists_exit_codes() {
    let run = ferry(["--help"]);
    run.expect_code(0);
    for needle in [
        "export",
        "verify",
        "ls",
        "demo",
        "Exit codes",
        "130",
        "resume",
    ] {
        assert!(
            run.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            run.stdout
        );
    }
    let run = ferry(["export", "--help"]);
    for needle in [
        "--to",
        "--digest",
        "--compress",
        "--concurrency",
        "--source-organization",
        "--json",
        "fs:",
    ] {
        assert!(
            run.stdout.contains(needle),
            "export --help lacks {needle:?}"
        );
    }
    assert!(ferry(["--version"]).stdout.starts_with("ferry "));
    assert_eq!(
        ferry(["export"]).code,
        2,
        "missing arguments are usage errors"
    );
}

#[test]
fn bad_input_gets_one_clear_sentence_and_exit_2() {
    let tmp = tempdir();
    let missing = tmp.path().join("no-such-folder");
    let run = ferry([
        "export",
        &format!("fs:{}", missing.display()),
        "--to",
        tmp.path().join("bag").to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("no such file or folder"),
        "{}",
        run.stderr
    );
    assert!(
        !tmp.path().join("bag").exists(),
        "nothing is created for a wrong source"
    );

    let run = ferry([
        "export",
        "google:example.no",
        "--to",
        tmp.path().join("bag").to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("needs --service-account"),
        "{}",
        run.stderr
    );

    let run = ferry_env(
        [
            "export",
            "m365:contoso.onmicrosoft.com",
            "--to",
            tmp.path().join("bag").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--client-id"), "{}", run.stderr);
    assert!(!tmp.path().join("bag").exists());

    let run = ferry([
        "export",
        "ftp:/x",
        "--to",
        tmp.path().join("bag").to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("unknown source"), "{}", run.stderr);

    let src = tmp.path().join("src");
    write(&src.join("a"), b"a");
    let taken = tmp.path().join("taken");
    write(&taken.join("precious.doc"), b"do not overwrite");
    let run = export(&src, &taken, &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(taken.join("precious.doc")).unwrap(),
        b"do not overwrite"
    );

    let run = ferry([
        "export",
        &format!("fs:{}", src.display()),
        "--to",
        src.join("bags/inside").to_str().unwrap(),
    ]);
    assert_eq!(
        run.code, 2,
        "a bag inside its own source would archive itself"
    );
    assert!(run.stderr.contains("inside the source"), "{}", run.stderr);

    let zip = tmp.path().join("taken.zip");
    write(&zip, b"PK");
    assert_eq!(export(&src, &zip, &[]).code, 2);

    let run = ferry([
        "export",
        &format!("fs:{}", src.display()),
        "--to",
        tmp.path().join("b").to_str().unwrap(),
        "--digest",
        "md5",
    ]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("too weak"), "{}", run.stderr);
    let run = ferry([
        "export",
        &format!("fs:{}", src.display()),
        "--to",
        tmp.path().join("b").to_str().unwrap(),
        "--bag-info",
        "Bad Label=x",
    ]);
    assert_eq!(run.code, 2);
}

#[test]
fn plain_paths_work_as_fs_sources_and_json_summaries_are_complete() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write(&src.join("one.txt"), b"1");
    write(&src.join("two.txt"), b"22");
    let bag = tmp.path().join("bag");
    let run = ferry([
        "export",
        src.to_str().unwrap(),
        "--to",
        bag.to_str().unwrap(),
        "--json",
    ]);
    run.expect_code(0);
    let s = run.json();
    for key in [
        "status",
        "exit_code",
        "source",
        "bag",
        "archived_items",
        "archived_bytes",
        "skipped_items",
        "failed_items",
        "payload_files",
        "payload_bytes",
        "elapsed_seconds",
        "bytes_per_second",
        "failures",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["archived_bytes"], 3);
    assert_eq!(s["exit_code"], 0);
    assert_bagit_py_valid(&bag);
}

#[test]
fn ls_shows_items_with_provenance() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write(&src.join("100% done.txt"), b"x");
    write(&src.join("plain.txt"), b"y");
    std::os::unix::fs::symlink("plain.txt", src.join("link")).unwrap();
    for to in ["bag", "bag.zip"] {
        let bag = tmp.path().join(to);
        export(&src, &bag, &[]).expect_code(0);
        let run = ferry(["ls", bag.to_str().unwrap()]);
        run.expect_code(0);
        assert!(
            run.stdout.contains("← 100% done.txt"),
            "renamed files show their original name:\n{}",
            run.stdout
        );
        assert!(run.stdout.contains("fs/src/plain.txt"));
        assert!(
            run.stdout.contains("[symlink]") && run.stdout.contains("→ plain.txt"),
            "{}",
            run.stdout
        );
        let json = ferry(["ls", "--json", bag.to_str().unwrap()]);
        let records: Vec<serde_json::Value> = json
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 3);
        ferry(["ls", "--failures", bag.to_str().unwrap()]).expect_code(0);
        if to == "bag" {
            assert_bagit_py_valid(&bag);
        }
    }
    assert_eq!(
        ferry(["ls", tmp.path().join("nothing").to_str().unwrap()]).code,
        2
    );
}

#[test]
fn the_demo_builds_exports_and_verifies() {
    let tmp = tempdir();
    let run = ferry_in(tmp.path(), ["demo"]);
    run.expect_code(0);
    assert!(run.stdout.contains("VALID"), "{}", run.stdout);
    let demo = tmp.path().join("ferry-demo");
    let entries: Vec<_> = std::fs::read_dir(&demo)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let folder = entries
        .iter()
        .find(|p| {
            let n = p.to_string_lossy();
            p.is_dir() && !n.ends_with("-s3") && !n.ends_with("-m365") && !n.ends_with("-google")
        })
        .expect("a folder bag");
    let m365_bag = entries
        .iter()
        .find(|p| p.is_dir() && p.to_string_lossy().ends_with("-m365"))
        .expect("a bag of the sample Microsoft 365 tenant");
    assert_bagit_py_valid(m365_bag);
    let m365_items = items(m365_bag);
    assert!(m365_items
        .iter()
        .any(|r| r["media_type"] == "message/rfc822"));
    assert!(m365_items
        .iter()
        .any(|r| r["source_checksums"][0]["algorithm"] == "quickxor"
            && r["source_checksums"][0]["verified"] == true));
    assert!(run.stdout.contains("reconciliation of"), "{}", run.stdout);
    let s3_bag = entries
        .iter()
        .find(|p| p.is_dir() && p.to_string_lossy().ends_with("-s3"))
        .expect("a bag of the sample bucket");
    assert_bagit_py_valid(s3_bag);
    let s3_items = items(s3_bag);
    assert_eq!(s3_items.len(), 5);
    assert!(s3_items
        .iter()
        .all(|r| r["source"]["system"] == "s3" && r["extra"]["etag_check"] == "md5"));
    // The Google Workspace stand-in's bag: mail, Drive files checked, Docs exported.
    let google_bag = entries
        .iter()
        .find(|p| p.is_dir() && p.to_string_lossy().ends_with("-google"))
        .expect("a bag of the Google Workspace stand-in");
    assert_bagit_py_valid(google_bag);
    let google_items = items(google_bag);
    assert!(google_items
        .iter()
        .any(|r| r["media_type"] == "message/rfc822"));
    assert!(google_items
        .iter()
        .any(|r| r["conversion"]["to"] == "application/vnd.oasis.opendocument.text"));
    let zip = entries
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "zip"))
        .expect("a zip bag");
    assert_bagit_py_valid(folder);
    ferry(["verify", zip.to_str().unwrap()]).expect_code(0);
    let records = items(folder);
    assert!(
        records.iter().any(|r| r["source"]["original_path"]
            .as_str()
            .is_some_and(|p| p.contains('\n'))),
        "the demo has hostile names"
    );
}
