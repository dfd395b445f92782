//! `ferry backup m365:…` against the Graph sandbox: the second run lists mail folders from the
//! first run's delta links, downloads only the new message (the sandbox counts downloads),
//! marks the deleted one removed, restores to the new state while the first run still restores
//! the old; an expired delta state lists that folder whole again and loses nothing.

use std::path::Path;

use ferry_e2e::m365::GraphFixture;
use ferry_e2e::*;
use ferry_sandbox::{GraphConfig, GRAPH_CLIENT_ID, GRAPH_CLIENT_SECRET};
use serde_json::Value;

/// `ferry backup m365:… --include INCLUDE --repo REPO --json`.
fn backup_run(fx: &GraphFixture, repo: &Path, include: &str) -> Run {
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
        include.into(),
        "--repo".into(),
        repo.display().to_string(),
        "--json".into(),
    ];
    ferry_env(
        &args,
        &[(
            "FERRY_M365_CLIENT_SECRET".to_string(),
            GRAPH_CLIENT_SECRET.to_string(),
        )],
    )
}

/// A mail and OneDrive backup that must succeed; its summary.
fn backup(fx: &GraphFixture, repo: &Path) -> Value {
    let run = backup_run(fx, repo, "mail,onedrive");
    run.expect_code(0);
    run.json()
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

/// SHA-256 of every file restored under `root`, by path relative to it.
fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::Digest as _;
    files_under(root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, hex(&sha2::Sha256::digest(std::fs::read(&p).unwrap())))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The sorted digests of a drive's files as the sandbox holds them now.
fn drive_digests(fx: &GraphFixture, drive_id: &str) -> Vec<String> {
    use sha2::Digest as _;
    let mut out: Vec<String> = fx
        .server
        .current_truth()
        .files
        .iter()
        .filter(|f| f.drive_id == drive_id)
        .map(|f| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut f.bytes(), &mut bytes).unwrap();
            hex(&sha2::Sha256::digest(&bytes))
        })
        .collect();
    out.sort();
    out
}

/// Restores `run` (latest when None) and returns the files of one OneDrive, by path below it.
fn restored_drive(
    dir: &Path,
    repo: &Path,
    run: Option<&str>,
    tenant: &str,
    upn: &str,
) -> std::collections::BTreeMap<String, String> {
    let to = dir.join(format!("restore-{}", run.unwrap_or("latest")));
    let mut args = vec![
        "restore".to_string(),
        "--repo".into(),
        repo.display().to_string(),
        "--to".into(),
        to.display().to_string(),
    ];
    if let Some(r) = run {
        args.extend(["--run".to_string(), r.to_string()]);
    }
    ferry(&args).expect_code(0);
    tree(
        &to.join("m365")
            .join(tenant)
            .join("users")
            .join(upn)
            .join("onedrive"),
    )
}

/// Folders (not the root) of a drive with nothing in them, as the sandbox holds them now.
fn empty_folders(fx: &GraphFixture, drive_id: &str) -> u64 {
    let t = fx.server.current_truth();
    t.drive_folders
        .iter()
        .filter(|f| f.drive_id == drive_id && f.parent_id.is_some())
        .filter(|f| {
            !t.files.iter().any(|x| x.parent_id == f.id)
                && !t
                    .drive_folders
                    .iter()
                    .any(|x| x.parent_id.as_deref() == Some(f.id.as_str()))
        })
        .count() as u64
}

fn sorted_values(m: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut v: Vec<String> = m.values().cloned().collect();
    v.sort();
    v
}

#[test]
fn drives_are_read_from_delta_links_with_moves_renames_and_deletions() {
    let fx = GraphFixture::start(GraphConfig {
        users: 2,
        messages_per_user: 2,
        files_per_user: 12,
        ..GraphConfig::default()
    });
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let truth = fx.server.truth().clone();
    let tenant = fx.tenant();
    let user = truth
        .licensed_users()
        .find(|u| {
            u.drive_id.as_ref().is_some_and(|d| {
                truth.files.iter().filter(|f| &f.drive_id == d).count() >= 4
                    && truth
                        .drive_folders
                        .iter()
                        .any(|f| &f.drive_id == d && f.path.len() == 1)
            })
        })
        .expect("a user with files and folders")
        .clone();
    let upn = user.user_principal_name.clone();
    let drive = user.drive_id.clone().unwrap();
    let before = drive_digests(&fx, &drive);
    let empty_before = empty_folders(&fx, &drive);

    let s1 = backup(&fx, &repo);
    let run1 = s1["run"].as_str().unwrap().to_string();
    let run1_tree = restored_drive(dir.path(), &repo, Some(&run1), &tenant, &upn);
    assert_eq!(
        sorted_values(&run1_tree),
        before,
        "run 1 restores the drive"
    );

    // Change the drive: a new file, a new folder with a file, one file changed, one moved and
    // renamed, one deleted.
    let files: Vec<_> = truth
        .files
        .iter()
        .filter(|f| f.drive_id == drive && !f.listed_differs())
        .cloned()
        .collect();
    let (changed, moved, deleted) = (&files[0], &files[1], &files[2]);
    fx.server
        .add_file(&drive, &[], "arrived-after-run-1.bin", 3000)
        .unwrap();
    fx.server
        .add_drive_folder(&drive, &[], "Fresh folder")
        .unwrap();
    fx.server
        .add_file(&drive, &["Fresh folder"], "inside.bin", 2000)
        .unwrap();
    assert!(fx.server.modify_file(&changed.id, 4321));
    assert!(fx
        .server
        .move_drive_item(&moved.id, &[], "moved and renamed.bin"));
    assert!(fx.server.delete_drive_item(&deleted.id));
    let stats = fx.server.stats();
    let emptied = empty_folders(&fx, &drive) - empty_before;
    let s2 = backup(&fx, &repo);
    let after = fx.server.stats();
    assert_eq!(
        after.drive_enumerations, stats.drive_enumerations,
        "no drive is enumerated again: {s2:#}"
    );
    assert_eq!(
        after.downloads - stats.downloads,
        3,
        "only the two new files and the changed one are downloaded (the moved one is not): {s2:#}"
    );
    let c = &s2["counts"];
    assert_eq!(c["changed"], 1, "{s2:#}");
    assert_eq!(
        c["added"],
        3 + emptied,
        "new, inside, moved, and folders left empty: {s2:#}"
    );
    assert_eq!(c["removed"], 2, "deleted, moved's old path: {s2:#}");
    let run2 = s2["run"].as_str().unwrap().to_string();
    let run2_tree = restored_drive(dir.path(), &repo, Some(&run2), &tenant, &upn);
    assert_eq!(sorted_values(&run2_tree), drive_digests(&fx, &drive));
    assert!(
        run2_tree.contains_key("moved and renamed.bin"),
        "{run2_tree:#?}"
    );
    assert!(run2_tree.contains_key("Fresh folder/inside.bin"));
    let moved_old = moved.path.join("/");
    assert!(!run2_tree.contains_key(&moved_old));
    // Run 1 still restores what was there then.
    let again = restored_drive(dir.path(), &repo, Some(&run1), &tenant, &upn);
    assert_eq!(again, run1_tree);
    assert!(again.contains_key(&moved_old));

    // A renamed folder changes the paths of files the delta does not list: the drive is
    // listed whole, nothing is downloaded again, the old paths are gone.
    let folder = truth
        .drive_folders
        .iter()
        .find(|f| {
            f.drive_id == drive
                && f.path.len() == 1
                && run2_tree
                    .keys()
                    .any(|k| k.starts_with(&format!("{}/", f.name)))
        })
        .expect("a top-level folder with files")
        .clone();
    assert!(fx.server.move_drive_item(&folder.id, &[], "Renamed folder"));
    let stats = fx.server.stats();
    let s3 = backup(&fx, &repo);
    let after = fx.server.stats();
    assert!(
        after.drive_enumerations > stats.drive_enumerations,
        "{s3:#}"
    );
    assert_eq!(after.downloads - stats.downloads, 0, "{s3:#}");
    let run3 = s3["run"].as_str().unwrap().to_string();
    let run3_tree = restored_drive(dir.path(), &repo, Some(&run3), &tenant, &upn);
    assert_eq!(sorted_values(&run3_tree), drive_digests(&fx, &drive));
    let old_prefix = format!("{}/", folder.name);
    assert!(
        !run3_tree.keys().any(|k| k.starts_with(&old_prefix)),
        "{run3_tree:#?}"
    );
    assert!(run3_tree.keys().any(|k| k.starts_with("Renamed folder/")));

    // An expired delta link: listed whole, only the new file read.
    fx.server.invalidate_delta_tokens();
    fx.server
        .add_file(&drive, &[], "after-resync.bin", 1000)
        .unwrap();
    let stats = fx.server.stats();
    let s4 = backup(&fx, &repo);
    let after = fx.server.stats();
    assert!(
        after.drive_enumerations > stats.drive_enumerations,
        "{s4:#}"
    );
    assert_eq!(s4["counts"]["added"], 1, "{s4:#}");
    assert_eq!(s4["counts"]["removed"], 0, "{s4:#}");
    let run4 = s4["run"].as_str().unwrap().to_string();
    let run4_tree = restored_drive(dir.path(), &repo, Some(&run4), &tenant, &upn);
    assert_eq!(sorted_values(&run4_tree), drive_digests(&fx, &drive));

    // A user deleted from the tenant: their mail and OneDrive are marked removed; run 4 still
    // restores them.
    assert!(fx.server.delete_user(&upn));
    let s5 = backup(&fx, &repo);
    let removed = s5["counts"]["removed"].as_u64().unwrap();
    assert!(removed > run4_tree.len() as u64, "mail and files: {s5:#}");
    assert_eq!(
        s5["counts"]["state_entries"].as_u64().unwrap() + removed,
        s4["counts"]["state_entries"].as_u64().unwrap(),
        "{s5:#}"
    );
    assert!(restored_drive(dir.path(), &repo, None, &tenant, &upn).is_empty());
    let again = restored_drive(dir.path(), &repo, Some(&run4), &tenant, &upn);
    assert_eq!(again, run4_tree);
}

#[test]
fn a_file_that_failed_in_an_incremental_run_is_read_by_the_next() {
    let fx = GraphFixture::start(GraphConfig {
        users: 1,
        messages_per_user: 2,
        files_per_user: 6,
        ..GraphConfig::default()
    });
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let truth = fx.server.truth().clone();
    let user = truth
        .licensed_users()
        .find(|u| u.drive_id.is_some())
        .unwrap()
        .clone();
    let drive = user.drive_id.clone().unwrap();
    backup(&fx, &repo);

    // The new file's download is corrupted: run 2 reports it and exits 1.
    fx.server.corrupt_file("flaky.bin", true);
    fx.server.add_file(&drive, &[], "flaky.bin", 5000).unwrap();
    let run = backup_run(&fx, &repo, "mail,onedrive");
    run.expect_code(1);
    let s2 = run.json();
    assert_eq!(s2["counts"]["failed"], 1, "{s2:#}");

    // Nothing changes at the source; the next run still reads the file (the drive kept no
    // cursor, so it is listed whole) and stores it.
    fx.server.corrupt_file("flaky.bin", false);
    let downloads = fx.server.stats().downloads;
    let s3 = backup(&fx, &repo);
    assert_eq!(s3["counts"]["added"], 1, "{s3:#}");
    assert_eq!(fx.server.stats().downloads - downloads, 1, "{s3:#}");
    let tree = restored_drive(
        dir.path(),
        &repo,
        None,
        &fx.tenant(),
        &user.user_principal_name,
    );
    assert!(tree.contains_key("flaky.bin"), "{tree:#?}");
}

#[test]
fn a_document_library_deleted_since_the_last_run_has_its_files_removed() {
    let fx = GraphFixture::start(GraphConfig {
        users: 1,
        messages_per_user: 1,
        files_per_user: 2,
        ..GraphConfig::default()
    });
    let dir = tempdir();
    let repo = dir.path().join("repo");
    let truth = fx.server.truth().clone();
    let run = backup_run(&fx, &repo, "sharepoint");
    run.expect_code(0);
    let s1 = run.json();
    // A library with files, in a site that keeps another library or not: either way only its
    // files go.
    let (_, drive) = truth
        .sites
        .iter()
        .flat_map(|s| s.drive_ids.iter().map(move |d| (s, d)))
        .find(|(_, d)| truth.files.iter().any(|f| &f.drive_id == *d))
        .expect("a library with files");
    let drive_files = truth.files.iter().filter(|f| &f.drive_id == drive).count() as u64;
    assert!(fx.server.delete_drive(drive));
    let downloads = fx.server.stats().downloads;
    let run = backup_run(&fx, &repo, "sharepoint");
    run.expect_code(0);
    let s2 = run.json();
    assert_eq!(fx.server.stats().downloads, downloads, "{s2:#}");
    let removed = s2["counts"]["removed"].as_u64().unwrap();
    assert!(removed >= drive_files, "{s2:#}");
    assert_eq!(
        s2["counts"]["state_entries"].as_u64().unwrap() + removed,
        s1["counts"]["state_entries"].as_u64().unwrap(),
        "{s2:#}"
    );
    let runs = ferry(["runs", "--repo", repo.to_str().unwrap(), "--json"]);
    let last: Value = serde_json::from_str(runs.stdout.lines().last().unwrap()).unwrap();
    assert!(
        last.to_string().contains("the library is gone"),
        "the run says why: {last:#}"
    );
}
