//! Drive: each user's My Drive and every shared drive. The changes start page token is read
//! *before* a drive is listed (the cursor for incremental runs); folders are listed first, so
//! every file's path is known when the file is handed on (memory grows with folders, not
//! files). Binary files are streamed and checked against `sha256Checksum` (else
//! `md5Checksum`) and resume by range; Google Docs, Sheets, Slides and Drawings are exported
//! through their `exportLinks` (no 10 MB limit, unlike `files.export`) to each requested format;
//! shortcuts are recorded, not followed; a file owned by another exported user is archived once,
//! under its owner, and recorded as a reference elsewhere.

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
        account: format!("shared-drive:{}", d.name),
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
    };
    let listed = list_files(inner, &target, tx, &mut record).await;
    if listed.is_ok() {
        // Listed whole: a file an earlier backup run had and this one did not list is gone.
        send(
            tx,
            Listing::Complete {
                system: "google".into(),
                account: Some(target.account.clone()),
                container: Some(target.container.clone()),
            },
        )
        .await?;
    }
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

/// A folder: its name and parent.
struct Folder {
    name: String,
    parent: Option<String>,
}

async fn list_files(
    inner: &Arc<Inner>,
    target: &Target,
    tx: &Sender,
    record: &mut DriveRecord,
) -> Result<()> {
    let g = &inner.google;
    let subject = target.subject.as_str();
    let drive = &g.endpoints.drive;
    // The cursor first: changes made while the listing runs are then in the next run.
    let mut token_url = format!("{drive}/changes/startPageToken?supportsAllDrives=true");
    if let Some(id) = &target.drive_id {
        token_url.push_str(&format!("&driveId={}", ferry_http::query_value(id)));
    }
    let token = g
        .get_json(
            &token_url,
            subject,
            Api::Drive,
            &format!("reading the changes token of {}", target.account),
        )
        .await?;
    inner.cursor(json!({
        "type": "drive_changes",
        "account": target.account,
        "drive": target.container,
        "drive_id": target.drive_id,
        "start_page_token": token["startPageToken"],
    }));
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
    let mut folders: HashMap<String, Folder> = HashMap::new();
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
            folders.insert(
                id.to_string(),
                Folder {
                    name: f["name"].as_str().unwrap_or(id).to_string(),
                    parent: f["parents"][0].as_str().map(str::to_string),
                },
            );
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
    Ok(())
}

/// The folder names from the drive's root down to `parent` (unknown parents — the root, or a
/// folder the user cannot see — end the walk).
fn folder_path(folders: &HashMap<String, Folder>, parent: Option<&str>) -> Vec<String> {
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
    folders: &HashMap<String, Folder>,
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
}
