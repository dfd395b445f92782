//! Mailboxes: every folder (hidden ones too) walked from the top, the Recoverable Items
//! Deletions folder when asked, the user's in-place archive where there is one; each folder
//! listed with a message delta query, and each message opened as its original MIME (`$value`).

use std::collections::HashSet;

use ferry_core::{Error, Item, ItemUpdate, Listing, Opened, Result, SourceRef};
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::graph::{segment, GraphError, Scope};
use crate::users::User;
use crate::{id_hash, parse_time, send, FolderRecord, Inner, Sender};

/// Which mailbox of a user.
#[derive(Debug, Clone)]
struct Mailbox {
    /// `primary`, `recoverable` or `archive`.
    kind: &'static str,
    /// The API root to use (`…/v1.0`, or `…/beta` for the archive).
    root: String,
    /// The id in request paths: the user's id, or the archive mailbox's id.
    id: String,
    /// Folder path prefix in the archive.
    prefix: Vec<String>,
}

struct Folder {
    id: String,
    path: Vec<String>,
    hidden: bool,
    total: Option<u64>,
}

fn folder_url(mb: &Mailbox) -> String {
    format!("{}/users/{}/mailFolders", mb.root, segment(&mb.id))
}

/// Lists every message of a user's mailboxes.
pub(crate) async fn list_user(inner: &Inner, user: &User, tx: &Sender) -> Result<()> {
    let primary = Mailbox {
        kind: "primary",
        root: inner.graph.root().to_string(),
        id: user.id.clone(),
        prefix: Vec::new(),
    };
    // The top-level folders; a mailbox that does not exist is a note, not a failure.
    let top_url = format!(
        "{}?includeHiddenFolders=true&$top={}",
        folder_url(&primary),
        inner.options.page_size
    );
    let top = match inner
        .graph
        .collect(
            &top_url,
            Scope::Mail,
            Some(&user.id),
            &format!("{}: mail folders", user.upn),
        )
        .await
    {
        Ok((v, _)) => v,
        Err(g) if g.code == "MailboxNotEnabledForRESTAPI" || g.code == "ResourceNotFound" => {
            inner.note(format!(
                "{}: no Exchange Online mailbox ({})",
                user.upn, g.code
            ));
            return Ok(());
        }
        Err(g) => {
            return fail_listing(tx, user, "mailbox", g).await;
        }
    };
    let folders = walk(inner, user, &primary, top).await;
    list_folders(inner, user, &primary, folders, tx).await?;

    if inner.options.include_recoverable {
        let mb = Mailbox {
            kind: "recoverable",
            prefix: vec!["Recoverable Items".into()],
            ..primary.clone()
        };
        let url = format!("{}/recoverableitemsdeletions", folder_url(&mb));
        match inner
            .graph
            .get_json(
                &url,
                Scope::Mail,
                Some(&user.id),
                &format!("{}: Recoverable Items", user.upn),
            )
            .await
        {
            Ok(f) => {
                let folders = walk(inner, user, &mb, vec![f]).await;
                list_folders(inner, user, &mb, folders, tx).await?;
            }
            Err(g) => fail_listing(tx, user, "Recoverable Items", g).await?,
        }
    }

    // The in-place archive: only the beta API knows it (exchangeSettings).
    let settings_url = format!(
        "{}/users/{}/settings/exchange",
        inner.graph.beta_root(),
        segment(&user.id)
    );
    match inner
        .graph
        .get_json(
            &settings_url,
            Scope::Users,
            None,
            &format!("{}: mailbox settings", user.upn),
        )
        .await
    {
        Ok(v) => {
            if let Some(archive) = v["inPlaceArchiveMailboxId"]
                .as_str()
                .filter(|s| !s.is_empty())
            {
                inner
                    .archives
                    .lock()
                    .expect("archives")
                    .insert(user.id.clone(), archive.to_string());
                let mb = Mailbox {
                    kind: "archive",
                    root: inner.graph.beta_root(),
                    id: archive.to_string(),
                    prefix: vec!["In-Place Archive".into()],
                };
                let url = format!(
                    "{}?includeHiddenFolders=true&$top={}",
                    folder_url(&mb),
                    inner.options.page_size
                );
                match inner
                    .graph
                    .collect(
                        &url,
                        Scope::Mail,
                        Some(archive),
                        &format!("{}: archive folders", user.upn),
                    )
                    .await
                {
                    Ok((top, _)) => {
                        let folders = walk(inner, user, &mb, top).await;
                        list_folders(inner, user, &mb, folders, tx).await?;
                    }
                    Err(g) => fail_listing(tx, user, "in-place archive", g).await?,
                }
            }
        }
        Err(g) => inner.note(format!(
            "{}: could not tell whether the user has an in-place archive, so none was read ({})",
            user.upn,
            g.error.message()
        )),
    }
    Ok(())
}

/// Records that part of a user's mailbox could not be listed.
async fn fail_listing(tx: &Sender, user: &User, what: &str, g: GraphError) -> Result<()> {
    crate::fail_listing(tx, &format!("m365:{}/{what}", user.upn), g).await
}

/// Every folder below `top`, depth first, with its path.
async fn walk(
    inner: &Inner,
    user: &User,
    mb: &Mailbox,
    top: Vec<Value>,
) -> Vec<Result<Folder, (Vec<String>, GraphError)>> {
    let mut out = Vec::new();
    let mut stack: Vec<(Vec<String>, Value)> = top
        .into_iter()
        .rev()
        .map(|f| (mb.prefix.clone(), f))
        .collect();
    while let Some((parent, f)) = stack.pop() {
        let Some(id) = f["id"].as_str().map(str::to_string) else {
            continue;
        };
        let mut path = parent.clone();
        path.push(f["displayName"].as_str().unwrap_or(&id).to_string());
        let children = f["childFolderCount"].as_u64().unwrap_or(1);
        out.push(Ok(Folder {
            id: id.clone(),
            path: path.clone(),
            hidden: f["isHidden"].as_bool().unwrap_or(false),
            total: f["totalItemCount"].as_u64(),
        }));
        if children == 0 {
            continue;
        }
        let url = format!(
            "{}/{}/childFolders?includeHiddenFolders=true&$top={}",
            folder_url(mb),
            segment(&id),
            inner.options.page_size
        );
        match inner
            .graph
            .collect(
                &url,
                Scope::Mail,
                Some(&mb.id),
                &format!("{}: subfolders of {}", user.upn, path.join("/")),
            )
            .await
        {
            Ok((kids, _)) => {
                for k in kids.into_iter().rev() {
                    stack.push((path.clone(), k));
                }
            }
            Err(g) => out.push(Err((path, g))),
        }
    }
    out
}

async fn list_folders(
    inner: &Inner,
    user: &User,
    mb: &Mailbox,
    folders: Vec<Result<Folder, (Vec<String>, GraphError)>>,
    tx: &Sender,
) -> Result<()> {
    let mut listed = HashSet::new();
    let mut walk_failed = false;
    for f in folders {
        match f {
            Ok(folder) => {
                listed.insert(folder.id.clone());
                list_folder(inner, user, mb, folder, tx).await?
            }
            Err((path, g)) => {
                walk_failed = true;
                fail_listing(tx, user, &format!("mail/{}", path.join("/")), g).await?
            }
        }
    }
    // A folder the earlier run listed that is gone now: all its messages are gone (unless
    // part of the folder tree could not be read, where it may still be).
    if !walk_failed {
        let gone: Vec<String> = inner
            .options
            .mail_cursors(&user.upn, mb.kind)
            .filter_map(|c| c["folder_id"].as_str())
            .filter(|id| !listed.contains(*id))
            .map(str::to_string)
            .collect();
        for id in gone {
            complete(tx, user, &id).await?;
        }
    }
    Ok(())
}

/// Says that a folder's listing was whole: messages an earlier run had and this one did not
/// list are gone.
async fn complete(tx: &Sender, user: &User, folder_id: &str) -> Result<()> {
    send(
        tx,
        Listing::Complete {
            system: "m365".into(),
            account: Some(user.upn.clone()),
            container: Some(folder_id.to_string()),
        },
    )
    .await
}

const SELECT: &str = "$select=id,internetMessageId,subject,from,sender,toRecipients,receivedDateTime,sentDateTime,createdDateTime,lastModifiedDateTime,isRead,isDraft,categories,hasAttachments,parentFolderId,conversationId,changeKey";

async fn list_folder(
    inner: &Inner,
    user: &User,
    mb: &Mailbox,
    folder: Folder,
    tx: &Sender,
) -> Result<()> {
    // From the earlier run's delta link when there is one for this folder at this path (a
    // renamed or moved folder is listed whole: its messages' keys changed).
    let cursor = inner
        .options
        .mail_cursor(&user.upn, mb.kind, &folder.id)
        .filter(|c| c["folder_path"] == json!(folder.path))
        .and_then(|c| c["delta_link"].as_str())
        .map(str::to_string);
    let from_cursor = cursor.is_some();
    let fresh = format!(
        "{}/{}/messages/delta?{SELECT}",
        folder_url(mb),
        segment(&folder.id)
    );
    let start = cursor.unwrap_or_else(|| fresh.clone());
    let what = format!("{}: messages in {}", user.upn, folder.path.join("/"));
    // Items go to the pipeline page by page, so memory does not grow with a folder's size;
    // only a 64-bit hash of each id is kept, to pass over a message that a delta listing
    // returns twice (it changed while being paged) and over a restarted listing's repeats.
    let mut seen: HashSet<u64> = HashSet::new();
    let mut listed = 0u64;
    let mut listing_failed = false;
    let mut pages = inner
        .graph
        .pages(&start, Scope::Mail, Some(&mb.id), &what)
        .restart_from(fresh);
    loop {
        let values = match pages.next_page().await {
            Ok(Some(v)) => v,
            Ok(None) => break,
            Err(g) => {
                listing_failed = true;
                fail_listing(tx, user, &format!("mail/{}", folder.path.join("/")), g).await?;
                break;
            }
        };
        for m in values {
            let Some(id) = m["id"].as_str() else { continue };
            if m.get("@removed").is_some() {
                if from_cursor && !pages.resynced {
                    // Gone since the earlier run.
                    send(
                        tx,
                        Listing::Removed(SourceRef {
                            system: "m365".into(),
                            account: Some(user.upn.clone()),
                            container: Some(folder.id.clone()),
                            id: id.to_string(),
                            version: None,
                            original_name: None,
                            original_path: None,
                        }),
                    )
                    .await?;
                }
                // Otherwise deleted while the folder was being listed. If it was already
                // handed on, its download fails with "not found", which says so.
                continue;
            }
            if !seen.insert(id_hash(id)) {
                continue;
            }
            listed += 1;
            send(
                tx,
                Listing::Item(message_item(inner, user, mb, &folder, id, &m)),
            )
            .await?;
        }
    }
    let (resynced, delta) = (pages.resynced, pages.delta_link);
    let incremental = from_cursor && !resynced;
    if !incremental && !listing_failed {
        complete(tx, user, &folder.id).await?;
    }
    let mut st = inner.state.lock().expect("state");
    st.folders.push(FolderRecord {
        account: user.upn.clone(),
        mailbox: mb.kind,
        folder_id: folder.id.clone(),
        path: folder.path.clone(),
        hidden: folder.hidden,
        total_item_count: folder.total,
        listed,
        resynced,
        listing_failed,
        incremental,
    });
    if let Some(link) = delta {
        st.cursors.push(json!({
            "type": "mail_folder",
            "account": user.upn,
            "user_id": user.id,
            "mailbox": mb.kind,
            "folder_id": folder.id,
            "folder_path": folder.path,
            "delta_link": link,
        }));
    }
    Ok(())
}

fn address(v: &Value) -> Value {
    let e = &v["emailAddress"];
    if e.is_null() {
        return Value::Null;
    }
    json!({"name": e["name"], "address": e["address"]})
}

/// The message's file name: received time, subject, and a short hash of its id so that two
/// messages with the same subject and minute never collide.
fn file_name(m: &Value, id: &str) -> String {
    let when = parse_time(&m["receivedDateTime"])
        .or_else(|| parse_time(&m["createdDateTime"]))
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}_{:02}{:02}{:02}",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|| "undated".into());
    let subject: String = m["subject"]
        .as_str()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(60)
        .collect();
    let subject = subject.trim();
    let subject = if subject.is_empty() {
        "(no subject)"
    } else {
        subject
    };
    let short = &hex::encode(sha2::Sha256::digest(id.as_bytes()))[..10];
    format!("{when}_{subject}_{short}.eml")
}

fn message_item(
    inner: &Inner,
    user: &User,
    mb: &Mailbox,
    folder: &Folder,
    id: &str,
    m: &Value,
) -> Item {
    let mut path = vec![
        inner.options.tenant.clone(),
        "users".to_string(),
        user.upn.clone(),
        "mail".to_string(),
    ];
    path.extend(folder.path.iter().cloned());
    path.push(file_name(m, id));
    let mut item = Item::file(
        SourceRef {
            system: "m365".into(),
            account: Some(user.upn.clone()),
            container: Some(folder.id.clone()),
            id: id.to_string(),
            version: m["changeKey"].as_str().map(str::to_string),
            original_name: m["subject"].as_str().map(str::to_string),
            original_path: Some(format!("{}/mail/{}", user.upn, folder.path.join("/"))),
        },
        path,
    );
    item.media_type = Some("message/rfc822".into());
    item.created = parse_time(&m["receivedDateTime"]).or_else(|| parse_time(&m["createdDateTime"]));
    item.modified = parse_time(&m["lastModifiedDateTime"]);
    let x = &mut item.extra;
    x.insert("m365_type".into(), "message".into());
    x.insert("user_id".into(), user.id.clone().into());
    x.insert("mailbox".into(), mb.kind.into());
    if mb.kind == "archive" {
        x.insert("archive_mailbox_id".into(), mb.id.clone().into());
    }
    x.insert("folder_path".into(), json!(folder.path));
    x.insert("immutable_id".into(), id.into());
    for (key, field) in [
        ("internet_message_id", "internetMessageId"),
        ("subject", "subject"),
        ("received", "receivedDateTime"),
        ("sent", "sentDateTime"),
        ("conversation_id", "conversationId"),
    ] {
        if let Some(v) = m[field].as_str() {
            x.insert(key.into(), v.into());
        }
    }
    x.insert("from".into(), address(&m["from"]));
    x.insert("sender".into(), address(&m["sender"]));
    for (key, field) in [
        ("is_read", "isRead"),
        ("is_draft", "isDraft"),
        ("has_attachments", "hasAttachments"),
    ] {
        if let Some(v) = m[field].as_bool() {
            x.insert(key.into(), v.into());
        }
    }
    x.insert(
        "categories".into(),
        m["categories"]
            .as_array()
            .cloned()
            .map(Value::Array)
            .unwrap_or(json!([])),
    );
    item
}

/// Opens a message's original MIME.
pub(crate) async fn open(inner: &Inner, item: &Item, offset: u64) -> Result<Opened> {
    let x = &item.extra;
    let user_id = x["user_id"].as_str().unwrap_or_default();
    let (root, mailbox) = match x.get("archive_mailbox_id").and_then(Value::as_str) {
        Some(a) => (inner.graph.beta_root(), a.to_string()),
        None => (inner.graph.root().to_string(), user_id.to_string()),
    };
    let url = format!(
        "{root}/users/{}/messages/{}/$value",
        segment(&mailbox),
        segment(&item.source.id)
    );
    let what = item.display_name();
    let d = inner
        .graph
        .open(&url, Scope::Mail, Some(&mailbox), &what, offset, true)
        .await
        .map_err(|g| {
            if g.status == Some(404) {
                Error::permanent(format!(
                    "{what}: the message is no longer in the mailbox (deleted or moved since it was listed; {})",
                    g.error.message()
                ))
            } else {
                g.error
            }
        })?;
    let status = d.response.status().as_u16();
    if offset > 0 && status != 206 {
        return Err(Error::transient(format!(
            "{what}: asked to resume at byte {offset}, Graph sent the whole message (status {status})"
        )));
    }
    let mut update = ItemUpdate::default();
    // Graph does not list a message's MIME size; the answer's length is what the bytes must
    // add up to (a broken-off transfer is caught).
    if let Some(total) = total_length(&d.response, offset) {
        update.size = Some(total);
    }
    Ok(Opened {
        bytes: crate::body_stream(d, what),
        update,
        trailer: None,
    })
}

/// The full length of the content: Content-Range's total, or offset + Content-Length.
pub(crate) fn total_length(r: &reqwest::Response, offset: u64) -> Option<u64> {
    if let Some(total) = r
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit_once('/'))
        .and_then(|(_, t)| t.parse().ok())
    {
        return Some(total);
    }
    r.content_length().map(|l| l + offset)
}
