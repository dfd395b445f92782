//! A file over 4 GiB goes through with flat memory, into a folder bag and into a zip (which then
//! needs zip64), and both verify. Memory is measured on the child process with wait4.

use ferry_e2e::*;

/// Just over 4 GiB: the zip entry needs zip64 sizes and the data does not fit any buffer.
const BIG: u64 = (4 << 30) + (1 << 20) + 7;
/// The bound on peak resident memory.
const MAX_RSS_KIB: u64 = 64 * 1024;

#[test]
fn a_multi_gib_file_is_exported_with_flat_memory() {
    let tmp = tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Sparse, so the test needs no 4 GiB of source disk; ferry still reads and hashes it all.
    let f = std::fs::File::create(src.join("disk-image.raw")).unwrap();
    f.set_len(BIG).unwrap();
    drop(f);
    write(&src.join("small.txt"), b"small");

    for to in ["bag", "bag.zip"] {
        let dest = tmp.path().join(to);
        let logs = tmp.path().join(format!("logs-{to}"));
        std::fs::create_dir_all(&logs).unwrap();
        let (code, rss) = ferry_peak_rss(
            [
                "export",
                &format!("fs:{}", src.display()),
                "--to",
                dest.to_str().unwrap(),
                "-q",
            ],
            &logs,
        );
        assert_eq!(
            code,
            0,
            "export to {to}: {}",
            std::fs::read_to_string(logs.join("stderr")).unwrap()
        );
        eprintln!("export of {BIG} bytes to {to}: peak RSS {rss} KiB");
        assert!(rss < MAX_RSS_KIB, "export to {to} peaked at {rss} KiB");
        let (code, rss) = ferry_peak_rss(["verify", dest.to_str().unwrap()], &logs);
        assert_eq!(
            code,
            0,
            "verify {to}: {}",
            std::fs::read_to_string(logs.join("stdout")).unwrap()
        );
        eprintln!("verify of {to}: peak RSS {rss} KiB");
        assert!(rss < MAX_RSS_KIB, "verify of {to} peaked at {rss} KiB");
    }

    let folder = tmp.path().join("bag");
    let payload = folder.join("data/fs/src/disk-image.raw");
    assert_eq!(std::fs::metadata(&payload).unwrap().len(), BIG);
    // bagit-python recomputes the digest independently of ferry.
    assert_bagit_py_valid(&folder);

    // Python's zipfile reads the zip64 entry and checks its CRC independently.
    let zip = tmp.path().join("bag.zip");
    let check = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             info = z.getinfo('bag/data/fs/src/disk-image.raw')\n\
             assert info.file_size == int(sys.argv[2]), info.file_size\n\
             with z.open(info) as f:\n    \
                 while f.read(1 << 24): pass\n\
             print('ok')",
        ])
        .arg(&zip)
        .arg(BIG.to_string())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "python zipfile: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}
