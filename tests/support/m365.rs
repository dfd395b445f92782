//! A Microsoft Graph sandbox on 127.0.0.1 for end-to-end tests, and helpers to run
//! `ferry export m365:…` against it.

use std::path::Path;

use ferry_sandbox::{GraphConfig, GraphServer, GRAPH_CLIENT_ID, GRAPH_CLIENT_SECRET};

use crate::{ferry_env, Run};

/// A running Graph sandbox.
pub struct GraphFixture {
    /// The server.
    pub server: GraphServer,
    /// Runs it.
    pub runtime: tokio::runtime::Runtime,
}

impl GraphFixture {
    /// Starts a sandbox tenant.
    pub fn start(config: GraphConfig) -> GraphFixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(GraphServer::start(config, 0)).unwrap();
        GraphFixture { server, runtime }
    }

    /// The tenant's name.
    pub fn tenant(&self) -> String {
        self.server.truth().tenant.clone()
    }

    /// `ferry export m365:<tenant> --client-id … --graph-endpoint … --login-endpoint … --to TO
    /// extra…` with the sandbox's secret in the environment.
    pub fn export(&self, to: &Path, extra: &[&str]) -> Run {
        self.export_env(
            to,
            extra,
            &[("FERRY_M365_CLIENT_SECRET", GRAPH_CLIENT_SECRET)],
        )
    }

    /// Like [`GraphFixture::export`] with the given environment.
    pub fn export_env(&self, to: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let mut args = vec![
            "export".to_string(),
            format!("m365:{}", self.tenant()),
            "--client-id".into(),
            GRAPH_CLIENT_ID.into(),
            "--graph-endpoint".into(),
            self.server.graph_endpoint(),
            "--login-endpoint".into(),
            self.server.login_endpoint(),
            "--to".into(),
            to.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ferry_env(&args, &env)
    }
}
