//! Drive v3 routes: about, files (list, get, `alt=media`, export), the `exportLinks` URLs,
//! drives, changes — with Google's `fields` masks and `q` subset.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};

use super::domain::{rfc3339_ms, FOLDER, SHORTCUT};
use super::{bump, export, gerr, invalid_param, json_resp, GFile, GUser, Live, Req, State};
use crate::graph::api::parse_range;
use crate::graph::{BytesBody, ContentBody, Resp};

/// `files.export` refuses exports bigger than this (10 MB).
pub(crate) const EXPORT_LIMIT: u64 = 10 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Field masks (developers.google.com/drive/api/guides/fields-parameter).

/// A `fields` selection: everything, or some keys with their own selections.
#[derive(Debug, Clone)]
enum Mask {
    All,
    Some(BTreeMap<String, Mask>),
}

fn parse_mask(s: &str) -> Result<Mask, String> {
    let chars: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    let mut pos = 0;
    let m = parse_list(&chars, &mut pos)?;
    if pos != chars.len() {
        return Err(chars[pos..].iter().collect());
    }
    Ok(m)
}

fn merge(into: &mut BTreeMap<String, Mask>, key: String, m: Mask) {
    match (into.get_mut(&key), m) {
        (Some(Mask::Some(a)), Mask::Some(b)) => {
            for (k, v) in b {
                merge(a, k, v);
            }
        }
        (Some(existing), m) => {
            if matches!(m, Mask::All) {
                *existing = Mask::All;
            }
        }
        (None, m) => {
            into.insert(key, m);
        }
    }
}

fn parse_list(c: &[char], pos: &mut usize) -> Result<Mask, String> {
    let mut map = BTreeMap::new();
    loop {
        let start = *pos;
        while *pos < c.len() && (c[*pos].is_alphanumeric() || c[*pos] == '_' || c[*pos] == '*') {
            *pos += 1;
        }
        let name: String = c[start..*pos].iter().collect();
        if name.is_empty() {
            return Err(c[start..].iter().collect());
        }
        let sub = if *pos < c.len() && c[*pos] == '(' {
            *pos += 1;
            let m = parse_list(c, pos)?;
            if *pos >= c.len() || c[*pos] != ')' {
                return Err(name);
            }
            *pos += 1;
            m
        } else if *pos < c.len() && c[*pos] == '/' {
            *pos += 1;
            // `a/b` selects b inside a: parse one path item.
            let mut inner = BTreeMap::new();
            let m = parse_list_one(c, pos)?;
            for (k, v) in m {
                merge(&mut inner, k, v);
            }
            Mask::Some(inner)
        } else {
            Mask::All
        };
        if name == "*" {
            skip_rest(c, pos);
            return Ok(Mask::All);
        }
        merge(&mut map, name, sub);
        if *pos < c.len() && c[*pos] == ',' {
            *pos += 1;
            continue;
        }
        return Ok(Mask::Some(map));
    }
}

/// One `name[/…|(…)]` item.
fn parse_list_one(c: &[char], pos: &mut usize) -> Result<BTreeMap<String, Mask>, String> {
    let start = *pos;
    while *pos < c.len() && (c[*pos].is_alphanumeric() || c[*pos] == '_' || c[*pos] == '*') {
        *pos += 1;
    }
    let name: String = c[start..*pos].iter().collect();
    if name.is_empty() {
        return Err(c[start..].iter().collect());
    }
    let sub = if *pos < c.len() && c[*pos] == '/' {
        *pos += 1;
        Mask::Some(parse_list_one(c, pos)?)
    } else if *pos < c.len() && c[*pos] == '(' {
        *pos += 1;
        let m = parse_list(c, pos)?;
        if *pos >= c.len() || c[*pos] != ')' {
            return Err(name);
        }
        *pos += 1;
        m
    } else {
        Mask::All
    };
    let mut map = BTreeMap::new();
    if name == "*" {
        return Ok(map);
    }
    map.insert(name, sub);
    Ok(map)
}

/// After a `*` in a list, the rest of that list adds nothing.
fn skip_rest(c: &[char], pos: &mut usize) {
    let mut depth = 0;
    while *pos < c.len() {
        match c[*pos] {
            '(' => depth += 1,
            ')' if depth == 0 => return,
            ')' => depth -= 1,
            _ => {}
        }
        *pos += 1;
    }
}

fn apply(v: &Value, m: &Mask) -> Value {
    match (m, v) {
        (Mask::All, _) => v.clone(),
        (Mask::Some(keys), Value::Array(a)) => Value::Array(
            a.iter()
                .map(|x| apply(x, &Mask::Some(keys.clone())))
                .collect(),
        ),
        (Mask::Some(keys), Value::Object(o)) => {
            let mut out = Map::new();
            for (k, val) in o {
                if let Some(sub) = keys.get(k) {
                    out.insert(k.clone(), apply(val, sub));
                }
            }
            Value::Object(out)
        }
        _ => v.clone(),
    }
}

const FILE_FIELDS: &[&str] = &[
    "kind",
    "id",
    "name",
    "mimeType",
    "parents",
    "size",
    "md5Checksum",
    "sha1Checksum",
    "sha256Checksum",
    "createdTime",
    "modifiedTime",
    "version",
    "headRevisionId",
    "trashed",
    "explicitlyTrashed",
    "owners",
    "ownedByMe",
    "driveId",
    "shortcutDetails",
    "exportLinks",
    "webViewLink",
    "webContentLink",
    "quotaBytesUsed",
    "spaces",
    "starred",
    "shared",
    "capabilities",
    "originalFilename",
    "fileExtension",
    "fullFileExtension",
    "description",
    "properties",
    "appProperties",
    "iconLink",
    "thumbnailLink",
    "hasThumbnail",
    "resourceKey",
    "permissions",
    "permissionIds",
    "viewedByMe",
    "viewedByMeTime",
    "modifiedByMe",
    "modifiedByMeTime",
    "sharedWithMeTime",
    "sharingUser",
    "lastModifyingUser",
    "teamDriveId",
    "trashedTime",
    "trashingUser",
    "imageMediaMetadata",
    "videoMediaMetadata",
    "contentHints",
    "contentRestrictions",
    "copyRequiresWriterPermission",
    "writersCanShare",
    "viewersCanCopyContent",
    "folderColorRgb",
    "isAppAuthorized",
    "linkShareMetadata",
    "labelInfo",
    "hasAugmentedPermissions",
    "inheritedPermissionsDisabled",
    "downloadRestrictions",
    "thumbnailVersion",
];

/// The request's `fields` mask (or `default`), checked: top-level names against `top`, and the
/// names at `file_path` (the path of the file objects: `files`, `changes/file`; empty for none)
/// against the file fields.
fn mask_for(r: &Req, default: &str, top: &[&str], file_path: &[&str]) -> Result<Mask, Resp> {
    let s = r.q("fields").unwrap_or(default);
    let bad = |f: &str| {
        gerr(
            400,
            "invalidParameter",
            format!("Invalid field selection {f}"),
        )
        .param("fields")
        .resp()
    };
    let m = parse_mask(s).map_err(|e| bad(&e))?;
    let Mask::Some(keys) = &m else {
        return Ok(m);
    };
    if let Some(k) = keys.keys().find(|k| !top.contains(&k.as_str())) {
        return Err(bad(k));
    }
    if file_path.is_empty() {
        return Ok(m);
    }
    let mut node = Some(&m);
    for step in file_path {
        node = match node {
            Some(Mask::Some(keys)) => keys.get(*step),
            _ => None,
        };
    }
    if let Some(Mask::Some(fk)) = node {
        if let Some(f) = fk.keys().find(|f| !FILE_FIELDS.contains(&f.as_str())) {
            return Err(bad(f));
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Visibility and JSON.

/// What the subject may see.
struct View<'a> {
    subject: &'a str,
    user: Option<&'a GUser>,
    /// The shared drives (existing now) the subject is a member of.
    members: Vec<String>,
}

impl<'a> View<'a> {
    fn new(state: &'a State, r: &'a Req) -> View<'a> {
        let members = state
            .live
            .lock()
            .expect("live lock")
            .drives
            .iter()
            .filter(|d| d.members.iter().any(|m| m == &r.subject))
            .map(|d| d.id.clone())
            .collect();
        View {
            subject: &r.subject,
            user: state.truth.user(&r.subject),
            members,
        }
    }

    fn member_of(&self, drive_id: &str) -> bool {
        self.members.iter().any(|m| m == drive_id)
    }

    fn owns(&self, f: &GFile) -> bool {
        f.owner.as_deref() == Some(self.subject)
    }

    /// Visible in My Drive or "Shared with me".
    fn mine(&self, f: &GFile) -> bool {
        f.drive_id.is_none() && (self.owns(f) || f.shared_with.iter().any(|s| s == self.subject))
    }

    /// Visible at all, with shared drives allowed or not.
    fn sees(&self, f: &GFile, drives: bool) -> bool {
        match &f.drive_id {
            Some(d) => drives && self.member_of(d),
            None => self.mine(f),
        }
    }
}

fn user_of<'a>(state: &'a State, email: &str) -> Option<&'a GUser> {
    state.truth.user(email)
}

fn permission_id(u: &GUser) -> String {
    u.id[1..].to_string()
}

fn web_view_link(f: &GFile) -> String {
    match f.mime_type.as_str() {
        FOLDER => format!("https://drive.google.com/drive/folders/{}", f.id),
        m if m.starts_with("application/vnd.google-apps.") => {
            let kind = m.trim_start_matches("application/vnd.google-apps.");
            format!(
                "https://docs.google.com/{kind}/d/{}/edit?usp=drivesdk",
                f.id
            )
        }
        _ => format!("https://drive.google.com/file/d/{}/view?usp=drivesdk", f.id),
    }
}

fn file_json(state: &State, v: &View<'_>, f: &GFile) -> Value {
    let mut j = json!({
        "kind": "drive#file",
        "id": f.id,
        "name": f.name,
        "mimeType": f.mime_type,
        "starred": false,
        "trashed": f.trashed,
        "explicitlyTrashed": f.trashed,
        "spaces": ["drive"],
        "version": f.version.to_string(),
        "webViewLink": web_view_link(f),
        "createdTime": f.created_time,
        "modifiedTime": f.modified_time,
        "shared": !f.shared_with.is_empty() || f.drive_id.is_some(),
        "quotaBytesUsed": f.size.unwrap_or(0).to_string(),
        "capabilities": {"canDownload": true, "canCopy": f.size.is_some(), "canEdit": v.owns(f), "canListChildren": f.is_folder()},
    });
    if f.drive_id.is_some() || v.owns(f) {
        j["parents"] = json!(f.parents);
    }
    if let Some(d) = &f.drive_id {
        j["driveId"] = json!(d);
        j["teamDriveId"] = json!(d);
    } else {
        j["ownedByMe"] = json!(v.owns(f));
        if let Some(o) = f.owner.as_deref().and_then(|o| user_of(state, o)) {
            j["owners"] = json!([{
                "kind": "drive#user",
                "displayName": o.name,
                "emailAddress": o.email,
                "permissionId": permission_id(o),
                "me": o.email == v.subject,
            }]);
        }
        if !v.owns(f) {
            if let Some(o) = f.owner.as_deref().and_then(|o| user_of(state, o)) {
                j["sharingUser"] = json!({"kind": "drive#user", "displayName": o.name, "emailAddress": o.email, "permissionId": permission_id(o), "me": false});
            }
            j["sharedWithMeTime"] = json!(f.created_time);
        }
    }
    if let Some(size) = f.size {
        j["size"] = json!(size.to_string());
        j["originalFilename"] = json!(f.name);
        if let Some((_, ext)) = f.name.rsplit_once('.') {
            j["fileExtension"] = json!(ext);
            j["fullFileExtension"] = json!(ext);
        }
        j["webContentLink"] = json!(format!(
            "https://drive.google.com/uc?id={}&export=download",
            f.id
        ));
        if let Some(m) = &f.md5 {
            j["md5Checksum"] = json!(m);
        }
        if let Some(s) = &f.sha1 {
            j["sha1Checksum"] = json!(s);
        }
        if let Some(s) = &f.sha256 {
            j["sha256Checksum"] = json!(s);
        }
        if let Some(h) = &f.head_revision_id {
            j["headRevisionId"] = json!(h);
        }
    }
    if let Some((tid, tmime)) = &f.shortcut_target {
        j["shortcutDetails"] = json!({"targetId": tid, "targetMimeType": tmime});
    }
    let formats = f.export_formats();
    if !formats.is_empty() {
        let kind = export::link_kind(&f.mime_type);
        let links: Map<String, Value> = formats
            .iter()
            .map(|(m, ext)| {
                (
                    m.to_string(),
                    json!(format!(
                        "{}/feeds/download/{kind}/export/Export?id={}&exportFormat={ext}",
                        state.base, f.id
                    )),
                )
            })
            .collect();
        j["exportLinks"] = Value::Object(links);
    }
    j
}

fn root_json(u: &GUser) -> Value {
    json!({
        "kind": "drive#file",
        "id": u.root_folder_id,
        "name": "My Drive",
        "mimeType": FOLDER,
        "starred": false,
        "trashed": false,
        "explicitlyTrashed": false,
        "spaces": ["drive"],
        "version": "1",
        "ownedByMe": true,
        "owners": [{"kind": "drive#user", "displayName": u.name, "emailAddress": u.email, "permissionId": permission_id(u), "me": true}],
        "createdTime": rfc3339_ms(1_640_995_200_000),
        "modifiedTime": rfc3339_ms(1_640_995_200_000),
        "webViewLink": format!("https://drive.google.com/drive/folders/{}", u.root_folder_id),
        "quotaBytesUsed": "0",
        "capabilities": {"canDownload": true, "canCopy": false, "canEdit": true, "canListChildren": true},
        "shared": false,
    })
}

fn file_not_found(id: &str) -> Resp {
    gerr(404, "notFound", format!("File not found: {id}."))
        .param("fileId")
        .resp()
}

fn drive_not_found(id: &str) -> Resp {
    gerr(404, "notFound", format!("Shared drive not found: {id}"))
        .param("driveId")
        .resp()
}

// ---------------------------------------------------------------------------------------------
// Routing.

pub(crate) fn route(state: &Arc<State>, r: &Req) -> Resp {
    if let Some(u) = state.truth.user(&r.subject) {
        if u.suspended {
            return gerr(403, "forbidden", "The user has been suspended.").resp();
        }
    }
    let s: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    if s.first() == Some(&"feeds") {
        return export_link(state, r);
    }
    match &s[2..] {
        ["about"] => about(state, r),
        ["files"] => list(state, r),
        ["files", id] => get(state, r, id),
        ["files", id, "export"] => export(state, r, id),
        ["drives"] => drives(state, r),
        ["drives", id] => drive_get(state, r, id),
        ["changes", "startPageToken"] => start_page_token(state, r),
        ["changes"] => changes(state, r),
        _ => gerr(404, "notFound", "Not Found").resp(),
    }
}

fn about(state: &State, r: &Req) -> Resp {
    if r.q("fields").is_none() {
        return gerr(
            400,
            "required",
            "The 'fields' parameter is required for this method.",
        )
        .param("fields")
        .resp();
    }
    let top = [
        "kind",
        "user",
        "storageQuota",
        "maxUploadSize",
        "appInstalled",
        "exportFormats",
        "importFormats",
        "maxImportSizes",
        "canCreateDrives",
        "folderColorPalette",
        "driveThemes",
        "teamDriveThemes",
        "canCreateTeamDrives",
    ];
    let mask = match mask_for(r, "", &top, &["user"]) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let live = state.live.lock().expect("live lock");
    let (name, perm) = match state.truth.user(&r.subject) {
        Some(u) => (u.name.clone(), permission_id(u)),
        None => (
            "ferry-export".to_string(),
            "00000000000000000001".to_string(),
        ),
    };
    let mine: Vec<&GFile> = live
        .files
        .iter()
        .filter(|l| !l.deleted && l.f.owner.as_deref() == Some(r.subject.as_str()))
        .map(|l| &l.f)
        .collect();
    let used: u64 = mine.iter().filter_map(|f| f.size).sum();
    let trash: u64 = mine
        .iter()
        .filter(|f| f.trashed)
        .filter_map(|f| f.size)
        .sum();
    let mut formats = Map::new();
    for native in [
        super::DOCUMENT,
        super::SPREADSHEET,
        super::PRESENTATION,
        super::DRAWING,
    ] {
        formats.insert(
            native.to_string(),
            json!(export::formats(native)
                .iter()
                .map(|(m, _)| *m)
                .collect::<Vec<_>>()),
        );
    }
    let v = json!({
        "kind": "drive#about",
        "user": {"kind": "drive#user", "displayName": name, "emailAddress": r.subject, "permissionId": perm, "me": true},
        "storageQuota": {"limit": "32212254720", "usage": used.to_string(), "usageInDrive": used.to_string(), "usageInDriveTrash": trash.to_string()},
        "maxUploadSize": "5242880000000",
        "appInstalled": false,
        "exportFormats": formats,
        "canCreateDrives": true,
    });
    json_resp(200, &apply(&v, &mask))
}

// ---------------------------------------------------------------------------------------------
// Search (developers.google.com/drive/api/guides/search-files).

#[derive(Debug)]
enum Tok {
    Str(String),
    Word(String),
    Op(String),
}

fn tokenize(q: &str) -> Option<Vec<Tok>> {
    let c: Vec<char> = q.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '\'' || ch == '"' {
            let quote = ch;
            let mut s = String::new();
            i += 1;
            loop {
                let x = *c.get(i)?;
                i += 1;
                if x == '\\' {
                    s.push(*c.get(i)?);
                    i += 1;
                } else if x == quote {
                    break;
                } else {
                    s.push(x);
                }
            }
            out.push(Tok::Str(s));
        } else if ch == '!' || ch == '=' || ch == '<' || ch == '>' {
            let mut op = ch.to_string();
            if c.get(i + 1) == Some(&'=') {
                op.push('=');
                i += 1;
            }
            i += 1;
            out.push(Tok::Op(op));
        } else if ch.is_alphanumeric() || ch == '_' || ch == '.' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                i += 1;
            }
            out.push(Tok::Word(c[start..i].iter().collect()));
        } else {
            return None;
        }
    }
    Some(out)
}

#[derive(Debug)]
enum Clause {
    Trashed(bool),
    InParents(String),
    InOwners(String),
    Mime(String, bool),
    Name(String, &'static str),
}

fn parse_q(q: &str) -> Option<Vec<Clause>> {
    let toks = tokenize(q)?;
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let clause = match (toks.get(i), toks.get(i + 1), toks.get(i + 2)) {
            (Some(Tok::Word(f)), Some(Tok::Op(op)), Some(v)) if f == "trashed" => {
                let b = match v {
                    Tok::Word(w) if w == "true" => true,
                    Tok::Word(w) if w == "false" => false,
                    _ => return None,
                };
                match op.as_str() {
                    "=" => Clause::Trashed(b),
                    "!=" => Clause::Trashed(!b),
                    _ => return None,
                }
            }
            (Some(Tok::Word(f)), Some(Tok::Op(op)), Some(Tok::Str(v))) if f == "mimeType" => {
                match op.as_str() {
                    "=" => Clause::Mime(v.clone(), true),
                    "!=" => Clause::Mime(v.clone(), false),
                    _ => return None,
                }
            }
            (Some(Tok::Word(f)), Some(Tok::Op(op)), Some(Tok::Str(v))) if f == "name" => {
                match op.as_str() {
                    "=" => Clause::Name(v.clone(), "="),
                    "!=" => Clause::Name(v.clone(), "!="),
                    _ => return None,
                }
            }
            (Some(Tok::Word(f)), Some(Tok::Word(op)), Some(Tok::Str(v)))
                if f == "name" && op == "contains" =>
            {
                Clause::Name(v.clone(), "contains")
            }
            (Some(Tok::Str(v)), Some(Tok::Word(w)), Some(Tok::Word(field))) if w == "in" => {
                match field.as_str() {
                    "parents" => Clause::InParents(v.clone()),
                    "owners" => Clause::InOwners(v.clone()),
                    _ => return None,
                }
            }
            _ => return None,
        };
        out.push(clause);
        i += 3;
        match toks.get(i) {
            None => return Some(out),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            _ => return None,
        }
    }
}

fn matches(v: &View<'_>, f: &GFile, clauses: &[Clause]) -> bool {
    clauses.iter().all(|c| match c {
        Clause::Trashed(b) => f.trashed == *b,
        Clause::Mime(m, eq) => (f.mime_type == *m) == *eq,
        Clause::Name(n, "=") => f.name == *n,
        Clause::Name(n, "!=") => f.name != *n,
        Clause::Name(n, _) => f.name.to_lowercase().contains(&n.to_lowercase()),
        Clause::InOwners(o) => {
            let o = if o == "me" { v.subject } else { o.as_str() };
            f.owner
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(o))
        }
        Clause::InParents(p) => {
            let p = match (p.as_str(), v.user) {
                ("root", Some(u)) => u.root_folder_id.as_str(),
                _ => p.as_str(),
            };
            (f.drive_id.is_some() || v.owns(f)) && f.parents.iter().any(|x| x == p)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// files.list.

/// Which items a list or change feed covers.
enum Corpus<'a> {
    /// My Drive and shared-with-me, plus member shared drives if asked.
    User { drives: bool },
    /// One shared drive.
    Drive(&'a str),
}

fn in_corpus(v: &View<'_>, f: &GFile, c: &Corpus<'_>) -> bool {
    match c {
        Corpus::User { drives } => v.sees(f, *drives),
        Corpus::Drive(d) => f.drive_id.as_deref() == Some(*d) && v.member_of(d),
    }
}

fn corpus_of<'a>(r: &'a Req, v: &View<'_>) -> Result<Corpus<'a>, Resp> {
    let all = r.flag("includeItemsFromAllDrives");
    let supports = r.flag("supportsAllDrives") || r.flag("supportsTeamDrives");
    if all && !supports {
        return Err(gerr(
            400,
            "invalid",
            "The includeItemsFromAllDrives parameter can only be set to true when supportsAllDrives is also set to true.",
        )
        .param("includeItemsFromAllDrives")
        .resp());
    }
    let drive_id = r.q("driveId").filter(|d| !d.is_empty());
    let corpora = r
        .q("corpora")
        .unwrap_or(if drive_id.is_some() { "drive" } else { "user" });
    match corpora {
        "user" | "domain" => {
            if drive_id.is_some() {
                return Err(gerr(400, "invalid", "The driveId parameter must be specified if and only if corpora is set to drive.").param("driveId").resp());
            }
            Ok(Corpus::User { drives: all })
        }
        "allDrives" => {
            if !all {
                return Err(gerr(400, "invalid", "The includeItemsFromAllDrives parameter must be set to true when corpora is set to allDrives.").param("includeItemsFromAllDrives").resp());
            }
            Ok(Corpus::User { drives: true })
        }
        "drive" => {
            let Some(d) = drive_id else {
                return Err(gerr(400, "invalid", "The driveId parameter must be specified if and only if corpora is set to drive.").param("driveId").resp());
            };
            if !all {
                return Err(gerr(400, "invalid", "The includeItemsFromAllDrives parameter must be set to true when driveId is specified.").param("includeItemsFromAllDrives").resp());
            }
            if !v.member_of(d) {
                return Err(drive_not_found(d));
            }
            Ok(Corpus::Drive(d))
        }
        _ => Err(invalid_param("corpora")),
    }
}

fn list(state: &State, r: &Req) -> Resp {
    let v = View::new(state, r);
    let corpus = match corpus_of(r, &v) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if r.q("spaces")
        .is_some_and(|s| s.split(',').any(|x| x.trim() != "drive"))
    {
        return invalid_param("spaces");
    }
    let clauses = match r.q("q").filter(|q| !q.trim().is_empty()) {
        None => Vec::new(),
        Some(q) => match parse_q(q) {
            Some(c) => c,
            None => {
                return gerr(400, "invalid", "Invalid Value").param("q").resp();
            }
        },
    };
    let size = match state.requested_size(r, "pageSize", 100, 1000) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let mask = match mask_for(
        r,
        "kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)",
        &["kind", "incompleteSearch", "nextPageToken", "files"],
        &["files"],
    ) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let live = state.live.lock().expect("live lock");
    let mut hits: Vec<&GFile> = live
        .files
        .iter()
        .filter(|l| !l.deleted)
        .map(|l| &l.f)
        .filter(|f| in_corpus(&v, f, &corpus) && matches(&v, f, &clauses))
        .collect();
    hits.sort_by(|a, b| a.id.cmp(&b.id));
    let scope = format!(
        "files|{}|{:?}|{:?}|{:?}|{}",
        r.subject,
        r.q("q"),
        r.q("corpora"),
        r.q("driveId"),
        r.flag("includeItemsFromAllDrives")
    );
    let (page, next) = match state.page(r, &scope, &hits, size, true) {
        Ok(p) => p,
        Err(e) => return e,
    };
    bump(&state.c.files_list_pages);
    let mut body = json!({
        "kind": "drive#fileList",
        "incompleteSearch": false,
        "files": page.iter().map(|f| file_json(state, &v, f)).collect::<Vec<_>>(),
    });
    if let Some(n) = next {
        body["nextPageToken"] = json!(n);
    }
    json_resp(200, &apply(&body, &mask))
}

// ---------------------------------------------------------------------------------------------
// files.get, alt=media, export.

/// The file if the subject may see it (shared-drive items need `supportsAllDrives=true`).
fn visible<'a>(live: &'a Live, v: &View<'_>, r: &Req, id: &str) -> Option<&'a GFile> {
    let drives = r.flag("supportsAllDrives") || r.flag("supportsTeamDrives");
    live.file(id).filter(|f| v.sees(f, drives))
}

fn get(state: &State, r: &Req, id: &str) -> Resp {
    let v = View::new(state, r);
    let media = r.q("alt") == Some("media");
    if id == "root" || v.user.is_some_and(|u| u.root_folder_id == id) {
        let Some(u) = v.user else {
            return file_not_found(id);
        };
        if media {
            return not_downloadable();
        }
        let mask = match mask_for(r, "kind,id,name,mimeType", FILE_FIELDS, &[]) {
            Ok(m) => m,
            Err(e) => return e,
        };
        return json_resp(200, &apply(&root_json(u), &mask));
    }
    let f = {
        let live = state.live.lock().expect("live lock");
        match visible(&live, &v, r, id) {
            Some(f) => f.clone(),
            None => return file_not_found(id),
        }
    };
    if media {
        return download(state, r, &f);
    }
    if r.q("alt").is_some_and(|a| a != "json") {
        return invalid_param("alt");
    }
    bump(&state.c.files_get);
    let mask = match mask_for(r, "kind,id,name,mimeType", FILE_FIELDS, &[]) {
        Ok(m) => m,
        Err(e) => return e,
    };
    json_resp(200, &apply(&file_json(state, &v, &f), &mask))
}

fn not_downloadable() -> Resp {
    gerr(
        403,
        "fileNotDownloadable",
        "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
    )
    .param("alt")
    .resp()
}

fn download(state: &State, r: &Req, f: &GFile) -> Resp {
    if f.size.is_none() {
        return not_downloadable();
    }
    if state.failing.lock().expect("failing lock").1.as_deref() == Some(f.name.as_str()) {
        return gerr(500, "internalError", "Internal Error").resp();
    }
    let len = f.content.len;
    let (status, start, end) = match r.headers.get("range").and_then(|v| v.to_str().ok()) {
        None => (200, 0, len),
        Some(h) => match parse_range(h, len) {
            Some((a, b)) => (206, a, b + 1),
            None => {
                return gerr(
                    416,
                    "requestedRangeNotSatisfiable",
                    "Request range not satisfiable",
                )
                .header("content-range", format!("bytes */{len}"))
                .resp();
            }
        },
    };
    let truncate = state.download_truncates();
    let corrupt = state.media_corrupts();
    let span = end - start;
    if corrupt && span > 0 {
        bump(&state.c.corrupted);
    }
    let body = ContentBody {
        spec: f.content,
        pos: start,
        end,
        stop_at: (truncate && span > 0).then_some(start + span / 2),
        corrupt_at: (corrupt && span > 0).then_some(start + span / 2),
        cutoff: Default::default(),
    };
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", &f.mime_type)
        .header("content-length", span)
        .header(
            "content-disposition",
            format!("attachment; filename*=UTF-8''{}", pct(&f.name)),
        );
    if let Some(m) = &f.md5 {
        b = b.header("x-goog-hash", format!("md5={}", md5_b64(m)));
    }
    if status == 206 {
        b = b.header("content-range", format!("bytes {start}-{}/{len}", end - 1));
    }
    b.body(body.boxed()).expect("valid response")
}

fn md5_b64(hex: &str) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pct(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Export bytes as a response, maybe truncated.
fn export_response(state: &State, f: &GFile, mime: &str, bytes: Vec<u8>) -> Resp {
    bump(&state.c.exports);
    let truncate = state.download_truncates() && !bytes.is_empty();
    let len = bytes.len();
    let data = if truncate {
        Bytes::from(bytes).slice(..len / 2)
    } else {
        Bytes::from(bytes)
    };
    let ext = export::extension(f, mime).unwrap_or("bin");
    http::Response::builder()
        .status(200)
        .header("content-type", mime)
        .header("content-length", len)
        .header(
            "content-disposition",
            format!("attachment; filename*=UTF-8''{}.{ext}", pct(&f.name)),
        )
        .body(
            BytesBody {
                data: Some(data),
                fail_after: truncate,
                cutoff: Default::default(),
            }
            .boxed(),
        )
        .expect("valid response")
}

fn export(state: &State, r: &Req, id: &str) -> Resp {
    let v = View::new(state, r);
    let f = {
        let live = state.live.lock().expect("live lock");
        match visible(&live, &v, r, id) {
            Some(f) => f.clone(),
            None => return file_not_found(id),
        }
    };
    let Some(mime) = r.q("mimeType") else {
        return gerr(400, "required", "Required parameter: mimeType")
            .param("mimeType")
            .resp();
    };
    if !f.is_native() || f.mime_type == FOLDER || f.mime_type == SHORTCUT {
        return gerr(
            403,
            "fileNotExportable",
            "Export only supports Docs Editors files.",
        )
        .resp();
    }
    if export::extension(&f, mime).is_none() {
        return gerr(
            400,
            "badRequest",
            "The requested conversion is not supported.",
        )
        .param("mimeType")
        .resp();
    }
    if f.export_len.is_some_and(|n| n > EXPORT_LIMIT) {
        return gerr(
            403,
            "exportSizeLimitExceeded",
            "This file is too large to be exported.",
        )
        .resp();
    }
    let Some(bytes) = export::render(&f, mime) else {
        return gerr(
            400,
            "badRequest",
            "The requested conversion is not supported.",
        )
        .resp();
    };
    if bytes.len() as u64 > EXPORT_LIMIT {
        return gerr(
            403,
            "exportSizeLimitExceeded",
            "This file is too large to be exported.",
        )
        .resp();
    }
    export_response(state, &f, mime, bytes)
}

/// `GET /feeds/download/{kind}/export/Export?id=…&exportFormat=…`: an `exportLinks` URL (no
/// size limit; `Range` ignored).
fn export_link(state: &State, r: &Req) -> Resp {
    let v = View::new(state, r);
    let (Some(id), Some(ext)) = (r.q("id"), r.q("exportFormat")) else {
        return gerr(400, "badRequest", "Bad Request").resp();
    };
    let f = {
        let live = state.live.lock().expect("live lock");
        match live.file(id).filter(|f| v.sees(f, true)) {
            Some(f) => f.clone(),
            None => return file_not_found(id),
        }
    };
    let Some(mime) = export::mime_of_ext(&f, ext) else {
        return gerr(
            400,
            "badRequest",
            "The requested conversion is not supported.",
        )
        .resp();
    };
    match export::render(&f, mime) {
        Some(bytes) => export_response(state, &f, mime, bytes),
        None => gerr(
            400,
            "badRequest",
            "The requested conversion is not supported.",
        )
        .resp(),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared drives.

fn drive_json(d: &super::GSharedDrive) -> Value {
    json!({"kind": "drive#drive", "id": d.id, "name": d.name, "createdTime": d.created_time, "hidden": false})
}

fn admin_access(state: &State, r: &Req) -> Result<bool, Resp> {
    if !r.flag("useDomainAdminAccess") {
        return Ok(false);
    }
    if state.truth.user(&r.subject).is_some_and(|u| u.is_admin) {
        Ok(true)
    } else {
        Err(gerr(
            403,
            "forbidden",
            "The user does not have sufficient permissions for this file.",
        )
        .resp())
    }
}

fn drives(state: &State, r: &Req) -> Resp {
    let admin = match admin_access(state, r) {
        Ok(a) => a,
        Err(e) => return e,
    };
    let size = match state.requested_size(r, "pageSize", 10, 100) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let mask = match mask_for(
        r,
        "kind,nextPageToken,drives(kind,id,name)",
        &["kind", "nextPageToken", "drives"],
        &[],
    ) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let drives = state.live.lock().expect("live lock").drives.clone();
    let list: Vec<&super::GSharedDrive> = drives
        .iter()
        .filter(|d| admin || d.members.iter().any(|m| m == &r.subject))
        .collect();
    let scope = format!("drives|{}|{admin}", r.subject);
    let (page, next) = match state.page(r, &scope, &list, size, false) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut body = json!({
        "kind": "drive#driveList",
        "drives": page.iter().map(|d| drive_json(d)).collect::<Vec<_>>(),
    });
    if let Some(n) = next {
        body["nextPageToken"] = json!(n);
    }
    json_resp(200, &apply(&body, &mask))
}

fn drive_get(state: &State, r: &Req, id: &str) -> Resp {
    let admin = match admin_access(state, r) {
        Ok(a) => a,
        Err(e) => return e,
    };
    let drive = {
        let live = state.live.lock().expect("live lock");
        live.drives.iter().find(|d| d.id == id).cloned()
    };
    match drive.as_ref() {
        Some(d) if admin || d.members.iter().any(|m| m == &r.subject) => {
            let mask = match r.q("fields") {
                None => Mask::All,
                Some(_) => match mask_for(
                    r,
                    "*",
                    &["kind", "id", "name", "createdTime", "hidden", "*"],
                    &[],
                ) {
                    Ok(m) => m,
                    Err(e) => return e,
                },
            };
            json_resp(200, &apply(&drive_json(d), &mask))
        }
        _ => drive_not_found(id),
    }
}

// ---------------------------------------------------------------------------------------------
// Changes (developers.google.com/drive/api/guides/manage-changes).

fn changes_corpus<'a>(r: &'a Req, v: &View<'_>) -> Result<Corpus<'a>, Resp> {
    match r.q("driveId").filter(|d| !d.is_empty()) {
        Some(d) => {
            if !(r.flag("supportsAllDrives") || r.flag("supportsTeamDrives")) {
                return Err(drive_not_found(d));
            }
            if !v.member_of(d) {
                return Err(drive_not_found(d));
            }
            Ok(Corpus::Drive(d))
        }
        None => {
            let all = r.flag("includeItemsFromAllDrives");
            if all && !(r.flag("supportsAllDrives") || r.flag("supportsTeamDrives")) {
                return Err(gerr(400, "invalid", "The includeItemsFromAllDrives parameter can only be set to true when supportsAllDrives is also set to true.").param("includeItemsFromAllDrives").resp());
            }
            Ok(Corpus::User { drives: all })
        }
    }
}

fn start_page_token(state: &State, r: &Req) -> Resp {
    let v = View::new(state, r);
    if let Err(e) = changes_corpus(r, &v) {
        return e;
    }
    let live = state.live.lock().expect("live lock");
    json_resp(
        200,
        &json!({"kind": "drive#startPageToken", "startPageToken": live.change_token(live.change_seq + 1)}),
    )
}

/// The fields of a `drive#change`.
const CHANGE_FIELDS: &[&str] = &[
    "kind",
    "changeType",
    "time",
    "removed",
    "fileId",
    "file",
    "driveId",
    "drive",
    "teamDriveId",
    "teamDrive",
    "type",
];

fn changes(state: &State, r: &Req) -> Resp {
    let v = View::new(state, r);
    let corpus = match changes_corpus(r, &v) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let Some(token) = r.q("pageToken") else {
        return gerr(400, "required", "Required parameter: pageToken")
            .param("pageToken")
            .resp();
    };
    let size = match state.requested_size(r, "pageSize", 100, 1000) {
        Ok(n) => n.min(state.cfg.page_size.max(1)),
        Err(e) => return e,
    };
    let mask = match mask_for(
        r,
        "kind,nextPageToken,newStartPageToken,changes(kind,changeType,time,removed,fileId,driveId,file(kind,id,name,mimeType))",
        &["kind", "nextPageToken", "newStartPageToken", "changes"],
        &["changes", "file"],
    ) {
        Ok(m) => m,
        Err(e) => return e,
    };
    // The fields of a change itself.
    if let Mask::Some(top) = &mask {
        if let Some(Mask::Some(change)) = top.get("changes") {
            if let Some(k) = change.keys().find(|k| !CHANGE_FIELDS.contains(&k.as_str())) {
                return gerr(
                    400,
                    "invalidParameter",
                    format!("Invalid field selection {k}"),
                )
                .param("fields")
                .resp();
            }
        }
    }
    let include_removed = r.q("includeRemoved") != Some("false");
    let my_drive_only = r.flag("restrictToMyDrive");
    let live = state.live.lock().expect("live lock");
    // Drive's tokens are opaque and do not expire; one it rejects (here: unknown, or issued
    // before `invalidate_change_tokens`) is 400 `invalid` at `pageToken`.
    let start = match live.read_change_token(token) {
        Some(n) if n >= 1 && n <= live.change_seq + 1 => n,
        _ => return invalid_param("pageToken"),
    };
    // The latest change of each file at or after the token, in change order.
    let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in live.changes.iter().enumerate() {
        if c.seq >= start {
            latest.insert(c.file_id.as_str(), i);
        }
    }
    let mut picked: Vec<usize> = latest.into_values().collect();
    picked.sort_unstable();
    let file_of = |id: &str| live.files.iter().rev().find(|l| l.f.id == id);
    let items: Vec<usize> = picked
        .into_iter()
        .filter(|&i| {
            let c = &live.changes[i];
            let Some(l) = file_of(&c.file_id) else {
                return false;
            };
            let gone = c.removed || l.deleted;
            in_corpus(&v, &l.f, &corpus)
                && (include_removed || !gone)
                && (!my_drive_only || v.owns(&l.f))
        })
        .collect();
    bump(&state.c.changes_pages);
    let page = &items[..items.len().min(size)];
    let out: Vec<Value> = page
        .iter()
        .map(|&i| {
            let c = &live.changes[i];
            let l = file_of(&c.file_id).expect("checked");
            let gone = c.removed || l.deleted;
            let mut j = json!({
                "kind": "drive#change",
                "changeType": "file",
                "time": rfc3339_ms(c.time_ms),
                "removed": gone,
                "fileId": c.file_id,
            });
            if let Some(d) = &l.f.drive_id {
                j["driveId"] = json!(d);
            }
            if !gone {
                j["file"] = file_json(state, &v, &l.f);
            }
            j
        })
        .collect();
    let mut body = json!({"kind": "drive#changeList", "changes": out});
    if items.len() > page.len() {
        body["nextPageToken"] = json!(live.change_token(live.changes[items[page.len()]].seq));
    } else {
        body["newStartPageToken"] = json!(live.change_token(live.change_seq + 1));
    }
    json_resp(200, &apply(&body, &mask))
}
