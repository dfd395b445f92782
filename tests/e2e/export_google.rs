//! `ferry export google:…` end to end through the CLI, against the Google sandbox on
//! 127.0.0.1: every message and binary file byte-identical to the sandbox's ground truth, every
//! native document exported in each requested format, spam/trash and Drive's trash left out by
//! default, the over-10-MB document exported, throttling and broken downloads losing nothing,
//! permanent failures listed with a non-zero exit, scopes missing from the delegation named.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use ferry_e2e::google::GoogleFixture;
use ferry_e2e::*;
use ferry_sandbox::{GoogleConfig, GoogleFaults, GoogleTruth};
use serde_json::Value;

fn config(users: usize, messages: usize, files: usize) -> GoogleConfig {
    GoogleConfig {
        users,
        messages_per_user: messages,
        files_per_user: files,
        shared_drives: 1,
        page_size: 7,
        ..GoogleConfig::default()
    }
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// items.jsonl records by (type of google item, source id) → records (exports are several).
fn records(bag: &Path) -> HashMap<(String, String), Vec<Value>> {
    let mut out: HashMap<(String, String), Vec<Value>> = HashMap::new();
    for r in items(bag) {
        let kind = r["extra"]["google_type"].as_str().unwrap_or("").to_string();
        let id = r["source"]["id"].as_str().unwrap().to_string();
        out.entry((kind, id)).or_default().push(r);
    }
    out
}

fn details(bag: &Path) -> Value {
    let run: Value =
        serde_json::from_slice(&std::fs::read(bag.join("ferry/run.json")).unwrap()).unwrap();
    run["sources"][0]["details"].clone()
}

fn failures(bag: &Path) -> Vec<Value> {
    std::fs::read_to_string(bag.join("ferry/failures.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What one export of the truth should hold, checked item by item.
struct Expect<'a> {
    users: Vec<&'a str>,
    spam_trash: bool,
    trashed: bool,
    shared_drives: bool,
    formats: &'a [&'a str],
    skip_subject: Option<&'a str>,
    skip_file: Option<&'a str>,
}

/// The extension each format family gives each editor type.
fn extension(mime: &str, format: &str) -> &'static str {
    let kind = mime.rsplit('.').next().unwrap();
    match (kind, format) {
        ("document", "odf") => "odt",
        ("document", "ooxml") => "docx",
        ("spreadsheet", "odf") => "ods",
        ("spreadsheet", "ooxml") => "xlsx",
        ("presentation", "odf") => "odp",
        ("presentation", "ooxml") => "pptx",
        ("drawing", "odf") => "svg",
        ("drawing", "ooxml") => "png",
        (_, "pdf") => "pdf",
        _ => panic!("{kind} {format}"),
    }
}

/// Checks the bag against the truth; returns (messages, binary files, exports) compared.
fn assert_matches_truth(bag: &Path, truth: &GoogleTruth, e: &Expect) -> (usize, usize, usize) {
    let recs = records(bag);
    let mut messages = 0;
    for user in &e.users {
        for m in truth.messages_of(user) {
            let hidden = m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH");
            let key = ("message".to_string(), m.id.clone());
            if (hidden && !e.spam_trash) || e.skip_subject == Some(m.subject.as_str()) {
                assert!(
                    !recs.contains_key(&key),
                    "{} should not be archived",
                    m.subject
                );
                continue;
            }
            let r = &recs
                .get(&key)
                .unwrap_or_else(|| panic!("message {:?} of {user} missing", m.subject))[0];
            let path = bag.join(r["path"].as_str().unwrap());
            assert!(
                std::fs::read(&path).unwrap() == m.raw(),
                "{}",
                path.display()
            );
            assert_eq!(r["media_type"], "message/rfc822");
            assert_eq!(r["source"]["account"], *user);
            assert_eq!(r["extra"]["thread_id"], m.thread_id.as_str());
            assert_eq!(r["extra"]["history_id"], m.history_id.to_string().as_str());
            let ids: Vec<String> = serde_json::from_value(r["extra"]["label_ids"].clone()).unwrap();
            assert_eq!(ids, m.label_ids, "labels of {}", m.subject);
            assert_eq!(
                time::OffsetDateTime::parse(
                    r["created"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339
                )
                .unwrap()
                .unix_timestamp(),
                m.internal_date_ms / 1000
            );
            messages += 1;
        }
    }
    let mut files = 0;
    let mut exports = 0;
    let members: Vec<&str> = e.users.clone();
    for f in &truth.files {
        let mine = match (&f.owner, &f.drive_id) {
            (Some(o), _) => members.iter().any(|u| u.eq_ignore_ascii_case(o)),
            (None, Some(d)) => {
                e.shared_drives
                    && truth
                        .shared_drive(d)
                        .is_some_and(|d| d.members.iter().any(|m| members.contains(&m.as_str())))
            }
            _ => false,
        };
        if !mine || f.is_folder() || f.shortcut_target.is_some() {
            continue;
        }
        let in_trash = f.trashed
            || f.parents
                .iter()
                .any(|p| truth.file(p).is_some_and(|parent| parent.trashed));
        if in_trash && !e.trashed {
            assert!(
                !recs.contains_key(&("file".into(), f.id.clone())),
                "trashed {:?} archived",
                f.name
            );
            continue;
        }
        if f.is_native() {
            let formats = f.export_formats();
            if formats.is_empty() {
                continue;
            }
            let got = recs
                .get(&("export".into(), f.id.clone()))
                .unwrap_or_else(|| panic!("no export of {:?}", f.path));
            for fmt in e.formats {
                let ext = extension(&f.mime_type, fmt);
                let r = got
                    .iter()
                    .find(|r| r["extra"]["export_format"] == *fmt)
                    .unwrap_or_else(|| panic!("{:?} not exported as {fmt}", f.path));
                let path = bag.join(r["path"].as_str().unwrap());
                assert!(
                    path.display().to_string().ends_with(&format!(".{ext}")),
                    "{}",
                    path.display()
                );
                let bytes = std::fs::read(&path).unwrap();
                assert!(!bytes.is_empty(), "{} is empty", path.display());
                let mime = r["media_type"].as_str().unwrap();
                assert_eq!(
                    Some(bytes),
                    truth.export_bytes(&f.id, mime),
                    "{} differs from the export",
                    path.display()
                );
                assert_eq!(r["conversion"]["from"], f.mime_type.as_str());
                assert_eq!(r["conversion"]["to"], mime);
                assert_eq!(
                    r["conversion"]["source_version"],
                    f.version.to_string().as_str()
                );
                assert_eq!(
                    r["conversion"]["source_modified_time"],
                    f.modified_time.as_str()
                );
                exports += 1;
            }
            assert_eq!(got.len(), e.formats.len(), "{:?}", f.path);
            continue;
        }
        let key = ("file".to_string(), f.id.clone());
        if e.skip_file == Some(f.name.as_str()) {
            assert!(!recs.contains_key(&key), "{} should have failed", f.name);
            continue;
        }
        let got = recs
            .get(&key)
            .unwrap_or_else(|| panic!("file {:?} ({}) missing", f.path, f.id));
        assert_eq!(got.len(), 1, "{:?} archived more than once", f.path);
        let r = &got[0];
        let path = bag.join(r["path"].as_str().unwrap());
        assert!(
            std::fs::read(&path).unwrap() == read_all(f.content()),
            "{} differs",
            path.display()
        );
        assert_eq!(r["source"]["original_name"], f.name.as_str());
        let check = &r["source_checksums"][0];
        let alg = if f.sha256.is_some() { "sha256" } else { "md5" };
        assert_eq!(check["algorithm"], alg, "{r}");
        assert_eq!(check["verified"], true, "{r}");
        files += 1;
    }
    (messages, files, exports)
}

fn active_users(truth: &GoogleTruth) -> Vec<&str> {
    truth
        .users
        .iter()
        .filter(|u| !u.suspended)
        .map(|u| u.email.as_str())
        .collect()
}

#[test]
fn a_domain_exports_byte_identical_and_says_what_it_could_not_read() {
    let fx = GoogleFixture::start(GoogleConfig {
        large_export_bytes: 11 << 20,
        ..config(3, 25, 20)
    });
    let truth = fx.server.truth().clone();
    let dir = tempdir();
    let bag = dir.path().join("google");
    let run = fx.export(&bag, &["--export-formats", "odf,pdf", "--json"]);
    // The suspended user's Gmail and Drive, and the shared drive without members, cannot be
    // read: the run says so and exits 1, everything else is archived.
    run.expect_code(1);
    let fails = failures(&bag);
    let suspended = truth.users.iter().find(|u| u.suspended).unwrap();
    assert_eq!(fails.len(), 3, "{fails:#?}");
    assert!(fails
        .iter()
        .any(|f| f["name"].as_str().unwrap().contains(&suspended.email)
            && f["error"].as_str().unwrap().contains("suspended")));
    assert!(fails
        .iter()
        .any(|f| f["error"].as_str().unwrap().contains("has no member")));
    let users = active_users(&truth);
    let (messages, files, exports) = assert_matches_truth(
        &bag,
        &truth,
        &Expect {
            users: users.clone(),
            spam_trash: false,
            trashed: false,
            shared_drives: true,
            formats: &["odf", "pdf"],
            skip_subject: None,
            skip_file: None,
        },
    );
    assert!(
        messages >= 75 && files > 20 && exports > 10,
        "{messages} {files} {exports}"
    );
    ferry(["verify", bag.to_str().unwrap()]).expect_code(0);
    assert_bagit_py_valid(&bag);
    // The records follow the published schemas.
    let errors = schema_errors("items.schema.json", &items(&bag));
    assert!(errors.is_empty(), "{errors:#?}");
    let errors = schema_errors("failure.schema.json", &fails);
    assert!(errors.is_empty(), "{errors:#?}");
    let run_json: Value =
        serde_json::from_slice(&std::fs::read(bag.join("ferry/run.json")).unwrap()).unwrap();
    let errors = schema_errors("run.schema.json", std::slice::from_ref(&run_json));
    assert!(errors.is_empty(), "{errors:#?}");

    let d = details(&bag);
    // Reconciliation: each mailbox's profile count (without spam and trash) against archived.
    let recon = d["reconciliation"].as_array().unwrap();
    for r in recon.iter().filter(|r| r["type"] == "gmail") {
        let account = r["account"].as_str().unwrap();
        if account == suspended.email {
            assert_eq!(r["status"], "failures");
            continue;
        }
        assert_eq!(r["status"], "ok", "{r}");
        let visible = truth
            .messages_of(account)
            .iter()
            .filter(|m| !m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH"))
            .count();
        assert_eq!(r["archived"], visible as u64, "{r}");
    }
    // Cursors: each mailbox's history id and each drive's changes token, read before listing.
    let cursors = d["cursors"].as_array().unwrap();
    for u in &users {
        let c = cursors
            .iter()
            .find(|c| c["type"] == "gmail_history" && c["account"] == *u)
            .unwrap_or_else(|| panic!("no history cursor for {u}"));
        assert_eq!(
            c["history_id"],
            truth.mailbox(u).unwrap().history_id.to_string().as_str()
        );
        assert!(cursors.iter().any(|c| c["type"] == "drive_changes"
            && c["account"] == *u
            && c["start_page_token"].is_string()));
    }
    let listed: Vec<Value> = d["users"].as_array().unwrap().clone();
    assert!(listed
        .iter()
        .any(|u| u["email"] == suspended.email.as_str() && u["suspended"] == true));

    // Shortcuts are recorded, not followed; files shared with another exported user are
    // archived once, under the owner, and referenced from the other user.
    let recs = records(&bag);
    for f in truth.files.iter().filter(|f| f.shortcut_target.is_some()) {
        if f.owner.as_deref().is_some_and(|o| o == suspended.email) || f.trashed {
            continue;
        }
        let r = &recs[&("shortcut".to_string(), f.id.clone())][0];
        assert!(r["path"].is_null());
        assert_eq!(
            r["extra"]["shortcut"]["targetId"],
            f.shortcut_target.as_ref().unwrap().0.as_str()
        );
    }
    let shared: Vec<_> = truth
        .files
        .iter()
        .filter(|f| !f.shared_with.is_empty() && !f.trashed && !f.is_native())
        .filter(|f| f.owner.as_deref().is_some_and(|o| users.contains(&o)))
        .collect();
    assert!(!shared.is_empty(), "the sandbox shares no files");
    for f in shared {
        let refs = &recs[&("reference".to_string(), f.id.clone())];
        assert!(refs
            .iter()
            .all(|r| r["path"].is_null()
                && r["extra"]["archived_under"] == f.owner.as_deref().unwrap()));
    }
    // The over-10-MB document went through its export link.
    let big = truth.files.iter().find(|f| f.name == "Big report").unwrap();
    let big_recs = &recs[&("export".to_string(), big.id.clone())];
    assert!(big_recs.iter().all(
        |r| r["size"].as_u64().unwrap() == 11 << 20 && r["conversion"]["via"] == "exportLinks"
    ));

    let summary = run.json();
    assert_eq!(summary["failed_items"], 3, "{summary}");
}

#[test]
fn users_include_spam_trash_and_trashed_choose_what_is_read() {
    let fx = GoogleFixture::start(config(3, 12, 12));
    let truth = fx.server.truth().clone();
    let users = active_users(&truth);
    let pick = users[1];
    let dir = tempdir();
    let bag = dir.path().join("one.zip");
    fx.export(
        &bag,
        &[
            "--users",
            pick,
            "--include",
            "gmail,drive",
            "--include-spam-trash",
            "--include-trashed",
            "--export-formats",
            "ooxml",
        ],
    )
    .expect_code(0);
    let out = dir.path().join("unzipped");
    unzip_with_python(&bag, &out);
    let bag = out.join("one");
    let (messages, files, exports) = assert_matches_truth(
        &bag,
        &truth,
        &Expect {
            users: vec![pick],
            spam_trash: true,
            trashed: true,
            shared_drives: false,
            formats: &["ooxml"],
            skip_subject: None,
            skip_file: None,
        },
    );
    assert_eq!(messages, truth.messages_of(pick).len());
    assert!(files > 0 && exports > 0);
    let recs = items(&bag);
    assert!(
        recs.iter().all(|r| r["source"]["account"] == pick),
        "other accounts read"
    );
    assert!(!recs.iter().any(|r| r["path"]
        .as_str()
        .is_some_and(|p| p.contains("shared-drives"))));
    assert_bagit_py_valid(&bag);
}

/// A server that answers a later page with the page token it was given: the listing stops
/// with a failure that says so, neither reading the same page forever nor quietly leaving the
/// rest out.
#[test]
fn a_repeated_page_token_is_an_error_not_an_endless_or_short_listing() {
    let fx = GoogleFixture::start(GoogleConfig {
        faults: GoogleFaults {
            repeat_page_token: true,
            ..GoogleFaults::default()
        },
        ..config(2, 20, 14)
    });
    let dir = tempdir();
    let bag = dir.path().join("g");
    let run = fx.export(&bag, &["--json", "--retries", "1", "--page-size", "3"]);
    assert_ne!(run.code, 0, "{run:?}");
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("next page token is the one just used"),
        "{all}"
    );
}

#[test]
fn a_storm_of_throttling_and_broken_downloads_loses_nothing() {
    let fx = GoogleFixture::start(GoogleConfig {
        faults: GoogleFaults {
            throttle_every: 5,
            unavailable_every: 11,
            truncate_every: 4,
            corrupt_every: 7,
            expire_tokens_after_requests: 40,
            ..GoogleFaults::default()
        },
        ..config(2, 20, 14)
    });
    let truth = fx.server.truth().clone();
    let users = active_users(&truth);
    let dir = tempdir();
    let bag = dir.path().join("storm");
    let list = users.join(",");
    fx.export(
        &bag,
        &[
            "--users",
            &list,
            "--include",
            "gmail,drive",
            "--retries",
            "8",
        ],
    )
    .expect_code(0);
    assert_matches_truth(
        &bag,
        &truth,
        &Expect {
            users,
            spam_trash: false,
            trashed: false,
            shared_drives: false,
            formats: &["odf"],
            skip_subject: None,
            skip_file: None,
        },
    );
    let stats = fx.server.stats();
    assert!(
        stats.throttled > 10
            && stats.truncated > 0
            && stats.corrupted > 0
            && stats.unauthorized > 0,
        "{stats:?}"
    );
    assert!(stats.max_concurrent_per_user <= 5, "{stats:?}");
}

#[test]
fn a_permanently_failing_message_and_file_are_listed_and_everything_else_archived() {
    let fx = GoogleFixture::start(config(2, 10, 12));
    let truth = fx.server.truth().clone();
    let users = active_users(&truth);
    let victim_msg = truth
        .messages_of(users[0])
        .iter()
        .find(|m| !m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH"))
        .unwrap()
        .subject
        .clone();
    let victim_file = truth
        .files_of_owner(users[1])
        .into_iter()
        .find(|f| {
            !f.is_native() && !f.trashed && f.size.unwrap_or(0) > 0 && f.shared_with.is_empty()
        })
        .unwrap()
        .name
        .clone();
    drop(fx);
    let fx = GoogleFixture::start(GoogleConfig {
        faults: GoogleFaults {
            fail_message_always: Some(victim_msg.clone()),
            fail_file_always: Some(victim_file.clone()),
            ..GoogleFaults::default()
        },
        ..config(2, 10, 12)
    });
    let dir = tempdir();
    let bag = dir.path().join("partial");
    let list = users.join(",");
    fx.export(
        &bag,
        &[
            "--users",
            &list,
            "--include",
            "gmail,drive",
            "--retries",
            "1",
        ],
    )
    .expect_code(1);
    let fails = failures(&bag);
    assert!(fails.len() >= 2, "{fails:#?}");
    assert!(fails.iter().all(|f| f["stage"] == "download"), "{fails:#?}");
    assert_matches_truth(
        &bag,
        &truth,
        &Expect {
            users,
            spam_trash: false,
            trashed: false,
            shared_drives: false,
            formats: &["odf"],
            skip_subject: Some(&victim_msg),
            skip_file: Some(&victim_file),
        },
    );
    ferry(["verify", bag.to_str().unwrap()]).expect_code(0);
}

#[test]
fn mbox_files_hold_every_message_of_each_label() {
    let fx = GoogleFixture::start(config(2, 15, 2));
    let truth = fx.server.truth().clone();
    let user = active_users(&truth)[1];
    let dir = tempdir();
    let bag = dir.path().join("mbox");
    fx.export(&bag, &["--users", user, "--include", "gmail", "--mbox"])
        .expect_code(0);
    let mbox_recs: Vec<Value> = items(&bag)
        .into_iter()
        .filter(|r| r["extra"]["google_type"] == "mbox")
        .collect();
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    let mut filed = std::collections::HashSet::new();
    for r in &mbox_recs {
        let text = std::fs::read(bag.join(r["path"].as_str().unwrap())).unwrap();
        let count = text
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"From ") && l.windows(5).any(|w| w == b"@xxx "))
            .count();
        let label = r["extra"]["label_id"].as_str().unwrap().to_string();
        per_label.insert(label.clone(), count);
        assert!(count == 0 || String::from_utf8_lossy(&text).contains("X-Gmail-Labels: "));
        let _ = filed.insert(label);
    }
    let mailbox = truth.mailbox(user).unwrap();
    for l in &mailbox.labels {
        if l.id == "UNREAD" || l.id.starts_with("CATEGORY_") || l.id == "SPAM" || l.id == "TRASH" {
            continue;
        }
        let want = mailbox
            .messages
            .iter()
            .filter(|m| m.label_ids.contains(&l.id))
            .filter(|m| !m.label_ids.iter().any(|x| x == "SPAM" || x == "TRASH"))
            .count();
        assert_eq!(
            per_label.get(&l.id).copied(),
            Some(want),
            "label {} ({})",
            l.name,
            l.id
        );
    }
    assert!(per_label.contains_key(""), "no Archived.mbox");
    assert_bagit_py_valid(&bag);
}

#[test]
fn a_scope_missing_from_the_delegation_is_named() {
    let fx = GoogleFixture::start(GoogleConfig {
        granted_scopes: vec![
            "https://www.googleapis.com/auth/admin.directory.user.readonly".into(),
            "https://www.googleapis.com/auth/drive.readonly".into(),
        ],
        ..config(1, 2, 2)
    });
    let dir = tempdir();
    let run = fx.export(&dir.path().join("x"), &[]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("https://www.googleapis.com/auth/gmail.readonly")
            && run.stderr.contains("Domain-wide delegation"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("x").join("bagit.txt").exists());
    // Without Gmail, the same key works.
    fx.export(
        &dir.path().join("y"),
        &["--include", "drive", "--users", &fx.server.admin_email()],
    )
    .expect_code(0);
    // A key file of another kind, and a non-admin --admin, are one clear sentence each.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"type":"authorized_user","client_secret":"s3cr3t"}"#,
    )
    .unwrap();
    let run = fx.export_with_key(&bad, &dir.path().join("z"), &[]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("service_account") && !run.stderr.contains("s3cr3t"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_large_message_and_a_large_file_stream_in_flat_memory() {
    // Gmail sends a message as one JSON string of base64url: a 64 MiB attachment makes an
    // 88 MB message and a 117 MB answer. ferry decodes it as it streams, so its memory stays far
    // below the message's size; the same for a 256 MiB Drive file.
    let fx = GoogleFixture::start(GoogleConfig {
        large_message_bytes: 64 << 20,
        large_file_bytes: 256 << 20,
        ..config(1, 3, 0)
    });
    let truth = fx.server.truth().clone();
    let admin = fx.server.admin_email();
    let big = truth
        .messages_of(&admin)
        .iter()
        .find(|m| m.subject == "Large attachment")
        .expect("the large message");
    assert!(big.size_estimate > 80 << 20);
    let dir = tempdir();
    let bag = dir.path().join("big");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let args: Vec<String> = [
        "export",
        &format!("google:{}", fx.domain()),
        "--service-account",
        fx.key.to_str().unwrap(),
        "--admin",
        &admin,
        "--google-endpoint",
        &fx.server.endpoint(),
        "--users",
        &admin,
        "--include",
        "gmail,drive",
        "--to",
        bag.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, rss) = ferry_peak_rss(&args, &logs);
    assert_eq!(
        code,
        0,
        "{}",
        std::fs::read_to_string(logs.join("stderr")).unwrap()
    );
    eprintln!("export of an 88 MB message and a 256 MiB file: peak RSS {rss} KiB");
    assert!(rss < 48 * 1024, "peak RSS {rss} KiB");
    let r = items(&bag)
        .into_iter()
        .find(|r| r["source"]["id"] == big.id.as_str())
        .unwrap();
    assert_eq!(r["size"], big.size_estimate);
    assert!(std::fs::read(bag.join(r["path"].as_str().unwrap())).unwrap() == big.raw());
    // The metadata Gmail sends after the content reached the record.
    assert_eq!(
        r["extra"]["history_id"],
        big.history_id.to_string().as_str()
    );
    assert_eq!(r["extra"]["labels"], serde_json::json!(["Inbox"]));
}
