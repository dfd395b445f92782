//! `ferry bag` and `ferry backup --config` end to end: a folder of hostile names backed up,
//! changed and backed up again; each run written as a folder bag and a zip that ferry and
//! bagit-python call valid, whose payload is the source as it was at that run, byte for byte,
//! with the provenance the repository recorded; a damaged blob stops its item instead of
//! reaching a bag. Then configuration files: two jobs run one after the other, with Prometheus
//! metrics; unknown keys, bad values and inline secrets are refused naming their line.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use ferry_e2e::*;
use serde_json::Value;

/// Every regular file under `root`: relative path (bytes, as the filesystem has it) → content.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let p = e.path();
            if t.is_dir() {
                walk(root, &p, out);
            } else if t.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The source path of an items.jsonl record, as bytes (non-UTF-8 names are kept in hex).
fn original_bytes(record: &Value) -> Vec<u8> {
    match record["extra"]["original_path_bytes_hex"].as_str() {
        Some(hex) => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect(),
        None => record["source"]["original_path"]
            .as_str()
            .unwrap()
            .as_bytes()
            .to_vec(),
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn backup_json(src: &Path, repo: &Path) -> Value {
    let run = ferry([
        "backup",
        &format!("fs:{}", src.display()),
        "--repo",
        &s(repo),
        "--json",
    ]);
    run.expect_code(0);
    run.json()
}

/// The entries of a gzip JSON Lines file of the repository.
fn entries(file: &Path) -> Vec<Value> {
    let out = Command::new("gzip").arg("-dc").arg(file).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", file.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A run's state by key, as `manifests/repository.md` defines it: the checkpoint and the
/// changes of every later run up to this one (computed here without ferry).
fn state(repo: &Path, runs: &[&str]) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        let dir = repo.join("runs").join(run);
        let file = if i == 0 {
            dir.join("state.jsonl.gz")
        } else {
            dir.join("changes.jsonl.gz")
        };
        if !file.exists() {
            continue;
        }
        for e in entries(&file) {
            let key = e["key"].as_str().unwrap().to_string();
            if e["op"] == "remove" {
                state.remove(&key);
            } else {
                state.insert(key, e);
            }
        }
    }
    state
}

/// Checks a folder bag of a run against the source as it was and the repository's entries.
fn check_bag(bag: &Path, at_run: &BTreeMap<Vec<u8>, Vec<u8>>, state: &BTreeMap<String, Value>) {
    ferry(["verify", &s(bag)]).expect_code(0);
    assert_bagit_py_valid(bag);
    let records = items(bag);
    let stored: Vec<&Value> = records.iter().filter(|r| r["path"].is_string()).collect();
    assert_eq!(
        stored.len(),
        at_run.len(),
        "one payload file per source file"
    );
    let by_id: BTreeMap<&str, &Value> = state
        .values()
        .map(|e| (e["item"]["source"]["id"].as_str().unwrap(), e))
        .collect();
    for r in &records {
        let entry = by_id
            .get(r["source"]["id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("no repository entry for {r}"));
        let item = &entry["item"];
        // The provenance is the repository's, unchanged.
        for field in [
            "source",
            "extra",
            "created",
            "modified",
            "type",
            "media_type",
        ] {
            assert_eq!(r[field], item[field], "{field} of {}", r["source"]["id"]);
        }
        let Some(path) = r["path"].as_str() else {
            assert_eq!(r["type"], "symlink", "{r}");
            assert!(r["skipped"].is_string());
            continue;
        };
        assert_eq!(r["digests"]["sha256"], entry["blob"]);
        assert!(
            r["source_checksums"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["algorithm"] == "sha256"
                    && c["value"] == entry["blob"]
                    && c["verified"] == true),
            "the blob was checked against its name: {r}"
        );
        let original = original_bytes(r);
        let content = at_run.get(&original).unwrap_or_else(|| {
            panic!(
                "{:?} was not in the source",
                String::from_utf8_lossy(&original)
            )
        });
        assert_eq!(
            &std::fs::read(bag.join(path)).unwrap(),
            content,
            "payload of {:?}",
            String::from_utf8_lossy(&original)
        );
    }
    let run: Value =
        serde_json::from_slice(&std::fs::read(bag.join("ferry/run.json")).unwrap()).unwrap();
    assert_eq!(run["complete"], true);
    assert_eq!(run["sources"][0]["system"], "ferry-repository");
}

#[test]
fn bags_of_two_runs_hold_the_source_as_it_was_at_each() {
    let tmp = tempdir();
    let src = tmp.path().join("share");
    let repo = tmp.path().join("repo");
    hostile_tree(&src);
    std::os::unix::fs::symlink("Folder", src.join("a link")).unwrap();
    let first = snapshot(&src);
    let run1 = backup_json(&src, &repo)["run"]
        .as_str()
        .unwrap()
        .to_string();

    // Change one file (another size, so the next run sees it), remove one, add one.
    write(
        &src.join("Folder/Case.txt"),
        b"changed after the first run, longer",
    );
    std::fs::remove_file(src.join(OsStr::from_bytes(b"folder/100% sure.txt"))).unwrap();
    write(&src.join("sub/new\nfile.txt"), b"new in the second run");
    let second = snapshot(&src);
    assert_ne!(first, second);
    let summary = backup_json(&src, &repo);
    let run2 = summary["run"].as_str().unwrap().to_string();
    assert_eq!(summary["counts"]["changed"], 1, "{summary}");
    assert_eq!(summary["counts"]["removed"], 1, "{summary}");
    assert_eq!(summary["counts"]["added"], 1, "{summary}");

    let state1 = state(&repo, &[&run1]);
    let state2 = state(&repo, &[&run1, &run2]);
    for (run, at_run, state) in [(&run1, &first, &state1), (&run2, &second, &state2)] {
        let bag = tmp.path().join(format!("bag-{run}"));
        let out = ferry([
            "bag",
            "--repo",
            &s(&repo),
            "--run",
            run,
            "--to",
            &s(&bag),
            "--source-organization",
            "Kommunearkivet",
            "--json",
        ]);
        out.expect_code(0);
        let summary = out.json();
        assert_eq!(summary["run"], run.as_str());
        assert_eq!(summary["failed_items"], 0);
        assert_eq!(summary["payload_files"], at_run.len());
        check_bag(&bag, at_run, state);
        let info = std::fs::read_to_string(bag.join("bag-info.txt")).unwrap();
        assert!(
            info.contains("Source-Organization: Kommunearkivet"),
            "{info}"
        );

        // The same run as a zip: ferry and an independent reader agree it is the same bag.
        let zip = tmp.path().join(format!("zip-{run}.zip"));
        ferry(["bag", "--repo", &s(&repo), "--run", run, "--to", &s(&zip)]).expect_code(0);
        ferry(["verify", &s(&zip)]).expect_code(0);
        let unzipped = tmp.path().join(format!("unzipped-{run}"));
        unzip_with_python(&zip, &unzipped);
        check_bag(&unzipped.join(format!("zip-{run}")), at_run, state);
    }

    // Only part of a run: the globs of `ferry restore`.
    let part = tmp.path().join("part");
    ferry([
        "bag",
        "--repo",
        &s(&repo),
        "--run",
        &run2,
        "--path",
        "fs/share/Folder/**",
        "--to",
        &s(&part),
    ])
    .expect_code(0);
    let records = items(&part);
    assert_eq!(records.len(), hostile_names().len());
    assert!(records.iter().all(|r| r["source"]["original_path"]
        .as_str()
        .unwrap()
        .starts_with("Folder/")));
    // A glob that matches nothing makes no bag.
    let none = ferry([
        "bag",
        "--repo",
        &s(&repo),
        "--path",
        "fs/nothing/**",
        "--to",
        &s(&tmp.path().join("none")),
    ]);
    none.expect_code(2);
    assert!(none.stderr.contains("no item of run"), "{}", none.stderr);
    assert!(!tmp.path().join("none").exists());
}

#[test]
fn a_damaged_blob_never_reaches_a_bag() {
    let tmp = tempdir();
    let src = tmp.path().join("docs");
    let repo = tmp.path().join("repo");
    write(&src.join("good.txt"), b"nothing wrong with this one");
    write(
        &src.join("report.txt"),
        b"the quarterly report, as backed up",
    );
    let run = backup_json(&src, &repo)["run"]
        .as_str()
        .unwrap()
        .to_string();
    let entry = state(&repo, &[&run])
        .into_values()
        .find(|e| e["key"] == "fs/docs/report.txt")
        .unwrap();
    let blob = entry["blob"].as_str().unwrap();
    let path = repo.join("blobs/sha256").join(&blob[..2]).join(blob);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();

    let bag = tmp.path().join("bag");
    let out = ferry(["bag", "--repo", &s(&repo), "--to", &s(&bag), "--json"]);
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let summary = out.json();
    assert_eq!(summary["failed_items"], 1, "{summary}");
    assert!(summary["failures"][0]["error"]
        .as_str()
        .unwrap()
        .contains("checksum mismatch"));
    // The damaged bytes are nowhere in the bag; the bag says it is not the whole run.
    for r in items(&bag) {
        assert_ne!(r["source"]["id"], "report.txt", "{r}");
    }
    let payload = snapshot(&bag.join("data"));
    assert!(payload.values().all(|c| c != &bytes));
    let failures = std::fs::read_to_string(bag.join("ferry/failures.jsonl")).unwrap();
    assert!(failures.contains("report.txt"), "{failures}");
    let run: Value =
        serde_json::from_slice(&std::fs::read(bag.join("ferry/run.json")).unwrap()).unwrap();
    assert_eq!(run["complete"], false);
}

/// The samples of a Prometheus text file: `name{labels}` → value.
fn metrics(file: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            assert!(
                line.starts_with("# HELP ferry_backup_")
                    || line.starts_with("# TYPE ferry_backup_"),
                "{line}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap();
        out.insert(name.to_string(), value.parse::<f64>().unwrap());
    }
    out
}

fn config_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_configuration_runs_every_job_and_writes_metrics() {
    let tmp = tempdir();
    let repo = tmp.path().join("repo");
    let prom = tmp.path().join("ferry.prom");
    write(&tmp.path().join("share/a.txt"), b"share a");
    write(&tmp.path().join("share/b.txt"), b"share b");
    write(&tmp.path().join("home/ola/notes.txt"), b"ola's notes");
    // Relative paths are relative to the file's folder.
    let config = config_file(
        tmp.path(),
        "ferry.toml",
        r#"
repository = "repo"

[[job]]
name = "share"
source = "fs:share"

[[job]]
name = "home"
source = "fs:home"
concurrency = 2
retries = 1
"#,
    );
    let out = ferry([
        "backup",
        "--config",
        &s(&config),
        "--json",
        "--metrics-file",
        &s(&prom),
    ]);
    out.expect_code(0);
    let summaries = out.json();
    let summaries = summaries.as_array().unwrap();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0]["job"], "share");
    assert_eq!(summaries[1]["job"], "home");
    assert_eq!(summaries[0]["counts"]["added"], 2);

    let runs = ferry(["runs", "--repo", &s(&repo), "--json"]);
    runs.expect_code(0);
    let mut jobs: Vec<String> = runs
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["job"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Run ids sort by time, then job: both jobs start within the same second here.
    jobs.sort();
    assert_eq!(jobs, ["home", "share"]);

    let m = metrics(&prom);
    assert_eq!(m[r#"ferry_backup_items{job="share",kind="listed"}"#], 2.0);
    assert_eq!(m[r#"ferry_backup_items{job="share",kind="added"}"#], 2.0);
    assert_eq!(m[r#"ferry_backup_items{job="home",kind="listed"}"#], 1.0);
    assert_eq!(m[r#"ferry_backup_bytes{job="share",kind="read"}"#], 14.0);
    assert_eq!(m[r#"ferry_backup_failures{job="home"}"#], 0.0);
    assert_eq!(m[r#"ferry_backup_exit_code{job="share"}"#], 0.0);
    assert!(m[r#"ferry_backup_duration_seconds{job="home"}"#] >= 0.0);
    let success = m[r#"ferry_backup_last_success_timestamp_seconds{job="home"}"#];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - success).abs() < 600.0, "{success} vs {now}");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("# TYPE ferry_backup_items gauge"));

    // --only one job; the other's lines stay. Its source gone: exit 2, recorded, and its last
    // success kept.
    std::fs::rename(tmp.path().join("home"), tmp.path().join("home-moved")).unwrap();
    let out = ferry([
        "backup",
        "--config",
        &s(&config),
        "--only",
        "home",
        "--metrics-file",
        &s(&prom),
    ]);
    out.expect_code(2);
    let m = metrics(&prom);
    assert_eq!(m[r#"ferry_backup_exit_code{job="home"}"#], 2.0);
    assert_eq!(
        m[r#"ferry_backup_last_success_timestamp_seconds{job="home"}"#],
        success
    );
    assert_eq!(m[r#"ferry_backup_items{job="share",kind="listed"}"#], 2.0);
    assert_eq!(m[r#"ferry_backup_exit_code{job="share"}"#], 0.0);
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("prom"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // A job that cannot run does not stop the next; the exit code is the worst.
    let out = ferry(["backup", "--config", &s(&config), "--json"]);
    out.expect_code(2);
    let summaries = out.json();
    assert_eq!(summaries[0]["status"], "completed");
    assert_eq!(summaries[1]["status"], "error");

    // A single run writes metrics too, under its job's name.
    let single = tmp.path().join("single.prom");
    ferry([
        "backup",
        &format!("fs:{}", tmp.path().join("share").display()),
        "--repo",
        &s(&tmp.path().join("repo2")),
        "--metrics-file",
        &s(&single),
        "-q",
    ])
    .expect_code(0);
    let m = metrics(&single);
    assert_eq!(m[r#"ferry_backup_items{job="share",kind="listed"}"#], 2.0);
    assert_eq!(m[r#"ferry_backup_exit_code{job="share"}"#], 0.0);
}

#[test]
fn configuration_errors_name_their_line() {
    let tmp = tempdir();
    write(&tmp.path().join("share/a.txt"), b"a");
    let check = |name: &str, text: &str, expected: &str| {
        let config = config_file(tmp.path(), name, text);
        let out = ferry(["backup", "--config", &s(&config)]);
        out.expect_code(2);
        assert!(
            out.stderr
                .contains(&format!("{} {expected}", config.display())),
            "expected {expected:?} in:\n{}",
            out.stderr
        );
        out
    };
    check(
        "unknown.toml",
        "repository = \"repo\"\n\n[[job]]\nname = \"share\"\nsource = \"fs:share\"\nconcurency = 4\n",
        "line 6: unknown key `concurency` in job `share` (known: name, source, ",
    );
    check(
        "bad-value.toml",
        "repository = \"repo\"\n[[job]]\nname = \"share\"\nsource = \"fs:share\"\nretries = 2\nconcurrency = \"many\"\n",
        "line 6: `concurrency` in job `share`: invalid value 'many'",
    );
    check(
        "top.toml",
        "repository = \"repo\"\nrepositories = \"x\"\n",
        "line 2: unknown key `repositories`",
    );
    let out = check(
        "secret.toml",
        "repository = \"repo\"\n[[job]]\nname = \"m365\"\nsource = \"m365:contoso.onmicrosoft.com\"\nclient_id = \"x\"\nclient_secret = \"Sup3r-s3cret\"\n",
        "line 6: `client_secret`: secrets are not written in the configuration; use client_secret_file = PATH",
    );
    assert!(!out.stderr.contains("Sup3r-s3cret"));
    assert!(!out.stdout.contains("Sup3r-s3cret"));
    // Nothing ran: a bad file stops before the first job.
    assert!(!tmp.path().join("repo").exists());
    // An unknown --only.
    let config = config_file(
        tmp.path(),
        "ok.toml",
        "repository = \"repo\"\n[[job]]\nname = \"share\"\nsource = \"fs:share\"\n",
    );
    let out = ferry(["backup", "--config", &s(&config), "--only", "mail"]);
    out.expect_code(2);
    assert!(out.stderr.contains("no job \"mail\""), "{}", out.stderr);
}
