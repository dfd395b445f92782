//! `ferry backup google:…` against the Google sandbox. Gmail: the second run reads each
//! mailbox's history from the first run's history id, downloads only the new message (the
//! sandbox counts messages.get), removes the deleted one and restores to the new state while the
//! first run restores the old; an expired history id lists the mailbox whole and reads nothing
//! twice. Drive: the second run reads each drive's changes feed (no files.list at all), reads
//! only new and changed content, follows renames, moves, deletions and trashing, and both runs
//! restore their own Drive state exactly; a renamed folder or a refused changes token lists the
//! drive whole, reading nothing again. A message or file that could not be read in an
//! incremental run is read by the next one, which starts from the same history id and token.

use std::path::Path;

use ferry_e2e::google::{expected_drive_files, restored_drive_files, GoogleFixture};
use ferry_e2e::*;
use ferry_sandbox::GoogleConfig;
use serde_json::Value;

fn backup(fx: &GoogleFixture, repo: &Path, users: &str) -> Value {
    backup_of(fx, repo, users, "gmail,drive")
}

fn backup_of(fx: &GoogleFixture, repo: &Path, users: &str, include: &str) -> Value {
    backup_run(fx, repo, users, include, &[], 0)
}

fn backup_run(
    fx: &GoogleFixture,
    repo: &Path,
    users: &str,
    include: &str,
    extra: &[&str],
    code: i32,
) -> Value {
    let mut args = vec![
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
        include.into(),
        "--repo".into(),
        repo.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = ferry_env(&args, &[]);
    run.expect_code(code);
    run.json()
}

/// The first user who is neither suspended nor the administrator.
fn ordinary_user(truth: &ferry_sandbox::GoogleTruth) -> String {
    truth
        .users
        .iter()
        .find(|u| !u.suspended && !u.is_admin)
        .unwrap()
        .email
        .clone()
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
    let user = ordinary_user(&truth);
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

/// The source's details in a run's record (reconciliation, cursors).
fn details(repo: &Path, run: &str) -> Value {
    let record = std::fs::read(repo.join("runs").join(run).join("run.json")).unwrap();
    serde_json::from_slice::<Value>(&record).unwrap()["cursors"].clone()
}

/// Each drive's reconciliation entry: (type, listing, why it was listed whole).
fn drive_listings(details: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = details["reconciliation"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] != "gmail")
        .map(|r| {
            (
                r["type"].as_str().unwrap().to_string(),
                r["listing"].as_str().unwrap().to_string(),
                r["listed_whole_because"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A restore of `run` holds the Drive files of `truth` that `include` reads for `user`.
fn assert_restores(
    repo: &Path,
    run: &str,
    to: &Path,
    truth: &ferry_sandbox::GoogleTruth,
    user: &str,
    include: &str,
) {
    restore(repo, run, to);
    let got = restored_drive_files(to);
    let want = expected_drive_files(
        truth,
        user,
        include.split(',').any(|p| p == "drive"),
        include.contains("shared-drives"),
    );
    let paths = |m: &std::collections::BTreeMap<std::path::PathBuf, Vec<Vec<u8>>>| {
        m.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(paths(&got), paths(&want), "run {run}: the paths restored");
    for (path, bytes) in &want {
        assert!(got[path] == *bytes, "run {run}: {} differs", path.display());
    }
}

#[test]
fn drives_are_read_from_the_changes_feed_and_listed_whole_when_a_folder_moves() {
    let fx = GoogleFixture::start(GoogleConfig {
        users: 2,
        messages_per_user: 2,
        files_per_user: 4,
        shared_drives: 1,
        ..GoogleConfig::default()
    });
    let truth = fx.server.truth().clone();
    let user = ordinary_user(&truth);
    let shared = truth
        .shared_drives
        .iter()
        .find(|d| d.members.contains(&user))
        .unwrap()
        .clone();
    let mine = |name: &str| {
        truth
            .files_of_owner(&user)
            .into_iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    let in_shared = |name: &str| {
        truth
            .drive_files(&shared.id)
            .into_iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    let include = "drive,shared-drives";
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let s1 = backup_of(&fx, &repo, &user, include);
    let run1 = s1["run"].as_str().unwrap().to_string();
    assert_eq!(
        drive_listings(&details(&repo, &run1)),
        vec![
            (
                "my_drive".into(),
                "whole".into(),
                "no changes token from an earlier run".into()
            ),
            (
                "shared_drive".into(),
                "whole".into(),
                "no changes token from an earlier run".into()
            ),
        ]
    );
    assert_restores(&repo, &run1, &dir.path().join("r1"), &truth, &user, include);

    // Added, modified (a binary file and a Google Doc), renamed, moved, deleted, trashed; a new
    // folder with a file in it; a file added to and one deleted from the shared drive.
    let docs = mine("Documents");
    fx.server
        .add_file(&user, Some(&mine("Projects").id), "added.bin", 5_000)
        .unwrap();
    assert!(fx.server.modify_file(&mine("report.pdf").id));
    assert!(fx.server.modify_file(&mine("Meeting notes").id));
    assert!(fx
        .server
        .rename_file(&mine("data.csv").id, "data (renamed).csv"));
    assert!(fx.server.move_file(&mine("photo.jpg").id, Some(&docs.id)));
    assert!(fx.server.delete_file(&mine("Caf\u{e9}.txt").id));
    assert!(fx.server.trash_file(&mine("Q1/Q2 report.pdf").id));
    let folder = fx
        .server
        .add_folder(&user, Some(&docs.id), "New folder")
        .unwrap();
    fx.server
        .add_file(&user, Some(&folder.id), "inside.bin", 700)
        .unwrap();
    fx.server
        .add_file(&user, Some(&in_shared("Specs").id), "spec-2.bin", 3_000)
        .unwrap();
    assert!(fx.server.delete_file(&in_shared("readme.txt").id));
    let before = fx.server.stats();
    let s2 = backup_of(&fx, &repo, &user, include);
    let after = fx.server.stats();
    let run2 = s2["run"].as_str().unwrap().to_string();
    assert_eq!(
        after.files_list_pages, before.files_list_pages,
        "no drive is listed whole"
    );
    assert!(after.changes_pages >= before.changes_pages + 2);
    assert_eq!(
        after.downloads - before.downloads,
        5,
        "only the 4 new files and the modified file and Doc are read"
    );
    let c = &s2["counts"];
    assert_eq!(c["added"], 5, "{s2:#}"); // 3 new files, the renamed and the moved one
    assert_eq!(c["changed"], 2, "{s2:#}");
    assert_eq!(c["removed"], 5, "{s2:#}"); // old keys of 2, deleted 2, trashed 1
    assert_eq!(
        drive_listings(&details(&repo, &run2)),
        vec![
            ("my_drive".into(), "changes".into(), String::new()),
            ("shared_drive".into(), "changes".into(), String::new()),
        ]
    );
    assert_restores(
        &repo,
        &run2,
        &dir.path().join("r2"),
        &fx.server.current_truth(),
        &user,
        include,
    );
    assert_restores(
        &repo,
        &run1,
        &dir.path().join("r1-again"),
        &truth,
        &user,
        include,
    );

    // A renamed folder changes the paths of files the feed does not list: My Drive is listed
    // whole, and its files get their new paths without being read again.
    assert!(fx
        .server
        .rename_file(&mine("Projects").id, "Projects (2025)"));
    let before = fx.server.stats();
    let s3 = backup_of(&fx, &repo, &user, include);
    let after = fx.server.stats();
    let run3 = s3["run"].as_str().unwrap().to_string();
    assert!(after.files_list_pages > before.files_list_pages);
    assert_eq!(after.downloads, before.downloads, "{s3:#}");
    let c = &s3["counts"];
    assert!(c["added"].as_u64().unwrap() >= 4, "{s3:#}");
    assert_eq!(c["added"], c["removed"], "{s3:#}");
    assert_eq!(c["changed"], 0, "{s3:#}");
    let listings = drive_listings(&details(&repo, &run3));
    assert_eq!(listings[0].1, "whole");
    assert!(listings[0].2.contains("renamed"), "{listings:?}");
    assert_eq!(listings[1].1, "changes");
    assert_restores(
        &repo,
        &run3,
        &dir.path().join("r3"),
        &fx.server.current_truth(),
        &user,
        include,
    );

    // A changes token Drive refuses: both drives are listed whole, only the new file is read.
    fx.server.invalidate_change_tokens();
    fx.server.add_file(&user, None, "late.bin", 900).unwrap();
    let before = fx.server.stats();
    let s4 = backup_of(&fx, &repo, &user, include);
    let after = fx.server.stats();
    let run4 = s4["run"].as_str().unwrap().to_string();
    assert!(after.files_list_pages > before.files_list_pages);
    assert_eq!(after.downloads - before.downloads, 1, "{s4:#}");
    let c = &s4["counts"];
    assert_eq!(
        (
            c["added"].as_u64(),
            c["changed"].as_u64(),
            c["removed"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{s4:#}"
    );
    for (_, listing, why) in drive_listings(&details(&repo, &run4)) {
        assert_eq!(listing, "whole");
        assert!(why.contains("refused"), "{why}");
    }
    assert_restores(
        &repo,
        &run4,
        &dir.path().join("r4"),
        &fx.server.current_truth(),
        &user,
        include,
    );

    // The next run reads the changes from the tokens the whole listings saved: nothing.
    let before = fx.server.stats();
    let s5 = backup_of(&fx, &repo, &user, include);
    let after = fx.server.stats();
    assert_eq!(after.files_list_pages, before.files_list_pages);
    assert_eq!(after.downloads, before.downloads);
    let c = &s5["counts"];
    assert_eq!(
        (
            c["added"].as_u64(),
            c["changed"].as_u64(),
            c["removed"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{s5:#}"
    );
}

#[test]
fn what_failed_in_an_incremental_run_is_read_again_by_the_next() {
    let fx = GoogleFixture::start(GoogleConfig {
        users: 2,
        messages_per_user: 4,
        files_per_user: 2,
        shared_drives: 0,
        ..GoogleConfig::default()
    });
    let user = ordinary_user(fx.server.truth());
    let dir = tempdir();
    let repo = dir.path().join("repo");
    backup(&fx, &repo, &user);
    fx.server
        .set_failing(Some("Flaky message"), Some("flaky.bin"));
    let flaky = fx
        .server
        .add_message(&user, &["INBOX"], "Flaky message")
        .unwrap();
    fx.server.add_file(&user, None, "flaky.bin", 2_000).unwrap();
    fx.server.add_file(&user, None, "fine.bin", 1_000).unwrap();
    let s2 = backup_run(&fx, &repo, &user, "gmail,drive", &["--retries", "0"], 1);
    assert_eq!(s2["counts"]["added"], 1, "{s2:#}");
    assert_eq!(s2["counts"]["failed"], 2, "{s2:#}");

    // The faults gone, the next run reads the history and the changes from where the failed
    // run started: the two items that failed are read, nothing else, and nothing is listed
    // whole.
    fx.server.set_failing(None, None);
    let before = fx.server.stats();
    let s3 = backup(&fx, &repo, &user);
    let after = fx.server.stats();
    let c = &s3["counts"];
    assert_eq!(
        (
            c["added"].as_u64(),
            c["changed"].as_u64(),
            c["removed"].as_u64()
        ),
        (Some(2), Some(0), Some(0)),
        "{s3:#}"
    );
    assert_eq!(after.files_list_pages, before.files_list_pages);
    assert_eq!(after.messages_list_pages, before.messages_list_pages);
    assert_eq!(after.downloads - before.downloads, 1, "only flaky.bin");
    assert_eq!(
        after.messages_get - before.messages_get,
        1,
        "only the message"
    );
    let to = dir.path().join("latest");
    restore(&repo, "latest", &to);
    assert!(emls(&to).contains(&flaky.raw()));
    assert_eq!(
        restored_drive_files(&to),
        expected_drive_files(&fx.server.current_truth(), &user, true, false)
    );
}

#[test]
fn a_renamed_shared_drive_moves_to_its_new_name_and_a_deleted_one_is_emptied() {
    let fx = GoogleFixture::start(GoogleConfig {
        users: 3,
        messages_per_user: 2,
        files_per_user: 0,
        shared_drives: 2,
        ..GoogleConfig::default()
    });
    let truth = fx.server.truth().clone();
    let user = ordinary_user(&truth);
    let drives: Vec<_> = truth
        .shared_drives
        .iter()
        .filter(|d| d.members.contains(&user))
        .cloned()
        .collect();
    assert_eq!(drives.len(), 2);
    let dir = tempdir();
    let repo = dir.path().join("repo");
    backup_of(&fx, &repo, &user, "shared-drives");
    assert!(fx
        .server
        .rename_shared_drive(&drives[0].id, "Renamed drive"));
    assert!(fx.server.delete_shared_drive(&drives[1].id));
    let s2 = backup_of(&fx, &repo, &user, "shared-drives");
    let run2 = s2["run"].as_str().unwrap().to_string();
    let c = &s2["counts"];
    assert_eq!(c["blobs_written"], 0, "nothing new: {s2:#}");
    assert_eq!(c["changed"], 0, "{s2:#}");
    assert!(
        c["removed"].as_u64().unwrap() > c["added"].as_u64().unwrap(),
        "{s2:#}"
    );
    let d = details(&repo, &run2);
    let listings = drive_listings(&d);
    assert_eq!(listings.len(), 1);
    assert_eq!(listings[0].1, "whole");
    assert!(listings[0].2.contains("renamed"), "{listings:?}");
    let notes = d["notes"].to_string();
    assert!(
        notes.contains(&drives[1].name) && notes.contains("deleted"),
        "{notes}"
    );
    assert_restores(
        &repo,
        &run2,
        &dir.path().join("r2"),
        &fx.server.current_truth(),
        &user,
        "shared-drives",
    );

    // The next run reads the renamed drive's changes; the deleted one is not mentioned again.
    let before = fx.server.stats();
    let s3 = backup_of(&fx, &repo, &user, "shared-drives");
    let run3 = s3["run"].as_str().unwrap().to_string();
    assert_eq!(fx.server.stats().files_list_pages, before.files_list_pages);
    assert_eq!(s3["counts"]["removed"], 0, "{s3:#}");
    let d = details(&repo, &run3);
    assert_eq!(drive_listings(&d)[0].1, "changes");
    assert!(d.get("notes").is_none(), "{d:#}");
}
