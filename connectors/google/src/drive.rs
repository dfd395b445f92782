//! Drive: each user's My Drive and every shared drive. A drive is read from the last run's
//! changes token when it can (`changes.list`: only what changed; deletions, trashing and moves
//! out of the drive become removals), else listed whole: folders first, so every file's path is
//! known when the file is handed on (memory grows with folders, not files), after reading the
//! changes token for the next run. The folder map the listing built is saved beside the token,
//! so changed files get the same paths as a whole listing would give them; a folder renamed,
//! moved, trashed or deleted (which changes the paths of files the feed does not list), a token
//! Drive refuses, or other options than the last run's make the drive listed whole again.
//! Binary files are streamed and checked against `sha256Checksum` (else `md5Checksum`) and
//! resume by range; Google Docs, Sheets, Slides and Drawings are exported through their
//! `exportLinks` (no 10 MB limit, unlike `files.export`) to each requested format; shortcuts are
//! recorded, not followed; a file owned by another exported user is archived once, under its
//! owner, and recorded as a reference elsewhere.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferry_core::{
    ChecksumAlgorithm, Error, Item, ItemKind, ItemUpdate, Listing, Opened, Result, SourceChecksum,
    SourceRef,
};
use serde_json::{json, Value};

use crate::api::Api;
use crate::directory::User;
use crate::{fail_listing, parse_time, send, DriveRecord, ExportFormat, Inner, Sender};

const FOLDER: &str = "application/vnd.google-apps.folder";
const SHORTCUT: &str = "application/vnd.google-apps.shortcut";

/// The file fields ferry asks for (Drive sends only id, name and mimeType without `fields`).
const FILE_FIELDS: &str = "id,name,mimeType,parents,size,md5Checksum,sha1Checksum,sha256Checksum,createdTime,modifiedTime,version,headRevisionId,trashed,explicitlyTrashed,owners(emailAddress,displayName),ownedByMe,driveId,shortcutDetails,exportLinks,webViewLink";

/// A shared drive, read as one of its members.
#[derive(Debug, Clone)]
pub struct SharedDrive {
    /// Drive id.
    pub id: String,
    /// Drive name.
    pub name: String,
    /// The exported user whose membership is used to read it.
    pub member: String,
}

/// What one drive listing reads.
struct Target {
    /// The user impersonated.
    subject: String,
    /// `account` of the items: the user, or the shared drive's name.
    account: String,
    /// `container` of the items (reconciliation key).
    container: String,
    kind: &'static str,
    /// Path components before the drive's own folders.
    prefix: Vec<String>,
    /// Query parameters choosing the corpus.
    corpus: String,
    /// For My Drive: the user (files owned by others are references or "Shared with me").
    user: Option<User>,
    drive_id: Option<String>,
}

/// Every shared drive some exported user is a member of, each assigned to one member; drives
/// no exported member can read are recorded as failures when the whole domain is exported.
pub(crate) async fn shared_drives(
    inner: &Inner,
    users: &[User],
    tx: &Sender,
) -> Result<Vec<SharedDrive>> {
    let mut out: Vec<SharedDrive> = Vec::new();
    let mut seen = HashSet::new();
    for u in users {
        let url = format!("{}/drives?pageSize=100", inner.google.endpoints.drive);
        let what = format!("listing {}'s shared drives", u.email);
        let mut pages = inner.google.pages(url, &u.email, Api::Drive, &what);
        loop {
            match pages.next_page().await {
                Ok(Some(page)) => {
                    for d in page["drives"].as_array().into_iter().flatten() {
                        let (Some(id), Some(name)) = (d["id"].as_str(), d["name"].as_str()) else {
                            continue;
                        };
                        if seen.insert(id.to_string()) {
                            out.push(SharedDrive {
                                id: id.into(),
                                name: name.into(),
                                member: u.email.clone(),
                            });
                        }
                    }
                }
                Ok(None) => break,
                Err(e) if u.suspended && !e.error.is_fatal() => {
                    // A suspended user's memberships cannot be read; a drive only they belong
                    // to is reported by the administrator's check below.
                    inner.note(format!(
                        "the shared drives of the suspended user {} could not be listed ({})",
                        u.email,
                        e.error.message()
                    ));
                    break;
                }
                Err(e) => {
                    fail_listing(tx, &format!("google:{}/shared-drives", u.email), e.error).await?;
                    break;
                }
            }
        }
    }
    if inner.options.users == crate::UserSelection::All {
        // As the administrator, every drive of the domain: one that no exported user is a
        // member of cannot be read (Drive lists a drive's files only to members).
        let o = &inner.options;
        let url = format!(
            "{}/drives?pageSize=100&useDomainAdminAccess=true",
            inner.google.endpoints.drive
        );
        let mut pages = inner.google.pages(
            url,
            &o.admin,
            Api::Drive,
            "listing the domain's shared drives",
        );
        loop {
            match pages.next_page().await {
                Ok(Some(page)) => {
                    for d in page["drives"].as_array().into_iter().flatten() {
                        let (Some(id), Some(name)) = (d["id"].as_str(), d["name"].as_str()) else {
                            continue;
                        };
                        if !seen.contains(id) {
                            fail_listing(
                                tx,
                                &format!("google:shared-drives/{name}"),
                                Error::permanent(format!(
                                    "the shared drive {name:?} ({id}) has no member among the domain's users, so its files cannot be read; add a member (e.g. {}) in the Admin console and run again",
                                    o.admin
                                )),
                            )
                            .await?;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    fail_listing(tx, "google:shared-drives", e.error).await?;
                    break;
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Lists one user's My Drive.
pub(crate) async fn list_my_drive(inner: &Arc<Inner>, user: &User, tx: &Sender) -> Result<()> {
    let target = Target {
        subject: user.email.clone(),
        account: user.email.clone(),
        container: "drive".into(),
        kind: "my_drive",
        prefix: vec![
            inner.options.domain.clone(),
            "users".into(),
            user.email.clone(),
            "drive".into(),
        ],
        corpus: "corpora=user".into(),
        user: Some(user.clone()),
        drive_id: None,
    };
    list_target(inner, target, tx).await
}

/// Lists one shared drive.
pub(crate) async fn list_shared_drive(
    inner: &Arc<Inner>,
    d: &SharedDrive,
    tx: &Sender,
) -> Result<()> {
    let target = Target {
        subject: d.member.clone(),
        account: shared_drive_account(&d.name),
        container: d.id.clone(),
        kind: "shared_drive",
        prefix: vec![
            inner.options.domain.clone(),
            "shared-drives".into(),
            d.name.clone(),
        ],
        corpus: format!(
            "corpora=drive&driveId={}&includeItemsFromAllDrives=true&supportsAllDrives=true",
            ferry_http::query_value(&d.id)
        ),
        user: None,
        drive_id: Some(d.id.clone()),
    };
    list_target(inner, target, tx).await
}

/// The `account` of a shared drive's items.
fn shared_drive_account(name: &str) -> String {
    format!("shared-drive:{name}")
}

async fn list_target(inner: &Arc<Inner>, target: Target, tx: &Sender) -> Result<()> {
    let mut record = DriveRecord {
        account: target.account.clone(),
        container: target.container.clone(),
        kind: target.kind,
        name: target.prefix.last().cloned().unwrap_or_default(),
        files: 0,
        folders: 0,
        exports: 0,
        references: 0,
        listing_failed: false,
        incremental: false,
        listed_whole_because: None,
        removed: 0,
        cursor: None,
        retry_cursor: None,
    };
    let previous = previous_cursor(inner, &target);
    let listed = list_drive(inner, &target, previous.as_ref(), tx, &mut record).await;
    if let Err(e) = listed {
        if e.is_fatal() {
            return Err(e);
        }
        record.listing_failed = true;
        let suspended = target.user.as_ref().is_some_and(|u| u.suspended);
        let hint = if suspended {
            " (the user is suspended; Google may refuse to read a suspended user's data)"
        } else {
            ""
        };
        fail_listing(
            tx,
            &format!("google:{}/{}", target.account, target.container),
            Error::permanent(format!("{}{hint}", e.message())),
        )
        .await?;
    }
    inner.state.lock().expect("state").drives.push(record);
    Ok(())
}

/// Lists a drive from the last run's cursor when it allows (only what changed), else whole.
/// The record gets the cursor for the next run, and the one to save instead when this run
/// has failures (the last run's, so that the same changes are read again; none after a
/// whole listing, so that the next run lists whole again).
async fn list_drive(
    inner: &Arc<Inner>,
    target: &Target,
    previous: Option<&DriveCursor>,
    tx: &Sender,
    record: &mut DriveRecord,
) -> Result<()> {
    let why = match previous {
        None => "no changes token from an earlier run".to_string(),
        Some(p) => match p.unusable(inner, target) {
            Some(why) => why,
            None => {
                record.incremental = true;
                record.retry_cursor = Some(p.raw.clone());
                match read_changes(inner, target, p).await? {
                    Feed::Changes {
                        entries,
                        folders,
                        token,
                    } => {
                        record.folders = folders.len() as u64;
                        send_changes(inner, target, entries, &folders, tx, record).await?;
                        record.cursor = Some(cursor_value(
                            inner,
                            target,
                            &token,
                            &folders,
                            time::OffsetDateTime::now_utc(),
                        ));
                        return Ok(());
                    }
                    Feed::Whole(why) => why,
                    Feed::DriveGone => {
                        let id = target.drive_id.as_deref().unwrap_or_default();
                        if drive_exists(inner, id).await == Some(false) {
                            // Deleted: every file the repository holds of it is gone.
                            inner.note(format!(
                                "the shared drive {:?} ({id}) has been deleted: its files are marked removed",
                                record.name
                            ));
                            record.incremental = false;
                            record.retry_cursor = None;
                            return send_complete(tx, &target.account, &target.container).await;
                        }
                        "the changes feed says the shared drive was removed from view".into()
                    }
                }
            }
        },
    };
    record.incremental = false;
    record.retry_cursor = None;
    tracing::info!("{}: listing the drive whole: {why}", target.account);
    record.listed_whole_because = Some(why);
    let listed = list_files(inner, target, tx, record).await?;
    // Listed whole: a file an earlier backup run had and this one did not list is gone.
    send_complete(tx, &target.account, &target.container).await?;
    if let Some(p) = previous.filter(|p| p.account != target.account) {
        // A renamed shared drive: its files were listed under the new name.
        send_complete(tx, &p.account, &target.container).await?;
    }
    record.cursor = Some(cursor_value(
        inner,
        target,
        &listed.token,
        &listed.folders,
        listed.token_read_at,
    ));
    Ok(())
}

async fn send_complete(tx: &Sender, account: &str, container: &str) -> Result<()> {
    send(
        tx,
        Listing::Complete {
            system: "google".into(),
            account: Some(account.to_string()),
            container: Some(container.to_string()),
        },
    )
    .await
}

/// A folder: its name and parent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Folder {
    name: String,
    parent: Option<String>,
}

/// A drive's folders by id.
type Folders = HashMap<String, Folder>;

/// What a whole listing read besides the items.
struct Listed {
    /// The changes token read before the listing.
    token: String,
    token_read_at: time::OffsetDateTime,
    folders: Folders,
}

async fn list_files(
    inner: &Arc<Inner>,
    target: &Target,
    tx: &Sender,
    record: &mut DriveRecord,
) -> Result<Listed> {
    let g = &inner.google;
    let subject = target.subject.as_str();
    let drive = &g.endpoints.drive;
    // The cursor first: changes made while the listing runs are then in the next run.
    let mut token_url = format!("{drive}/changes/startPageToken?supportsAllDrives=true");
    if let Some(id) = &target.drive_id {
        token_url.push_str(&format!("&driveId={}", ferry_http::query_value(id)));
    }
    let token_read_at = time::OffsetDateTime::now_utc();
    let token = g
        .get_json(
            &token_url,
            subject,
            Api::Drive,
            &format!("reading the changes token of {}", target.account),
        )
        .await?;
    let token = token["startPageToken"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            Error::transient(format!(
                "reading the changes token of {}: Drive sent no startPageToken",
                target.account
            ))
        })?;
    let trashed = if inner.options.include_trashed {
        String::new()
    } else {
        " and trashed = false".into()
    };
    let page_size = inner.options.page_size.clamp(1, 1000);
    let list_url = |q: String, fields: &str| {
        format!(
            "{drive}/files?{}&q={}&fields={}&pageSize={page_size}",
            target.corpus,
            ferry_http::query_value(&q),
            ferry_http::query_value(fields)
        )
    };
    // Folders first: every file's path is then known when it is listed.
    let mut folders: Folders = HashMap::new();
    let what = format!("listing the folders of {}", target.account);
    let mut pages = g.pages(
        list_url(
            format!("mimeType = '{FOLDER}'{trashed}"),
            "nextPageToken,files(id,name,parents)",
        ),
        subject,
        Api::Drive,
        &what,
    );
    while let Some(page) = pages.next_page().await? {
        for f in page["files"].as_array().into_iter().flatten() {
            let Some(id) = f["id"].as_str() else { continue };
            folders.insert(id.to_string(), folder_of(f, id));
        }
    }
    record.folders = folders.len() as u64;
    let what = format!("listing the files of {}", target.account);
    let mut pages = g.pages(
        list_url(
            format!("mimeType != '{FOLDER}'{trashed}"),
            &format!("nextPageToken,files({FILE_FIELDS})"),
        ),
        subject,
        Api::Drive,
        &what,
    );
    let mut seen = HashSet::new();
    while let Some(page) = pages.next_page().await? {
        for f in page["files"].as_array().into_iter().flatten() {
            let Some(id) = f["id"].as_str() else { continue };
            if !seen.insert(ferry_http::id_hash(id)) {
                continue;
            }
            record.files += 1;
            for item in file_items(inner, target, &folders, f, record) {
                send(tx, Listing::Item(item)).await?;
            }
        }
    }
    Ok(Listed {
        token,
        token_read_at,
        folders,
    })
}

fn folder_of(f: &Value, id: &str) -> Folder {
    Folder {
        name: f["name"].as_str().unwrap_or(id).to_string(),
        parent: f["parents"][0].as_str().map(str::to_string),
    }
}

// ---------------------------------------------------------------------------------------------
// Incremental listings: the changes feed (developers.google.com/drive/api/guides/manage-changes).

/// What an earlier run saved about one drive (`drive_changes` in run details' `cursors`).
struct DriveCursor {
    /// As saved.
    raw: Value,
    /// The items' `account` then (a shared drive's changes with its name).
    account: String,
    token: Option<String>,
    folders: Option<Folders>,
    include_trashed: Option<bool>,
    export_formats: Option<Vec<String>>,
    token_read_at: Option<time::OffsetDateTime>,
}

/// The earlier run's cursor of a drive: a shared drive's by its id (its name may have
/// changed), a My Drive's by its user.
fn previous_cursor(inner: &Inner, target: &Target) -> Option<DriveCursor> {
    let cursors = inner.options.since.as_ref()?.get("cursors")?.as_array()?;
    let raw = cursors.iter().find(|c| {
        c["type"] == "drive_changes"
            && match &target.drive_id {
                Some(id) => c["drive_id"].as_str() == Some(id),
                None => {
                    c["drive_id"].is_null()
                        && c["drive"] == target.container.as_str()
                        && c["account"]
                            .as_str()
                            .is_some_and(|a| a.eq_ignore_ascii_case(&target.account))
                }
            }
    })?;
    Some(DriveCursor::parse(raw))
}

/// Shared drives an earlier run listed that are not among this run's: each one's cursor.
pub(crate) fn vanished_shared_drives(inner: &Inner, drives: &[SharedDrive]) -> Vec<Value> {
    let Some(cursors) = inner
        .options
        .since
        .as_ref()
        .and_then(|s| s.get("cursors"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    cursors
        .iter()
        .filter(|c| c["type"] == "drive_changes")
        .filter(|c| {
            c["drive_id"]
                .as_str()
                .is_some_and(|id| !drives.iter().any(|d| d.id == id))
        })
        .cloned()
        .collect()
}

/// A shared drive an earlier run backed up and this run's users cannot see: deleted (its
/// files are then removed), or still there (they stay, and so does its cursor).
pub(crate) async fn vanished_shared_drive(
    inner: &Arc<Inner>,
    cursor: &Value,
    tx: &Sender,
) -> Result<()> {
    let (Some(id), Some(account)) = (cursor["drive_id"].as_str(), cursor["account"].as_str())
    else {
        return Ok(());
    };
    let name = account.strip_prefix("shared-drive:").unwrap_or(account);
    match drive_exists(inner, id).await {
        Some(false) => {
            inner.note(format!(
                "the shared drive {name:?} ({id}) has been deleted since the last run: its files are marked removed"
            ));
            send_complete(tx, account, id).await
        }
        found => {
            inner.note(format!(
                "the shared drive {name:?} ({id}) was backed up before, but {}: its files stay as the last run saved them",
                if found == Some(true) {
                    "none of the exported users can read it now"
                } else {
                    "it could not be found now, nor checked as the administrator"
                }
            ));
            inner.cursor(cursor.clone());
            Ok(())
        }
    }
}

/// Whether a shared drive exists, asked as the administrator (None: could not tell).
async fn drive_exists(inner: &Inner, id: &str) -> Option<bool> {
    let url = format!(
        "{}/drives/{}?useDomainAdminAccess=true&fields=id",
        inner.google.endpoints.drive,
        ferry_http::segment(id)
    );
    match inner
        .google
        .get_json(
            &url,
            &inner.options.admin,
            Api::Drive,
            &format!("checking whether the shared drive {id} exists"),
        )
        .await
    {
        Ok(_) => Some(true),
        Err(e) if e.status == Some(404) => Some(false),
        Err(_) => None,
    }
}

impl DriveCursor {
    fn parse(raw: &Value) -> DriveCursor {
        DriveCursor {
            raw: raw.clone(),
            account: raw["account"].as_str().unwrap_or_default().to_string(),
            token: match &raw["start_page_token"] {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
            folders: decode_folders(&raw["folders"]),
            include_trashed: raw["include_trashed"].as_bool(),
            export_formats: raw["export_formats"].as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            }),
            token_read_at: crate::parse_time(&raw["token_read_at"]),
        }
    }

    /// Why the drive cannot be read from this cursor (None: it can).
    fn unusable(&self, inner: &Inner, target: &Target) -> Option<String> {
        let o = &inner.options;
        let formats: Vec<String> = o
            .export_formats
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        if self.token.is_none() {
            Some("the last run saved no changes token (its listing of this drive failed)".into())
        } else if self.folders.is_none() {
            Some("the last run saved no folder map (an earlier version of ferry)".into())
        } else if self.include_trashed != Some(o.include_trashed)
            || self.export_formats.as_ref() != Some(&formats)
        {
            Some("--include-trashed or --export-formats differ from the last run".into())
        } else if self.account != target.account {
            Some(format!(
                "the shared drive was renamed (it was {:?})",
                self.account
                    .strip_prefix("shared-drive:")
                    .unwrap_or(&self.account)
            ))
        } else {
            None
        }
    }
}

/// The cursor the next run starts from: the changes token, what decides the items' keys (the
/// folder map, the options that change names), and when the token was read.
fn cursor_value(
    inner: &Inner,
    target: &Target,
    token: &str,
    folders: &Folders,
    token_read_at: time::OffsetDateTime,
) -> Value {
    json!({
        "type": "drive_changes",
        "account": target.account,
        "drive": target.container,
        "drive_id": target.drive_id,
        "start_page_token": token,
        "token_read_at": token_read_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "include_trashed": inner.options.include_trashed,
        "export_formats": inner.options.export_formats.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "folders": encode_folders(folders),
    })
}

/// The folder map as `[[id, name, parent], …]` in id order, where `parent` is the index of
/// the parent folder in the list, or the parent's id when it is not a folder of the map (the
/// drive's root, a folder out of view), or null.
fn encode_folders(folders: &Folders) -> Value {
    let mut ids: Vec<&String> = folders.keys().collect();
    ids.sort();
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    Value::Array(
        ids.iter()
            .map(|id| {
                let f = &folders[*id];
                let parent = match f.parent.as_deref() {
                    Some(p) => match index.get(p) {
                        Some(&i) => json!(i),
                        None => json!(p),
                    },
                    None => Value::Null,
                };
                json!([id, f.name, parent])
            })
            .collect(),
    )
}

/// Reads [`encode_folders`]' form back (None: absent or malformed).
fn decode_folders(v: &Value) -> Option<Folders> {
    let list = v.as_array()?;
    let mut ids = Vec::with_capacity(list.len());
    for e in list {
        ids.push(e[0].as_str()?.to_string());
    }
    let mut out = HashMap::with_capacity(list.len());
    for (e, id) in list.iter().zip(&ids) {
        let parent = match &e[2] {
            Value::Number(n) => Some(ids.get(usize::try_from(n.as_u64()?).ok()?)?.clone()),
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            _ => return None,
        };
        out.insert(
            id.clone(),
            Folder {
                name: e[1].as_str()?.to_string(),
                parent,
            },
        );
    }
    Some(out)
}

/// The latest change of one file: its metadata, or None when it left the feed's view
/// (deleted, or access lost).
struct Change {
    id: String,
    file: Option<Value>,
}

/// What the changes feed says to do.
enum Feed {
    /// The drive's changes (each file's latest, in the feed's order), the folder map after
    /// them, and the next token.
    Changes {
        entries: Vec<Change>,
        folders: Folders,
        token: String,
    },
    /// The drive has to be listed whole, and why.
    Whole(String),
    /// The shared drive is gone from the feed's view (deleted, or access lost).
    DriveGone,
}

/// Reads a drive's changes since the cursor to the end (memory grows with the changes, not
/// the drive). A token Drive refuses, or a folder whose path changed, makes it [`Feed::Whole`].
async fn read_changes(inner: &Inner, target: &Target, cur: &DriveCursor) -> Result<Feed> {
    let g = &inner.google;
    let page_size = inner.options.page_size.clamp(1, 1000);
    let fields = format!(
        "nextPageToken,newStartPageToken,changes(changeType,removed,fileId,driveId,drive(id,name),file({FILE_FIELDS}))"
    );
    let mut base = format!(
        "{}/changes?pageSize={page_size}&includeRemoved=true&fields={}",
        g.endpoints.drive,
        ferry_http::query_value(&fields)
    );
    match &target.drive_id {
        Some(id) => base.push_str(&format!(
            "&driveId={}&includeItemsFromAllDrives=true&supportsAllDrives=true",
            ferry_http::query_value(id)
        )),
        None => base.push_str("&supportsAllDrives=true"),
    }
    let what = format!("reading the changes of {}", target.account);
    let mut entries: Vec<Change> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut token = cur.token.clone().unwrap_or_default();
    let new_token = loop {
        let url = format!("{base}&pageToken={}", ferry_http::query_value(&token));
        let mut page = match g.get_json(&url, &target.subject, Api::Drive, &what).await {
            Ok(p) => p,
            Err(e) if target.drive_id.is_some() && e.status == Some(404) => {
                return Ok(Feed::DriveGone)
            }
            // "If the token is rejected for any reason, it should be discarded" (Drive's
            // ChangeList reference).
            Err(e) if matches!(e.status, Some(400 | 404 | 410)) => {
                return Ok(Feed::Whole(format!(
                    "Drive refused the changes token of the last run ({})",
                    e.error.message()
                )))
            }
            Err(e) => return Err(e.error),
        };
        let Value::Array(changes) = page["changes"].take() else {
            return Err(Error::transient(format!(
                "{what}: Drive answered without a list of changes"
            )));
        };
        for mut c in changes {
            if c["changeType"] == "drive" {
                let about = c["driveId"].as_str().or_else(|| c["drive"]["id"].as_str());
                if target.drive_id.is_some()
                    && about == target.drive_id.as_deref()
                    && c["removed"] == true
                {
                    return Ok(Feed::DriveGone);
                }
                continue;
            }
            let file = c["file"].take();
            let Some(id) = c["fileId"]
                .as_str()
                .or_else(|| file["id"].as_str())
                .map(str::to_string)
            else {
                continue;
            };
            let gone = c["removed"] == true || !file.is_object();
            let change = Change {
                id: id.clone(),
                file: (!gone).then_some(file),
            };
            match index.get(&id) {
                Some(&i) => entries[i] = change,
                None => {
                    index.insert(id, entries.len());
                    entries.push(change);
                }
            }
        }
        match page["nextPageToken"].as_str().filter(|t| !t.is_empty()) {
            Some(next) if next == token => {
                return Err(Error::transient(format!(
                    "{what}: Drive sent the same page token again"
                )))
            }
            Some(next) => token = next.to_string(),
            None => match page["newStartPageToken"].as_str() {
                Some(t) => break t.to_string(),
                None => {
                    return Err(Error::transient(format!(
                        "{what}: the last page of changes has no newStartPageToken"
                    )))
                }
            },
        }
    };
    let folders = cur.folders.clone().unwrap_or_default();
    match apply_folder_changes(
        folders,
        &entries,
        target.drive_id.as_deref(),
        inner.options.include_trashed,
        cur.token_read_at,
    ) {
        Ok(folders) => Ok(Feed::Changes {
            entries,
            folders,
            token: new_token,
        }),
        Err(why) => Ok(Feed::Whole(why)),
    }
}

/// Whether a file of the feed is in the drive listed (a shared drive's own, or in no shared
/// drive for My Drive).
fn in_drive(drive_id: Option<&str>, f: &Value) -> bool {
    f["driveId"].as_str() == drive_id
}

/// Applies the feed's folder changes to the map. A new folder is added; a folder renamed,
/// moved, trashed (unless trash is listed), deleted or out of view changes the keys of files
/// the feed does not list, and so does a folder that appears but is older than the last run
/// (restored from the trash, or shared into view, with its contents): those are `Err(why)`,
/// and the drive is listed whole.
fn apply_folder_changes(
    mut folders: Folders,
    entries: &[Change],
    drive_id: Option<&str>,
    include_trashed: bool,
    token_read_at: Option<time::OffsetDateTime>,
) -> std::result::Result<Folders, String> {
    for c in entries {
        let known = folders.get(&c.id);
        let Some(f) = &c.file else {
            if let Some(old) = known {
                return Err(format!(
                    "the folder {:?} was deleted or is out of view",
                    old.name
                ));
            }
            continue;
        };
        if f["mimeType"] != FOLDER {
            continue;
        }
        let kept = in_drive(drive_id, f) && (include_trashed || f["trashed"] != true);
        let now = folder_of(f, &c.id);
        match known {
            Some(old) if !kept => {
                return Err(format!(
                    "the folder {:?} was trashed or moved out of the drive",
                    old.name
                ))
            }
            Some(old) if *old != now => {
                return Err(format!(
                    "the folder {:?} was renamed or moved{}",
                    old.name,
                    if old.name != now.name {
                        format!(" (now {:?})", now.name)
                    } else {
                        String::new()
                    }
                ))
            }
            Some(_) => {}
            None if !kept => {}
            None => {
                // Created after the last run's token (an hour's margin for the clocks), or
                // else back from the trash or newly shared, with contents the feed may not
                // list one by one.
                let new = match (crate::parse_time(&f["createdTime"]), token_read_at) {
                    (Some(created), Some(read)) => created >= read - time::Duration::hours(1),
                    _ => false,
                };
                if !new {
                    return Err(format!(
                        "the folder {:?} appeared, older than the last run (restored from the trash or shared into view)",
                        now.name
                    ));
                }
                folders.insert(c.id.clone(), now);
            }
        }
    }
    Ok(folders)
}

/// Hands on the feed's files: each changed one as the whole listing would list it (with the
/// folder map after the feed), each deleted, trashed or moved-away one as removed.
async fn send_changes(
    inner: &Arc<Inner>,
    target: &Target,
    entries: Vec<Change>,
    folders: &Folders,
    tx: &Sender,
    record: &mut DriveRecord,
) -> Result<()> {
    for c in entries {
        match &c.file {
            Some(f) if f["mimeType"] == FOLDER => {}
            Some(f)
                if in_drive(target.drive_id.as_deref(), f)
                    && (inner.options.include_trashed || f["trashed"] != true) =>
            {
                record.files += 1;
                for item in file_items(inner, target, folders, f, record) {
                    send(tx, Listing::Item(item)).await?;
                }
            }
            _ => {
                record.removed += 1;
                send(
                    tx,
                    Listing::Removed(SourceRef {
                        system: "google".into(),
                        account: Some(target.account.clone()),
                        container: Some(target.container.clone()),
                        id: c.id,
                        version: None,
                        original_name: None,
                        original_path: None,
                    }),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The folder names from the drive's root down to `parent` (unknown parents — the root, or a
/// folder the user cannot see — end the walk).
fn folder_path(folders: &Folders, parent: Option<&str>) -> Vec<String> {
    let mut names = Vec::new();
    let mut next = parent.map(str::to_string);
    let mut guard = HashSet::new();
    while let Some(id) = next {
        if !guard.insert(id.clone()) {
            break;
        }
        match folders.get(&id) {
            Some(f) => {
                names.push(f.name.clone());
                next = f.parent.clone();
            }
            None => break,
        }
    }
    names.reverse();
    names
}

/// The export of each editor type per format: (media type, extension, alternatives Drive has
/// used for the same format in `exportLinks`).
fn export_target(
    mime: &str,
    format: ExportFormat,
) -> Option<(&'static str, &'static str, &'static [&'static str])> {
    use ExportFormat::*;
    let kind = mime.strip_prefix("application/vnd.google-apps.")?;
    Some(match (kind, format) {
        ("document", Odf) => ("application/vnd.oasis.opendocument.text", "odt", &[]),
        ("document", Ooxml) => (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "docx",
            &[],
        ),
        ("spreadsheet", Odf) => (
            "application/vnd.oasis.opendocument.spreadsheet",
            "ods",
            &["application/x-vnd.oasis.opendocument.spreadsheet"],
        ),
        ("spreadsheet", Ooxml) => (
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "xlsx",
            &[],
        ),
        ("presentation", Odf) => (
            "application/vnd.oasis.opendocument.presentation",
            "odp",
            &[],
        ),
        ("presentation", Ooxml) => (
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            "pptx",
            &[],
        ),
        // Drawings have no ODF or OOXML export: SVG is the open vector format, PNG the
        // picture every office suite opens.
        ("drawing", Odf) => ("image/svg+xml", "svg", &[]),
        ("drawing", Ooxml) => ("image/png", "png", &[]),
        ("document" | "spreadsheet" | "presentation" | "drawing", Pdf) => {
            ("application/pdf", "pdf", &[])
        }
        _ => return None,
    })
}

fn base_item(target: &Target, f: &Value, id: &str, path: Vec<String>) -> Item {
    let name = f["name"].as_str().unwrap_or(id);
    let mut item = Item::file(
        SourceRef {
            system: "google".into(),
            account: Some(target.account.clone()),
            container: Some(target.container.clone()),
            id: id.to_string(),
            version: f["version"].as_str().map(str::to_string),
            original_name: Some(name.to_string()),
            // The folders and the file's own name (not the name of an export).
            original_path: Some(format!(
                "{}/{}",
                target.account,
                path[target.prefix.len()..path.len().saturating_sub(1).max(target.prefix.len())]
                    .iter()
                    .map(String::as_str)
                    .chain(std::iter::once(name))
                    .collect::<Vec<_>>()
                    .join("/")
            )),
        },
        path,
    );
    item.created = parse_time(&f["createdTime"]);
    item.modified = parse_time(&f["modifiedTime"]);
    let x = &mut item.extra;
    x.insert("file_id".into(), id.into());
    x.insert("drive_kind".into(), target.kind.into());
    x.insert("subject".into(), target.subject.clone().into());
    if let Some(d) = &target.drive_id {
        x.insert("drive_id".into(), d.clone().into());
    }
    for (from, to) in [
        ("mimeType", "mime_type"),
        ("parents", "parents"),
        ("headRevisionId", "head_revision_id"),
        ("version", "drive_version"),
        ("webViewLink", "web_view_link"),
        ("trashed", "trashed"),
    ] {
        if let Some(v) = f.get(from).filter(|v| !v.is_null()) {
            x.insert(to.into(), v.clone());
        }
    }
    if let Some(o) = f["owners"][0]["emailAddress"].as_str() {
        x.insert("owner".into(), o.into());
    }
    if target.user.as_ref().is_some_and(|u| u.suspended) {
        x.insert("suspended".into(), true.into());
    }
    item
}

/// The items one Drive file becomes: a file, one export per format, a shortcut or reference
/// record — or nothing, when another listing has it.
fn file_items(
    inner: &Inner,
    target: &Target,
    folders: &Folders,
    f: &Value,
    record: &mut DriveRecord,
) -> Vec<Item> {
    let id = f["id"].as_str().unwrap_or_default();
    let name = f["name"].as_str().unwrap_or(id).to_string();
    let mime = f["mimeType"].as_str().unwrap_or_default();
    let mut path = target.prefix.clone();
    // My Drive: a file owned by someone else is archived under its owner when the owner is
    // exported too, else once, by the first user whose listing meets it, in "Shared with me".
    if let Some(user) = &target.user {
        let owner = f["owners"][0]["emailAddress"].as_str().unwrap_or_default();
        let owned = f["ownedByMe"]
            .as_bool()
            .unwrap_or_else(|| owner.eq_ignore_ascii_case(&user.email));
        if !owned {
            let owner_exported = inner.options.include.drive
                && inner.state.lock().expect("state").users.iter().any(|u| {
                    u["email"]
                        .as_str()
                        .is_some_and(|e| e.eq_ignore_ascii_case(owner))
                });
            let first = inner
                .claimed_files
                .lock()
                .expect("claims")
                .insert(ferry_http::id_hash(id));
            if owner_exported || !first {
                record.references += 1;
                path.push("Shared with me".into());
                path.push(name.clone());
                let mut item = base_item(target, f, id, path);
                item.kind = ItemKind::Other {
                    what: "shared file, archived once under its owner".into(),
                };
                item.extra.insert("google_type".into(), "reference".into());
                item.extra.insert(
                    "archived_under".into(),
                    if owner_exported {
                        owner
                    } else {
                        "another exported user"
                    }
                    .into(),
                );
                return vec![item];
            }
            path.push("Shared with me".into());
        } else {
            inner
                .claimed_files
                .lock()
                .expect("claims")
                .insert(ferry_http::id_hash(id));
            path.extend(folder_path(folders, f["parents"][0].as_str()));
        }
    } else {
        path.extend(folder_path(folders, f["parents"][0].as_str()));
    }
    if mime == SHORTCUT {
        path.push(name);
        let mut item = base_item(target, f, id, path);
        item.kind = ItemKind::Other {
            what: "shortcut".into(),
        };
        item.extra.insert("google_type".into(), "shortcut".into());
        item.extra
            .insert("shortcut".into(), f["shortcutDetails"].clone());
        return vec![item];
    }
    if let Some(kind) = mime.strip_prefix("application/vnd.google-apps.") {
        let mut out = Vec::new();
        for &format in &inner.options.export_formats {
            let Some((to, ext, alternatives)) = export_target(mime, format) else {
                continue;
            };
            if out
                .iter()
                .any(|i: &Item| i.media_type.as_deref() == Some(to))
            {
                continue;
            }
            let links = &f["exportLinks"];
            let link = std::iter::once(to)
                .chain(alternatives.iter().copied())
                .find_map(|m| links[m].as_str());
            let mut p = path.clone();
            p.push(format!("{name}.{ext}"));
            let mut item = base_item(target, f, id, p);
            item.media_type = Some(to.into());
            item.extra.insert("google_type".into(), "export".into());
            item.extra
                .insert("export_format".into(), format.name().into());
            item.extra.insert("export_mime_type".into(), to.into());
            if let Some(l) = link {
                item.extra.insert("export_link".into(), l.into());
            }
            item.conversion = Some(json!({
                "from": mime,
                "to": to,
                "format": format.name(),
                "via": if link.is_some() { "exportLinks" } else { "files.export" },
                "source_modified_time": f["modifiedTime"],
                "source_version": f["version"],
                "source_checksums": "none: Google does not state a checksum of exports; the digests are of the bytes received",
            }));
            out.push(item);
        }
        record.exports += out.len() as u64;
        if out.is_empty() {
            path.push(name);
            let mut item = base_item(target, f, id, path);
            item.kind = ItemKind::Other {
                what: format!("Google {kind} (Drive offers no export of this type)"),
            };
            item.extra.insert("google_type".into(), "native".into());
            out.push(item);
        }
        return out;
    }
    path.push(name);
    let mut item = base_item(target, f, id, path);
    // The content's revision: renaming or moving a file raises Drive's `version` (every change
    // does) but not its head revision, so a moved file is not read again.
    if let Some(rev) = f["headRevisionId"].as_str() {
        item.source.version = Some(rev.to_string());
    }
    item.media_type = (!mime.is_empty()).then(|| mime.to_string());
    item.size = f["size"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| f["size"].as_u64());
    if let Some(h) = f["sha256Checksum"].as_str() {
        item.source_checksums
            .push(SourceChecksum::new(ChecksumAlgorithm::Sha256, h));
    } else if let Some(h) = f["md5Checksum"].as_str() {
        item.source_checksums
            .push(SourceChecksum::new(ChecksumAlgorithm::Md5, h));
    }
    item.extra.insert("google_type".into(), "file".into());
    for (from, to) in [
        ("md5Checksum", "md5"),
        ("sha1Checksum", "sha1"),
        ("sha256Checksum", "sha256"),
    ] {
        if let Some(v) = f[from].as_str() {
            item.extra.insert(to.into(), v.into());
        }
    }
    vec![item]
}

fn subject_of(item: &Item) -> Result<String> {
    item.extra
        .get("subject")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Error::permanent("a Drive item without the user to read it as"))
}

/// Opens a binary file (`alt=media`), from `offset`.
pub(crate) async fn open_file(inner: &Inner, item: &Item, offset: u64) -> Result<Opened> {
    let subject = subject_of(item)?;
    let url = format!(
        "{}/files/{}?alt=media&supportsAllDrives=true",
        inner.google.endpoints.drive,
        ferry_http::segment(&item.source.id)
    );
    let what = format!("downloading {}", item.display_name());
    let d = inner
        .google
        .open(&url, &subject, Api::Drive, &what, offset)
        .await?;
    if offset > 0 && d.response.status().as_u16() != 206 {
        return Err(Error::transient(format!(
            "{what}: Drive ignored the range request; reading it again from the start"
        )));
    }
    Ok(Opened::bytes(ferry_http::body_stream(
        d.response,
        Some(d.permit),
        what,
    )))
}

/// Opens an export: the file's export link for the format, else `files.export`.
pub(crate) async fn open_export(inner: &Inner, item: &Item, offset: u64) -> Result<Opened> {
    if offset > 0 {
        return Err(Error::transient(
            "an export cannot be read from part-way; exporting again from the start",
        ));
    }
    let subject = subject_of(item)?;
    let to = item
        .extra
        .get("export_mime_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let what = format!("exporting {} as {to}", item.display_name());
    let url = match item.extra.get("export_link").and_then(Value::as_str) {
        Some(link) => {
            trusted_export_link(inner, link)?;
            link.to_string()
        }
        None => format!(
            "{}/files/{}/export?mimeType={}",
            inner.google.endpoints.drive,
            ferry_http::segment(&item.source.id),
            ferry_http::query_value(to)
        ),
    };
    let d = inner
        .google
        .open(&url, &subject, Api::Drive, &what, 0)
        .await?;
    let mut update = ItemUpdate::default();
    if let Some(len) = d.response.content_length() {
        update.size = Some(len);
    }
    Ok(Opened {
        bytes: ferry_http::body_stream(d.response, Some(d.permit), what),
        update,
        trailer: None,
    })
}

/// Export links carry the bearer token, so they must point at Google (or at the configured
/// endpoint): a link elsewhere is refused rather than handed a token.
fn trusted_export_link(inner: &Inner, link: &str) -> Result<()> {
    let host = url::Url::parse(link)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let drive_host = url::Url::parse(&inner.google.endpoints.drive)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    match host {
        Some(h) if h == "docs.google.com" || h.ends_with(".googleapis.com") || h.ends_with(".google.com") || Some(&h) == drive_host.as_ref() => Ok(()),
        _ => Err(Error::permanent(format!(
            "Drive gave an export link to an unexpected host ({}); not sending the access token there",
            ferry_http::host_of(link)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_paths_walk_to_the_root_and_survive_cycles() {
        let mut f = HashMap::new();
        f.insert(
            "a".to_string(),
            Folder {
                name: "A".into(),
                parent: Some("root".into()),
            },
        );
        f.insert(
            "b".to_string(),
            Folder {
                name: "B".into(),
                parent: Some("a".into()),
            },
        );
        f.insert(
            "x".to_string(),
            Folder {
                name: "X".into(),
                parent: Some("y".into()),
            },
        );
        f.insert(
            "y".to_string(),
            Folder {
                name: "Y".into(),
                parent: Some("x".into()),
            },
        );
        assert_eq!(folder_path(&f, Some("b")), vec!["A", "B"]);
        assert_eq!(folder_path(&f, None), Vec::<String>::new());
        assert_eq!(folder_path(&f, Some("x")).len(), 2);
    }

    #[test]
    fn every_editor_type_has_an_export_per_format() {
        for kind in ["document", "spreadsheet", "presentation", "drawing"] {
            let mime = format!("application/vnd.google-apps.{kind}");
            for f in [ExportFormat::Odf, ExportFormat::Ooxml, ExportFormat::Pdf] {
                assert!(export_target(&mime, f).is_some(), "{kind} {f:?}");
            }
        }
        assert!(export_target("application/vnd.google-apps.form", ExportFormat::Pdf).is_none());
        assert_eq!(
            export_target("application/vnd.google-apps.document", ExportFormat::Odf)
                .unwrap()
                .1,
            "odt"
        );
    }

    fn folders() -> Folders {
        let mut f = HashMap::new();
        for (id, name, parent) in [
            ("a", "Docs", Some("root")),
            ("b", "Projects", Some("a")),
            ("c", "2024", Some("b")),
            ("s", "Shared in", None),
        ] {
            f.insert(
                id.to_string(),
                Folder {
                    name: name.into(),
                    parent: parent.map(str::to_string),
                },
            );
        }
        f
    }

    #[test]
    fn the_folder_map_round_trips_with_parents_as_indexes() {
        let f = folders();
        let v = encode_folders(&f);
        assert_eq!(v[0], json!(["a", "Docs", "root"]));
        assert_eq!(v[1], json!(["b", "Projects", 0]));
        assert_eq!(v[3], json!(["s", "Shared in", null]));
        assert_eq!(decode_folders(&v), Some(f));
        assert_eq!(decode_folders(&json!([["a", "A", 7]])), None);
        assert_eq!(decode_folders(&Value::Null), None);
    }

    fn change(id: &str, file: Option<Value>) -> Change {
        Change {
            id: id.into(),
            file,
        }
    }

    fn folder(id: &str, name: &str, parent: &str, created: &str) -> Value {
        json!({"id": id, "name": name, "mimeType": FOLDER, "parents": [parent], "trashed": false, "createdTime": created})
    }

    #[test]
    fn folder_changes_add_new_folders_and_refuse_what_moves_paths() {
        let read = crate::parse_time(&json!("2024-06-01T00:00:00Z"));
        let apply =
            |entries: Vec<Change>| apply_folder_changes(folders(), &entries, None, false, read);
        // New folder (after the token), unchanged folder, files: applied.
        let f = apply(vec![
            change("n", Some(folder("n", "New", "c", "2024-06-01T10:00:00Z"))),
            change("b", Some(folder("b", "Projects", "a", "2020-01-01T00:00:00Z"))),
            change("f", Some(json!({"id": "f", "name": "x.txt", "mimeType": "text/plain", "parents": ["zz"]}))),
            change("gone-file", None),
        ])
        .unwrap();
        assert_eq!(
            folder_path(&f, Some("n")),
            vec!["Docs", "Projects", "2024", "New"]
        );
        // Renamed, moved, trashed, deleted, moved to a shared drive: listed whole.
        for c in [
            change(
                "b",
                Some(folder("b", "Projects 2", "a", "2020-01-01T00:00:00Z")),
            ),
            change("c", Some(folder("c", "2024", "a", "2020-01-01T00:00:00Z"))),
            change(
                "c",
                Some(
                    json!({"id": "c", "name": "2024", "mimeType": FOLDER, "parents": ["b"], "trashed": true}),
                ),
            ),
            change("a", None),
            change(
                "a",
                Some(
                    json!({"id": "a", "name": "Docs", "mimeType": FOLDER, "parents": ["d"], "driveId": "d"}),
                ),
            ),
            // An old folder appearing: back from the trash, or shared into view.
            change(
                "o",
                Some(folder("o", "Old", "root", "2023-01-01T00:00:00Z")),
            ),
        ] {
            assert!(apply(vec![c]).is_err());
        }
        // A trashed folder that was not in the map, or with trash listed, a trashed one kept.
        assert!(apply(vec![change(
            "t",
            Some(json!({"id": "t", "name": "T", "mimeType": FOLDER, "trashed": true}))
        )])
        .is_ok());
        let trashed = json!({"id": "c", "name": "2024", "mimeType": FOLDER, "parents": ["b"], "trashed": true});
        assert!(
            apply_folder_changes(folders(), &[change("c", Some(trashed))], None, true, read)
                .is_ok()
        );
        // A shared drive's feed: only its own folders count.
        let mine = json!({"id": "n", "name": "N", "mimeType": FOLDER, "parents": ["d"], "driveId": "d", "createdTime": "2024-06-02T00:00:00Z"});
        let f = apply_folder_changes(
            HashMap::new(),
            &[change("n", Some(mine))],
            Some("d"),
            false,
            read,
        )
        .unwrap();
        assert!(f.contains_key("n"));
    }
}
