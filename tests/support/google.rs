//! A Google Workspace sandbox on 127.0.0.1 for end-to-end tests, helpers to run
//! `ferry export google:…` against it with the sandbox's service-account key, and the Drive
//! files a restore should hold for a state of the sandbox.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ferry_sandbox::google::GFile;
use ferry_sandbox::{GoogleConfig, GoogleServer, GoogleTruth};

use crate::{ferry_env, Run};

/// A running Google sandbox and its service-account key file.
pub struct GoogleFixture {
    /// The server.
    pub server: GoogleServer,
    /// Runs it.
    pub runtime: tokio::runtime::Runtime,
    /// The key file (in `_dir`).
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl GoogleFixture {
    /// Starts a sandbox domain.
    pub fn start(config: GoogleConfig) -> GoogleFixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(GoogleServer::start(config, 0)).unwrap();
        let dir = crate::tempdir();
        let key = dir.path().join("service-account.json");
        std::fs::write(&key, server.service_account_key_json()).unwrap();
        GoogleFixture {
            server,
            runtime,
            key,
            _dir: dir,
        }
    }

    /// The domain.
    pub fn domain(&self) -> String {
        self.server.truth().domain.clone()
    }

    /// `ferry export google:<domain> --service-account KEY --admin ADMIN --google-endpoint …
    /// --to TO extra…`.
    pub fn export(&self, to: &Path, extra: &[&str]) -> Run {
        self.export_with_key(&self.key, to, extra)
    }

    /// Like [`GoogleFixture::export`] with another key file.
    pub fn export_with_key(&self, key: &Path, to: &Path, extra: &[&str]) -> Run {
        let mut args = vec![
            "export".to_string(),
            format!("google:{}", self.domain()),
            "--service-account".into(),
            key.display().to_string(),
            "--admin".into(),
            self.server.admin_email(),
            "--google-endpoint".into(),
            self.server.endpoint(),
            "--to".into(),
            to.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        ferry_env(&args, &[])
    }
}

/// The files a `ferry restore` of a Google backup holds under `google/<domain>/…`, with
/// `my_drive` for the Drive of `user` (owned files at their folder paths, files shared with
/// them in "Shared with me") and with `shared_drives` for the shared drives they are a member
/// of, as the truth says — each
/// path relative to the restore folder with the names restore makes safe, holding the bytes of
/// every file there (Docs, Sheets, Slides and Drawings as their ODF export). Folders,
/// shortcuts, forms and trashed files have no content and are left out.
pub fn expected_drive_files(
    truth: &GoogleTruth,
    user: &str,
    my_drive: bool,
    shared_drives: bool,
) -> BTreeMap<PathBuf, Vec<Vec<u8>>> {
    let mut out: BTreeMap<PathBuf, Vec<Vec<u8>>> = BTreeMap::new();
    let in_trash = |f: &GFile| {
        let mut at = Some(f);
        while let Some(x) = at {
            if x.trashed {
                return true;
            }
            at = x.parents.first().and_then(|p| truth.file(p));
        }
        false
    };
    for f in &truth.files {
        if f.is_folder() || f.shortcut_target.is_some() || in_trash(f) {
            continue;
        }
        let mut path: Vec<String> = vec!["google".into(), truth.domain.clone()];
        match (&f.drive_id, &f.owner) {
            (None, Some(owner)) if my_drive && owner.eq_ignore_ascii_case(user) => {
                path.extend(["users".into(), user.to_string(), "drive".into()]);
                path.extend(f.path.iter().cloned());
            }
            (None, _) if my_drive && f.shared_with.iter().any(|s| s.eq_ignore_ascii_case(user)) => {
                path.extend(["users".into(), user.to_string(), "drive".into()]);
                path.extend(["Shared with me".to_string(), f.name.clone()]);
            }
            (Some(d), _) if shared_drives => {
                let Some(d) = truth.shared_drive(d) else {
                    continue;
                };
                if !d.members.iter().any(|m| m.eq_ignore_ascii_case(user)) {
                    continue;
                }
                path.extend(["shared-drives".into(), d.name.clone()]);
                path.extend(f.path.iter().cloned());
            }
            _ => continue,
        }
        let bytes = if f.is_native() {
            let ext = match f.mime_type.rsplit('.').next() {
                Some("document") => "odt",
                Some("spreadsheet") => "ods",
                Some("presentation") => "odp",
                Some("drawing") => "svg",
                _ => continue,
            };
            let Some((mime, _)) = f.export_formats().iter().find(|(_, e)| *e == ext) else {
                continue;
            };
            let last = path.pop().unwrap_or_default();
            path.push(format!("{last}.{ext}"));
            truth.export_bytes(&f.id, mime).expect("an export")
        } else {
            let mut b = Vec::new();
            f.content().read_to_end(&mut b).expect("content");
            b
        };
        let rel: PathBuf = path.iter().map(|c| safe_name(c)).collect();
        out.entry(rel).or_default().push(bytes);
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// What `ferry restore` writes a key component as (see the repository's restore).
fn safe_name(c: &str) -> String {
    if c.is_empty() || c == "." || c == ".." {
        return format!("_{}", c.replace('.', "_"));
    }
    c.replace(['\0', '/'], "_")
}

/// The files under `root` (a restore folder) below `google/`, in the form of
/// [`expected_drive_files`]: a name the repository gave a same-name twin (`name~1a2b3c4d.ext`)
/// counts under the name it shares. Gmail's files are left out.
pub fn restored_drive_files(root: &Path) -> BTreeMap<PathBuf, Vec<Vec<u8>>> {
    let mut out: BTreeMap<PathBuf, Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.join("google")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(root).expect("under the root").to_path_buf();
            if rel.components().any(|c| c.as_os_str() == "gmail") {
                continue;
            }
            let name = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let rel = rel.with_file_name(untwinned(&name));
            out.entry(rel)
                .or_default()
                .push(std::fs::read(&p).expect("readable"));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// `name~1a2b3c4d.ext` → `name.ext`.
fn untwinned(name: &str) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    match stem.rsplit_once('~') {
        Some((base, tag)) if tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("{base}{ext}")
        }
        _ => name.to_string(),
    }
}
