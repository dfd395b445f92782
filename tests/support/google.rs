//! A Google Workspace sandbox on 127.0.0.1 for end-to-end tests, and helpers to run
//! `ferry export google:…` against it with the sandbox's service-account key.

use std::path::{Path, PathBuf};

use ferry_sandbox::{GoogleConfig, GoogleServer};

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
