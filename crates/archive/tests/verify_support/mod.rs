//! Builds bags by hand for the verifier's tests: payload files, manifests, bag-info, tag
//! manifests, items.jsonl and zips, each written directly so a test can break exactly one thing.
//! Nothing here uses a bag writer, so the verifier is never tested against itself.

#![allow(dead_code, unused_imports)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_archive::tagfiles::encode_manifest_path;
use ferry_archive::verify::{verify, ProblemKind, VerifyMode, VerifyOptions, VerifyReport};
use ferry_core::{DigestAlgorithm, MultiHasher};

pub use DigestAlgorithm::{Md5, Sha256, Sha512};

/// Hex digest of `bytes`.
pub fn digest(alg: DigestAlgorithm, bytes: &[u8]) -> String {
    let mut h = MultiHasher::new([alg]);
    h.update(bytes);
    h.finish().remove(&alg).unwrap()
}

/// Writes `bytes` at `root/rel`, creating folders.
pub fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// A temporary folder holding one bag at `root` (`<tmp>/bag`).
pub struct TestBag {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
}

/// The payload most tests use.
pub fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("data/a.txt", b"hello, bag\n".to_vec()),
        (
            "data/sub/b.bin",
            (0..70_000u32).map(|i| (i % 251) as u8).collect(),
        ),
        ("data/sub/deeper/c.txt", b"third file".to_vec()),
        ("data/empty", Vec::new()),
    ]
}

impl TestBag {
    /// An empty bag folder.
    pub fn empty() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("bag");
        fs::create_dir_all(root.join("data")).unwrap();
        TestBag { tmp, root }
    }

    /// A complete BagIt 1.0 bag of `files` with payload manifests for `algs`, bag-info with
    /// Payload-Oxum and a sha256 tag manifest.
    pub fn new(files: &[(&str, Vec<u8>)], algs: &[DigestAlgorithm]) -> Self {
        let bag = TestBag::empty();
        for (rel, bytes) in files {
            bag.write(rel, bytes);
        }
        bag.write(
            "bagit.txt",
            b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
        );
        bag.write_manifests(files, algs);
        bag.write_bag_info(files);
        bag.write_tagmanifest(Sha256);
        bag
    }

    /// Like [`TestBag::new`], plus `ferry/items.jsonl` with one record per file (and one
    /// skipped item without a path), listed in the tag manifest.
    pub fn ferry(files: &[(&str, Vec<u8>)], algs: &[DigestAlgorithm]) -> Self {
        let bag = TestBag::new(files, algs);
        let mut jsonl = String::new();
        for (rel, bytes) in files {
            let digests: serde_json::Map<String, serde_json::Value> = algs
                .iter()
                .map(|a| (a.name().to_string(), digest(*a, bytes).into()))
                .collect();
            let record = serde_json::json!({
                "path": rel, "size": bytes.len(), "digests": digests,
                "type": "file", "source": {"system": "fs", "id": rel},
            });
            jsonl.push_str(&record.to_string());
            jsonl.push('\n');
        }
        jsonl.push_str(r#"{"path":null,"size":12,"digests":{},"skipped":"too_large"}"#);
        jsonl.push('\n');
        bag.write("ferry/items.jsonl", jsonl.as_bytes());
        bag.write("ferry/run.json", b"{\"format\":\"ferry-items/1\"}\n");
        bag.write_tagmanifest(Sha256);
        bag
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) {
        write(&self.root, rel, bytes);
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap()
    }

    pub fn remove(&self, rel: &str) {
        fs::remove_file(self.path(rel)).unwrap();
    }

    /// `manifest-<alg>.txt` for `files`, paths percent-encoded as RFC 8493 asks.
    pub fn write_manifests(&self, files: &[(&str, Vec<u8>)], algs: &[DigestAlgorithm]) {
        for alg in algs {
            let mut text = String::new();
            for (rel, bytes) in files {
                text.push_str(&format!(
                    "{}  {}\n",
                    digest(*alg, bytes),
                    encode_manifest_path(rel)
                ));
            }
            self.write(&format!("manifest-{}.txt", alg.name()), text.as_bytes());
        }
    }

    pub fn write_bag_info(&self, files: &[(&str, Vec<u8>)]) {
        let octets: usize = files.iter().map(|(_, b)| b.len()).sum();
        let info = format!(
            "Source-Organization: Test\nBagging-Date: 2026-11-28\nPayload-Oxum: {octets}.{}\n",
            files.len()
        );
        self.write("bag-info.txt", info.as_bytes());
    }

    /// (Re)writes `tagmanifest-<alg>.txt` over every file outside `data/` except tag manifests.
    pub fn write_tagmanifest(&self, alg: DigestAlgorithm) {
        let mut text = String::new();
        for rel in self.tag_files() {
            text.push_str(&format!("{} {}\n", digest(alg, &self.read(&rel)), rel));
        }
        self.write(&format!("tagmanifest-{}.txt", alg.name()), text.as_bytes());
    }

    fn tag_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let rel = e
                    .path()
                    .strip_prefix(&self.root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if e.file_type().unwrap().is_dir() {
                    if rel != "data" {
                        stack.push(e.path());
                    }
                } else if !rel.starts_with("tagmanifest-") {
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    }

    /// Writes the bag into `<tmp>/<zip_name>` with `top` as its top folder.
    pub fn zip(&self, zip_name: &str, top: &str, method: zip::CompressionMethod) -> PathBuf {
        let out = self.tmp.path().join(zip_name);
        zip_folder(&self.root, &out, top, method, &[]);
        out
    }

    pub fn verify(&self) -> VerifyReport {
        check(&self.root, VerifyMode::Full)
    }
}

/// Zips `root` under `top/`, plus `extra` raw entries (name, bytes) written as they are.
pub fn zip_folder(
    root: &Path,
    out: &Path,
    top: &str,
    method: zip::CompressionMethod,
    extra: &[(&str, &[u8])],
) {
    let mut zw = zip::ZipWriter::new(fs::File::create(out).unwrap());
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort();
    for (i, path) in files.iter().enumerate() {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // Every third entry gets zip64 extra fields, so the zip64 code path is read too.
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(i % 3 == 0);
        zw.start_file(format!("{top}/{rel}"), opts).unwrap();
        zw.write_all(&fs::read(path).unwrap()).unwrap();
    }
    for (name, bytes) in extra {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zw.start_file(*name, opts).unwrap();
        zw.write_all(bytes).unwrap();
    }
    zw.finish().unwrap();
}

pub fn check(path: &Path, mode: VerifyMode) -> VerifyReport {
    let report = verify(path, &VerifyOptions { mode, threads: 2 }).unwrap();
    // Every report must serialise and display; print it for failing tests.
    serde_json::to_string(&report).unwrap();
    println!("{report}");
    report
}

/// The (kind, path) of every problem.
pub fn problems(report: &VerifyReport) -> Vec<(ProblemKind, Option<String>)> {
    report
        .problems
        .iter()
        .map(|p| (p.kind, p.path.clone()))
        .collect()
}

pub fn warnings(report: &VerifyReport) -> Vec<(ProblemKind, Option<String>)> {
    report
        .warnings
        .iter()
        .map(|p| (p.kind, p.path.clone()))
        .collect()
}

/// Asserts that a problem of `kind` names `path`.
#[track_caller]
pub fn assert_problem(report: &VerifyReport, kind: ProblemKind, path: &str) {
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == kind && p.path.as_deref() == Some(path)),
        "expected {kind} on {path:?}, got:\n{report}"
    );
}

#[track_caller]
pub fn assert_warning(report: &VerifyReport, kind: ProblemKind, path: &str) {
    assert!(
        report
            .warnings
            .iter()
            .any(|p| p.kind == kind && p.path.as_deref() == Some(path)),
        "expected warning {kind} on {path:?}, got:\n{report}"
    );
}

/// Asserts the problems are exactly these (kind, path) pairs, in any order.
#[track_caller]
pub fn assert_only(report: &VerifyReport, expected: &[(ProblemKind, &str)]) {
    let mut got: Vec<(ProblemKind, String)> = report
        .problems
        .iter()
        .map(|p| (p.kind, p.path.clone().unwrap_or_default()))
        .collect();
    let mut want: Vec<(ProblemKind, String)> =
        expected.iter().map(|(k, p)| (*k, p.to_string())).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "\n{report}");
}

/// Flips one bit of a file in place.
pub fn flip_bit(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    fs::write(path, bytes).unwrap();
}
