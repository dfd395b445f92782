//! Throughput and memory of the verifier, against its targets. Ignored by default (they write
//! gigabytes); run in release:
//!
//! ```text
//! cargo test --release -p ferry-archive --test verify_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - big files: 4 × 512 MiB, warm page cache, 2 threads, at ≥ 80 % of twice the single-core
//!   sha256 speed;
//! - small files: 20,000 × 4 KiB, against `bagit.py --validate --processes 2` when installed;
//! - many files: peak memory of a completeness check over FERRY_BENCH_FILES (default 1,000,000)
//!   empty files.

mod verify_support;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ferry_archive::verify::{verify, Status, VerifyMode, VerifyOptions};
use ferry_core::{DigestAlgorithm, MultiHasher};
use verify_support::*;

const MIB: usize = 1 << 20;

fn max_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

fn bagit_txt(root: &Path) {
    write(
        root,
        "bagit.txt",
        b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
    );
}

/// sha256 of 512 MiB in memory on one core, in MB/s (best of three, like the verify runs).
fn single_core_sha256() -> f64 {
    let buf: Vec<u8> = (0..512 * MIB).map(|i| (i * 31) as u8).collect();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let mut h = MultiHasher::new([DigestAlgorithm::Sha256]);
        for chunk in buf.chunks(256 << 10) {
            h.update(chunk);
        }
        h.finish();
        best = best.min(start.elapsed().as_secs_f64());
    }
    buf.len() as f64 / best / 1e6
}

#[test]
#[ignore]
fn big_files_reach_the_cores_hashing_speed() {
    let single = single_core_sha256();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("big");
    let mut manifest = String::new();
    for i in 0..4 {
        let rel = format!("data/big{i}.bin");
        let path = root.join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut out = BufWriter::new(fs::File::create(&path).unwrap());
        let mut h = MultiHasher::new([DigestAlgorithm::Sha256]);
        let chunk: Vec<u8> = (0..MIB).map(|b| (b * 7 + i) as u8).collect();
        for _ in 0..512 {
            h.update(&chunk);
            out.write_all(&chunk).unwrap();
        }
        out.flush().unwrap();
        let d = h.finish().remove(&DigestAlgorithm::Sha256).unwrap();
        manifest.push_str(&format!("{d}  {rel}\n"));
    }
    write(&root, "manifest-sha256.txt", manifest.as_bytes());
    bagit_txt(&root);
    // Warm the cache once, then measure the best of three runs.
    let opts = VerifyOptions {
        mode: VerifyMode::Full,
        threads: 2,
    };
    verify(&root, &opts).unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let r = verify(&root, &opts).unwrap();
        best = best.min(start.elapsed().as_secs_f64());
        assert_eq!(r.status, Status::Valid, "{r}");
    }
    let speed = (2048 * MIB) as f64 / best / 1e6;
    let target = 0.8 * 2.0 * single;
    println!(
        "big files: 2 GiB in {best:.2} s = {speed:.0} MB/s on 2 threads; single-core sha256 {single:.0} MB/s; target {target:.0} MB/s ({:.0} % of 2× single core)",
        100.0 * speed / (2.0 * single)
    );
    assert!(
        speed >= target,
        "{speed:.0} MB/s is below the {target:.0} MB/s target"
    );
}

#[test]
#[ignore]
fn small_files_against_bagit_python() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("small");
    let n = 20_000;
    let mut files = Vec::with_capacity(n);
    for i in 0..n {
        let rel = format!("data/d{:02}/f{i:05}.bin", i % 50);
        let bytes: Vec<u8> = (0..4096).map(|b| (b * 13 + i) as u8).collect();
        files.push((rel, bytes));
    }
    let files_ref: Vec<(&str, Vec<u8>)> =
        files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let bag = TestBag::empty();
    for (rel, bytes) in &files_ref {
        write(&root, rel, bytes);
    }
    drop(bag);
    // A bag as bagit-python itself writes it (sha256 and sha512 manifests, tag manifests), so
    // both tools do the same work. Built by hand when bagit-python is absent.
    let have_python = Command::new("python3")
        .args(["-c", "import bagit"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have_python {
        let moved = tmp.path().join("small-bag");
        fs::rename(root.join("data"), &moved).unwrap();
        fs::remove_dir_all(&root).unwrap();
        fs::rename(&moved, &root).unwrap();
        let ok = Command::new("python3")
            .args([
                "-m",
                "bagit",
                "--quiet",
                "--processes",
                "2",
                "--sha256",
                "--sha512",
            ])
            .arg(&root)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    } else {
        let t = TestBag {
            tmp: tempfile::tempdir().unwrap(),
            root: root.clone(),
        };
        bagit_txt(&root);
        t.write_manifests(&files_ref, &[Sha256, Sha512]);
        std::mem::forget(t);
    }
    let opts = VerifyOptions {
        mode: VerifyMode::Full,
        threads: 2,
    };
    verify(&root, &opts).unwrap();
    let start = Instant::now();
    let r = verify(&root, &opts).unwrap();
    let ferry = start.elapsed().as_secs_f64();
    assert_eq!(r.status, Status::Valid, "{r}");
    println!("small files: ferry verifies 20,000 × 4 KiB (sha256+sha512) in {ferry:.2} s");
    if have_python {
        let start = Instant::now();
        let out = Command::new("python3")
            .args(["-m", "bagit", "--validate", "--processes", "2"])
            .arg(&root)
            .output()
            .unwrap();
        let python = start.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "small files: bagit.py --validate --processes 2 takes {python:.2} s ({:.1}× ferry's time)",
            python / ferry
        );
        assert!(
            ferry * 2.0 < python,
            "ferry {ferry:.2} s is not much faster than bagit.py {python:.2} s"
        );
    } else {
        println!("small files: bagit.py not installed; comparison skipped");
    }
}

#[test]
#[ignore]
fn memory_stays_flat_with_a_million_files() {
    let n: usize = std::env::var("FERRY_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("many");
    let empty_sha256 = digest(Sha256, b"");
    let mut manifest = BufWriter::new({
        fs::create_dir_all(&root).unwrap();
        fs::File::create(root.join("manifest-sha256.txt")).unwrap()
    });
    for i in 0..n {
        let dir = format!("data/{:03}/{:03}", i / 1_000_000, (i / 1000) % 1000);
        if i % 1000 == 0 {
            fs::create_dir_all(root.join(&dir)).unwrap();
        }
        let rel = format!("{dir}/message-{i:07}.eml");
        fs::File::create(root.join(&rel)).unwrap();
        writeln!(manifest, "{empty_sha256}  {rel}").unwrap();
    }
    manifest.flush().unwrap();
    drop(manifest);
    bagit_txt(&root);
    write(
        &root,
        "bag-info.txt",
        format!("Payload-Oxum: 0.{n}\n").as_bytes(),
    );
    let before = max_rss_mib();
    for mode in [VerifyMode::CompletenessOnly, VerifyMode::Full] {
        let start = Instant::now();
        let r = verify(&root, &VerifyOptions { mode, threads: 2 }).unwrap();
        assert_eq!(r.status, Status::Valid, "{r}");
        println!(
            "{n} files, {mode:?}: {:.1} s, peak RSS {:.0} MiB (before: {before:.0} MiB)",
            start.elapsed().as_secs_f64(),
            max_rss_mib()
        );
    }
}
