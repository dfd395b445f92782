//! Helpers for the end-to-end tests: run the real `ferry` binary, build hostile source trees,
//! call the reference validator bagit-python, measure a child's peak memory.

pub mod google;
pub mod m365;
pub mod s3;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `ferry` binary under test: `$FERRY_BIN`, or the one cargo built beside this test.
pub fn ferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> → target/<profile>/ferry
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("ferry");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo test --workspace` builds it) or set FERRY_BIN",
        bin.display()
    );
    bin
}

/// What a ferry run produced.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Panics with the output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
    /// stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `ferry args…` to completion.
pub fn ferry<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    to_run(
        Command::new(ferry_bin())
            .args(args)
            .env_remove("FERRY_LOG")
            .output()
            .expect("run ferry"),
    )
}

/// Runs `ferry args…` in `dir`.
pub fn ferry_in<I, S>(dir: &Path, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    to_run(
        Command::new(ferry_bin())
            .args(args)
            .current_dir(dir)
            .env_remove("FERRY_LOG")
            .output()
            .expect("run ferry"),
    )
}

/// Runs `ferry args…` and returns its exit code and peak resident memory in KiB. Output goes to
/// files in `log_dir`.
///
/// The peak is the kernel's high-water mark of the child's own address space (`VmHWM`), read
/// while it runs. Not `wait4`'s `ru_maxrss`: Linux carries the parent's resident size across
/// the exec into that figure, so a test process that runs a server in-process would be
/// measured instead of ferry.
pub fn ferry_peak_rss<I, S>(args: I, log_dir: &Path) -> (i32, u64)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    ferry_peak_rss_env(args, log_dir, &[])
}

/// [`ferry_peak_rss`] with extra environment variables.
pub fn ferry_peak_rss_env<I, S>(args: I, log_dir: &Path, env: &[(String, String)]) -> (i32, u64)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = std::fs::File::create(log_dir.join("stdout")).unwrap();
    let err = std::fs::File::create(log_dir.join("stderr")).unwrap();
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args).stdout(out).stderr(err).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ferry");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        // VmHWM only grows, so the last reading before the exit is (nearly) the peak.
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        if let Some(status) = child.try_wait().expect("wait for ferry") {
            return (status.code().unwrap_or(-1), peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The reference validator, `bagit.py` (bagit-python 1.9). `None` when it is not installed,
/// unless `FERRY_REQUIRE_BAGIT=1` (set by CI), which makes its absence a failure.
pub fn bagit_py() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("bagit.py"))
            .find(|p| p.exists())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("FERRY_REQUIRE_BAGIT").is_none(),
            "bagit.py is required (FERRY_REQUIRE_BAGIT) but not on PATH"
        );
        eprintln!("NOTICE: bagit.py not found; skipping the bagit-python check (pip install bagit==1.9.0)");
    }
    found
}

/// Asserts that bagit-python calls the folder bag valid (if bagit.py is available).
pub fn assert_bagit_py_valid(bag: &Path) {
    let Some(bagit) = bagit_py() else { return };
    let out = Command::new(bagit)
        .args(["--validate", "--processes", "2"])
        .arg(bag)
        .output()
        .expect("run bagit.py");
    assert!(
        out.status.success(),
        "bagit.py --validate {} failed:\n{}",
        bag.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that bagit-python calls the folder bag invalid (if bagit.py is available).
pub fn assert_bagit_py_invalid(bag: &Path) {
    let Some(bagit) = bagit_py() else { return };
    let out = Command::new(bagit)
        .arg("--validate")
        .arg(bag)
        .output()
        .expect("run bagit.py");
    assert!(
        !out.status.success(),
        "bagit.py --validate {} passed a corrupt bag",
        bag.display()
    );
}

/// Unpacks a zip with Python's zipfile (an independent reader, which also checks every CRC)
/// into `into`.
pub fn unzip_with_python(zip: &Path, into: &Path) {
    let out = Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); bad = z.testzip(); assert bad is None, bad; z.extractall(sys.argv[2])"])
        .arg(zip)
        .arg(into)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python zipfile rejected {}:\n{}",
        zip.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a file, creating parent folders.
pub fn write(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
}

/// Names no archive should hold as they are, each paired with distinct content. Every one is
/// a legal Linux file name.
pub fn hostile_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = vec![
        b"..x".to_vec(),
        b"...".to_vec(),
        b"100% sure.txt".to_vec(),
        b"%2e%2e%2fescape".to_vec(),
        b"line\nbreak.txt".to_vec(),
        b"carriage\rreturn".to_vec(),
        b"tab\there".to_vec(),
        b"bell\x07.txt".to_vec(),
        "caf\u{e9}.txt".as_bytes().to_vec(),
        "cafe\u{301}.txt".as_bytes().to_vec(),
        b"Case.txt".to_vec(),
        b"case.txt".to_vec(),
        b"CASE.txt".to_vec(),
        b" leading space".to_vec(),
        b"trailing space ".to_vec(),
        b"trailing dot.".to_vec(),
        b"back\\slash".to_vec(),
        b"colon: and ? and *".to_vec(),
        b"CON".to_vec(),
        b"nul.txt".to_vec(),
        b"empty-file".to_vec(),
        "\u{202e}txt.exe".as_bytes().to_vec(),
        // 255 bytes (the Linux limit) of two-byte characters and an extension.
        {
            let mut v = "\u{f8}".repeat(125).into_bytes();
            v.extend_from_slice(b".txt");
            v
        },
        // Not UTF-8 at all.
        b"latin1-\xe6\xf8\xe5.txt".to_vec(),
    ];
    names.sort();
    names
}

/// Builds a tree of hostile names under `root`: each name as a file at the top level and inside
/// a twin folder pair, plus an empty file. Returns the relative paths (as bytes) of the files.
pub fn hostile_tree(root: &Path) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    for dir in [&b""[..], b"Folder", b"folder", b"sub/..dots"] {
        for (i, name) in hostile_names().iter().enumerate() {
            let mut rel = dir.to_vec();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name);
            let path = root.join(OsStr::from_bytes(&rel));
            let content = if name == b"empty-file" {
                Vec::new()
            } else {
                format!("{i}:{}", String::from_utf8_lossy(&rel)).into_bytes()
            };
            write(&path, &content);
            files.push(rel);
        }
    }
    files
}

/// The records of a folder bag's `ferry/items.jsonl`.
pub fn items(bag: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(bag.join("ferry/items.jsonl")).expect("items.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("items.jsonl line is JSON"))
        .collect()
}

/// Every entry under `root` that is not a folder, at any depth, sorted; none for a folder that
/// does not exist.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The bytes of every `.eml` file under `root`.
pub fn emls(root: &Path) -> Vec<Vec<u8>> {
    files_under(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// A temporary folder that everyone can enter (so tests can also run ferry as another user).
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ferry-e2e-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// True when running as root (permissions do not stop root from reading).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs ferry so that file permissions apply: as `nobody` (via util-linux `setpriv`) when the
/// tests run as root, which reads everything otherwise. `scratch` must be readable by everyone;
/// the binary is copied there because root's home usually is not.
pub fn ferry_unprivileged(args: &[String], scratch: &Path) -> Run {
    if !is_root() {
        return ferry(args);
    }
    let bin = scratch.join("ferry-unprivileged");
    if !bin.exists() {
        std::fs::copy(ferry_bin(), &bin).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(args)
        .output()
        .expect("setpriv (util-linux) is needed to run this test as root");
    to_run(out)
}

/// Validates every JSON value against the JSON Schema in `manifests/<schema>`; returns the
/// error messages (empty when all are valid).
pub fn schema_errors(schema: &str, values: &[serde_json::Value]) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(schema);
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles");
    let mut errors = Vec::new();
    for (i, v) in values.iter().enumerate() {
        for e in validator.iter_errors(v) {
            errors.push(format!("value {i}: {e} at {}", e.instance_path()));
        }
    }
    errors
}

/// Runs `ferry export fs:<src> --to <to> <extra…>`.
pub fn export(src: &Path, to: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "export".to_string(),
        format!("fs:{}", src.display()),
        "--to".into(),
        to.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ferry(&args)
}

/// Runs `ferry args…` with extra environment variables (and without the caller's AWS ones).
pub fn ferry_env<I, S>(args: I, env: &[(String, String)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args).env_remove("FERRY_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("FERRY_M365_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    to_run(cmd.output().expect("run ferry"))
}
