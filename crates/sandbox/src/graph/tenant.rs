//! The seeded tenant: users, mailboxes, drives, sites — and the ground truth tests compare an
//! export against. Everything is a pure function of [`GraphConfig`](super::GraphConfig): the same
//! seed gives the same ids, names and bytes.

use base64::Engine;

use super::content::{
    build_mime, key_of, mix, AttachmentSpec, ContentKind, ContentReader, ContentSpec, MessageSpec,
    Rng,
};
use super::GraphConfig;

/// Prefix of immutable message ids (what `Prefer: IdType="ImmutableId"` returns).
pub(crate) const IMMUTABLE_PREFIX: &str = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A";
/// Prefix of the default (REST) message ids: different strings for the same messages, so a
/// client that forgets the `Prefer` header does not match the truth.
pub(crate) const REST_PREFIX: &str =
    "AAMkAGI2NGVhZTVlLTI1OGMtNDI4My1iZmE5LTA5OGJlZGFkZjdhYQBGAAAAAAA";

/// The ground truth of a sandbox tenant, as seeded (before any `add_message`/`delete_*` calls;
/// see `GraphServer::current_truth` for the live state).
#[derive(Clone, Debug)]
pub struct Truth {
    /// Seed the tenant was generated from.
    pub seed: u64,
    /// Tenant (domain) name, e.g. `contoso.onmicrosoft.com`.
    pub tenant: String,
    /// Tenant id (GUID).
    pub tenant_id: String,
    /// All users, licensed or not, in `/users` order.
    pub users: Vec<User>,
    /// Groups (one, "Staff").
    pub groups: Vec<Group>,
    /// SharePoint sites, in `/sites/getAllSites` order; the first is the root site.
    pub sites: Vec<Site>,
    /// All drives: users' OneDrives and sites' document libraries.
    pub drives: Vec<Drive>,
    /// All drive folders (roots included: empty `path`).
    pub drive_folders: Vec<DriveFolder>,
    /// All drive files.
    pub files: Vec<File>,
}

/// A directory user.
#[derive(Clone, Debug)]
pub struct User {
    /// Object id (GUID).
    pub id: String,
    /// `userPrincipalName`.
    pub user_principal_name: String,
    /// `mail` (None for the unlicensed user).
    pub mail: Option<String>,
    /// `displayName`.
    pub display_name: String,
    /// Has licences, a mailbox and a OneDrive.
    pub licensed: bool,
    /// The primary mailbox.
    pub mailbox: Option<Mailbox>,
    /// The in-place archive mailbox, if the user has one.
    pub archive: Option<Mailbox>,
    /// The OneDrive's drive id.
    pub drive_id: Option<String>,
}

/// A mailbox (primary or in-place archive).
#[derive(Clone, Debug)]
pub struct Mailbox {
    /// `MBX:<guid>@<tenant id>` as `/beta/users/{id}/settings/exchange` reports it.
    pub mailbox_id: String,
    /// True for an in-place archive.
    pub is_archive: bool,
    /// Id of the (unlisted) root above `msgfolderroot` and `Recoverable Items`.
    pub root_id: String,
    /// Every folder: `msgfolderroot` (empty path), the folders under it, `Recoverable Items`
    /// and its `Deletions` (paths `["Recoverable Items"]`, `["Recoverable Items", "Deletions"]`).
    pub folders: Vec<MailFolder>,
    /// Every message, in every folder.
    pub messages: Vec<Message>,
}

/// A mail folder.
#[derive(Clone, Debug)]
pub struct MailFolder {
    /// Folder id.
    pub id: String,
    /// `displayName` (may hold `/`, `%`, a trailing space, NFD text).
    pub display_name: String,
    /// `parentFolderId`.
    pub parent_id: String,
    /// Display names from `msgfolderroot` down, this folder's last; Recoverable Items folders
    /// start with `"Recoverable Items"`.
    pub path: Vec<String>,
    /// `isHidden`.
    pub hidden: bool,
    /// Well-known name (`inbox`, `msgfolderroot`, `recoverableitemsdeletions`, …).
    pub well_known_name: Option<String>,
    /// Items that are not messages (counted in `totalItemCount`, never listed).
    pub non_message_items: usize,
    /// True for folders in the msgfolderroot tree (listed by `/mailFolders`), false for the
    /// Recoverable Items tree.
    pub in_ipm_subtree: bool,
}

/// A message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Immutable id (as returned with `Prefer: IdType="ImmutableId"`).
    pub id: String,
    /// The default REST id of the same message.
    pub rest_id: String,
    /// Folder id.
    pub folder_id: String,
    /// `internetMessageId` (with angle brackets).
    pub internet_message_id: String,
    /// Subject (may be empty, may repeat).
    pub subject: String,
    /// Size of the MIME bytes.
    pub size: u64,
    /// `receivedDateTime` as Unix seconds.
    pub received: i64,
    /// `isRead`.
    pub is_read: bool,
    /// `hasAttachments`.
    pub has_attachments: bool,
    /// `categories`.
    pub categories: Vec<String>,
    pub(crate) spec: MessageSpec,
}

impl Message {
    /// The exact bytes `$value` serves.
    pub fn mime(&self) -> Vec<u8> {
        build_mime(&self.spec)
    }

    /// Sender (display name, address).
    pub fn from(&self) -> (&str, &str) {
        (&self.spec.from.0, &self.spec.from.1)
    }

    pub(crate) fn id_suffix(&self) -> &str {
        &self.id[IMMUTABLE_PREFIX.len()..]
    }
}

/// A group.
#[derive(Clone, Debug)]
pub struct Group {
    /// Object id.
    pub id: String,
    /// `displayName`.
    pub display_name: String,
    /// Member user ids.
    pub member_ids: Vec<String>,
}

/// A SharePoint site.
#[derive(Clone, Debug)]
pub struct Site {
    /// `host,siteCollectionGuid,webGuid`.
    pub id: String,
    /// URL name.
    pub name: String,
    /// `displayName` (spaces, Unicode).
    pub display_name: String,
    /// `webUrl`.
    pub web_url: String,
    /// Document library drive ids (first is the default `drive`).
    pub drive_ids: Vec<String>,
}

/// Who owns a drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriveOwner {
    /// A user's OneDrive (user id).
    User(String),
    /// A site's document library (site id).
    Site(String),
}

/// A drive.
#[derive(Clone, Debug)]
pub struct Drive {
    /// Drive id (`b!…`).
    pub id: String,
    /// `name`.
    pub name: String,
    /// `business` or `documentLibrary`.
    pub drive_type: String,
    /// Owner.
    pub owner: DriveOwner,
    /// Root item id.
    pub root_id: String,
    /// `webUrl`.
    pub web_url: String,
}

/// A drive folder.
#[derive(Clone, Debug)]
pub struct DriveFolder {
    /// Item id.
    pub id: String,
    /// Drive id.
    pub drive_id: String,
    /// Parent item id (None for the root).
    pub parent_id: Option<String>,
    /// Name (`root` for the root).
    pub name: String,
    /// Names from the drive root down (empty for the root).
    pub path: Vec<String>,
    /// `createdDateTime` (Unix seconds).
    pub created: i64,
}

/// A drive file.
#[derive(Clone, Debug)]
pub struct File {
    /// Item id.
    pub id: String,
    /// Drive id.
    pub drive_id: String,
    /// Parent folder item id.
    pub parent_id: String,
    /// Name.
    pub name: String,
    /// Names from the drive root down, this file's name last.
    pub path: Vec<String>,
    /// Size of the bytes served by the download URL.
    pub size: u64,
    /// QuickXorHash (base64) of the bytes served.
    pub quick_xor_hash: String,
    /// `size` as listed (differs from `size` only for the SharePoint mismatch file).
    pub listed_size: u64,
    /// `file.hashes.quickXorHash` as listed.
    pub listed_quick_xor_hash: String,
    /// `file.mimeType`.
    pub mime_type: String,
    /// `createdDateTime` (Unix seconds).
    pub created: i64,
    /// `lastModifiedDateTime` (Unix seconds).
    pub modified: i64,
    pub(crate) content: ContentSpec,
}

impl File {
    /// The bytes the download URL serves, generated again (never held in memory).
    pub fn bytes(&self) -> ContentReader {
        self.content.reader()
    }

    /// True if the served bytes differ from the listed size/hash (SharePoint's metadata
    /// injection into Office files).
    pub fn listed_differs(&self) -> bool {
        self.size != self.listed_size || self.quick_xor_hash != self.listed_quick_xor_hash
    }
}

/// One message with where it lives, from [`Truth::messages`].
#[derive(Clone, Copy, Debug)]
pub struct MessageEntry<'a> {
    /// Owner.
    pub user: &'a User,
    /// The mailbox (primary or archive).
    pub mailbox: &'a Mailbox,
    /// The folder.
    pub folder: &'a MailFolder,
    /// The message.
    pub message: &'a Message,
}

impl Truth {
    /// Licensed users (those with mailboxes and drives).
    pub fn licensed_users(&self) -> impl Iterator<Item = &User> {
        self.users.iter().filter(|u| u.licensed)
    }

    /// A user by id or user principal name (case-insensitive).
    pub fn user(&self, id_or_upn: &str) -> Option<&User> {
        self.users.iter().find(|u| {
            u.id.eq_ignore_ascii_case(id_or_upn)
                || u.user_principal_name.eq_ignore_ascii_case(id_or_upn)
        })
    }

    /// Every message of every mailbox (primary and archive, Recoverable Items included).
    pub fn messages(&self) -> impl Iterator<Item = MessageEntry<'_>> {
        self.users.iter().flat_map(|user| {
            user.mailbox
                .iter()
                .chain(user.archive.iter())
                .flat_map(move |mailbox| {
                    mailbox.messages.iter().map(move |message| MessageEntry {
                        user,
                        mailbox,
                        folder: mailbox
                            .folders
                            .iter()
                            .find(|f| f.id == message.folder_id)
                            .expect("message folder exists"),
                        message,
                    })
                })
        })
    }

    /// A message by immutable or REST id.
    pub fn message(&self, id: &str) -> Option<MessageEntry<'_>> {
        self.messages()
            .find(|e| e.message.id == id || e.message.rest_id == id)
    }

    /// The MIME bytes of a message (by immutable or REST id).
    pub fn mime(&self, message_id: &str) -> Option<Vec<u8>> {
        self.message(message_id).map(|e| e.message.mime())
    }

    /// Every drive file.
    pub fn files(&self) -> impl Iterator<Item = &File> {
        self.files.iter()
    }

    /// A file by item id.
    pub fn file(&self, id: &str) -> Option<&File> {
        self.files.iter().find(|f| f.id == id)
    }

    /// The bytes a file's download serves, generated again.
    pub fn file_bytes(&self, file_id: &str) -> Option<ContentReader> {
        self.file(file_id).map(File::bytes)
    }

    /// A drive by id.
    pub fn drive(&self, id: &str) -> Option<&Drive> {
        self.drives.iter().find(|d| d.id == id)
    }
}

// ---------------------------------------------------------------------------------------------
// Generation.

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

/// A mail folder id shaped like Exchange's (`AAMkA…AAA=`; base64 with `-`, `_`, `=`).
fn folder_id(rng: &mut Rng) -> String {
    format!("AAMkA{}AAA=", b64url(&rng.bytes(45)).trim_end_matches('='))
}

/// A drive item id shaped like OneDrive for Business's (`01` + 32 base32 characters).
pub(crate) fn item_id(rng: &mut Rng) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut s = String::from("01");
    for _ in 0..32 {
        s.push(A[rng.below(32) as usize] as char);
    }
    s
}

fn drive_id(rng: &mut Rng) -> String {
    format!("b!{}", b64url(&rng.bytes(48)))
}

const PEOPLE: &[(&str, &str, &str)] = &[
    ("Adele Vance", "adelev", ""),
    ("Alex Wilber", "alexw", ""),
    ("Diego Siciliani", "diegos", ""),
    ("Isaiah Langer", "isaiahl", ""),
    ("Johanna Lorenz", "johannal", ""),
    ("Zoë Ñúñez-Østergård", "zoen", ""),
    ("Lee Gu", "leeg", ""),
    ("Megan Bowen", "meganb", ""),
    ("Nestor Wilke", "nestorw", ""),
    ("Patti Fernandez", "pattif", ""),
];

const SUBJECTS: &[&str] = &[
    "Quarterly budget review",
    "Re: Project Alpha kickoff",
    "Fwd: Invoice 2024-117",
    "Lunch on Friday?",
    "Weekly status update",
    "Contract draft v3",
    "Re: Re: Re: schedule change",
    "Welcome to the team!",
];

/// One folder to seed: (display name, parent index in the list or None for the root,
/// well-known name, hidden, non-message items, weight for message placement).
type FolderSeed = (
    &'static str,
    Option<usize>,
    Option<&'static str>,
    bool,
    usize,
    u64,
);

/// The primary mailbox's folders under `msgfolderroot` (index 0 is msgfolderroot itself).
const PRIMARY_FOLDERS: &[FolderSeed] = &[
    (
        "Top of Information Store",
        None,
        Some("msgfolderroot"),
        false,
        0,
        0,
    ), // 0
    ("Inbox", Some(0), Some("inbox"), false, 1, 6), // 1
    ("Projects", Some(1), None, false, 0, 2),       // 2
    ("2024 Q1", Some(2), None, false, 0, 1),        // 3
    ("Ünïcödé – Budget 日本", Some(3), None, false, 0, 1), // 4
    ("Caf\u{e9}", Some(1), None, false, 0, 1),      // 5 NFC
    ("Cafe\u{301}", Some(2), None, false, 0, 1),    // 6 NFD
    ("Invoices a/b 100%", Some(1), None, false, 0, 1), // 7
    ("Trailing space ", Some(1), None, false, 0, 1), // 8
    ("Sent Items", Some(0), Some("sentitems"), false, 0, 3), // 9
    ("Deleted Items", Some(0), Some("deleteditems"), false, 1, 2), // 10
    ("Drafts", Some(0), Some("drafts"), false, 0, 1), // 11
    ("Junk Email", Some(0), Some("junkemail"), false, 0, 1), // 12
    ("Archive", Some(0), Some("archive"), false, 0, 1), // 13
    ("Outbox", Some(0), Some("outbox"), false, 0, 0), // 14
    (
        "Conversation History",
        Some(0),
        Some("conversationhistory"),
        false,
        2,
        0,
    ), // 15
    ("Social Activity Notifications", Some(0), None, true, 0, 1), // 16 hidden
    ("Empty but full", Some(1), None, false, 3, 0), // 17 only non-message items
];

const ARCHIVE_FOLDERS: &[FolderSeed] = &[
    (
        "Top of Information Store",
        None,
        Some("msgfolderroot"),
        false,
        0,
        0,
    ),
    ("Inbox", Some(0), Some("inbox"), false, 0, 2),
    ("Old Projects", Some(0), None, false, 0, 2),
    ("2019 – Übergabe", Some(2), None, false, 0, 1),
    ("Deleted Items", Some(0), Some("deleteditems"), false, 0, 1),
];

struct MsgCtx<'a> {
    seed: u64,
    tenant_id: &'a str,
    domain: &'a str,
    owner: (String, String),
    others: &'a [(String, String)],
}

fn make_message(
    rng: &mut Rng,
    ctx: &MsgCtx<'_>,
    j: usize,
    folder_id: &str,
    sent: bool,
    base_time: i64,
) -> Message {
    let suffix = b64url(&rng.bytes(30));
    let key = key_of(ctx.seed, &suffix);
    let external = (
        "Fabrikam Sales".to_string(),
        "sales@fabrikam.example".to_string(),
    );
    let other = if ctx.others.is_empty() {
        external.clone()
    } else {
        ctx.others[rng.below(ctx.others.len() as u64) as usize].clone()
    };
    let (from, to) = if sent {
        (ctx.owner.clone(), vec![other.clone()])
    } else if j.is_multiple_of(3) {
        (external, vec![ctx.owner.clone()])
    } else {
        (other.clone(), vec![ctx.owner.clone()])
    };
    let cc = if j % 4 == 1 {
        vec![(
            "Jürgen Müller".to_string(),
            format!("juergen@{}", ctx.domain),
        )]
    } else {
        vec![]
    };
    let subject = match j {
        1 => "Grüße aus Köln — 日本語の件名 🎉".to_string(),
        3 => String::new(),
        _ => SUBJECTS[(j * 5 + rng.below(3) as usize) % SUBJECTS.len()].to_string(),
    };
    let mut attachments = Vec::new();
    let att_key = mix(key ^ 0xA77A);
    if j == 7 || j == 13 {
        // Large messages: ≥ 4 MiB of MIME once base64-encoded (3.3 MB → 4.4 MB).
        let len = if j == 7 { 3_300_000 } else { 1_600_000 };
        attachments.push(AttachmentSpec {
            name: format!("Präsentation {j} – groß.pptx"),
            mime_type: "application/vnd.openxmlformats-officedocument.presentationml.presentation"
                .into(),
            content: ContentSpec {
                key: att_key,
                len,
                kind: ContentKind::Binary,
            },
        });
    } else if j % 5 == 4 {
        attachments.push(AttachmentSpec {
            name: "Bericht Q1 – Übersicht 📊.pdf".into(),
            mime_type: "application/pdf".into(),
            content: ContentSpec {
                key: att_key,
                len: 2_000 + rng.below(60_000),
                kind: ContentKind::Binary,
            },
        });
        if j % 10 == 9 {
            attachments.push(AttachmentSpec {
                name: "data.bin".into(),
                mime_type: "application/octet-stream".into(),
                content: ContentSpec {
                    key: mix(att_key),
                    len: 777,
                    kind: ContentKind::Binary,
                },
            });
        }
    }
    let date = base_time + (j as i64) * 7919 + rng.below(3600) as i64;
    let spec = MessageSpec {
        key,
        from,
        to,
        cc,
        subject: subject.clone(),
        date,
        message_id: format!("{:016x}.{j}@{}", key, ctx.domain),
        alternative: j % 3 == 1,
        body_lines: 3 + rng.below(30) as usize,
        unicode_body: j % 4 == 2,
        attachments,
    };
    let size = build_mime(&spec).len() as u64;
    let is_read = rng.below(10) < 7;
    Message {
        id: format!("{IMMUTABLE_PREFIX}{suffix}"),
        rest_id: format!("{REST_PREFIX}{suffix}"),
        folder_id: folder_id.to_string(),
        internet_message_id: format!("<{}>", spec.message_id),
        subject,
        size,
        received: date + 5,
        is_read,
        has_attachments: !spec.attachments.is_empty(),
        categories: if j.is_multiple_of(6) {
            vec!["Blue category".into()]
        } else {
            vec![]
        },
        spec,
    }
}

fn make_mailbox(
    rng: &mut Rng,
    ctx: &MsgCtx<'_>,
    seeds: &[FolderSeed],
    messages: usize,
    recoverable: usize,
    is_archive: bool,
    base_time: i64,
) -> Mailbox {
    let root_id = folder_id(rng);
    let mut folders: Vec<MailFolder> = Vec::new();
    for (name, parent, wk, hidden, non_msg, _) in seeds {
        let (parent_id, mut path) = match parent {
            None => (root_id.clone(), vec![]),
            Some(p) => (folders[*p].id.clone(), folders[*p].path.clone()),
        };
        if parent.is_some() {
            path.push(name.to_string());
        }
        folders.push(MailFolder {
            id: folder_id(rng),
            display_name: name.to_string(),
            parent_id,
            path,
            hidden: *hidden,
            well_known_name: wk.map(str::to_string),
            non_message_items: *non_msg,
            in_ipm_subtree: true,
        });
    }
    let ri_root = MailFolder {
        id: folder_id(rng),
        display_name: "Recoverable Items".into(),
        parent_id: root_id.clone(),
        path: vec!["Recoverable Items".into()],
        hidden: true,
        well_known_name: Some("recoverableitemsroot".into()),
        non_message_items: 0,
        in_ipm_subtree: false,
    };
    let deletions = MailFolder {
        id: folder_id(rng),
        display_name: "Deletions".into(),
        parent_id: ri_root.id.clone(),
        path: vec!["Recoverable Items".into(), "Deletions".into()],
        hidden: true,
        well_known_name: Some("recoverableitemsdeletions".into()),
        non_message_items: 1,
        in_ipm_subtree: false,
    };
    // Place messages: one in each weighted folder first (so every kind of folder is
    // exercised when there are enough messages), then by weight.
    let weighted: Vec<usize> = (0..seeds.len()).filter(|&i| seeds[i].5 > 0).collect();
    let total_w: u64 = weighted.iter().map(|&i| seeds[i].5).sum();
    let mut msgs = Vec::new();
    for j in 0..messages {
        let fi = if j < weighted.len() {
            // Inbox (index 1) first: it gets the large message 7 only by weight, below.
            weighted[j]
        } else {
            let mut r = rng.below(total_w);
            let mut pick = weighted[0];
            for &i in &weighted {
                if r < seeds[i].5 {
                    pick = i;
                    break;
                }
                r -= seeds[i].5;
            }
            pick
        };
        let sent = seeds[fi].2 == Some("sentitems");
        let fid = folders[fi].id.clone();
        msgs.push(make_message(rng, ctx, j, &fid, sent, base_time));
    }
    for k in 0..recoverable {
        msgs.push(make_message(
            rng,
            ctx,
            100 + k,
            &deletions.id,
            false,
            base_time,
        ));
    }
    folders.push(ri_root);
    folders.push(deletions);
    Mailbox {
        mailbox_id: format!("MBX:{}@{}", rng.guid(), ctx.tenant_id),
        is_archive,
        root_id,
        folders,
        messages: msgs,
    }
}

fn mime_type_of(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "txt" | "md" | "csv" => "text/plain",
        "jpg" => "image/jpeg",
        _ => "application/octet-stream",
    }
}

struct DriveBuilder<'a> {
    rng: &'a mut Rng,
    seed: u64,
    drive_id: String,
    folders: Vec<DriveFolder>,
    files: Vec<File>,
    time: i64,
}

impl DriveBuilder<'_> {
    fn folder(&mut self, path: &[&str]) -> String {
        let mut parent = self.folders[0].id.clone();
        let mut cur: Vec<String> = vec![];
        for name in path {
            cur.push(name.to_string());
            if let Some(f) = self.folders.iter().find(|f| f.path == cur) {
                parent = f.id.clone();
                continue;
            }
            let id = item_id(self.rng);
            self.time += 61;
            self.folders.push(DriveFolder {
                id: id.clone(),
                drive_id: self.drive_id.clone(),
                parent_id: Some(parent),
                name: name.to_string(),
                path: cur.clone(),
                created: self.time,
            });
            parent = id;
        }
        parent
    }

    fn file(&mut self, dir: &[&str], name: &str, size: u64, mismatch: bool) {
        let parent_id = self.folder(dir);
        let id = item_id(self.rng);
        let kind = if name.ends_with(".txt") || name.ends_with(".md") || name.ends_with(".csv") {
            ContentKind::Text
        } else {
            ContentKind::Binary
        };
        let listed = ContentSpec {
            key: key_of(self.seed, &id),
            len: size,
            kind,
        };
        let served = if mismatch {
            // SharePoint rewrites Office documents on download (it injects its metadata), so
            // the bytes differ from the listed size and hash.
            ContentSpec {
                key: mix(listed.key),
                len: size + 1234,
                kind,
            }
        } else {
            listed
        };
        let listed_hash = listed.quick_xor_hash();
        let served_hash = if mismatch {
            served.quick_xor_hash()
        } else {
            listed_hash.clone()
        };
        let mut path: Vec<String> = dir.iter().map(|s| s.to_string()).collect();
        path.push(name.to_string());
        self.time += 3571;
        self.files.push(File {
            id,
            drive_id: self.drive_id.clone(),
            parent_id,
            name: name.to_string(),
            path,
            size: served.len,
            quick_xor_hash: served_hash,
            listed_size: size,
            listed_quick_xor_hash: listed_hash,
            mime_type: mime_type_of(name).to_string(),
            created: self.time - 86_400,
            modified: self.time,
            content: served,
        });
    }
}

fn new_drive(rng: &mut Rng, seed: u64, time: i64) -> DriveBuilder<'_> {
    let drive_id = drive_id(rng);
    let root = DriveFolder {
        id: item_id(rng),
        drive_id: drive_id.clone(),
        parent_id: None,
        name: "root".into(),
        path: vec![],
        created: time,
    };
    DriveBuilder {
        rng,
        seed,
        drive_id,
        folders: vec![root],
        files: vec![],
        time,
    }
}

/// The OneDrive files every user gets first (directory, name, size); hostile names on purpose.
fn onedrive_seed_files() -> Vec<(Vec<&'static str>, String, u64)> {
    let long = format!("{}.txt", "L".repeat(251)); // 255 characters
    let deep = vec!["Deep", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8"];
    vec![
        (vec!["Documents", "Projects"], "Report.pdf".into(), 48_213),
        (vec!["Documents", "Archive"], "report.pdf".into(), 31_007),
        (vec!["Documents"], "R\u{e9}sum\u{e9}.docx".into(), 20_480),
        (
            vec!["Documents"],
            "Re\u{301}sume\u{301}.docx".into(),
            20_481,
        ),
        (vec![], "100% done.txt".into(), 1_000),
        (vec![], "C# notes #1.md".into(), 2_345),
        (vec![], "empty.txt".into(), 0),
        (vec!["Documents"], "日本語のファイル.txt".into(), 4_096),
        (deep.clone(), "deep.txt".into(), 777),
        (vec!["Photos", "2024"], "IMG_0001.jpg".into(), 1_500_000),
        (vec![], long, 64),
        (vec!["Café Ünïcode"], "emoji 🎉 party.txt".into(), 512),
        (vec!["Documents", "Projects"], "placeholder.dat".into(), 0),
        (vec!["Photos"], "IMG_0002.jpg".into(), 2_700_000),
    ]
}

const GENERIC_DIRS: &[&[&str]] = &[
    &[],
    &["Documents"],
    &["Documents", "Projects", "Alpha"],
    &["Photos", "2024"],
    &["Shared with team"],
];

/// Generates the tenant for `cfg`.
pub(crate) fn generate(cfg: &GraphConfig) -> Truth {
    let mut rng = Rng::new(cfg.seed);
    let tenant_id = rng.guid();
    let domain = cfg.tenant.clone();
    let host_prefix = domain.split('.').next().unwrap_or("contoso").to_string();
    let sp_host = format!("{host_prefix}.sharepoint.com");
    let base_time: i64 = 1_704_067_200; // 2024-01-01

    // Users: licensed ones, with the unlicensed service account second in the listing.
    let mut people: Vec<(String, String)> = Vec::new();
    for i in 0..cfg.users {
        let (name, alias, _) = PEOPLE[i % PEOPLE.len()];
        let round = i / PEOPLE.len();
        let (name, alias) = if round == 0 {
            (name.to_string(), alias.to_string())
        } else {
            (
                format!("{name} {}", round + 1),
                format!("{alias}{}", round + 1),
            )
        };
        people.push((name, format!("{alias}@{domain}")));
    }
    let mut users = Vec::new();
    let mut drives = Vec::new();
    let mut drive_folders = Vec::new();
    let mut files = Vec::new();
    for (i, (name, upn)) in people.iter().enumerate() {
        let id = rng.guid();
        let others: Vec<(String, String)> =
            people.iter().filter(|p| p.1 != *upn).cloned().collect();
        let ctx = MsgCtx {
            seed: cfg.seed,
            tenant_id: &tenant_id,
            domain: &domain,
            owner: (name.clone(), upn.clone()),
            others: &others,
        };
        let t0 = base_time + i as i64 * 86_400;
        let mailbox = make_mailbox(
            &mut rng,
            &ctx,
            PRIMARY_FOLDERS,
            cfg.messages_per_user,
            3,
            false,
            t0,
        );
        let archive = (i == 0).then(|| {
            make_mailbox(
                &mut rng,
                &ctx,
                ARCHIVE_FOLDERS,
                (cfg.messages_per_user / 2).max(4),
                1,
                true,
                t0 - 3 * 365 * 86_400,
            )
        });
        // OneDrive.
        let mut b = new_drive(&mut rng, cfg.seed, t0);
        let seeds = onedrive_seed_files();
        for n in 0..cfg.files_per_user {
            if let Some((dir, fname, size)) = seeds.get(n) {
                b.file(dir, fname, *size, false);
            } else {
                let dir = GENERIC_DIRS[n % GENERIC_DIRS.len()];
                let size = if n % 7 == 0 {
                    1_000_000 + b.rng.below(2_000_000)
                } else {
                    b.rng.below(200_000)
                };
                let ext = ["bin", "txt", "csv", "pdf"][n % 4];
                b.file(dir, &format!("file-{n:04}.{ext}"), size, false);
            }
        }
        if i == 0 && cfg.large_file_bytes > 0 {
            b.file(&["Large"], "big-file.bin", cfg.large_file_bytes, false);
        }
        let drive = Drive {
            id: b.drive_id.clone(),
            name: "OneDrive".into(),
            drive_type: "business".into(),
            owner: DriveOwner::User(id.clone()),
            root_id: b.folders[0].id.clone(),
            web_url: format!(
                "https://{host_prefix}-my.sharepoint.com/personal/{}/Documents",
                upn.replace(['@', '.'], "_")
            ),
        };
        let drive_id = drive.id.clone();
        drive_folders.extend(b.folders);
        files.extend(b.files);
        drives.push(drive);
        users.push(User {
            id,
            user_principal_name: upn.clone(),
            mail: Some(upn.clone()),
            display_name: name.clone(),
            licensed: true,
            mailbox: Some(mailbox),
            archive,
            drive_id: Some(drive_id),
        });
    }
    let unlicensed = User {
        id: rng.guid(),
        user_principal_name: format!("scanner@{domain}"),
        mail: None,
        display_name: "Scanner (service account)".into(),
        licensed: false,
        mailbox: None,
        archive: None,
        drive_id: None,
    };
    users.insert(users.len().min(1), unlicensed);

    let staff = Group {
        id: rng.guid(),
        display_name: "Staff".into(),
        member_ids: users
            .iter()
            .filter(|u| u.licensed)
            .enumerate()
            .filter(|(k, _)| k % 2 == 0)
            .map(|(_, u)| u.id.clone())
            .collect(),
    };

    // Sites.
    const SITE_NAMES: &[(&str, &str)] = &[
        ("Contoso Intranet – Home", ""),
        ("Ventes & Marketing – Équipe", "VentesMarketing"),
        ("Projekt Übersicht 2024", "ProjektUbersicht2024"),
        ("HR Team Site", "HRTeam"),
    ];
    let mut sites = Vec::new();
    for s in 0..cfg.sites {
        let (display, url_name) = SITE_NAMES[s % SITE_NAMES.len()];
        let (display, url_name) = if s < SITE_NAMES.len() {
            (display.to_string(), url_name.to_string())
        } else {
            (format!("{display} {s}"), format!("Site{s}"))
        };
        let id = format!("{sp_host},{},{}", rng.guid(), rng.guid());
        let web_url = if url_name.is_empty() {
            format!("https://{sp_host}")
        } else {
            format!("https://{sp_host}/sites/{url_name}")
        };
        let libs: &[&str] = if s % 2 == 0 {
            &["Documents", "Project Files ü"]
        } else {
            &["Documents"]
        };
        let mut drive_ids = Vec::new();
        for (l, lib) in libs.iter().enumerate() {
            let mut b = new_drive(
                &mut rng,
                cfg.seed,
                base_time + 40 * 86_400 + s as i64 * 3600,
            );
            let n = (cfg.files_per_user / 2).max(3);
            for k in 0..n {
                let mismatch = cfg.faults.sharepoint_size_mismatch && s == 0 && l == 0 && k == 0;
                let (dir, name): (&[&str], String) = match k {
                    0 => (&[], "Proposal.docx".into()),
                    1 => (&["General"], "Budget 2024.xlsx".into()),
                    2 => (&["Zeitplan", "Ärger & Lösungen"], "Notizen #3.txt".into()),
                    _ => (&["General"], format!("Dokument {k}.docx")),
                };
                let size = 5_000 + b.rng.below(150_000);
                b.file(dir, &name, size, mismatch);
            }
            let drive = Drive {
                id: b.drive_id.clone(),
                name: lib.to_string(),
                drive_type: "documentLibrary".into(),
                owner: DriveOwner::Site(id.clone()),
                root_id: b.folders[0].id.clone(),
                web_url: format!(
                    "{web_url}/{}",
                    if l == 0 {
                        "Shared Documents".to_string()
                    } else {
                        lib.to_string()
                    }
                ),
            };
            drive_ids.push(drive.id.clone());
            drive_folders.extend(b.folders);
            files.extend(b.files);
            drives.push(drive);
        }
        sites.push(Site {
            id,
            name: if url_name.is_empty() {
                sp_host.clone()
            } else {
                url_name
            },
            display_name: display,
            web_url,
            drive_ids,
        });
    }

    Truth {
        seed: cfg.seed,
        tenant: domain,
        tenant_id,
        users,
        groups: vec![staff],
        sites,
        drives,
        drive_folders,
        files,
    }
}
