//! Interoperability with bagit-python, the reference validator: a bag it makes must verify, and
//! a flipped bit in it must be found. Skipped, with a notice, where python3 or bagit is absent
//! (`pip install bagit==1.9.0`).

mod verify_support;

use std::process::Command;

use ferry_archive::verify::{ProblemKind as K, Status, VerifyMode};
use verify_support::*;

fn bagit_python() -> bool {
    Command::new("python3")
        .args(["-c", "import bagit"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn bag_made_by_bagit_python_verifies_and_a_flipped_bit_is_found() {
    if !bagit_python() {
        eprintln!(
            "SKIPPED: python3 with the bagit module is not installed (pip install bagit==1.9.0)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("from-bagit-python");
    for (rel, bytes) in sample_files() {
        write(&dir, rel.trim_start_matches("data/"), &bytes);
    }
    write(
        &dir,
        "gr\u{e6}sk/\u{3b1}\u{3b2}\u{3b3}.txt",
        b"unicode names",
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "bagit",
            "--quiet",
            "--sha256",
            "--sha512",
            "--contact-name",
            "Test",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bagit.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let r = check(&dir, VerifyMode::Full);
    assert_eq!(r.status, Status::Valid, "{r}");
    assert!(r.warnings.is_empty(), "{r}");
    assert_eq!(r.bagit_version.as_deref(), Some("0.97"));
    assert_eq!(r.algorithms, ["sha256", "sha512"]);
    assert_eq!(r.tag_algorithms, ["sha256", "sha512"]);
    assert_eq!(r.counts.payload_files, 5);
    assert_eq!(check(&dir, VerifyMode::Fast).status, Status::Valid);

    flip_bit(&dir.join("data/sub/b.bin"), 12_345);
    let r = check(&dir, VerifyMode::Full);
    assert_eq!(r.status, Status::Invalid);
    assert_only(
        &r,
        &[
            (K::DigestMismatch, "data/sub/b.bin"),
            (K::DigestMismatch, "data/sub/b.bin"),
        ],
    );
}
