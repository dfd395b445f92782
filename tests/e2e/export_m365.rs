//! `ferry export m365:…` end to end through the CLI, against the Graph sandbox on 127.0.0.1:
//! every message and file byte-identical to the sandbox's ground truth, reconciliation green,
//! the per-mailbox limit kept, throttling, token expiry, corruption and permanent failures.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use ferry_e2e::m365::GraphFixture;
use ferry_e2e::*;
use ferry_sandbox::{ClientCertificate, GraphConfig, GraphFaults, Truth, GRAPH_CLIENT_SECRET};
use serde_json::Value;

fn config(users: usize, messages: usize, files: usize) -> GraphConfig {
    GraphConfig {
        users,
        messages_per_user: messages,
        files_per_user: files,
        sites: 1,
        ..GraphConfig::default()
    }
}

/// items.jsonl records by source id.
fn by_id(bag: &Path) -> HashMap<String, Value> {
    items(bag)
        .into_iter()
        .map(|r| (r["source"]["id"].as_str().unwrap().to_string(), r))
        .collect()
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// Checks that every message (primary mailboxes and archives; Recoverable Items when
/// `recoverable`) and every file of the licensed users and sites is in the bag, byte for byte,
/// and nothing else is. Returns (messages, files) compared.
fn assert_matches_truth(
    bag: &Path,
    truth: &Truth,
    recoverable: bool,
    skip_subject: Option<&str>,
    skip_file: Option<&str>,
) -> (usize, usize) {
    let records = by_id(bag);
    let mut messages = 0;
    for e in truth.messages() {
        if !e.user.licensed {
            continue;
        }
        let in_recoverable = !e.folder.in_ipm_subtree;
        if in_recoverable && (!recoverable || e.mailbox.is_archive) {
            continue;
        }
        if skip_subject == Some(e.message.subject.as_str()) {
            assert!(
                !records.contains_key(&e.message.id),
                "{} should have failed",
                e.message.subject
            );
            continue;
        }
        let r = records.get(&e.message.id).unwrap_or_else(|| {
            panic!(
                "message {:?} in {:?} of {} missing (immutable id {})",
                e.message.subject, e.folder.path, e.user.user_principal_name, e.message.id
            )
        });
        let path = bag.join(r["path"].as_str().unwrap());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            e.message.mime(),
            "{}",
            path.display()
        );
        assert_eq!(
            r["extra"]["internet_message_id"],
            e.message.internet_message_id.as_str()
        );
        assert_eq!(r["source"]["account"], e.user.user_principal_name.as_str());
        assert_eq!(r["media_type"], "message/rfc822");
        let folder_path: Vec<String> =
            serde_json::from_value(r["extra"]["folder_path"].clone()).unwrap();
        assert!(
            folder_path.ends_with(&e.folder.path),
            "{folder_path:?} vs {:?}",
            e.folder.path
        );
        messages += 1;
    }
    let mut files = 0;
    for f in truth.files() {
        let drive = truth.drive(&f.drive_id).unwrap();
        if let ferry_sandbox::graph::DriveOwner::User(uid) = &drive.owner {
            if !truth.user(uid).is_some_and(|u| u.licensed) {
                continue;
            }
        }
        if skip_file == Some(f.name.as_str()) {
            assert!(
                !records.contains_key(&f.id),
                "{} should have failed",
                f.name
            );
            continue;
        }
        let r = records
            .get(&f.id)
            .unwrap_or_else(|| panic!("file {:?} of drive {} missing", f.path, drive.name));
        let path = bag.join(r["path"].as_str().unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            f.size,
            "{}",
            path.display()
        );
        assert!(
            std::fs::read(&path).unwrap() == read_all(f.bytes()),
            "{} differs",
            path.display()
        );
        assert_eq!(r["source"]["original_name"], f.name.as_str());
        let check = &r["source_checksums"][0];
        assert_eq!(check["algorithm"], "quickxor", "{r}");
        assert_eq!(check["verified"], !f.listed_differs(), "{r}");
        files += 1;
    }
    let content: usize = records.values().filter(|r| r["type"] == "file").count();
    assert_eq!(
        content,
        messages + files,
        "the bag holds items the tenant does not"
    );
    (messages, files)
}

fn details(bag: &Path) -> Value {
    let run: Value =
        serde_json::from_slice(&std::fs::read(bag.join("ferry/run.json")).unwrap()).unwrap();
    run["sources"][0]["details"].clone()
}

#[test]
fn a_tenant_exports_byte_identical_with_reconciliation_green() {
    let fx = GraphFixture::start(GraphConfig {
        large_file_bytes: 9 << 20,
        ..config(3, 24, 12)
    });
    let dir = tempdir();
    let bag = dir.path().join("m365");
    let run = fx.export(
        &bag,
        &["--include-recoverable", "--json", "--concurrency", "12"],
    );
    run.expect_code(0);
    let truth = fx.server.truth();
    let (messages, files) = assert_matches_truth(&bag, truth, true, None, None);
    assert!(
        messages > 60 && files > 30,
        "{messages} messages, {files} files"
    );
    assert_eq!(run.json()["failed_items"], 0);

    // Immutable ids, not the default REST ids.
    let records = by_id(&bag);
    assert!(truth
        .messages()
        .all(|e| !records.contains_key(&e.message.rest_id)));

    // Reconciliation: every folder of every mailbox, its own count against what was archived.
    let d = details(&bag);
    assert_eq!(d["reconciliation_status"], "ok", "{d:#}");
    let recon = d["reconciliation"].as_array().unwrap();
    for e in truth.licensed_users() {
        for mb in e.mailbox.iter().chain(e.archive.iter()) {
            for f in mb.folders.iter().filter(|f| {
                !f.path.is_empty()
                    && (f.in_ipm_subtree
                        || f.well_known_name.as_deref() == Some("recoverableitemsdeletions"))
            }) {
                if mb.is_archive && !f.in_ipm_subtree {
                    continue;
                }
                let r = recon
                    .iter()
                    .find(|r| r["folder_id"] == f.id.as_str())
                    .unwrap_or_else(|| {
                        panic!(
                            "folder {:?} of {} not reconciled",
                            f.path, e.user_principal_name
                        )
                    });
                let msgs = mb.messages.iter().filter(|m| m.folder_id == f.id).count() as u64;
                assert_eq!(r["listed"], msgs, "{r}");
                assert_eq!(r["archived"], msgs, "{r}");
                assert_eq!(r["non_message_items"], f.non_message_items as u64, "{r}");
                assert_eq!(r["hidden"], f.hidden, "{r}");
            }
        }
    }
    assert!(
        recon.iter().any(|r| r["hidden"] == true),
        "a hidden folder was read"
    );
    assert!(
        recon.iter().any(|r| r["mailbox"] == "archive"),
        "the in-place archive was read"
    );
    // Cursors: a delta link per mail folder and per drive.
    let cursors = d["cursors"].as_array().unwrap();
    let folders = recon.iter().filter(|r| r["type"] == "mail_folder").count();
    let drives = recon.iter().filter(|r| r["type"] == "drive").count();
    assert_eq!(cursors.len(), folders + drives);
    assert!(cursors.iter().all(|c| c["delta_link"]
        .as_str()
        .is_some_and(|l| l.starts_with("http"))));

    // Outlook's limit: never more than 4 requests at once for one mailbox.
    let stats = fx.server.stats();
    assert!(stats.max_concurrent_per_mailbox <= 4, "{stats:?}");
    assert!(
        stats.max_concurrent_per_mailbox >= 2,
        "mailboxes were read in parallel: {stats:?}"
    );
    assert_eq!(stats.mailbox_concurrency_rejections, 0, "{stats:?}");

    assert_bagit_py_valid(&bag);
    ferry(["verify", bag.to_str().unwrap()]).expect_code(0);
}

#[test]
fn throttling_token_expiry_and_broken_downloads_lose_nothing() {
    let fx = GraphFixture::start(GraphConfig {
        faults: GraphFaults {
            random_throttle: 0.1,
            throttle_every: 7,
            expire_tokens_after_requests: 25,
            truncate_every: 5,
            // Coprime with truncate_every: a file retried alone at the end of the run must
            // not meet a corrupted download in every attempt (the counters are global).
            corrupt_every: 7,
            ..GraphFaults::default()
        },
        ..config(3, 16, 10)
    });
    let dir = tempdir();
    let bag = dir.path().join("m365.zip");
    let run = fx.export(&bag, &["--json", "--concurrency", "16", "--retries", "8"]);
    run.expect_code(0);
    let summary = run.json();
    assert!(summary["retries"].as_u64().unwrap() > 0, "{summary:#}");
    let stats = fx.server.stats();
    assert!(stats.throttled > 5, "{stats:?}");
    assert!(
        stats.unauthorized > 0 && stats.tokens_issued >= 2,
        "tokens expired mid-run: {stats:?}"
    );
    assert!(stats.max_concurrent_per_mailbox <= 4, "{stats:?}");
    let out = dir.path().join("unzipped");
    unzip_with_python(&bag, &out);
    let inner = out.join("m365");
    let (messages, files) = assert_matches_truth(&inner, fx.server.truth(), false, None, None);
    assert!(messages > 30 && files > 25);
    assert_bagit_py_valid(&inner);
}

#[test]
fn a_permanently_failing_item_is_listed_and_everything_else_archived() {
    let probe = GraphFixture::start(config(2, 12, 6));
    let truth = probe.server.truth().clone();
    // The sandbox fails every message with this subject; subjects repeat, so count them.
    let subject = truth
        .messages()
        .map(|e| e.message.subject.clone())
        .find(|s| !s.is_ascii())
        .expect("a Unicode subject");
    let failing = truth
        .messages()
        .filter(|e| e.user.licensed && e.folder.in_ipm_subtree && e.message.subject == subject)
        .count();
    let file = truth.files().next().unwrap().name.clone();
    drop(probe);
    let fx = GraphFixture::start(GraphConfig {
        faults: GraphFaults {
            fail_message_always: Some(subject.clone()),
            corrupt_always: Some(file.clone()),
            ..GraphFaults::default()
        },
        ..config(2, 12, 6)
    });
    let dir = tempdir();
    let bag = dir.path().join("m365");
    let run = fx.export(&bag, &["--json", "--retries", "2"]);
    run.expect_code(1);
    let summary = run.json();
    let failing_files = truth.files().filter(|f| f.name == file).count();
    assert_eq!(
        summary["failed_items"],
        (failing + failing_files) as u64,
        "{summary:#}"
    );
    let failures = std::fs::read_to_string(bag.join("ferry/failures.jsonl")).unwrap();
    assert!(failures.contains("checksum mismatch"), "{failures}");
    assert!(failures.contains("500"), "{failures}");
    assert_matches_truth(&bag, fx.server.truth(), false, Some(&subject), Some(&file));
    assert_eq!(details(&bag)["reconciliation_status"], "problems");
    // Every record conforms to the published schemas.
    let errors = schema_errors("items.schema.json", &items(&bag));
    assert!(errors.is_empty(), "{errors:#?}");
    let failures: Vec<Value> = failures
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let errors = schema_errors("failure.schema.json", &failures);
    assert!(errors.is_empty(), "{errors:#?}");
    let run: Value =
        serde_json::from_slice(&std::fs::read(bag.join("ferry/run.json")).unwrap()).unwrap();
    let errors = schema_errors("run.schema.json", std::slice::from_ref(&run));
    assert!(errors.is_empty(), "{errors:#?}");
    assert_bagit_py_valid(&bag);
}

/// A server whose `@odata.nextLink` points back at the page just read: the listing stops
/// with a failure that says so, instead of reading the same page forever.
#[test]
fn a_next_link_to_the_same_page_is_an_error_not_an_endless_listing() {
    let fx = GraphFixture::start(GraphConfig {
        faults: GraphFaults {
            repeat_next_link: true,
            ..GraphFaults::default()
        },
        ..config(2, 12, 6)
    });
    let dir = tempdir();
    let bag = dir.path().join("m365");
    let run = fx.export(&bag, &["--json", "--retries", "1", "--page-size", "2"]);
    assert_ne!(run.code, 0, "{run:?}");
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("@odata.nextLink repeats"), "{all}");
}

#[test]
fn a_sharepoint_office_file_served_rewritten_is_kept_and_flagged() {
    let fx = GraphFixture::start(GraphConfig {
        faults: GraphFaults {
            sharepoint_size_mismatch: true,
            ..GraphFaults::default()
        },
        ..config(1, 2, 2)
    });
    let dir = tempdir();
    let bag = dir.path().join("m365");
    fx.export(&bag, &["--include", "sharepoint"]).expect_code(0);
    let truth = fx.server.truth();
    let odd = truth
        .files()
        .find(|f| f.listed_differs())
        .expect("a rewritten file");
    let r = by_id(&bag).remove(&odd.id).unwrap();
    assert_eq!(r["source_checksums"][0]["verified"], false, "{r}");
    assert!(r["source_checksums"][0]["observed"].is_string(), "{r}");
    assert_eq!(r["extra"]["listed_size"], odd.listed_size);
    assert_eq!(r["extra"]["served_size"], odd.size);
    let errors = schema_errors("items.schema.json", &items(&bag));
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(
        std::fs::read(bag.join(r["path"].as_str().unwrap())).unwrap(),
        read_all(odd.bytes())
    );
    // Only SharePoint was read.
    assert!(items(&bag)
        .iter()
        .all(|r| r["extra"]["drive_type"] == "documentLibrary"));
}

#[test]
fn sites_can_be_chosen_by_url() {
    let fx = GraphFixture::start(GraphConfig {
        sites: 3,
        ..config(1, 2, 4)
    });
    let truth = fx.server.truth();
    let site = &truth.sites[1];
    let dir = tempdir();
    let bag = dir.path().join("m365");
    fx.export(&bag, &["--include", "sharepoint", "--sites", &site.web_url])
        .expect_code(0);
    let expected: usize = truth
        .files()
        .filter(|f| site.drive_ids.contains(&f.drive_id))
        .count();
    let records = items(&bag);
    assert_eq!(records.len(), expected);
    assert!(records.iter().all(|r| site
        .drive_ids
        .iter()
        .any(|d| r["source"]["container"] == d.as_str())));
    let run = fx.export(
        &dir.path().join("nope"),
        &[
            "--include",
            "sharepoint",
            "--sites",
            "https://contoso.sharepoint.com/sites/NoSuchSite",
        ],
    );
    run.expect_code(2);
    assert!(
        run.stderr.contains("no SharePoint site at"),
        "{}",
        run.stderr
    );
}

#[test]
fn users_and_include_choose_what_is_read() {
    let fx = GraphFixture::start(config(3, 8, 4));
    let truth = fx.server.truth();
    let who = truth
        .licensed_users()
        .nth(1)
        .unwrap()
        .user_principal_name
        .clone();
    let dir = tempdir();
    let bag = dir.path().join("m365");
    fx.export(&bag, &["--users", &who, "--include", "mail"])
        .expect_code(0);
    let records = items(&bag);
    assert!(!records.is_empty());
    assert!(records
        .iter()
        .all(|r| r["source"]["account"] == who.as_str()));
    assert!(records.iter().all(|r| r["extra"]["m365_type"] == "message"));
    let expected = truth
        .messages()
        .filter(|e| e.user.user_principal_name == who && e.folder.in_ipm_subtree)
        .count();
    assert_eq!(records.len(), expected);

    // A group's members.
    let group = &truth.groups[0];
    let bag = dir.path().join("group");
    fx.export(
        &bag,
        &[
            "--users",
            &format!("group:{}", group.id),
            "--include",
            "onedrive",
        ],
    )
    .expect_code(0);
    let accounts: std::collections::BTreeSet<String> = items(&bag)
        .iter()
        .map(|r| r["source"]["account"].as_str().unwrap().to_string())
        .collect();
    let members: std::collections::BTreeSet<String> = group
        .member_ids
        .iter()
        .filter_map(|id| truth.user(id))
        .filter(|u| u.licensed)
        .map(|u| u.user_principal_name.clone())
        .collect();
    assert_eq!(accounts, members);
}

#[test]
fn wrong_credentials_and_missing_permissions_are_one_clear_sentence() {
    let fx = GraphFixture::start(config(1, 2, 1));
    let dir = tempdir();
    let secret = "not-the-secret-7f3a";
    let run = fx.export_env(
        &dir.path().join("a"),
        &[],
        &[("FERRY_M365_CLIENT_SECRET", secret)],
    );
    run.expect_code(2);
    assert!(run.stderr.contains("AADSTS7000215"), "{}", run.stderr);
    assert!(
        run.stderr.contains("FERRY_M365_CLIENT_SECRET"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
    assert!(
        !dir.path().join("a").exists(),
        "nothing is created before sign-in works"
    );

    let run = fx.export_env(&dir.path().join("b"), &[], &[]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("FERRY_M365_CLIENT_SECRET"),
        "{}",
        run.stderr
    );

    // The Graph endpoint is wrong (nothing listens there).
    let mut args = vec![
        "export".to_string(),
        format!("m365:{}", fx.tenant()),
        "--client-id".into(),
        ferry_sandbox::GRAPH_CLIENT_ID.into(),
        "--login-endpoint".into(),
        "http://127.0.0.1:9/login".into(),
        "--to".into(),
        dir.path().join("c").display().to_string(),
        "--retries".into(),
        "0".into(),
    ];
    let run = ferry_env(
        &args,
        &[(
            "FERRY_M365_CLIENT_SECRET".into(),
            GRAPH_CLIENT_SECRET.into(),
        )],
    );
    run.expect_code(2);
    assert!(
        run.stderr.contains("cannot reach the sign-in endpoint"),
        "{}",
        run.stderr
    );
    args.clear();

    // Mail.Read not granted: each mailbox fails with the permission named; the rest is read.
    let fx = GraphFixture::start(GraphConfig {
        denied_scopes: vec!["Mail.Read".into()],
        ..config(2, 3, 2)
    });
    let bag = dir.path().join("d");
    let run = fx.export(&bag, &[]);
    run.expect_code(1);
    let failures = std::fs::read_to_string(bag.join("ferry/failures.jsonl")).unwrap();
    assert!(failures.contains("Mail.Read"), "{failures}");
    assert!(items(&bag)
        .iter()
        .any(|r| r["extra"]["m365_type"] == "driveItem"));

    // User.Read.All not granted: nothing can be listed; stop before writing.
    let fx = GraphFixture::start(GraphConfig {
        denied_scopes: vec!["User.Read.All".into()],
        ..config(1, 1, 1)
    });
    let run = fx.export(&dir.path().join("e"), &[]);
    run.expect_code(2);
    assert!(run.stderr.contains("User.Read.All"), "{}", run.stderr);
}

fn openssl(args: &[&str], dir: &Path) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_certificate_signs_in_instead_of_a_secret() {
    let dir = tempdir();
    let d = dir.path();
    if !openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ferry-test",
        ],
        d,
    ) {
        assert!(
            std::env::var_os("FERRY_REQUIRE_OPENSSL").is_none(),
            "openssl is needed for this test"
        );
        eprintln!("skipped: no openssl");
        return;
    }
    assert!(openssl(
        &["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"],
        d
    ));
    assert!(openssl(
        &[
            "rsa",
            "-in",
            "key.pem",
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            "pub.der"
        ],
        d
    ));
    let pem = [
        std::fs::read(d.join("cert.pem")).unwrap(),
        std::fs::read(d.join("key.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("app.pem"), pem).unwrap();
    let fx = GraphFixture::start(GraphConfig {
        client_certificate: Some(ClientCertificate {
            cert_der: std::fs::read(d.join("cert.der")).unwrap(),
            public_key_pkcs1_der: std::fs::read(d.join("pub.der")).unwrap(),
        }),
        ..config(1, 3, 2)
    });
    let bag = d.join("bag");
    let app = d.join("app.pem");
    fx.export_env(&bag, &["--certificate", app.to_str().unwrap()], &[])
        .expect_code(0);
    assert!(!items(&bag).is_empty());

    // Another certificate is refused with a sentence about it.
    assert!(openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "k2.pem",
            "-out",
            "c2.pem",
            "-days",
            "2",
            "-subj",
            "/CN=other"
        ],
        d
    ));
    let pem = [
        std::fs::read(d.join("c2.pem")).unwrap(),
        std::fs::read(d.join("k2.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("other.pem"), pem).unwrap();
    let run = fx.export_env(
        &d.join("bag2"),
        &["--certificate", d.join("other.pem").to_str().unwrap()],
        &[],
    );
    run.expect_code(2);
    assert!(
        run.stderr.contains("--certificate") || run.stderr.contains("certificate"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_expired_delta_state_mid_listing_lists_that_folder_again() {
    let fx = GraphFixture::start(GraphConfig {
        mail_latency: std::time::Duration::from_millis(40),
        ..config(3, 30, 12)
    });
    let dir = tempdir();
    let bag = dir.path().join("m365");
    let mut cmd = std::process::Command::new(ferry_bin());
    cmd.args([
        "export",
        &format!("m365:{}", fx.tenant()),
        "--client-id",
        ferry_sandbox::GRAPH_CLIENT_ID,
        "--graph-endpoint",
        &fx.server.graph_endpoint(),
        "--login-endpoint",
        &fx.server.login_endpoint(),
        "--to",
        bag.to_str().unwrap(),
        "--page-size",
        "2",
        "-q",
    ])
    .env("FERRY_M365_CLIENT_SECRET", GRAPH_CLIENT_SECRET)
    .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // Pages of 2 with 40 ms per mail request take a while to list; expire every delta state
    // (next links included) once the listing is under way.
    let started = std::time::Instant::now();
    while fx.server.stats().requests < 30 && started.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    fx.server.invalidate_delta_tokens();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_matches_truth(&bag, fx.server.truth(), false, None, None);
    let d = details(&bag);
    assert_eq!(d["reconciliation_status"], "ok", "{d:#}");
    assert!(
        d["reconciliation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resynced"] == true),
        "some folder or drive hit the expired state and was listed again: {d:#}"
    );
}
