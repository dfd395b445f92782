//! OneDrive and SharePoint document libraries: each drive listed with a drive delta query
//! (folders rebuilt from parent ids, since delta results carry no paths; repeated entries
//! merged, last wins; deleted entries ignored), each file downloaded through its pre-signed
//! download URL with Range resume and checked against Graph's quickXorHash.
//!
//! Incremental runs read each drive from the earlier run's delta link. The cursor keeps the
//! drive's folder map (id → parent, name) beside the link, since a changed file's path is
//! only known from its ancestors; a renamed, moved or deleted folder changes the paths of
//! descendants the delta does not list, so such a drive is listed whole again.

use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_core::{
    ChecksumAlgorithm, Error, Item, ItemKind, ItemUpdate, Listing, Opened, Result, SourceChecksum,
    SourceRef,
};
use serde_json::{json, Value};

use crate::graph::{segment, GraphError, Scope};
use crate::users::User;
use crate::{fail_listing, id_hash, parse_time, send, DriveRecord, Inner, Sender, SiteSelection};

/// Where a drive's files go in the archive, and whose they are.
struct DriveTarget {
    account: String,
    drive_id: String,
    drive_type: String,
    name: String,
    /// Path components below the tenant: `users/<upn>/onedrive` or `sites/<site>/<library>`.
    prefix: Vec<String>,
    scope: Scope,
}

impl DriveTarget {
    /// What the reconciliation says about this drive's listing.
    fn record(
        &self,
        files: u64,
        folders: u64,
        deleted_seen: u64,
        repeats: u64,
        resynced: bool,
    ) -> DriveRecord {
        DriveRecord {
            account: self.account.clone(),
            drive_id: self.drive_id.clone(),
            drive_type: self.drive_type.clone(),
            name: self.name.clone(),
            files,
            folders,
            deleted_seen,
            repeats,
            resynced,
        }
    }
}

/// Lists a user's OneDrive.
pub(crate) async fn list_user_drive(inner: &Inner, user: &User, tx: &Sender) -> Result<()> {
    let url = format!("{}/users/{}/drive", inner.graph.root(), segment(&user.id));
    let drive = match inner
        .graph
        .get_json(&url, Scope::Files, None, &format!("{}: OneDrive", user.upn))
        .await
    {
        Ok(d) => d,
        Err(g) if g.status == Some(404) => {
            inner.note(format!(
                "{}: no OneDrive (not provisioned or no license for it; {})",
                user.upn,
                g.error.message()
            ));
            return Ok(());
        }
        Err(g) => return fail_listing(tx, &format!("m365:{}/onedrive", user.upn), g).await,
    };
    let Some(id) = drive["id"].as_str() else {
        return Ok(());
    };
    let target = DriveTarget {
        account: user.upn.clone(),
        drive_id: id.to_string(),
        drive_type: drive["driveType"]
            .as_str()
            .unwrap_or("business")
            .to_string(),
        name: drive["name"].as_str().unwrap_or("OneDrive").to_string(),
        prefix: vec!["users".into(), user.upn.clone(), "onedrive".into()],
        scope: Scope::Files,
    };
    list_drive(inner, target, tx).await
}

/// Lists the document libraries of the sites asked for.
pub(crate) async fn list_sites(inner: &Inner, tx: &Sender) -> Result<()> {
    let root = inner.graph.root().to_string();
    let sites: Vec<Value> = match &inner.options.sites {
        SiteSelection::All => {
            let url = format!("{root}/sites/getAllSites?$top={}", inner.options.page_size);
            match inner
                .graph
                .collect(&url, Scope::Sites, None, "listing SharePoint sites")
                .await
            {
                Ok((s, _)) => s,
                Err(g) => return fail_listing(tx, "m365:sites", g).await,
            }
        }
        SiteSelection::Urls(urls) => {
            let mut out = Vec::new();
            for u in urls {
                let parsed = url::Url::parse(u).map_err(|_| {
                    Error::fatal(format!(
                        "--sites {u:?} is not a URL; give site URLs like https://contoso.sharepoint.com/sites/hr"
                    ))
                })?;
                let host = parsed.host_str().unwrap_or_default();
                let path = parsed.path().trim_end_matches('/');
                let url = if path.is_empty() {
                    format!("{root}/sites/{host}")
                } else {
                    format!("{root}/sites/{host}:{path}")
                };
                match inner
                    .graph
                    .get_json(&url, Scope::Sites, None, &format!("site {u}"))
                    .await
                {
                    Ok(s) => out.push(s),
                    Err(g) if g.status == Some(404) => {
                        return Err(Error::fatal(format!(
                            "no SharePoint site at {u}; check --sites"
                        )))
                    }
                    Err(g) => fail_listing(tx, &format!("m365:site {u}"), g).await?,
                }
            }
            out
        }
    };
    // OneDrive sites show up among all sites too; they are read per user.
    let sites: Vec<Value> = sites
        .into_iter()
        .filter(|s| {
            !s["webUrl"]
                .as_str()
                .is_some_and(|w| w.contains("-my.sharepoint."))
        })
        .collect();
    inner.state.lock().expect("state").sites = sites.len() as u64;
    if matches!(inner.options.sites, SiteSelection::All) {
        // Sites the earlier run read that are gone now: their libraries are emptied.
        let listed: HashSet<&str> = sites.iter().filter_map(|s| s["webUrl"].as_str()).collect();
        let gone: Vec<(String, String)> = site_cursors(inner)
            .filter(|(account, _)| !listed.contains(account.as_str()))
            .collect();
        for (account, drive_id) in gone {
            drive_gone(inner, tx, account, drive_id, "its site is gone").await?;
        }
    }
    for site in sites {
        let Some(site_id) = site["id"].as_str() else {
            continue;
        };
        let site_name = site["name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or(site["displayName"].as_str())
            .unwrap_or(site_id)
            .to_string();
        let url = format!("{root}/sites/{}/drives", segment(site_id));
        let drives = match inner
            .graph
            .collect(
                &url,
                Scope::Sites,
                None,
                &format!("libraries of site {site_name}"),
            )
            .await
        {
            Ok((d, _)) => d,
            Err(g) => {
                fail_listing(tx, &format!("m365:sites/{site_name}"), g).await?;
                continue;
            }
        };
        // Libraries of this site the earlier run read that are gone now.
        if let Some(url) = site["webUrl"].as_str() {
            let ids: HashSet<&str> = drives.iter().filter_map(|d| d["id"].as_str()).collect();
            let gone: Vec<(String, String)> = site_cursors(inner)
                .filter(|(account, id)| account == url && !ids.contains(id.as_str()))
                .collect();
            for (account, drive_id) in gone {
                drive_gone(inner, tx, account, drive_id, "the library is gone").await?;
            }
        }
        for d in drives {
            let Some(id) = d["id"].as_str() else { continue };
            let name = d["name"].as_str().unwrap_or(id).to_string();
            let target = DriveTarget {
                account: site["webUrl"].as_str().unwrap_or(&site_name).to_string(),
                drive_id: id.to_string(),
                drive_type: d["driveType"]
                    .as_str()
                    .unwrap_or("documentLibrary")
                    .to_string(),
                name: name.clone(),
                prefix: vec!["sites".into(), site_name.clone(), name],
                scope: Scope::Sites,
            };
            list_drive(inner, target, tx).await?;
        }
    }
    Ok(())
}

struct Entry {
    name: String,
    parent: Option<String>,
    value: Value,
}

/// (site URL, drive id) of the site libraries the earlier run read.
fn site_cursors(inner: &Inner) -> impl Iterator<Item = (String, String)> + '_ {
    inner
        .options
        .previous_cursors()
        .filter(|c| c["type"] == "drive" && c["owner"] == "site")
        .filter_map(|c| {
            Some((
                c["account"].as_str()?.into(),
                c["drive_id"].as_str()?.into(),
            ))
        })
}

/// A drive the earlier run read is gone: reported complete with nothing in it, so a backup
/// marks its files removed.
async fn drive_gone(
    inner: &Inner,
    tx: &Sender,
    account: String,
    drive_id: String,
    why: &str,
) -> Result<()> {
    inner.note(format!(
        "library {drive_id} of {account}: {why}; its files are marked removed (earlier runs keep them)"
    ));
    send(
        tx,
        Listing::Complete {
            system: "m365".into(),
            account: Some(account),
            container: Some(drive_id),
        },
    )
    .await
}

/// Lists a drive: from the earlier run's delta link when there is one (only what changed),
/// else whole.
async fn list_drive(inner: &Inner, target: DriveTarget, tx: &Sender) -> Result<()> {
    if let Some(cursor) = inner
        .options
        .drive_cursor(&target.account, &target.drive_id)
    {
        match list_drive_changes(inner, &target, cursor, tx).await? {
            Changes::Listed => return Ok(()),
            Changes::ListWhole(why) => inner.note(format!(
                "drive {} of {}: listed whole ({why})",
                target.name, target.account
            )),
        }
    }
    list_drive_whole(inner, target, tx).await
}

/// At most this many changed files are held while a delta is read (their paths are only
/// known once every folder change is in); a larger change lists the drive whole instead.
const MAX_HELD_CHANGES: usize = 20_000;

/// What became of an incremental listing.
enum Changes {
    /// The changes were listed.
    Listed,
    /// The drive must be listed whole, for this reason.
    ListWhole(String),
}

/// A drive's folders as the cursor keeps them: id → (parent id, name), and the root's id.
/// Delta answers carry no paths, so a changed file's path is rebuilt from this map.
#[derive(Default)]
struct FolderMap {
    root: Option<String>,
    folders: HashMap<String, (Option<String>, String)>,
}

impl FolderMap {
    /// From a cursor's `root_id` and `folders` (`[[id, parent, name], …]`).
    fn from_cursor(c: &Value) -> Option<FolderMap> {
        let mut map = FolderMap {
            root: c["root_id"].as_str().map(str::to_string),
            folders: HashMap::new(),
        };
        for f in c["folders"].as_array()? {
            let id = f[0].as_str()?;
            map.folders.insert(
                id.to_string(),
                (
                    f[1].as_str().map(str::to_string),
                    f[2].as_str()?.to_string(),
                ),
            );
        }
        Some(map)
    }

    /// For the cursor: sorted by id, so an unchanged drive writes the same cursor.
    fn to_cursor(&self) -> Value {
        let mut ids: Vec<&String> = self.folders.keys().collect();
        ids.sort();
        let list: Vec<Value> = ids
            .into_iter()
            .map(|id| {
                let (parent, name) = &self.folders[id];
                json!([id, parent, name])
            })
            .collect();
        Value::Array(list)
    }

    /// A folder's path below the drive root (empty for the root); None if an ancestor is
    /// unknown.
    fn path(&self, id: Option<&str>) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut at = id;
        for _ in 0..10_000 {
            match at {
                None => break,
                Some(p) if Some(p) == self.root.as_deref() => break,
                Some(p) => {
                    let (parent, name) = self.folders.get(p)?;
                    out.push(name.clone());
                    at = parent.as_deref();
                }
            }
        }
        out.reverse();
        Some(out)
    }
}

/// Lists what changed in a drive since the earlier run's delta link. Files come with their
/// current paths; deleted files become removals; a folder that was renamed, moved or
/// deleted changes the paths of descendants the delta does not list, so the drive is then
/// listed whole instead (as it is when the link expired or too much changed).
async fn list_drive_changes(
    inner: &Inner,
    target: &DriveTarget,
    cursor: &Value,
    tx: &Sender,
) -> Result<Changes> {
    let what = format!("drive {} of {}", target.name, target.account);
    let (Some(link), Some(mut map)) = (
        cursor["delta_link"].as_str(),
        FolderMap::from_cursor(cursor),
    ) else {
        return Ok(Changes::ListWhole(
            "the earlier run kept no folder map for it".into(),
        ));
    };
    let mut pages = inner.graph.pages(link, target.scope, None, &what);
    // Last entry wins (the docs allow repeats); BTreeMap keeps the order stable.
    let mut files: std::collections::BTreeMap<String, Entry> = Default::default();
    let mut gone: HashSet<String> = HashSet::new();
    let mut folders_seen: Vec<(String, Entry)> = Vec::new();
    let (mut deleted, mut repeats) = (0u64, 0u64);
    loop {
        let values = match pages.next_page().await {
            Ok(Some(v)) => v,
            Ok(None) => break,
            Err(g) => {
                fail_listing(tx, &format!("m365:{}/{}", target.account, target.name), g).await?;
                return Ok(Changes::Listed);
            }
        };
        if pages.resynced {
            return Ok(Changes::ListWhole("its delta link had expired".into()));
        }
        for v in values {
            let Some(id) = v["id"].as_str().map(str::to_string) else {
                continue;
            };
            if v.get("root").is_some() {
                map.root.get_or_insert(id);
                continue;
            }
            let is_folder = v.get("folder").is_some() || v.get("package").is_some();
            if v.get("deleted").is_some() {
                deleted += 1;
                if map.folders.contains_key(&id) {
                    return Ok(Changes::ListWhole(format!("folder {id} was deleted")));
                }
                files.remove(&id);
                gone.insert(id);
                continue;
            }
            let entry = Entry {
                name: v["name"].as_str().unwrap_or(&id).to_string(),
                parent: v["parentReference"]["id"].as_str().map(str::to_string),
                value: v,
            };
            if is_folder {
                match map.folders.get(&id) {
                    Some((parent, name)) if *parent != entry.parent || *name != entry.name => {
                        return Ok(Changes::ListWhole(format!(
                            "folder {:?} was renamed or moved",
                            entry.name
                        )));
                    }
                    Some(_) => {}
                    None => {
                        map.folders
                            .insert(id.clone(), (entry.parent.clone(), entry.name.clone()));
                    }
                }
                folders_seen.push((id, entry));
                continue;
            }
            gone.remove(&id);
            if files.insert(id, entry).is_some() {
                repeats += 1;
            }
            if files.len() > MAX_HELD_CHANGES {
                return Ok(Changes::ListWhole(format!(
                    "more than {MAX_HELD_CHANGES} files changed"
                )));
            }
        }
    }
    let Some(delta) = pages.delta_link else {
        return Ok(Changes::ListWhole(
            "its delta ended without a delta link".into(),
        ));
    };
    // Every path first: a file in a folder the map does not know is not listed half.
    let mut placed = Vec::with_capacity(files.len());
    for (id, e) in files {
        let Some(mut rel) = map.path(e.parent.as_deref()) else {
            return Ok(Changes::ListWhole(format!(
                "{:?} sits in a folder it does not know",
                e.name
            )));
        };
        rel.push(e.name.clone());
        placed.push((id, e, rel));
    }
    let mut changed_folders = Vec::new();
    for (id, e) in &folders_seen {
        let Some(rel) = map.path(Some(id)) else {
            return Ok(Changes::ListWhole(format!(
                "folder {:?} sits in a folder it does not know",
                e.name
            )));
        };
        changed_folders.push(rel);
    }
    let source = |id: &str| SourceRef {
        system: "m365".into(),
        account: Some(target.account.clone()),
        container: Some(target.drive_id.clone()),
        id: id.to_string(),
        version: None,
        original_name: None,
        original_path: None,
    };
    let files_listed = placed.len() as u64;
    for (id, e, rel) in placed {
        send(
            tx,
            Listing::Item(drive_item(inner, target, &id, &e, rel, false)),
        )
        .await?;
    }
    for id in &gone {
        send(tx, Listing::Removed(source(id))).await?;
    }
    // A folder listed here may have become empty or stopped being empty: empty ones are
    // items (so a restore recreates them); a folder with children drops such an entry.
    for ((id, e), rel) in folders_seen.iter().zip(changed_folders) {
        if e.value["folder"]["childCount"].as_u64() == Some(0) {
            send(
                tx,
                Listing::Item(drive_item(inner, target, id, e, rel, true)),
            )
            .await?;
        } else {
            send(tx, Listing::Removed(source(id))).await?;
        }
    }
    let mut st = inner.state.lock().expect("state");
    st.drives.push(target.record(
        files_listed,
        map.folders.len() as u64,
        deleted,
        repeats,
        false,
    ));
    st.cursors.push(drive_cursor(target, &delta, &map));
    Ok(Changes::Listed)
}

/// What the next run needs to list only the drive's changes.
fn drive_cursor(target: &DriveTarget, delta: &str, map: &FolderMap) -> Value {
    json!({
        "type": "drive",
        "account": target.account,
        "drive_id": target.drive_id,
        "drive_name": target.name,
        "owner": if target.prefix.first().map(String::as_str) == Some("users") { "user" } else { "site" },
        "delta_link": delta,
        "root_id": map.root,
        "folders": map.to_cursor(),
    })
}

/// Lists a drive whole with a delta query from the start.
async fn list_drive_whole(inner: &Inner, target: DriveTarget, tx: &Sender) -> Result<()> {
    let what = format!("drive {} of {}", target.name, target.account);
    let url = format!(
        "{}/drives/{}/root/delta",
        inner.graph.root(),
        segment(&target.drive_id)
    );
    // Files go to the pipeline as their pages arrive, so memory grows with the number of
    // folders, not files. A file whose folder has not been seen yet (the docs promise no
    // order) waits until the end; a file listed twice is taken once (its bytes are read at
    // download time anyway).
    let mut folders: HashMap<String, Entry> = HashMap::new();
    let mut folder_order: Vec<String> = Vec::new();
    let mut has_children: HashSet<String> = HashSet::new();
    let mut seen_files: HashSet<u64> = HashSet::new();
    let mut waiting: Vec<(String, Entry)> = Vec::new();
    let mut root_id: Option<String> = None;
    let (mut files, mut deleted, mut repeats) = (0u64, 0u64, 0u64);
    let mut listing_failed = false;
    let mut pages = inner.graph.pages(&url, target.scope, None, &what);
    loop {
        let values = match pages.next_page().await {
            Ok(Some(v)) => v,
            Ok(None) => break,
            Err(g) => {
                listing_failed = true;
                fail_listing(tx, &format!("m365:{}/{}", target.account, target.name), g).await?;
                break;
            }
        };
        for v in values {
            let Some(id) = v["id"].as_str().map(str::to_string) else {
                continue;
            };
            if v.get("root").is_some() {
                root_id = Some(id);
                continue;
            }
            if v.get("deleted").is_some() {
                deleted += 1;
                if folders.remove(&id).is_some() {
                    folder_order.retain(|f| f != &id);
                }
                waiting.retain(|(w, _)| w != &id);
                continue;
            }
            let entry = Entry {
                name: v["name"].as_str().unwrap_or(&id).to_string(),
                parent: v["parentReference"]["id"].as_str().map(str::to_string),
                value: v,
            };
            if let Some(p) = &entry.parent {
                has_children.insert(p.clone());
            }
            let is_folder =
                entry.value.get("folder").is_some() || entry.value.get("package").is_some();
            if is_folder {
                if folders.insert(id.clone(), entry).is_some() {
                    repeats += 1;
                } else {
                    folder_order.push(id);
                }
                continue;
            }
            if !seen_files.insert(id_hash(&id)) {
                repeats += 1;
                continue;
            }
            match file_path(&folders, root_id.as_deref(), &entry) {
                Some(rel) => {
                    files += 1;
                    let item = drive_item(inner, &target, &id, &entry, rel, false);
                    send(tx, Listing::Item(item)).await?;
                }
                None => waiting.push((id, entry)),
            }
        }
    }
    let (resynced, delta) = (pages.resynced, pages.delta_link);
    // Files whose folders came later, then the folders that hold nothing.
    for (id, e) in waiting {
        match file_path(&folders, root_id.as_deref(), &e) {
            Some(rel) => {
                files += 1;
                send(
                    tx,
                    Listing::Item(drive_item(inner, &target, &id, &e, rel, false)),
                )
                .await?;
            }
            None => {
                listing_failed = true;
                orphan(tx, &target, &what, &id, &e).await?
            }
        }
    }
    let folder_count = folder_order.len() as u64;
    for id in &folder_order {
        let Some(e) = folders.get(id) else { continue };
        if has_children.contains(id) {
            continue;
        }
        match path_of(&folders, root_id.as_deref(), id) {
            Some(rel) => {
                send(
                    tx,
                    Listing::Item(drive_item(inner, &target, id, e, rel, true)),
                )
                .await?
            }
            None => orphan(tx, &target, &what, id, e).await?,
        }
    }
    if !listing_failed {
        // The drive was listed whole: files an earlier backup run had and this one did not
        // list are gone.
        send(
            tx,
            Listing::Complete {
                system: "m365".into(),
                account: Some(target.account.clone()),
                container: Some(target.drive_id.clone()),
            },
        )
        .await?;
    }
    let mut st = inner.state.lock().expect("state");
    st.drives
        .push(target.record(files, folder_count, deleted, repeats, resynced));
    // A listing with failures keeps no cursor, so the next run lists the drive whole again
    // instead of never seeing what failed here.
    if let (Some(link), false) = (delta, listing_failed) {
        let map = FolderMap {
            root: root_id,
            folders: folders
                .into_iter()
                .map(|(id, e)| (id, (e.parent, e.name)))
                .collect(),
        };
        st.cursors.push(drive_cursor(&target, &link, &map));
    }
    Ok(())
}

/// A file's path below the drive root, once every folder above it is known.
fn file_path(
    folders: &HashMap<String, Entry>,
    root: Option<&str>,
    e: &Entry,
) -> Option<Vec<String>> {
    let mut rel = match e.parent.as_deref() {
        None => Vec::new(),
        Some(p) if Some(p) == root => Vec::new(),
        Some(p) => path_of(folders, root, p)?,
    };
    rel.push(e.name.clone());
    Some(rel)
}

/// An item whose folder the delta listing never returned: a failure, not a silent loss.
async fn orphan(tx: &Sender, target: &DriveTarget, what: &str, id: &str, e: &Entry) -> Result<()> {
    fail_listing(
        tx,
        &format!("m365:{}/{}/{}", target.account, target.name, e.name),
        GraphError {
            status: None,
            code: String::new(),
            location: None,
            error: Error::permanent(format!(
                "{what}: {:?} (id {id}) sits in a folder the delta listing did not return",
                e.name
            )),
        },
    )
    .await
}

/// The item's path below the drive root, from the names of its ancestors.
fn path_of(by_id: &HashMap<String, Entry>, root: Option<&str>, id: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut at = id;
    for _ in 0..10_000 {
        let e = by_id.get(at)?;
        out.push(e.name.clone());
        match e.parent.as_deref() {
            None => break,
            Some(p) if Some(p) == root => break,
            Some(p) => at = p,
        }
    }
    out.reverse();
    Some(out)
}

/// Office formats SharePoint rewrites on download (it writes the library's column values
/// into the document), so their listed size and hash describe other bytes.
fn rewritten_by_sharepoint(name: &str) -> bool {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    matches!(
        ext.as_deref(),
        Some(
            "docx"
                | "docm"
                | "dotx"
                | "xlsx"
                | "xlsm"
                | "xltx"
                | "pptx"
                | "pptm"
                | "potx"
                | "ppsx"
                | "vsdx"
                | "doc"
                | "xls"
                | "ppt"
        )
    )
}

fn drive_item(
    inner: &Inner,
    target: &DriveTarget,
    id: &str,
    e: &Entry,
    rel: Vec<String>,
    is_folder: bool,
) -> Item {
    let v = &e.value;
    let mut path = vec![inner.options.tenant.clone()];
    path.extend(target.prefix.iter().cloned());
    path.extend(rel.iter().cloned());
    let mut item = Item::file(
        SourceRef {
            system: "m365".into(),
            account: Some(target.account.clone()),
            container: Some(target.drive_id.clone()),
            id: id.to_string(),
            version: v["cTag"].as_str().map(str::to_string),
            original_name: Some(e.name.clone()),
            original_path: Some(format!(
                "{}/{}/{}",
                target.account,
                target.name,
                rel.join("/")
            )),
        },
        path,
    );
    item.created = parse_time(&v["createdDateTime"]);
    item.modified = parse_time(&v["lastModifiedDateTime"]);
    let x = &mut item.extra;
    x.insert("m365_type".into(), "driveItem".into());
    x.insert("drive_id".into(), target.drive_id.clone().into());
    x.insert("drive_type".into(), target.drive_type.clone().into());
    x.insert("drive_name".into(), target.name.clone().into());
    if let Some(t) = v["eTag"].as_str() {
        x.insert("etag".into(), t.into());
    }
    if let Some(u) = v["webUrl"].as_str() {
        x.insert("web_url".into(), u.into());
    }
    for (key, who) in [
        ("created_by", "createdBy"),
        ("modified_by", "lastModifiedBy"),
    ] {
        let u = &v[who]["user"];
        if !u.is_null() {
            x.insert(
                key.into(),
                json!({"name": u["displayName"], "email": u["email"], "id": u["id"]}),
            );
        }
    }
    if is_folder {
        item.kind = ItemKind::EmptyDirectory;
        return item;
    }
    if v.get("file").is_none() {
        let what = if v.get("remoteItem").is_some() {
            "item shared from another drive (archived there)"
        } else {
            "drive item that is neither file nor folder"
        };
        item.kind = ItemKind::Other { what: what.into() };
        return item;
    }
    item.media_type = v["file"]["mimeType"].as_str().map(str::to_string);
    let size = v["size"].as_u64();
    let qx = v["file"]["hashes"]["quickXorHash"]
        .as_str()
        .and_then(|b| STANDARD.decode(b).ok())
        .filter(|b| b.len() == 20);
    let advisory = target.drive_type == "documentLibrary" && rewritten_by_sharepoint(&e.name);
    if let Some(q) = &qx {
        // Strict here; `open` makes it advisory when SharePoint serves another length.
        item.source_checksums.push(SourceChecksum::new(
            ChecksumAlgorithm::QuickXor,
            hex::encode(q),
        ));
    }
    if let Some(s) = size {
        x.insert("listed_size".into(), s.into());
    }
    if let Some(b) = v["file"]["hashes"]["quickXorHash"].as_str() {
        x.insert("listed_quickxorhash".into(), b.into());
    }
    if advisory {
        // The served length is checked instead (from the download's headers).
        x.insert("sharepoint_may_rewrite".into(), true.into());
    } else {
        item.size = size;
    }
    item
}

/// Opens a file: `/content` answers 302 to a pre-authenticated download URL, which serves the
/// bytes (with Range for a resumed transfer) and must not receive the bearer token.
pub(crate) async fn open(inner: &Inner, item: &Item, offset: u64) -> Result<Opened> {
    let drive = item.extra["drive_id"].as_str().unwrap_or_default();
    let url = format!(
        "{}/drives/{}/items/{}/content",
        inner.graph.root(),
        segment(drive),
        segment(&item.source.id)
    );
    let what = item.display_name();
    let scope = if item.extra["drive_type"].as_str() == Some("documentLibrary") {
        Scope::Sites
    } else {
        Scope::Files
    };
    let first = inner
        .graph
        .open(&url, scope, None, &what, offset, true)
        .await
        .map_err(Error::from)?;
    let d = if first.response.status().is_redirection() {
        let location = first
            .response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Error::transient(format!("{what}: a redirect without a Location")))?;
        let location = first
            .response
            .url()
            .join(&location)
            .map_err(|_| Error::transient(format!("{what}: a redirect to a bad URL")))?;
        drop(first);
        inner
            .graph
            .open(location.as_str(), scope, None, &what, offset, false)
            .await
            .map_err(|g| {
                // An expired or refused download URL: the next attempt gets a fresh one.
                if g.status.is_some_and(|s| s == 401 || s == 403 || s == 404) {
                    Error::transient(format!(
                        "{what}: the download URL was refused ({})",
                        g.error.message()
                    ))
                } else {
                    g.error
                }
            })?
    } else {
        first
    };
    let status = d.response.status().as_u16();
    if offset > 0 && status != 206 {
        return Err(Error::transient(format!(
            "{what}: asked to resume at byte {offset}, the server sent status {status}"
        )));
    }
    let mut update = ItemUpdate::default();
    if item.extra.get("sharepoint_may_rewrite").is_some() {
        update.size = crate::mail::total_length(&d.response, offset);
        if let (Some(served), Some(listed)) = (update.size, item.extra["listed_size"].as_u64()) {
            // SharePoint's rewrite of an Office file changes its length. Bytes of the listed
            // length that do not match the listed hash are damaged, not rewritten: the hash
            // stays strict for them.
            if served != listed {
                update.extra.insert("served_size".into(), served.into());
                update.source_checksums.extend(
                    item.source_checksums
                        .iter()
                        .filter(|c| c.algorithm == ChecksumAlgorithm::QuickXor)
                        .map(|c| c.clone().advisory()),
                );
            }
        }
    }
    Ok(Opened {
        bytes: crate::body_stream(d, what),
        update,
        trailer: None,
    })
}
