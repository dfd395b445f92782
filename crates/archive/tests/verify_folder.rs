//! The verifier on folder bags: a valid bag, then one corruption at a time, each of which must be
//! reported as its own kind, naming the file.

mod verify_support;

use std::fs;

use ferry_archive::verify::{
    verify, ProblemKind as K, Status, VerifyError, VerifyMode, VerifyOptions,
};
use verify_support::*;

#[test]
fn valid_bag_with_sha256_and_sha512() {
    let bag = TestBag::new(&sample_files(), &[Sha256, Sha512]);
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    assert!(r.problems.is_empty() && r.warnings.is_empty(), "{r}");
    assert_eq!(r.bagit_version.as_deref(), Some("1.0"));
    assert_eq!(r.tag_file_encoding.as_deref(), Some("UTF-8"));
    assert_eq!(r.algorithms, ["sha256", "sha512"]);
    assert_eq!(r.tag_algorithms, ["sha256"]);
    assert_eq!(r.counts.payload_files, 4);
    let bytes: u64 = sample_files().iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(r.counts.payload_bytes, bytes);
    // Payload once (both algorithms in one pass) plus the tag files of the tag manifest.
    let tag_bytes: u64 = [
        "bagit.txt",
        "bag-info.txt",
        "manifest-sha256.txt",
        "manifest-sha512.txt",
    ]
    .iter()
    .map(|f| bag.read(f).len() as u64)
    .sum();
    assert_eq!(r.counts.bytes_hashed, bytes + tag_bytes);
    assert_eq!(r.counts.files_hashed, 8);
    for mode in [VerifyMode::Fast, VerifyMode::CompletenessOnly] {
        let r = check(&bag.root, mode);
        assert_eq!(r.status, Status::Valid, "{r}");
        assert_eq!(r.counts.bytes_hashed, 0);
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["status"], "valid");
    assert_eq!(json["counts"]["payload_files"], 4);
    assert!(r.to_string().starts_with("VALID"), "{r}");
}

#[test]
fn single_thread_and_many_threads_agree() {
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("data/f{i:03}.bin"), vec![(i % 256) as u8; i * 37]))
        .collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let bag = TestBag::new(&files, &[Sha256]);
    flip_bit(&bag.path("data/f123.bin"), 5);
    for threads in [1, 3, 8] {
        let r = verify(
            &bag.root,
            &VerifyOptions {
                mode: VerifyMode::Full,
                threads,
            },
        )
        .unwrap();
        assert_only(&r, &[(K::DigestMismatch, "data/f123.bin")]);
        assert_eq!(r.counts.files_hashed, 300 + 3);
    }
}

#[test]
fn bit_flip_is_a_digest_mismatch_in_every_manifest() {
    let bag = TestBag::new(&sample_files(), &[Sha256, Sha512]);
    flip_bit(&bag.path("data/sub/b.bin"), 40_000);
    let r = bag.verify();
    assert_eq!(r.status, Status::Invalid);
    assert_only(
        &r,
        &[
            (K::DigestMismatch, "data/sub/b.bin"),
            (K::DigestMismatch, "data/sub/b.bin"),
        ],
    );
    assert!(r
        .problems
        .iter()
        .any(|p| p.detail.contains("manifest-sha512.txt")));
    // Completeness alone cannot see it; Payload-Oxum neither.
    assert_eq!(
        check(&bag.root, VerifyMode::CompletenessOnly).status,
        Status::Valid
    );
}

#[test]
fn truncation_mentions_the_size_items_jsonl_records() {
    let bag = TestBag::ferry(&sample_files(), &[Sha256]);
    let full = bag.read("data/sub/b.bin");
    fs::write(bag.path("data/sub/b.bin"), &full[..1000]).unwrap();
    let r = bag.verify();
    assert_only(
        &r,
        &[
            (K::DigestMismatch, "data/sub/b.bin"),
            (K::PayloadOxumMismatch, "bag-info.txt"),
        ],
    );
    let mismatch = r
        .problems
        .iter()
        .find(|p| p.kind == K::DigestMismatch)
        .unwrap();
    assert!(
        mismatch.detail.contains("1000 bytes"),
        "{}",
        mismatch.detail
    );
    assert!(
        mismatch.detail.contains("items.jsonl records 70000 bytes"),
        "{}",
        mismatch.detail
    );
    // Without hashing, the size recorded in items.jsonl still gives the truncation away.
    let r = check(&bag.root, VerifyMode::CompletenessOnly);
    assert_only(
        &r,
        &[
            (K::SizeMismatch, "data/sub/b.bin"),
            (K::PayloadOxumMismatch, "bag-info.txt"),
        ],
    );
}

#[test]
fn deleted_file_is_missing() {
    let bag = TestBag::new(&sample_files(), &[Sha256, Sha512]);
    bag.remove("data/a.txt");
    let r = bag.verify();
    assert_eq!(r.status, Status::Invalid);
    assert_only(
        &r,
        &[
            (K::MissingFile, "data/a.txt"),
            (K::PayloadOxumMismatch, "bag-info.txt"),
        ],
    );
    let missing = &r
        .problems
        .iter()
        .find(|p| p.kind == K::MissingFile)
        .unwrap()
        .detail;
    assert!(
        missing.contains("manifest-sha256.txt, manifest-sha512.txt"),
        "{missing}"
    );
}

#[test]
fn extra_file_is_unlisted() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    bag.write("data/sub/stowaway.txt", b"not in any manifest");
    let r = bag.verify();
    assert_only(
        &r,
        &[
            (K::UnlistedFile, "data/sub/stowaway.txt"),
            (K::PayloadOxumMismatch, "bag-info.txt"),
        ],
    );
    let r = check(&bag.root, VerifyMode::Fast);
    assert_only(&r, &[(K::PayloadOxumMismatch, "bag-info.txt")]);
}

#[test]
fn file_missing_from_one_of_two_manifests_is_unlisted_there() {
    let files = sample_files();
    let bag = TestBag::new(&files, &[Sha256, Sha512]);
    bag.write_manifests(&files[1..], &[Sha512]);
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_only(&r, &[(K::UnlistedFile, "data/a.txt")]);
    assert!(r.problems[0].detail.contains("manifest-sha512.txt"), "{r}");
}

#[test]
fn edited_manifest_breaks_the_file_and_the_tag_manifest() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    let text = String::from_utf8(bag.read("manifest-sha256.txt")).unwrap();
    let good = digest(Sha256, b"hello, bag\n");
    bag.write(
        "manifest-sha256.txt",
        text.replace(&good, &"0".repeat(64)).as_bytes(),
    );
    let r = bag.verify();
    assert_only(
        &r,
        &[
            (K::DigestMismatch, "data/a.txt"),
            (K::TagDigestMismatch, "manifest-sha256.txt"),
        ],
    );
}

#[test]
fn edited_tag_file_fails_its_tag_manifest() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    let mut info = bag.read("bag-info.txt");
    info.extend_from_slice(b"Contact-Name: Someone Else\n");
    bag.write("bag-info.txt", &info);
    let r = bag.verify();
    assert_only(&r, &[(K::TagDigestMismatch, "bag-info.txt")]);
}

#[test]
fn wrong_payload_oxum() {
    let files = sample_files();
    let bag = TestBag::new(&files, &[Sha256]);
    let info = String::from_utf8(bag.read("bag-info.txt")).unwrap();
    let oxum = info
        .lines()
        .find(|l| l.starts_with("Payload-Oxum"))
        .unwrap()
        .to_string();
    bag.write(
        "bag-info.txt",
        info.replace(&oxum, "Payload-Oxum: 70021.5").as_bytes(),
    );
    bag.write_tagmanifest(Sha256);
    for mode in [
        VerifyMode::Full,
        VerifyMode::Fast,
        VerifyMode::CompletenessOnly,
    ] {
        let r = check(&bag.root, mode);
        assert_only(&r, &[(K::PayloadOxumMismatch, "bag-info.txt")]);
        assert!(r.problems[0].detail.contains("5 files"), "{r}");
    }
    bag.write(
        "bag-info.txt",
        info.replace(&oxum, "Payload-Oxum: lots").as_bytes(),
    );
    bag.write_tagmanifest(Sha256);
    assert_only(&bag.verify(), &[(K::MalformedBagInfo, "bag-info.txt")]);
}

#[test]
fn fast_mode_without_oxum_is_not_a_pass() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    bag.write(
        "bag-info.txt",
        b"Source-Organization: Test\nthis line is broken\n",
    );
    bag.write_tagmanifest(Sha256);
    assert_only(
        &check(&bag.root, VerifyMode::Fast),
        &[
            (K::MissingPayloadOxum, "bag-info.txt"),
            (K::MalformedBagInfo, "bag-info.txt"),
        ],
    );
    assert_only(&bag.verify(), &[(K::MalformedBagInfo, "bag-info.txt")]);
}

#[test]
fn missing_bagit_txt() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    bag.remove("bagit.txt");
    let r = bag.verify();
    assert_eq!(r.status, Status::Invalid);
    assert_only(
        &r,
        &[
            (K::MissingBagitTxt, "bagit.txt"),
            (K::MissingTagFile, "bagit.txt"),
        ],
    );
    assert_only(
        &check(&bag.root, VerifyMode::Fast),
        &[(K::MissingBagitTxt, "bagit.txt")],
    );
}

#[test]
fn malformed_and_unsupported_bagit_txt() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    bag.write("bagit.txt", b"BagIt-Version: 1.0\n");
    bag.write_tagmanifest(Sha256);
    assert_only(&bag.verify(), &[(K::MalformedBagitTxt, "bagit.txt")]);
    bag.write(
        "bagit.txt",
        b"BagIt-Version: 2.0\nTag-File-Character-Encoding: UTF-8\n",
    );
    bag.write_tagmanifest(Sha256);
    assert_only(&bag.verify(), &[(K::UnsupportedVersion, "bagit.txt")]);
    bag.write(
        "bagit.txt",
        b"BagIt-Version: 1.0\nTag-File-Character-Encoding: EBCDIC-Klingon\n",
    );
    bag.write_tagmanifest(Sha256);
    assert_only(&bag.verify(), &[(K::UnknownEncoding, "bagit.txt")]);
}

#[test]
fn ferry_partial_folder_means_export_in_progress() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    bag.write(".ferry-partial/state.json", b"{}");
    bag.remove("manifest-sha256.txt");
    let r = bag.verify();
    assert_eq!(r.status, Status::Incomplete);
    assert_only(&r, &[(K::ExportInProgress, ".ferry-partial")]);
    assert!(r.problems[0].detail.contains("rerun"), "{r}");
    // An empty staging folder counts too.
    fs::remove_file(bag.path(".ferry-partial/state.json")).unwrap();
    assert_eq!(bag.verify().status, Status::Incomplete);
}

#[test]
fn partial_zip_means_export_in_progress_and_a_missing_path_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let zip = tmp.path().join("export.zip");
    match verify(&zip, &VerifyOptions::default()) {
        Err(VerifyError::Open(e)) => assert!(e.to_string().contains("no such file"), "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    fs::write(
        tmp.path().join("export.zip.partial"),
        b"PK\x03\x04 half a zip",
    )
    .unwrap();
    let r = check(&zip, VerifyMode::Full);
    assert_eq!(r.status, Status::Incomplete);
    assert_eq!(r.problems[0].kind, K::ExportInProgress);
    assert!(r.problems[0].detail.contains("rerun"), "{r}");
    let r = check(&tmp.path().join("export.zip.partial"), VerifyMode::Full);
    assert_eq!(r.status, Status::Incomplete);
}

#[test]
fn no_payload_manifest_is_incomplete() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    bag.remove("manifest-sha256.txt");
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_eq!(r.status, Status::Incomplete, "{r}");
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].kind, K::NoPayloadManifest);
}

#[test]
fn unsupported_algorithm_is_a_warning_unless_it_is_the_only_one() {
    let files = sample_files();
    let bag = TestBag::new(&files, &[Sha256]);
    bag.write("manifest-blake3.txt", b"abcdef data/a.txt\n");
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    assert_warning(&r, K::UnsupportedAlgorithm, "manifest-blake3.txt");
    assert_eq!(r.algorithms, ["sha256", "blake3"]);
    bag.remove("manifest-sha256.txt");
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_eq!(r.status, Status::Invalid);
    assert_eq!(r.problems[0].kind, K::NoSupportedManifest, "{r}");
}

#[test]
fn malformed_duplicate_outside_and_unsafe_manifest_lines() {
    let files = sample_files();
    let bag = TestBag::new(&files, &[Sha256]);
    let mut text = String::from_utf8(bag.read("manifest-sha256.txt")).unwrap();
    let secret = fs::read("/etc/passwd").unwrap_or_default();
    let d = digest(Sha256, &secret);
    text.push_str("no-separator-here\n");
    text.push_str(&format!("{} data/a.txt\n", digest(Sha256, b"hello, bag\n")));
    text.push_str(&format!("{d} bag-info.txt\n"));
    text.push_str(&format!("{d} /etc/passwd\n"));
    text.push_str(&format!("{d} data/../../../etc/passwd\n"));
    text.push_str(&format!("{d} ~/.ssh/id_rsa\n"));
    text.push_str(&format!("{d} C:/Windows/win.ini\n"));
    text.push_str("xyz data/sub/deeper/c.txt\n");
    bag.write("manifest-sha256.txt", text.as_bytes());
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_only(
        &r,
        &[
            (K::MalformedManifestLine, "manifest-sha256.txt"),
            (K::MalformedManifestLine, "manifest-sha256.txt"),
            (K::DuplicateEntry, "data/a.txt"),
            (K::OutsidePayload, "bag-info.txt"),
            (K::UnsafePath, "/etc/passwd"),
            (K::UnsafePath, "data/../../../etc/passwd"),
            (K::UnsafePath, "~/.ssh/id_rsa"),
            (K::UnsafePath, "C:/Windows/win.ini"),
            (K::DuplicateEntry, "data/sub/deeper/c.txt"),
        ],
    );
    // Nothing outside the bag was read: only the payload and tag files were hashed.
    let payload: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let tags: u64 = ["bagit.txt", "bag-info.txt", "manifest-sha256.txt"]
        .iter()
        .map(|f| bag.read(f).len() as u64)
        .sum();
    assert_eq!(r.counts.bytes_hashed, payload + tags);
}

#[test]
fn symlink_in_data_pointing_outside_is_reported_and_never_read() {
    let mut files = sample_files();
    let bag = TestBag::empty();
    let outside = bag.tmp.path().join("secret.txt");
    fs::write(&outside, b"top secret").unwrap();
    std::os::unix::fs::symlink(&outside, bag.path("data/link.txt")).unwrap();
    std::os::unix::fs::symlink("/etc", bag.path("data/etc")).unwrap();
    // The manifest claims the link with the digest of its target, as a naive tool would write.
    files.push(("data/link.txt", b"top secret".to_vec()));
    for (rel, bytes) in &files[..4] {
        bag.write(rel, bytes);
    }
    bag.write(
        "bagit.txt",
        b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
    );
    bag.write_manifests(&files, &[Sha256]);
    let r = bag.verify();
    assert_eq!(r.status, Status::Invalid);
    assert_only(
        &r,
        &[
            (K::Symlink, "data/link.txt"),
            (K::Symlink, "data/etc"),
            (K::MissingFile, "data/link.txt"),
        ],
    );
    let payload: u64 = files[..4].iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(
        r.counts.bytes_hashed, payload,
        "the link's target must not be read"
    );
}

#[test]
fn percent_encoded_names_with_newline_and_percent() {
    let files = vec![
        ("data/line\nbreak.txt", b"two\nlines".to_vec()),
        ("data/100%.txt", b"percent".to_vec()),
        ("data/cr\r.txt", b"carriage".to_vec()),
        ("data/plain.txt", b"plain".to_vec()),
    ];
    let bag = TestBag::new(&files, &[Sha256, Sha512]);
    let manifest = String::from_utf8(bag.read("manifest-sha256.txt")).unwrap();
    assert!(manifest.contains("data/line%0Abreak.txt") && manifest.contains("data/100%25.txt"));
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    flip_bit(&bag.path("data/line\nbreak.txt"), 0);
    let r = bag.verify();
    assert_problem(&r, K::DigestMismatch, "data/line\nbreak.txt");
    // One problem per line in the human report, even for a name with a newline.
    assert!(r.to_string().contains("data/line\\nbreak.txt"), "{r}");
}

#[test]
fn nfd_on_disk_nfc_in_manifest_is_a_warning() {
    let nfc = "data/caf\u{e9}.txt";
    let nfd = "data/cafe\u{301}.txt";
    let bag = TestBag::new(&[(nfc, b"coffee".to_vec())], &[Sha256]);
    fs::rename(bag.path(nfc), bag.path(nfd)).unwrap();
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    assert_warning(&r, K::NormalizationMismatch, nfc);
    assert_eq!(
        r.counts.bytes_hashed as usize,
        6 + bag.read("bagit.txt").len()
            + bag.read("bag-info.txt").len()
            + bag.read("manifest-sha256.txt").len()
    );
}

#[test]
fn fetch_txt_with_an_absent_file_is_incomplete() {
    let files = sample_files();
    let bag = TestBag::new(&files, &[Sha256]);
    bag.remove("data/sub/b.bin");
    bag.write(
        "fetch.txt",
        b"https://example.org/b.bin 70000 data/sub/b.bin\nhttps://example.org/a.txt - data/a.txt\nnonsense\n",
    );
    let info = "Payload-Oxum: 70021.4\n";
    bag.write("bag-info.txt", info.as_bytes());
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_only(
        &r,
        &[
            (K::FetchPending, "data/sub/b.bin"),
            (K::MalformedFetchLine, "fetch.txt"),
            (K::PayloadOxumMismatch, "bag-info.txt"),
        ],
    );
    assert_eq!(r.fetch.len(), 2);
    assert!(!r.fetch[0].present && r.fetch[1].present);
    assert_eq!(r.fetch[0].length, Some(70_000));
    assert_eq!(r.fetch[0].url, "https://example.org/b.bin");

    // Well-formed and with Payload-Oxum of what is present: only incomplete.
    bag.write(
        "fetch.txt",
        b"https://example.org/b.bin 70000 data/sub/b.bin\n",
    );
    bag.write("bag-info.txt", b"Source-Organization: Test\n");
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_eq!(r.status, Status::Incomplete, "{r}");
    assert_only(&r, &[(K::FetchPending, "data/sub/b.bin")]);
}

#[test]
fn items_jsonl_must_agree_with_manifests() {
    let files = sample_files();
    let bag = TestBag::ferry(&files, &[Sha256, Sha512]);
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");

    let text = String::from_utf8(bag.read("ferry/items.jsonl")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // a.txt: a wrong sha256; c.txt: no record; empty: two records; a ghost path; garbage.
    let good = digest(Sha256, b"hello, bag\n");
    lines[0] = lines[0].replace(&good, &"1".repeat(64));
    let c = lines
        .iter()
        .position(|l| l.contains("deeper/c.txt"))
        .unwrap();
    lines.remove(c);
    let empty = lines
        .iter()
        .find(|l| l.contains("data/empty"))
        .unwrap()
        .clone();
    lines.push(empty);
    lines.push(r#"{"path":"data/ghost.txt","size":1,"digests":{}}"#.into());
    lines.push("{not json".into());
    lines.push(r#"{"path":42}"#.into());
    lines.push("[1,2]".into());
    bag.write("ferry/items.jsonl", (lines.join("\n") + "\n").as_bytes());
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_only(
        &r,
        &[
            (K::ItemsMismatch, "data/a.txt"),
            (K::ItemsMissingRecord, "data/sub/deeper/c.txt"),
            (K::ItemsDuplicateRecord, "data/empty"),
            (K::ItemsUnknownPath, "data/ghost.txt"),
            (K::MalformedItemsLine, "ferry/items.jsonl"),
            (K::MalformedItemsLine, "ferry/items.jsonl"),
            (K::MalformedItemsLine, "ferry/items.jsonl"),
        ],
    );
}

#[test]
fn items_jsonl_for_an_unlisted_file_or_a_bag_without_manifest() {
    let files = sample_files();
    let bag = TestBag::ferry(&files, &[Sha256]);
    // The manifest forgets a file items.jsonl knows: one problem, not three.
    bag.write_manifests(&files[1..], &[Sha256]);
    bag.write_tagmanifest(Sha256);
    assert_only(&bag.verify(), &[(K::UnlistedFile, "data/a.txt")]);
    // No manifest at all (an unfinished bag): items.jsonl has nothing to be held against.
    bag.remove("manifest-sha256.txt");
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_eq!(r.status, Status::Incomplete, "{r}");
    assert_only(&r, &[(K::NoPayloadManifest, "")]);
}

#[test]
fn items_jsonl_size_wrong_for_an_intact_file() {
    let files = sample_files();
    let bag = TestBag::ferry(&files, &[Sha256]);
    let text = String::from_utf8(bag.read("ferry/items.jsonl")).unwrap();
    bag.write(
        "ferry/items.jsonl",
        text.replace("\"size\":10,", "\"size\":11,").as_bytes(),
    );
    bag.write_tagmanifest(Sha256);
    let r = bag.verify();
    assert_only(&r, &[(K::ItemsMismatch, "data/sub/deeper/c.txt")]);
}

#[test]
fn ferry_tag_files_should_be_in_a_tag_manifest() {
    let bag = TestBag::ferry(&sample_files(), &[Sha256]);
    bag.write("ferry/failures.jsonl", b"");
    let r = bag.verify();
    assert_eq!(r.status, Status::Valid, "{r}");
    assert_warning(&r, K::UnlistedTagFile, "ferry/failures.jsonl");
    // Other unlisted tag files are fine (RFC 8493 §2.2.1).
    bag.write("my-notes.txt", b"anything");
    assert_eq!(bag.verify().warnings.len(), 1);
}

#[test]
fn tag_manifest_listing_payload_or_missing_files() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    let mut text = String::from_utf8(bag.read("tagmanifest-sha256.txt")).unwrap();
    text.push_str(&format!("{} data/a.txt\n", digest(Sha256, b"hello, bag\n")));
    text.push_str(&format!("{} ferry/gone.json\n", digest(Sha256, b"")));
    bag.write("tagmanifest-sha256.txt", text.as_bytes());
    let r = bag.verify();
    assert_only(
        &r,
        &[
            (K::TagManifestListsPayload, "data/a.txt"),
            (K::MissingTagFile, "ferry/gone.json"),
        ],
    );
}

#[test]
fn no_data_folder() {
    let bag = TestBag::new(&[], &[Sha256]);
    assert_eq!(bag.verify().status, Status::Valid);
    fs::remove_dir(bag.path("data")).unwrap();
    assert_only(&bag.verify(), &[(K::MissingPayloadDir, "data")]);
}

#[test]
fn tag_file_that_is_not_valid_utf8() {
    let files = sample_files();
    let bag = TestBag::new(&files, &[Sha256]);
    let mut info = bag.read("bag-info.txt");
    info.extend_from_slice(b"Contact-Name: \xff\xfe\n");
    bag.write("bag-info.txt", &info);
    bag.write_tagmanifest(Sha256);
    assert_only(&bag.verify(), &[(K::TagFileEncoding, "bag-info.txt")]);
}
