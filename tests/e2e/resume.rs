//! A killed or interrupted export never looks complete, and a rerun finishes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::*;

/// Enough items that, even on a tmpfs, the export is still running when the test kills it.
const FILES: usize = 1000;

fn source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    for i in 0..FILES {
        let content: Vec<u8> = (0..16 * 1024)
            .map(|j| ((i * 31 + j * 7) % 251) as u8)
            .collect();
        write(&src.join(format!("d{:02}/f{i:04}.bin", i % 10)), &content);
    }
    src
}

/// Starts an export that checkpoints after every item (so a kill lands between checkpoints
/// that each covered some items).
fn start_export(src: &Path, to: &Path) -> Child {
    Command::new(ferry_bin())
        .args([
            "export",
            &format!("fs:{}", src.display()),
            "--to",
            to.to_str().unwrap(),
            "--checkpoint-interval",
            "0",
            "--concurrency",
            "1",
            "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the export's checkpoint covers at least `lines` items.
fn wait_for_checkpoint(work: &Path, lines: u64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(work.join("checkpoint.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if v["journal_lines"].as_u64().unwrap_or(0) >= lines {
                    return;
                }
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the export finished before it could be interrupted"
        );
        assert!(
            Instant::now() < deadline,
            "no checkpoint with {lines} items in time"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn signal(child: &mut Child, sig: libc::c_int) -> i32 {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn check_complete(bag: &Path, src: &Path) {
    let records = items(bag);
    let stored: Vec<_> = records.iter().filter(|r| r["path"].is_string()).collect();
    assert_eq!(stored.len(), FILES, "one record per file, no duplicates");
    let mut seen = std::collections::HashSet::new();
    for r in stored {
        let original = r["source"]["original_path"].as_str().unwrap();
        assert!(seen.insert(original.to_string()), "duplicate {original}");
        let payload = std::fs::read(bag.join(r["path"].as_str().unwrap())).unwrap();
        assert_eq!(
            payload,
            std::fs::read(src.join(original)).unwrap(),
            "{original}"
        );
    }
    assert_bagit_py_valid(bag);
    ferry(["verify", bag.to_str().unwrap()]).expect_code(0);
}

#[test]
fn kill_9_then_rerun_completes_a_folder_bag() {
    let tmp = tempdir();
    let src = source(tmp.path());
    let bag = tmp.path().join("bag");
    let mut child = start_export(&src, &bag);
    wait_for_checkpoint(&bag.join(".ferry-partial"), 40, &mut child);
    assert_eq!(signal(&mut child, libc::SIGKILL), 128 + libc::SIGKILL);

    let run = ferry(["verify", bag.to_str().unwrap()]);
    assert_eq!(
        run.code, 1,
        "an interrupted export is not valid: {}",
        run.stdout
    );
    assert!(
        run.stdout.contains("INCOMPLETE") && run.stdout.contains("export_in_progress"),
        "{}",
        run.stdout
    );
    assert_bagit_py_invalid(&bag);

    // A file already stored changes before the rerun: the bag gets the new content.
    let first = src.join("d00/f0000.bin");
    std::fs::write(&first, b"changed after the crash").unwrap();

    let run = export(&src, &bag, &["--json"]);
    run.expect_code(0);
    let summary = run.json();
    assert_eq!(summary["resumed"], true);
    let resumed = summary["resumed_items"].as_u64().unwrap();
    let archived = summary["archived_items"].as_u64().unwrap();
    assert!(resumed >= 39, "kept what the checkpoint covered: {resumed}");
    assert_eq!(resumed + archived, FILES as u64, "{summary}");
    assert!(!bag.join(".ferry-partial").exists());
    check_complete(&bag, &src);
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bag.join("ferry/run.json")).unwrap())
            .unwrap();
    assert_eq!(run_json["attempts"], 2);
}

#[test]
fn kill_9_then_rerun_completes_a_zip() {
    let tmp = tempdir();
    let src = source(tmp.path());
    let zip = tmp.path().join("bag.zip");
    let mut child = start_export(&src, &zip);
    wait_for_checkpoint(&tmp.path().join("bag.zip.ferry-partial"), 40, &mut child);
    signal(&mut child, libc::SIGKILL);
    assert!(
        !zip.exists(),
        "the zip gets its final name only when complete"
    );
    let run = ferry(["verify", zip.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("INCOMPLETE"), "{}", run.stdout);

    let run = export(&src, &zip, &["--json"]);
    run.expect_code(0);
    let summary = run.json();
    assert!(
        summary["resumed_items"].as_u64().unwrap() >= 39,
        "{summary}"
    );
    assert!(
        !tmp.path().join("bag.zip.partial").exists()
            && !tmp.path().join("bag.zip.ferry-partial").exists()
    );
    let out = tmp.path().join("unzipped");
    unzip_with_python(&zip, &out);
    check_complete(&out.join("bag"), &src);
}

#[test]
fn ctrl_c_stops_with_130_and_the_rerun_finishes() {
    let tmp = tempdir();
    let src = source(tmp.path());
    let bag = tmp.path().join("bag");
    let mut child = start_export(&src, &bag);
    wait_for_checkpoint(&bag.join(".ferry-partial"), 20, &mut child);
    assert_eq!(signal(&mut child, libc::SIGINT), 130);
    ferry(["verify", bag.to_str().unwrap()]).expect_code(1);
    export(&src, &bag, &[]).expect_code(0);
    check_complete(&bag, &src);
}

#[test]
fn an_interrupted_export_is_never_resumed_with_another_source() {
    let tmp = tempdir();
    let src = source(tmp.path());
    let bag = tmp.path().join("bag");
    let mut child = start_export(&src, &bag);
    wait_for_checkpoint(&bag.join(".ferry-partial"), 5, &mut child);
    signal(&mut child, libc::SIGKILL);
    let other = tmp.path().join("other");
    write(&other.join("x"), b"x");
    let run = export(&other, &bag, &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("interrupted export"), "{}", run.stderr);
    let run = export(&src, &bag, &["--digest", "sha512"]);
    assert_eq!(run.code, 2, "other digests cannot resume either");
}

#[test]
fn a_full_disk_stops_the_export_clearly_and_a_rerun_finishes_once_there_is_room() {
    // Needs a small filesystem of its own: a tmpfs mount (root only; skipped elsewhere).
    let tmp = tempdir();
    let mnt = tmp.path().join("small-fs");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = is_root()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !mounted {
        eprintln!("NOTICE: cannot mount a small tmpfs here; skipping the disk-full test");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let src = tmp.path().join("src");
    for i in 0..8 {
        write(&src.join(format!("f{i}.bin")), &vec![i as u8; 512 * 1024]);
    }
    let bag = mnt.join("bag");
    let run = export(&src, &bag, &[]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("No space left on device") && run.stderr.contains("rerun"),
        "{}",
        run.stderr
    );
    ferry(["verify", bag.to_str().unwrap()]).expect_code(1);
    assert!(Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let run = export(&src, &bag, &["--json"]);
    run.expect_code(0);
    assert_eq!(run.json()["payload_files"], 8);
    assert_bagit_py_valid(&bag);
}
