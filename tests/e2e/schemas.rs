//! ferry's own records match the JSON Schemas and the BagIt profile in `manifests/`, and the
//! example bag there is valid.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ferry_e2e::*;
use serde_json::Value;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// A bag with every kind of record: stored files (some renamed), a link, a FIFO, an empty
/// folder, and a failure.
fn varied_bag(tmp: &Path) -> PathBuf {
    let src = tmp.join("src");
    hostile_tree(&src);
    std::os::unix::fs::symlink("nowhere", src.join("link")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    let c = std::ffi::CString::new(src.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    write(&src.join("unreadable.txt"), b"x");
    std::fs::set_permissions(
        src.join("unreadable.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let bag = tmp.join("bag");
    let args = [
        "export".to_string(),
        format!("fs:{}", src.display()),
        "--to".into(),
        bag.display().to_string(),
        "--retries".into(),
        "0".into(),
    ];
    ferry_unprivileged(&args, tmp).expect_code(1);
    bag
}

#[test]
fn records_match_the_json_schemas() {
    let tmp = tempdir();
    let bag = varied_bag(tmp.path());
    let items = lines(&bag.join("ferry/items.jsonl"));
    assert!(
        items.iter().any(|r| r["type"] == "symlink")
            && items.iter().any(|r| r["type"] == "other")
            && items.iter().any(|r| r["type"] == "empty_directory")
    );
    let errors = schema_errors("items.schema.json", &items);
    assert!(errors.is_empty(), "{errors:#?}");
    let failures = lines(&bag.join("ferry/failures.jsonl"));
    assert_eq!(failures.len(), 1);
    let errors = schema_errors("failure.schema.json", &failures);
    assert!(errors.is_empty(), "{errors:#?}");
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(bag.join("ferry/run.json")).unwrap())
            .unwrap();
    let errors = schema_errors("run.schema.json", std::slice::from_ref(&run));
    assert!(errors.is_empty(), "{errors:#?}");

    // The schemas can fail: damaged records are rejected.
    let mut bad = items[0].clone();
    bad.as_object_mut().unwrap().remove("source");
    let mut bad_path = items
        .iter()
        .find(|r| r["path"].is_string())
        .unwrap()
        .clone();
    bad_path["path"] = "../escape".into();
    let mut bad_digest = bad_path.clone();
    bad_digest["path"] = "data/x".into();
    bad_digest["digests"]["sha256"] = "XYZ".into();
    for bad in [bad, bad_path, bad_digest] {
        assert!(
            !schema_errors("items.schema.json", std::slice::from_ref(&bad)).is_empty(),
            "accepted {bad}"
        );
    }
    let mut bad_run = run.clone();
    bad_run["counts"]["archived_items"] = (-1).into();
    assert!(!schema_errors("run.schema.json", &[bad_run]).is_empty());
}

#[test]
fn bags_conform_to_the_bagit_profile() {
    let has_profile_tool = std::process::Command::new("python3")
        .args(["-c", "import bagit_profile"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_profile_tool {
        assert!(
            std::env::var_os("FERRY_REQUIRE_BAGIT").is_none(),
            "bagit_profile is required (FERRY_REQUIRE_BAGIT) but missing"
        );
        eprintln!("NOTICE: python bagit_profile missing; skipping (pip install bagit-profile)");
        return;
    }
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write(&src.join("a.txt"), b"a");
    let bag = tmp.path().join("bag");
    export(&src, &bag, &["--digest", "sha512"]).expect_code(0);
    let check = |bag: &Path| {
        std::process::Command::new("python3")
            .args([
                "-c",
                "import sys, json, logging, bagit, bagit_profile\n\
                 logging.disable(logging.CRITICAL)\n\
                 prof = json.load(open(sys.argv[1]))\n\
                 p = bagit_profile.Profile(prof['BagIt-Profile-Info']['BagIt-Profile-Identifier'], profile=prof)\n\
                 ok = p.validate(bagit.Bag(sys.argv[2]))\n\
                 print(p.report.errors if p.report else '')\n\
                 sys.exit(0 if ok else 1)",
            ])
            .arg(manifests().join("bagit-profile.json"))
            .arg(bag)
            .output()
            .unwrap()
    };
    let out = check(&bag);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A bag without ferry's tag files does not conform.
    std::fs::remove_file(bag.join("ferry/run.json")).unwrap();
    assert!(!check(&bag).status.success(), "the profile check can fail");
}

#[test]
fn the_example_bag_is_valid() {
    let example = manifests().join("example-bag");
    ferry(["verify", example.to_str().unwrap()]).expect_code(0);
    assert_bagit_py_valid(&example);
    let items = lines(&example.join("ferry/items.jsonl"));
    assert!(items.len() >= 3);
    let errors = schema_errors("items.schema.json", &items);
    assert!(errors.is_empty(), "{errors:#?}");
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(example.join("ferry/run.json")).unwrap())
            .unwrap();
    let errors = schema_errors("run.schema.json", &[run]);
    assert!(errors.is_empty(), "{errors:#?}");
}
