//! Zip bags: the reader's layout rules, unsafe entries, concurrent positioned reads, and the
//! verifier on valid and corrupted zips.

mod verify_support;

use std::fs;
use std::io::Read;

use ferry_archive::reader::{BagLocation, BagReader, ReadError, ReadIssueKind};
use ferry_archive::verify::{
    verify, ProblemKind as K, Status, VerifyError, VerifyMode, VerifyOptions,
};
use verify_support::*;
use zip::CompressionMethod::{Deflated, Stored};

#[test]
fn valid_zip_bags_stored_and_deflated() {
    let bag = TestBag::ferry(&sample_files(), &[Sha256, Sha512]);
    for method in [Stored, Deflated] {
        let zip = bag.zip("export.zip", "export", method);
        let r = check(&zip, VerifyMode::Full);
        assert_eq!(r.status, Status::Valid, "{method:?}: {r}");
        assert!(r.warnings.is_empty(), "{r}");
        assert_eq!(r.storage, "zip");
        assert_eq!(r.counts.payload_files, 4);
        assert!(r.counts.bytes_hashed > 70_000);
    }
}

#[test]
fn corrupted_zip_entries() {
    let files = sample_files();
    let bag = TestBag::new(&files, &[Sha256]);
    // A flipped bit inside a stored entry: its digest (and its CRC) no longer match.
    let zip = bag.zip("export.zip", "export", Stored);
    let mut bytes = fs::read(&zip).unwrap();
    let needle: Vec<u8> = (0..64u32).map(|i| (i % 251) as u8).collect();
    let at = bytes
        .windows(64)
        .position(|w| w == needle.as_slice())
        .unwrap()
        + 30_000;
    bytes[at] ^= 0x10;
    fs::write(&zip, &bytes).unwrap();
    let r = check(&zip, VerifyMode::Full);
    assert_only(&r, &[(K::DigestMismatch, "data/sub/b.bin")]);
    assert!(r.problems[0].detail.contains("CRC-32"), "{r}");

    // A deflated entry damaged: inflating fails or the digest differs; either way it is named.
    let zip = bag.zip("export.zip", "export", Deflated);
    let mut bytes = fs::read(&zip).unwrap();
    let name = b"export/data/sub/b.bin";
    let header = bytes.windows(name.len()).position(|w| w == name).unwrap();
    bytes[header + name.len() + 200] ^= 0xff;
    fs::write(&zip, &bytes).unwrap();
    let r = check(&zip, VerifyMode::Full);
    assert_eq!(r.status, Status::Invalid);
    assert_eq!(r.problems.len(), 1, "{r}");
    assert_eq!(r.problems[0].path.as_deref(), Some("data/sub/b.bin"));
    assert!(
        matches!(r.problems[0].kind, K::DigestMismatch | K::ReadError),
        "{r}"
    );
}

#[test]
fn zip_without_a_payload_file() {
    let files = sample_files();
    let bag = TestBag::new(&files, &[Sha256]);
    bag.remove("data/a.txt");
    let zip = bag.zip("export.zip", "export", Deflated);
    let r = check(&zip, VerifyMode::Full);
    assert_only(
        &r,
        &[
            (K::MissingFile, "data/a.txt"),
            (K::PayloadOxumMismatch, "bag-info.txt"),
        ],
    );
}

#[test]
fn unsafe_zip_entries_are_reported_and_never_opened() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    let zip = bag.tmp.path().join("export.zip");
    zip_folder(
        &bag.root,
        &zip,
        "export",
        Deflated,
        &[
            ("export/../evil.txt", b"escape"),
            ("../evil.txt", b"escape"),
            ("/etc/cron.d/evil", b"absolute"),
            ("C:/evil.txt", b"drive"),
            ("export\\..\\..\\evil.txt", b"backslashes"),
        ],
    );
    let reader = BagReader::open(&zip).unwrap();
    let unsafe_entries: Vec<&str> = reader
        .issues()
        .iter()
        .filter(|i| i.kind == ReadIssueKind::UnsafeZipEntry)
        .map(|i| i.path.as_str())
        .collect();
    assert_eq!(unsafe_entries.len(), 5, "{:?}", reader.issues());
    assert!(reader.files().all(|f| !f.path.contains("evil")));
    let r = check(&zip, VerifyMode::Full);
    assert_eq!(r.status, Status::Invalid);
    assert_problem(&r, K::UnsafeZipEntry, "../evil.txt");
    assert_problem(&r, K::UnsafeZipEntry, "export/../evil.txt");
    assert_eq!(r.problems.len(), 5, "{r}");
}

#[test]
fn zip_layout_rules() {
    let bag = TestBag::new(&sample_files(), &[Sha256]);
    // Named differently from the zip: a warning only.
    let zip = bag.zip("export.zip", "something-else", Stored);
    let r = check(&zip, VerifyMode::Full);
    assert_eq!(r.status, Status::Valid, "{r}");
    assert_warning(&r, K::ZipFolderName, &zip.display().to_string());

    // A second top folder and a loose file: a problem, but the bag itself is still checked.
    let zip = bag.tmp.path().join("two.zip");
    zip_folder(
        &bag.root,
        &zip,
        "two",
        Stored,
        &[("__MACOSX/._x", b"junk"), ("README", b"hi")],
    );
    let reader = BagReader::open(&zip).unwrap();
    assert_eq!(
        reader.location(),
        &BagLocation::Zip {
            archive: zip.clone(),
            top: "two".into()
        }
    );
    let r = check(&zip, VerifyMode::Full);
    assert_eq!(r.status, Status::Invalid);
    assert_eq!(
        r.problems.iter().filter(|p| p.kind == K::ZipLayout).count(),
        2,
        "{r}"
    );
    assert_eq!(r.problems.len(), 2, "{r}");

    // Files at the top level with no folder: read as the bag, reported as a layout problem.
    let zip = bag.tmp.path().join("flat.zip");
    zip_folder(&bag.root, &zip, ".", Stored, &[]);
    let r = check(&zip, VerifyMode::Full);
    assert_only(&r, &[(K::ZipLayout, zip.to_str().unwrap())]);
}

#[test]
fn not_a_zip_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bag.zip");
    fs::write(&path, b"this is not a zip archive at all").unwrap();
    match verify(&path, &VerifyOptions::default()) {
        Err(VerifyError::Open(ReadError::NotAZip { .. })) => {}
        other => panic!("expected NotAZip, got {other:?}"),
    }
}

#[test]
fn zip_entries_stream_from_many_threads_at_once() {
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("data/f{i:02}.bin"),
                (0..(i * 5000)).map(|b| (b * 7 + i) as u8).collect(),
            )
        })
        .collect();
    let files_ref: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let bag = TestBag::new(&files_ref, &[Sha256]);
    let zip = bag.zip("many.zip", "many", Deflated);
    let reader = BagReader::open(&zip).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let reader = reader.clone();
            let files = &files;
            s.spawn(move || {
                for (path, bytes) in files.iter().skip(t).step_by(2) {
                    let mut got = Vec::new();
                    reader
                        .open_path(path)
                        .unwrap()
                        .read_to_end(&mut got)
                        .unwrap();
                    assert_eq!(&got, bytes, "{path}");
                }
            });
        }
    });
    assert_eq!(
        reader.read_tag_file("bagit.txt").unwrap(),
        bag.read("bagit.txt")
    );
    assert!(matches!(
        reader.read_tag_file("nope.txt"),
        Err(ReadError::NoSuchFile(_))
    ));
    assert_eq!(reader.ids_with_prefix("data/").len(), 40);
    assert!(reader.has_top_dir("data"));
}

#[test]
fn item_records_stream_line_by_line() {
    let bag = TestBag::ferry(&sample_files(), &[Sha256]);
    let mut text = bag.read("ferry/items.jsonl");
    text.extend_from_slice(b"\n  \n{broken\n");
    bag.write("ferry/items.jsonl", &text);
    for path in [bag.root.clone(), bag.zip("export.zip", "export", Deflated)] {
        let reader = BagReader::open(&path).unwrap();
        let records: Vec<_> = reader.item_records().unwrap().unwrap().collect();
        assert_eq!(records.len(), 6);
        let (line, first) = records[0].as_ref().unwrap();
        assert_eq!(*line, 1);
        assert_eq!(first["path"], "data/a.txt");
        let err = records[5].as_ref().unwrap_err();
        assert_eq!(err.line, 8);
    }
    let plain = TestBag::new(&sample_files(), &[Sha256]);
    assert!(BagReader::open(&plain.root)
        .unwrap()
        .item_records()
        .unwrap()
        .is_none());
}
