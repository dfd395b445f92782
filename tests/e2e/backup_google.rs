//! `ferry backup google:…` against the Google sandbox: the second run reads each mailbox's
//! history from the first run's history id, downloads only the new message (the sandbox counts
//! messages.get), removes the deleted one and restores to the new state while the first run
//! restores the old; an expired history id lists the mailbox whole and reads nothing twice.

use std::path::Path;

use ferry_e2e::google::GoogleFixture;
use ferry_e2e::*;
use ferry_sandbox::GoogleConfig;
use serde_json::Value;

fn backup(fx: &GoogleFixture, repo: &Path, users: &str) -> Value {
    let args = vec![
        "backup".to_string(),
        format!("google:{}", fx.domain()),
        "--service-account".into(),
        fx.key.display().to_string(),
        "--admin".into(),
        fx.server.admin_email(),
        "--google-endpoint".into(),
        fx.server.endpoint(),
        "--users".into(),
        users.into(),
        "--include".into(),
        "gmail,drive".into(),
        "--repo".into(),
        repo.display().to_string(),
        "--json".into(),
    ];
    let run = ferry_env(&args, &[]);
    run.expect_code(0);
    run.json()
}

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

fn restore(repo: &Path, run: &str, to: &Path) {
    ferry([
        "restore",
        "--repo",
        repo.to_str().unwrap(),
        "--run",
        run,
        "--to",
        to.to_str().unwrap(),
    ])
    .expect_code(0);
}

#[test]
fn a_second_run_reads_the_history_and_downloads_only_the_new_message() {
    let fx = GoogleFixture::start(GoogleConfig {
        users: 2,
        messages_per_user: 10,
        files_per_user: 2,
        ..GoogleConfig::default()
    });
    let truth = fx.server.truth().clone();
    let user = truth
        .users
        .iter()
        .find(|u| !u.suspended && !u.is_admin)
        .unwrap()
        .email
        .clone();
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let s1 = backup(&fx, &repo, &user);
    let run1 = s1["run"].as_str().unwrap().to_string();
    let victim = truth
        .messages_of(&user)
        .iter()
        .find(|m| !m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH"))
        .unwrap()
        .clone();
    let added = fx
        .server
        .add_message(&user, &["INBOX"], "Arrived after the first run")
        .unwrap();
    assert!(fx.server.delete_message(&user, &victim.id));
    let gets = fx.server.stats().messages_get;
    let downloads = fx.server.stats().downloads;
    let s2 = backup(&fx, &repo, &user);
    let c = &s2["counts"];
    assert_eq!(c["added"], 1, "{s2:#}");
    assert_eq!(c["removed"], 1, "{s2:#}");
    assert_eq!(c["changed"], 0, "{s2:#}");
    assert_eq!(
        fx.server.stats().messages_get - gets,
        1,
        "only the new message is read"
    );
    assert_eq!(
        fx.server.stats().downloads,
        downloads,
        "no Drive file is read again"
    );

    let new_state = dir.path().join("new");
    restore(&repo, "latest", &new_state);
    let now = emls(&new_state);
    assert!(now.contains(&added.raw()));
    assert!(!now.contains(&victim.raw()));
    let old_state = dir.path().join("old");
    restore(&repo, &run1, &old_state);
    let then = emls(&old_state);
    assert!(then.contains(&victim.raw()) && !then.contains(&added.raw()));

    // An expired history id: the mailbox is listed whole, only unknown messages are read.
    fx.server.invalidate_history();
    let another = fx
        .server
        .add_message(&user, &["INBOX"], "After the history expired")
        .unwrap();
    let gets = fx.server.stats().messages_get;
    let s3 = backup(&fx, &repo, &user);
    assert_eq!(s3["counts"]["added"], 1, "{s3:#}");
    assert_eq!(s3["counts"]["removed"], 0, "{s3:#}");
    assert_eq!(fx.server.stats().messages_get - gets, 1, "{s3:#}");
    let latest = dir.path().join("latest");
    restore(&repo, "latest", &latest);
    let all = emls(&latest);
    assert!(all.contains(&another.raw()) && all.contains(&added.raw()));
    assert_eq!(all.len(), now.len() + 1);
}
