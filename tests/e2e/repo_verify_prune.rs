//! `ferry verify REPO` and `ferry prune`, through the real binary: a repository of six runs of a
//! folder whose files change between runs (run times faked with `FERRY_FAKE_NOW`, so the runs
//! fall on different days); tampering is reported by name; retention keeps what it should,
//! every kept run still restores byte for byte, contents only removed runs needed are gone; a
//! hold protects a run; a prune killed after any of its steps leaves a valid repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry_e2e::{ferry, ferry_env, files_under, tempdir, Run};
use serde_json::Value;

/// When each run starts: four days, two runs on the fourth.
const TIMES: [&str; 6] = [
    "2026-01-01T02:00:00Z",
    "2026-01-02T02:00:00Z",
    "2026-01-03T02:00:00Z",
    "2026-01-04T02:00:00Z",
    "2026-01-04T14:00:00Z",
    "2026-01-05T02:00:00Z",
];

/// A repository with one run per entry of [`TIMES`], and what the source held at each run.
struct Fixture {
    dir: tempfile::TempDir,
    runs: Vec<String>,
    snapshots: Vec<BTreeMap<String, Vec<u8>>>,
}

impl Fixture {
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
    /// A copy of the repository, to damage or prune without touching the original.
    fn copy(&self, name: &str) -> PathBuf {
        let to = self.dir.path().join(name);
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(self.repo())
            .arg(&to)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp -a");
        to
    }
}

fn unix(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Writes a file with an explicit modification time (the backup decides "changed" by it).
fn put(path: &Path, content: &[u8], mtime: SystemTime) {
    std::fs::write(path, content).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn backup(src: &Path, repo: &Path, now: &str) -> String {
    let run = ferry_env(
        [
            "backup".to_string(),
            format!("fs:{}", src.display()),
            "--repo".into(),
            repo.display().to_string(),
            "--no-progress".into(),
            "--json".into(),
        ],
        &[("FERRY_FAKE_NOW".into(), now.into())],
    );
    run.expect_code(0);
    run.json()["run"].as_str().unwrap().to_string()
}

/// Sixty files; run 1 backs them all up, each later run `i` finds `f00` and `f<i>` changed;
/// run 3 finds `f50` gone, run 4 a new file.
fn fixture() -> Fixture {
    let dir = tempdir();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..60 {
        let path = if i % 10 == 9 {
            src.join("sub").join(format!("f{i:02}.txt"))
        } else {
            src.join(format!("f{i:02}.txt"))
        };
        put(
            &path,
            format!("file {i} as it first was\n").as_bytes(),
            unix(1_764_547_200 + i),
        );
    }
    let mut runs = Vec::new();
    let mut snapshots = Vec::new();
    for (i, now) in TIMES.iter().enumerate() {
        let run_time =
            time::OffsetDateTime::parse(now, &time::format_description::well_known::Rfc3339)
                .unwrap();
        let mtime = unix((run_time.unix_timestamp() - 3600) as u64);
        if i > 0 {
            put(
                &src.join("f00.txt"),
                format!("f00 in run {i}\n").as_bytes(),
                mtime,
            );
            put(
                &src.join(format!("f{i:02}.txt")),
                format!("f{i:02} changed in run {i}\n").as_bytes(),
                mtime,
            );
        }
        if i == 2 {
            std::fs::remove_file(src.join("f50.txt")).unwrap();
        }
        if i == 3 {
            put(&src.join("sub").join("new.txt"), b"new in run 3\n", mtime);
        }
        snapshots.push(read_tree(&src));
        runs.push(backup(&src, &dir.path().join("repo"), now));
    }
    assert_eq!(runs[0], "2026-01-01T020000Z-src");
    let f = Fixture {
        dir,
        runs,
        snapshots,
    };
    // Only the first run holds a full state: the others' states are read through their
    // predecessors, which is what makes pruning them delicate.
    for (i, run) in f.runs.iter().enumerate() {
        let has = f
            .repo()
            .join("runs")
            .join(run)
            .join("state.jsonl.gz")
            .exists();
        assert_eq!(has, i == 0, "run {run}: state file present = {has}");
    }
    f
}

fn verify(repo: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "verify".to_string(),
        repo.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ferry(&args)
}

fn assert_valid(repo: &Path) -> Value {
    let run = verify(repo, &[]);
    run.expect_code(0);
    let v = run.json();
    assert_eq!(v["status"], "valid", "{v:#}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v:#}");
    v
}

fn problems(v: &Value) -> Vec<(String, String, String)> {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["key"].as_str().unwrap().to_string(),
                p["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn prune(repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec![
        "prune".to_string(),
        "--repo".into(),
        repo.display().to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ferry_env(&all, &env)
}

/// The ids `ferry runs` lists.
fn run_ids(repo: &Path) -> Vec<String> {
    let run = ferry(["runs", "--repo", &repo.display().to_string(), "--json"]);
    run.expect_code(0);
    run.stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Restores `run` and compares it with what the source held then.
fn assert_restores(f: &Fixture, repo: &Path, i: usize) {
    let to = f.dir.path().join(format!(
        "restore-{}-{i}",
        repo.file_name().unwrap().to_string_lossy()
    ));
    if to.exists() {
        std::fs::remove_dir_all(&to).unwrap();
    }
    ferry([
        "restore",
        "--repo",
        &repo.display().to_string(),
        "--run",
        &f.runs[i],
        "--to",
        &to.display().to_string(),
    ])
    .expect_code(0);
    assert!(
        read_tree(&to.join("fs").join("src")) == f.snapshots[i],
        "run {} does not restore to what the source held then",
        f.runs[i]
    );
}

/// Where the repository keeps `content` (named by its SHA-256, as `sha256sum` computes it).
fn blob_path(repo: &Path, content: &[u8]) -> PathBuf {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(content).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let digest = text.split_whitespace().next().unwrap();
    repo.join("blobs/sha256").join(&digest[..2]).join(digest)
}

/// Every file of a folder with its bytes (to show that a dry run changed nothing).
fn snapshot_repo(repo: &Path) -> BTreeMap<String, Vec<u8>> {
    read_tree(repo)
}

#[test]
fn verify_reports_a_flipped_blob_an_edited_run_and_a_removed_run() {
    let f = fixture();
    let v = assert_valid(&f.repo());
    let c = &v["counts"];
    assert_eq!(c["runs"], 6);
    assert!(c["blobs"].as_u64().unwrap() >= 70, "{c}");
    assert_eq!(c["blobs_hashed"], c["blobs"]);
    assert_eq!(c["blobs_unreferenced"], 0);

    // A sample hashes fewer contents, and says so.
    let run = verify(&f.repo(), &["--sample", "10%"]);
    run.expect_code(0);
    let v = run.json();
    let (hashed, all) = (
        v["counts"]["blobs_hashed"].as_u64().unwrap(),
        v["counts"]["blobs"].as_u64().unwrap(),
    );
    assert!(hashed >= 1 && hashed < all / 5, "{hashed} of {all}");
    assert_eq!(hashed, (all as f64 / 10.0).ceil() as u64);
    assert_eq!(v["sample_percent"], 10.0);

    // One byte of one content flipped.
    let flipped = f.copy("flipped");
    let blob = blob_path(&flipped, b"f02 changed in run 2\n");
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&blob, bytes).unwrap();
    let run = verify(&flipped, &[]);
    run.expect_code(1);
    let v = run.json();
    assert_eq!(v["status"], "invalid");
    let p = problems(&v);
    let key = blob.strip_prefix(&flipped).unwrap().display().to_string();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].0.as_str(), p[0].1.as_str()),
        ("damaged_blob", key.as_str())
    );
    // The human report names it too.
    let human = ferry(["verify", &flipped.display().to_string()]);
    human.expect_code(1);
    assert!(
        human.stdout.contains(&key) && human.stdout.contains("INVALID"),
        "{}",
        human.stdout
    );

    // A middle run's record edited (still valid JSON).
    let edited = f.copy("edited");
    let record = edited.join("runs").join(&f.runs[2]).join("run.json");
    let text = std::fs::read_to_string(&record).unwrap();
    let changed = text.replacen("\"completed\"", "\"completed\" ", 1);
    assert_ne!(text, changed);
    std::fs::write(&record, changed).unwrap();
    let run = verify(&edited, &[]);
    run.expect_code(1);
    let p = problems(&run.json());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "run_changed");
    assert_eq!(p[0].1, format!("runs/{}/run.json", f.runs[2]));
    assert!(
        p[0].2.contains(&format!(
            "run {}'s record was changed after it was written",
            f.runs[2]
        )),
        "{}",
        p[0].2
    );

    // A middle run's folder deleted by hand.
    let removed = f.copy("removed");
    std::fs::remove_dir_all(removed.join("runs").join(&f.runs[2])).unwrap();
    let run = verify(&removed, &[]);
    run.expect_code(1);
    let p = problems(&run.json());
    assert!(
        p.iter().any(|(kind, _, detail)| kind == "run_removed"
            && detail.contains(&format!(
                "run {} was removed outside ferry prune",
                f.runs[2]
            ))),
        "{p:?}"
    );

    // --sample is for repositories only.
    let run = ferry(["verify", &f.src().display().to_string(), "--sample", "5%"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("--sample is for repositories"),
        "{}",
        run.stderr
    );
}

#[test]
fn prune_keeps_the_newest_run_of_the_last_days_and_everything_they_need() {
    let f = fixture();
    let repo = f.repo();

    // Without a policy: refused.
    let run = prune(&repo, &[], &[]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("give at least one --keep-"),
        "{}",
        run.stderr
    );

    // A dry run changes nothing, and says what would go.
    let before = snapshot_repo(&repo);
    let run = prune(&repo, &["--keep-daily", "2", "--dry-run", "--json"], &[]);
    run.expect_code(0);
    let v = run.json();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["removed_runs"], 4);
    assert_eq!(v["kept_runs"], 2);
    assert!(v["blobs_removed"].as_u64().unwrap() > 0, "{v:#}");
    assert!(
        snapshot_repo(&repo) == before,
        "a dry run changed the repository"
    );
    let human = prune(&repo, &["--keep-daily", "2", "--dry-run"], &[]);
    human.expect_code(0);
    assert!(
        human.stdout.contains("Nothing was changed"),
        "{}",
        human.stdout
    );
    assert!(
        snapshot_repo(&repo) == before,
        "a dry run changed the repository"
    );

    // keep-daily 2: the newest run of 2026-01-05 and of 2026-01-04 (the 14:00 one).
    let record_before = std::fs::read(repo.join("runs").join(&f.runs[4]).join("run.json")).unwrap();
    let run = prune(&repo, &["--keep-daily", "2", "--json"], &[]);
    run.expect_code(0);
    let v = run.json();
    assert_eq!(v["removed_runs"], 4, "{v:#}");
    assert_eq!(run_ids(&repo), vec![f.runs[4].clone(), f.runs[5].clone()]);
    // The older kept run read its state through removed runs: it has its own now, described
    // beside it; its record is untouched (the chain's digests hold).
    assert_eq!(v["checkpoints"], serde_json::json!([f.runs[4]]));
    let dir = repo.join("runs").join(&f.runs[4]);
    assert!(dir.join("state.jsonl.gz").exists() && dir.join("checkpoint.json").exists());
    assert_eq!(std::fs::read(dir.join("run.json")).unwrap(), record_before);
    for old in &f.runs[..4] {
        assert!(
            !repo.join("runs").join(old).exists(),
            "{old} is still there"
        );
    }
    let pruned = std::fs::read_to_string(repo.join("pruned.jsonl")).unwrap();
    assert_eq!(pruned.lines().count(), 4);

    let v = assert_valid(&repo);
    assert_eq!(v["counts"]["pruned_runs"], 4);
    assert_eq!(v["counts"]["blobs_unreferenced"], 0);
    assert_restores(&f, &repo, 4);
    assert_restores(&f, &repo, 5);
    // Contents only removed runs had are gone; what the kept runs hold is there.
    assert!(!blob_path(&repo, b"f00 in run 1\n").exists());
    assert!(!blob_path(&repo, b"f00 in run 3\n").exists());
    assert!(!blob_path(&repo, b"file 50 as it first was\n").exists());
    assert!(blob_path(&repo, b"f02 changed in run 2\n").exists());
    assert!(blob_path(&repo, b"f00 in run 4\n").exists());
    assert!(blob_path(&repo, b"f00 in run 5\n").exists());

    // Backups go on after a prune, and verify follows the chain across the gap.
    put(
        &f.src().join("f07.txt"),
        b"after the prune\n",
        unix(1_767_700_000),
    );
    let next = backup(&f.src(), &repo, "2026-01-06T02:00:00Z");
    assert_valid(&repo);
    let to = f.dir.path().join("restore-next");
    ferry([
        "restore",
        "--repo",
        &repo.display().to_string(),
        "--run",
        &next,
        "--to",
        &to.display().to_string(),
    ])
    .expect_code(0);
    assert_eq!(read_tree(&to.join("fs/src")), read_tree(&f.src()));

    // And a second prune removes the run that was kept for a day.
    prune(&repo, &["--keep-daily", "2"], &[]).expect_code(0);
    assert_eq!(run_ids(&repo), vec![f.runs[5].clone(), next]);
    assert_valid(&repo);
    assert_restores(&f, &repo, 5);
}

#[test]
fn a_hold_protects_a_run_until_it_is_released() {
    let f = fixture();
    let repo = f.repo();
    let run = prune(&repo, &["--hold", &f.runs[1]], &[]);
    run.expect_code(2);
    assert!(run.stderr.contains("--reason"), "{}", run.stderr);
    prune(
        &repo,
        &["--hold", &f.runs[1], "--reason", "case 2026/114"],
        &[],
    )
    .expect_code(0);
    let holds: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join("holds.json")).unwrap()).unwrap();
    assert_eq!(holds["holds"][0]["run"], f.runs[1].as_str());
    assert_eq!(holds["holds"][0]["reason"], "case 2026/114");

    let run = prune(&repo, &["--keep-daily", "1", "--json"], &[]);
    run.expect_code(0);
    let v = run.json();
    let held = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["run"] == f.runs[1].as_str())
        .unwrap();
    assert_eq!(held["keep"], true);
    assert_eq!(held["reasons"], serde_json::json!(["hold"]));
    assert_eq!(run_ids(&repo), vec![f.runs[1].clone(), f.runs[5].clone()]);
    assert_valid(&repo);
    assert_restores(&f, &repo, 1);
    assert_restores(&f, &repo, 5);

    prune(&repo, &["--release", &f.runs[1]], &[]).expect_code(0);
    prune(&repo, &["--keep-daily", "1"], &[]).expect_code(0);
    assert_eq!(run_ids(&repo), vec![f.runs[5].clone()]);
    assert_valid(&repo);
    assert_restores(&f, &repo, 5);
}

#[test]
fn a_prune_killed_after_any_step_leaves_a_valid_repository() {
    let f = fixture();
    for step in [
        "checkpoint-description",
        "checkpoint",
        "checkpoints",
        "pruned",
        "run-record",
        "runs",
        "blob",
    ] {
        let repo = f.copy(&format!("killed-{step}"));
        let run = prune(
            &repo,
            &["--keep-daily", "2"],
            &[("FERRY_PRUNE_STOP_AFTER", step)],
        );
        assert_eq!(run.code, -1, "step {step}: not killed\n{}", run.stderr);
        let v = assert_valid(&repo);
        assert!(
            v["info"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["kind"] == "locked"),
            "step {step}: {v:#}"
        );
        // Every run ferry still lists restores as it was: none is half removed.
        let listed = run_ids(&repo);
        assert!(
            listed.ends_with(&[f.runs[4].clone(), f.runs[5].clone()]),
            "step {step}: {listed:?}"
        );
        for (i, id) in f.runs.iter().enumerate() {
            if listed.contains(id) {
                assert_restores(&f, &repo, i);
            }
        }
        // The next prune finishes the work.
        prune(&repo, &["--keep-daily", "2"], &[]).expect_code(0);
        let v = assert_valid(&repo);
        assert_eq!(v["info_count"], 0, "step {step}: {v:#}");
        assert_eq!(
            run_ids(&repo),
            vec![f.runs[4].clone(), f.runs[5].clone()],
            "step {step}"
        );
        assert_restores(&f, &repo, 4);
        assert_restores(&f, &repo, 5);
    }
}

#[test]
fn a_backup_after_a_killed_prune_works_and_the_next_prune_finishes() {
    let f = fixture();
    for step in ["checkpoint-description", "pruned", "run-record"] {
        let repo = f.copy(&format!("then-backup-{step}"));
        let run = prune(
            &repo,
            &["--keep-daily", "2"],
            &[("FERRY_PRUNE_STOP_AFTER", step)],
        );
        assert_eq!(run.code, -1, "step {step}: not killed\n{}", run.stderr);
        // The source is as the last run saw it: the new run changes nothing.
        let next = backup(&f.src(), &repo, "2026-01-06T02:00:00Z");
        assert_valid(&repo);
        let to = f.dir.path().join(format!("restore-then-backup-{step}"));
        ferry([
            "restore",
            "--repo",
            &repo.display().to_string(),
            "--run",
            &next,
            "--to",
            &to.display().to_string(),
        ])
        .expect_code(0);
        assert!(
            read_tree(&to.join("fs/src")) == f.snapshots[5],
            "step {step}"
        );
        prune(&repo, &["--keep-daily", "2"], &[]).expect_code(0);
        let v = assert_valid(&repo);
        assert_eq!(v["info_count"], 0, "step {step}: {v:#}");
        assert_eq!(run_ids(&repo), vec![f.runs[5].clone(), next], "step {step}");
        assert_restores(&f, &repo, 5);
    }
}

#[test]
fn a_repository_in_s3_is_verified_and_pruned() {
    for fx in [
        Some(ferry_e2e::s3::S3Fixture::sandbox()),
        ferry_e2e::s3::S3Fixture::moto(),
    ]
    .into_iter()
    .flatten()
    {
        fx.bucket("backups");
        let dir = tempdir();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..20 {
            put(
                &src.join(format!("f{i:02}.txt")),
                format!("file {i}\n").as_bytes(),
                unix(1_764_547_200 + i),
            );
        }
        let repo = "s3://backups/ferry/nightly";
        let s3 = |args: &[&str], extra_env: &[(&str, &str)]| {
            let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            all.extend(["--endpoint-url".to_string(), fx.endpoint.clone()]);
            let mut env = fx.env();
            env.extend(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            ferry_env(&all, &env)
        };
        let work = dir.path().join("work").display().to_string();
        let mut runs = Vec::new();
        for (i, now) in TIMES[..4].iter().enumerate() {
            if i > 0 {
                put(
                    &src.join("f00.txt"),
                    format!("f00 in run {i}\n").as_bytes(),
                    unix(1_767_000_000 + i as u64 * 86_400),
                );
            }
            let run = s3(
                &[
                    "backup",
                    &format!("fs:{}", src.display()),
                    "--repo",
                    repo,
                    "--work-dir",
                    &work,
                    "--json",
                ],
                &[("FERRY_FAKE_NOW", now)],
            );
            run.expect_code(0);
            runs.push(run.json()["run"].as_str().unwrap().to_string());
        }
        let run = s3(&["verify", repo, "--json"], &[]);
        run.expect_code(0);
        let v = run.json();
        assert_eq!(v["status"], "valid", "{v:#}");
        assert_eq!(v["counts"]["runs"], 4);
        assert_eq!(v["counts"]["blobs_hashed"], 23);
        let run = s3(&["verify", repo, "--sample", "10%", "--json"], &[]);
        run.expect_code(0);
        assert_eq!(run.json()["counts"]["blobs_hashed"], 3);

        // keep-daily 2 keeps the last two runs (2026-01-03 and 2026-01-04 02:00).
        s3(
            &[
                "prune",
                "--repo",
                repo,
                "--keep-daily",
                "2",
                "--work-dir",
                &work,
            ],
            &[],
        )
        .expect_code(0);
        let run = s3(&["verify", repo, "--json"], &[]);
        run.expect_code(0);
        let v = run.json();
        assert_eq!(v["counts"]["runs"], 2, "{v:#}");
        assert_eq!(v["counts"]["pruned_runs"], 2, "{v:#}");
        assert_eq!(v["counts"]["blobs"], 21, "{v:#}");
        let out = dir.path().join("out");
        s3(
            &[
                "restore",
                "--repo",
                repo,
                "--run",
                &runs[2],
                "--to",
                &out.display().to_string(),
            ],
            &[],
        )
        .expect_code(0);
        let mut expected = read_tree(&src);
        expected.insert("f00.txt".into(), b"f00 in run 2\n".to_vec());
        assert!(read_tree(&out.join("fs/src")) == expected);

        // A content replaced behind ferry's back.
        let digest_path = blob_path(Path::new("ferry/nightly"), b"file 7\n");
        fx.put(
            "backups",
            &digest_path.display().to_string(),
            b"not file 7\n",
        );
        let run = s3(&["verify", repo, "--json"], &[]);
        run.expect_code(1);
        let p = problems(&run.json());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "damaged_blob");
        assert_eq!(
            format!("ferry/nightly/{}", p[0].1),
            digest_path.display().to_string()
        );
    }
}
