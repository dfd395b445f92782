//! Every kind of damage makes `ferry verify` exit 1 and name the file; bagit-python agrees.

use std::path::{Path, PathBuf};

use ferry_e2e::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A fresh, valid bag of a small tree (with one renamed file) in `dir`.
fn make_bag(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    write(
        &src.join("docs/report.txt"),
        &b"quarterly numbers\n".repeat(100),
    );
    write(&src.join("docs/100%.txt"), b"percent");
    write(&src.join("photo.jpg"), &vec![0xAB; 50_000]);
    let bag = dir.join("pristine");
    export(&src, &bag, &["--digest", "sha256", "--digest", "sha512"]).expect_code(0);
    assert_bagit_py_valid(&bag);
    bag
}

fn payload_file(bag: &Path, suffix: &str) -> PathBuf {
    let records = items(bag);
    let r = records
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
        .expect("payload file");
    bag.join(r["path"].as_str().unwrap())
}

/// Applies `damage` to a copy of the bag, then expects `ferry verify` to exit 1 with output
/// mentioning every string in `mentions`, and bagit.py to reject it too (unless told not to).
fn check(name: &str, damage: impl FnOnce(&Path), mentions: &[&str], bagit_rejects: bool) {
    let tmp = tempdir();
    let pristine = make_bag(tmp.path());
    let bag = tmp.path().join(name);
    copy_dir(&pristine, &bag);
    damage(&bag);
    let run = ferry(["verify", bag.to_str().unwrap()]);
    assert_eq!(
        run.code, 1,
        "{name}: expected exit 1\n{}\n{}",
        run.stdout, run.stderr
    );
    for m in mentions {
        assert!(
            run.stdout.contains(m),
            "{name}: output does not mention {m:?}:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("INVALID") || run.stdout.contains("INCOMPLETE"),
        "{}",
        run.stdout
    );
    let json = ferry(["verify", "--json", bag.to_str().unwrap()]);
    assert_eq!(json.code, 1);
    assert!(!json.json()["problems"].as_array().unwrap().is_empty());
    if bagit_rejects {
        assert_bagit_py_invalid(&bag);
    }
}

#[test]
fn a_flipped_bit_is_found() {
    check(
        "bitflip",
        |bag| {
            let f = payload_file(bag, "photo.jpg");
            let mut data = std::fs::read(&f).unwrap();
            data[12_345] ^= 0x01;
            std::fs::write(&f, data).unwrap();
        },
        &["digest_mismatch", "data/fs/src/photo.jpg"],
        true,
    );
}

#[test]
fn a_truncated_file_is_found() {
    check(
        "truncated",
        |bag| {
            let f = payload_file(bag, "report.txt");
            let data = std::fs::read(&f).unwrap();
            std::fs::write(&f, &data[..data.len() / 2]).unwrap();
        },
        &["data/fs/src/docs/report.txt", "payload_oxum_mismatch"],
        true,
    );
}

#[test]
fn a_deleted_file_is_found() {
    check(
        "deleted",
        |bag| std::fs::remove_file(payload_file(bag, "photo.jpg")).unwrap(),
        &["missing_file", "data/fs/src/photo.jpg"],
        true,
    );
}

#[test]
fn an_extra_file_is_found() {
    check(
        "extra",
        |bag| write(&bag.join("data/fs/src/smuggled.exe"), b"MZ"),
        &["unlisted_file", "data/fs/src/smuggled.exe"],
        true,
    );
}

#[test]
fn an_edited_manifest_is_found() {
    check(
        "manifest",
        |bag| {
            let m = bag.join("manifest-sha256.txt");
            let text = std::fs::read_to_string(&m).unwrap();
            let first = text.chars().next().unwrap();
            let swapped = if first == '0' { '1' } else { '0' };
            std::fs::write(&m, format!("{swapped}{}", &text[1..])).unwrap();
        },
        &["manifest-sha256.txt", "tag_digest_mismatch"],
        true,
    );
}

#[test]
fn an_edited_tag_file_is_found() {
    check(
        "baginfo",
        |bag| {
            let f = bag.join("bag-info.txt");
            let text = std::fs::read_to_string(&f).unwrap();
            std::fs::write(
                &f,
                text.replace("Source-Organization", "Source-Organisation")
                    .replace("Bag-Size", "Bag-Size-X"),
            )
            .unwrap();
        },
        &["bag-info.txt", "tag_digest_mismatch"],
        true,
    );
    check(
        "items",
        |bag| {
            let f = bag.join("ferry/items.jsonl");
            let text = std::fs::read_to_string(&f).unwrap();
            std::fs::write(&f, text.replacen("\"size\":", "\"size\": ", 1)).unwrap();
        },
        &["ferry/items.jsonl"],
        true,
    );
}

#[test]
fn a_missing_bagit_txt_is_found() {
    check(
        "nobagit",
        |bag| std::fs::remove_file(bag.join("bagit.txt")).unwrap(),
        &["missing_bagit_txt"],
        true,
    );
}

#[test]
fn items_jsonl_that_disagrees_with_the_manifest_is_found() {
    // Edit items.jsonl and re-hash it in the tag manifest, so only the cross-check can notice.
    check(
        "items-disagree",
        |bag| {
            let f = bag.join("ferry/items.jsonl");
            let text = std::fs::read_to_string(&f).unwrap();
            let mut lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            lines[0]["digests"]["sha256"] = "0".repeat(64).into();
            let edited: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(&f, &edited).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg("sha256sum ferry/items.jsonl && sha512sum ferry/items.jsonl")
                .current_dir(bag)
                .output()
                .unwrap();
            let sums = String::from_utf8(out.stdout).unwrap();
            for (alg, line) in ["sha256", "sha512"].iter().zip(sums.lines()) {
                let digest = line.split_whitespace().next().unwrap();
                let tm = bag.join(format!("tagmanifest-{alg}.txt"));
                let text = std::fs::read_to_string(&tm).unwrap();
                let fixed: String = text
                    .lines()
                    .map(|l| {
                        if l.ends_with("ferry/items.jsonl") {
                            format!("{digest}  ferry/items.jsonl\n")
                        } else {
                            format!("{l}\n")
                        }
                    })
                    .collect();
                std::fs::write(&tm, fixed).unwrap();
            }
        },
        &["items_mismatch"],
        false,
    );
}

#[test]
fn fast_and_completeness_only_modes() {
    let tmp = tempdir();
    let bag = make_bag(tmp.path());
    ferry(["verify", "--fast", bag.to_str().unwrap()]).expect_code(0);
    ferry(["verify", "--completeness-only", bag.to_str().unwrap()]).expect_code(0);
    // A flipped bit keeps the size: only a full check sees it.
    let f = payload_file(&bag, "photo.jpg");
    let mut data = std::fs::read(&f).unwrap();
    data[0] ^= 0x80;
    std::fs::write(&f, &data).unwrap();
    ferry(["verify", "--fast", bag.to_str().unwrap()]).expect_code(0);
    ferry(["verify", bag.to_str().unwrap()]).expect_code(1);
    // A removed file changes the Payload-Oxum and the completeness.
    std::fs::remove_file(&f).unwrap();
    ferry(["verify", "--fast", bag.to_str().unwrap()]).expect_code(1);
    ferry(["verify", "--completeness-only", bag.to_str().unwrap()]).expect_code(1);
}

#[test]
fn a_damaged_zip_is_found() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    write(&src.join("a.bin"), &vec![7u8; 100_000]);
    let zip = tmp.path().join("bag.zip");
    export(&src, &zip, &[]).expect_code(0);
    ferry(["verify", zip.to_str().unwrap()]).expect_code(0);
    let mut bytes = std::fs::read(&zip).unwrap();
    // Payload entries come first and are stored: byte 50,000 is inside a.bin's data.
    bytes[50_000] ^= 0x10;
    std::fs::write(&zip, bytes).unwrap();
    let run = ferry(["verify", zip.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("data/fs/src/a.bin"), "{}", run.stdout);
}

#[test]
fn what_cannot_be_read_is_an_error_not_a_verdict() {
    let tmp = tempdir();
    let run = ferry(["verify", tmp.path().join("nope").to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    write(&tmp.path().join("not-a.zip"), b"hello");
    assert_eq!(
        ferry(["verify", tmp.path().join("not-a.zip").to_str().unwrap()]).code,
        2
    );
}
