//! `ferry backup m365:…` against the Graph sandbox: the second run lists mail folders from the
//! first run's delta links, downloads only the new message (the sandbox counts downloads),
//! marks the deleted one removed, restores to the new state while the first run still restores
//! the old; an expired delta state lists that folder whole again and loses nothing.

use std::path::Path;

use ferry_e2e::m365::GraphFixture;
use ferry_e2e::*;
use ferry_sandbox::{GraphConfig, GRAPH_CLIENT_ID, GRAPH_CLIENT_SECRET};
use serde_json::Value;

fn backup(fx: &GraphFixture, repo: &Path) -> Value {
    let args = vec![
        "backup".to_string(),
        format!("m365:{}", fx.tenant()),
        "--client-id".into(),
        GRAPH_CLIENT_ID.into(),
        "--graph-endpoint".into(),
        fx.server.graph_endpoint(),
        "--login-endpoint".into(),
        fx.server.login_endpoint(),
        "--include".into(),
        "mail,onedrive".into(),
        "--repo".into(),
        repo.display().to_string(),
        "--json".into(),
    ];
    let run = ferry_env(
        &args,
        &[(
            "FERRY_M365_CLIENT_SECRET".to_string(),
            GRAPH_CLIENT_SECRET.to_string(),
        )],
    );
    run.expect_code(0);
    run.json()
}

/// Every restored .eml's bytes under `root`.
fn emls(root: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "eml") {
                out.push(std::fs::read(p).unwrap());
            }
        }
    }
    out
}

#[test]
fn a_second_run_lists_from_delta_links_and_downloads_only_the_new_message() {
    let fx = GraphFixture::start(GraphConfig {
        users: 2,
        messages_per_user: 12,
        files_per_user: 4,
        ..GraphConfig::default()
    });
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let s1 = backup(&fx, &repo);
    let run1 = s1["run"].as_str().unwrap().to_string();
    let added1 = s1["counts"]["added"].as_u64().unwrap();
    assert!(added1 > 20, "{s1:#}");

    let truth = fx.server.truth().clone();
    let user = truth.licensed_users().next().unwrap().clone();
    let victim = truth
        .messages()
        .find(|e| e.user.id == user.id && e.folder.in_ipm_subtree && !e.mailbox.is_archive)
        .unwrap()
        .message
        .clone();
    let added = fx
        .server
        .add_message(
            &user.user_principal_name,
            "inbox",
            "Arrived after the first run",
        )
        .unwrap();
    assert!(fx
        .server
        .delete_message(&user.user_principal_name, &victim.id));
    let downloads = fx.server.stats().downloads;
    let s2 = backup(&fx, &repo);
    let c = &s2["counts"];
    assert_eq!(c["added"], 1, "{s2:#}");
    assert_eq!(c["removed"], 1, "{s2:#}");
    assert_eq!(c["changed"], 0, "{s2:#}");
    assert_eq!(
        fx.server.stats().downloads - downloads,
        1,
        "only the new message is downloaded"
    );
    // Mail folders were listed from their delta links.
    let runs = ferry(["runs", "--repo", repo.to_str().unwrap(), "--json"]);
    let last: Value = serde_json::from_str(runs.stdout.lines().last().unwrap()).unwrap();
    let recon = last["cursors"]["reconciliation"].as_array().unwrap();
    assert!(
        recon.iter().any(|r| r["status"] == "incremental"),
        "{last:#}"
    );

    // The latest run has the new message and not the deleted one; the first run the reverse.
    let new_state = dir.path().join("new");
    ferry([
        "restore",
        "--repo",
        repo.to_str().unwrap(),
        "--to",
        new_state.to_str().unwrap(),
    ])
    .expect_code(0);
    let now = emls(&new_state);
    assert!(now.contains(&added.mime()));
    assert!(!now.contains(&victim.mime()));
    let old_state = dir.path().join("old");
    ferry([
        "restore",
        "--repo",
        repo.to_str().unwrap(),
        "--run",
        &run1,
        "--to",
        old_state.to_str().unwrap(),
    ])
    .expect_code(0);
    let then = emls(&old_state);
    assert!(then.contains(&victim.mime()));
    assert!(!then.contains(&added.mime()));
    assert_eq!(now.len(), then.len());

    // Expired delta states: the folders are listed whole again; nothing is lost or doubled.
    fx.server.invalidate_delta_tokens();
    let another = fx
        .server
        .add_message(&user.user_principal_name, "inbox", "After the resync")
        .unwrap();
    let s3 = backup(&fx, &repo);
    assert_eq!(s3["counts"]["added"], 1, "{s3:#}");
    assert_eq!(s3["counts"]["removed"], 0, "{s3:#}");
    let latest = dir.path().join("latest");
    ferry([
        "restore",
        "--repo",
        repo.to_str().unwrap(),
        "--to",
        latest.to_str().unwrap(),
    ])
    .expect_code(0);
    let all = emls(&latest);
    assert!(all.contains(&another.mime()) && all.contains(&added.mime()));
    assert_eq!(all.len(), now.len() + 1);
}
