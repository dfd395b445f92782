//! The seeded Workspace domain: users, Gmail mailboxes, My Drives and shared drives — and the
//! ground truth ([`GoogleTruth`]) tests compare an export against. Everything is a pure function
//! of [`GoogleConfig`]: the same seed gives the same ids, names and bytes.

use std::collections::BTreeMap;
use std::io::Read;

use md5::Digest as _;

use super::export;
use super::GoogleConfig;
use crate::graph::content::{
    build_mime, key_of, mix, AttachmentSpec, ContentKind, ContentReader, ContentSpec, MessageSpec,
    Rng,
};

/// MIME type of Drive folders.
pub const FOLDER: &str = "application/vnd.google-apps.folder";
/// MIME type of Drive shortcuts.
pub const SHORTCUT: &str = "application/vnd.google-apps.shortcut";
/// MIME type of Google Docs.
pub const DOCUMENT: &str = "application/vnd.google-apps.document";
/// MIME type of Google Sheets.
pub const SPREADSHEET: &str = "application/vnd.google-apps.spreadsheet";
/// MIME type of Google Slides.
pub const PRESENTATION: &str = "application/vnd.google-apps.presentation";
/// MIME type of Google Drawings.
pub const DRAWING: &str = "application/vnd.google-apps.drawing";
/// MIME type of Google Forms (not exportable).
pub const FORM: &str = "application/vnd.google-apps.form";

/// The ground truth of a sandbox domain, as seeded (see `GoogleServer::current_truth` for the
/// state after mutations).
#[derive(Clone, Debug)]
pub struct GoogleTruth {
    /// Seed the domain was generated from.
    pub seed: u64,
    /// Primary domain, e.g. `example.no`.
    pub domain: String,
    /// Customer id (`C0…`), what `customer=my_customer` stands for.
    pub customer_id: String,
    /// Every user, active and suspended, in Directory order (by email).
    pub users: Vec<GUser>,
    /// Gmail mailboxes by user email (active users only; the suspended user has none).
    pub mailboxes: BTreeMap<String, GMailbox>,
    /// Every Drive item (My Drives and shared drives; folders, shortcuts and trashed items too).
    pub files: Vec<GFile>,
    /// Shared drives, the member-less "Orphaned drive" last.
    pub shared_drives: Vec<GSharedDrive>,
}

/// A Directory user.
#[derive(Clone, Debug)]
pub struct GUser {
    /// Directory id (21 digits).
    pub id: String,
    /// Primary email.
    pub email: String,
    /// Full name.
    pub name: String,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Suspended (tokens are issued, Gmail and Drive refuse; see the module docs).
    pub suspended: bool,
    /// Super administrator (only user 0, `admin@<domain>`).
    pub is_admin: bool,
    /// Id of the user's My Drive root folder (what `'root'` stands for).
    pub root_folder_id: String,
}

/// A Gmail mailbox.
#[derive(Clone, Debug)]
pub struct GMailbox {
    /// The mailbox's history id when seeding ended (`profile.historyId`).
    pub history_id: u64,
    /// System and user labels.
    pub labels: Vec<GLabel>,
    /// Every message (spam and trash included), newest first.
    pub messages: Vec<GMessage>,
}

/// A Gmail label.
#[derive(Clone, Debug)]
pub struct GLabel {
    /// `INBOX`, `Label_3`, …
    pub id: String,
    /// Display name (user labels may nest with `/`, hold spaces and non-ASCII).
    pub name: String,
    /// `system` or `user`.
    pub kind: String,
}

/// A Gmail message.
#[derive(Clone, Debug)]
pub struct GMessage {
    /// 16 lowercase hex digits.
    pub id: String,
    /// Thread id (the id of the thread's first message).
    pub thread_id: String,
    /// Label ids (1–3).
    pub label_ids: Vec<String>,
    /// `internalDate`, ms since the epoch.
    pub internal_date_ms: i64,
    /// The history id of the message's last change.
    pub history_id: u64,
    /// Subject (may be non-ASCII).
    pub subject: String,
    /// `sizeEstimate` (the raw size).
    pub size_estimate: u64,
    pub(crate) spec: MessageSpec,
}

impl GMessage {
    /// The exact RFC 5322 bytes `format=raw` serves.
    pub fn raw(&self) -> Vec<u8> {
        build_mime(&self.spec)
    }
}

/// A Drive item.
#[derive(Clone, Debug)]
pub struct GFile {
    /// 33-character id.
    pub id: String,
    /// Name (may repeat within a folder, hold `/`, `..`, NFD text, control characters).
    pub name: String,
    /// MIME type (`application/vnd.google-apps.*` for folders and native files).
    pub mime_type: String,
    /// Parent ids (a My Drive root id, a shared drive id, or a folder id).
    pub parents: Vec<String>,
    /// Owner email (None on shared drives).
    pub owner: Option<String>,
    /// Shared drive id (None in My Drive).
    pub drive_id: Option<String>,
    /// In the trash.
    pub trashed: bool,
    /// Bytes (binary files only).
    pub size: Option<u64>,
    /// MD5 hex (binary files only).
    pub md5: Option<String>,
    /// SHA-1 hex (binary files, not on "old uploads").
    pub sha1: Option<String>,
    /// SHA-256 hex (binary files, not on "old uploads").
    pub sha256: Option<String>,
    /// `createdTime`, RFC 3339 with milliseconds.
    pub created_time: String,
    /// `modifiedTime`, RFC 3339 with milliseconds.
    pub modified_time: String,
    /// `version`.
    pub version: u64,
    /// `headRevisionId` (binary files only).
    pub head_revision_id: Option<String>,
    /// Shortcuts: (target id, target MIME type).
    pub shortcut_target: Option<(String, String)>,
    /// Users (emails) the owner shared the file with.
    pub shared_with: Vec<String>,
    /// Folder names from the drive root, this item's name last (for tests).
    pub path: Vec<String>,
    pub(crate) content: ContentSpec,
    /// For the "Big report": every export is this many bytes.
    pub(crate) export_len: Option<u64>,
}

impl GFile {
    /// The bytes `alt=media` serves (empty for folders and native files), generated again.
    pub fn content(&self) -> ContentReader {
        self.content.reader()
    }

    /// A Google Docs Editors file or other `application/vnd.google-apps.*` item (no bytes).
    pub fn is_native(&self) -> bool {
        self.mime_type.starts_with("application/vnd.google-apps.")
    }

    /// A folder.
    pub fn is_folder(&self) -> bool {
        self.mime_type == FOLDER
    }

    /// The export formats (MIME type, `exportFormat` extension) of a Docs Editors file; empty
    /// for everything else (forms included).
    pub fn export_formats(&self) -> &'static [(&'static str, &'static str)] {
        export::formats(&self.mime_type)
    }
}

/// A shared drive.
#[derive(Clone, Debug)]
pub struct GSharedDrive {
    /// Id (`0A…Uk9PVA`); also the id of its root folder.
    pub id: String,
    /// Name.
    pub name: String,
    /// Member emails (empty for the "Orphaned drive").
    pub members: Vec<String>,
    /// `createdTime`.
    pub created_time: String,
}

impl GoogleTruth {
    /// A user by email (case-insensitive) or id.
    pub fn user(&self, email_or_id: &str) -> Option<&GUser> {
        self.users
            .iter()
            .find(|u| u.email.eq_ignore_ascii_case(email_or_id) || u.id == email_or_id)
    }

    /// The admin user.
    pub fn admin(&self) -> &GUser {
        self.users.iter().find(|u| u.is_admin).expect("an admin")
    }

    /// Every message of a user's mailbox (spam and trash included), newest first; empty for
    /// unknown or suspended users.
    pub fn messages_of(&self, email: &str) -> &[GMessage] {
        self.mailbox(email).map_or(&[], |m| &m.messages[..])
    }

    /// A user's mailbox.
    pub fn mailbox(&self, email: &str) -> Option<&GMailbox> {
        let u = self.user(email)?;
        self.mailboxes.get(&u.email)
    }

    /// A message by id, in a user's mailbox.
    pub fn message(&self, email: &str, id: &str) -> Option<&GMessage> {
        self.messages_of(email).iter().find(|m| m.id == id)
    }

    /// Every item a user owns in My Drive (folders, trashed and shared items included).
    pub fn files_of_owner(&self, email: &str) -> Vec<&GFile> {
        self.files
            .iter()
            .filter(|f| {
                f.owner
                    .as_deref()
                    .is_some_and(|o| o.eq_ignore_ascii_case(email))
            })
            .collect()
    }

    /// Every item of a shared drive.
    pub fn drive_files(&self, drive_id: &str) -> Vec<&GFile> {
        self.files
            .iter()
            .filter(|f| f.drive_id.as_deref() == Some(drive_id))
            .collect()
    }

    /// An item by id.
    pub fn file(&self, id: &str) -> Option<&GFile> {
        self.files.iter().find(|f| f.id == id)
    }

    /// A shared drive by id.
    pub fn shared_drive(&self, id: &str) -> Option<&GSharedDrive> {
        self.shared_drives.iter().find(|d| d.id == id)
    }

    /// Exactly the bytes the server's export of `file_id` as `mime` serves (`files.export` and
    /// the `exportLinks` URL alike); None if the file is unknown or has no such format.
    pub fn export_bytes(&self, file_id: &str, mime: &str) -> Option<Vec<u8>> {
        export::render(self.file(file_id)?, mime)
    }
}

// ---------------------------------------------------------------------------------------------
// Ids and times.

const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn id_chars(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| ID_CHARS[rng.below(64) as usize] as char)
        .collect()
}

/// A Drive file id as Google makes them: `1` and 32 URL-safe characters.
pub(crate) fn file_id(rng: &mut Rng) -> String {
    format!("1{}", id_chars(rng, 32))
}

/// A shared drive (or My Drive root) id: `0A`, 11 characters, `Uk9PVA`.
fn drive_id(rng: &mut Rng) -> String {
    let s: String = id_chars(rng, 11)
        .chars()
        .map(|c| if c == '-' || c == '_' { 'x' } else { c })
        .collect();
    format!("0A{s}Uk9PVA")
}

/// A head revision id: derived from the file id and version.
pub(crate) fn revision_id(seed: u64, id: &str, version: u64) -> String {
    let mut rng = Rng::new(key_of(seed, id) ^ version.wrapping_mul(0x2545_F491));
    format!("0B{}", id_chars(&mut rng, 45))
}

/// RFC 3339 UTC with milliseconds, as Google writes times (`2024-01-01T10:00:00.000Z`).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ms.rem_euclid(1000)
    )
}

/// 2024-01-01T00:00:00Z in ms.
const EPOCH_2024_MS: i64 = 1_704_067_200_000;

/// (md5, sha1, sha256) hex of generated content.
pub(crate) fn checksums(spec: &ContentSpec) -> (String, String, String) {
    let mut md5 = md5::Md5::new();
    let mut sha1 = sha1::Sha1::new();
    let mut sha256 = sha2::Sha256::new();
    let mut r = spec.reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        sha1.update(&buf[..n]);
        sha256.update(&buf[..n]);
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    (
        hex(&md5.finalize()),
        hex(&sha1.finalize()),
        hex(&sha256.finalize()),
    )
}

// ---------------------------------------------------------------------------------------------
// People and labels.

/// (given name, family name, local part). The first is the admin.
const PEOPLE: &[(&str, &str, &str)] = &[
    ("Ada", "Admin", "admin"),
    ("Kari", "Nordmann", "kari.nordmann"),
    ("Ola", "Hansen", "ola.hansen"),
    ("Zoë", "Ñúñez-Østergård", "zoe.nunez"),
    ("Lars", "Økland", "lars.okland"),
    ("Ingrid", "Berg", "ingrid.berg"),
    ("Per", "Johansen", "per.johansen"),
    ("Siri", "Lund", "siri.lund"),
];

/// System labels (id = name).
const SYSTEM_LABELS: &[&str] = &[
    "CHAT",
    "SENT",
    "INBOX",
    "IMPORTANT",
    "TRASH",
    "DRAFT",
    "SPAM",
    "CATEGORY_FORUMS",
    "CATEGORY_UPDATES",
    "CATEGORY_PERSONAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_SOCIAL",
    "STARRED",
    "UNREAD",
];

/// User labels: `Label_1`…
const USER_LABELS: &[&str] = &[
    "Projects",
    "Projects/2024",
    "Økonomi",
    "Receipts / 2023 a/b",
    "Archive old",
];

/// The labels of regular message `i` (1–3 labels; some only a user label: "archived").
fn labels_for(i: usize) -> Vec<&'static str> {
    match i % 10 {
        0 => vec!["INBOX", "UNREAD", "CATEGORY_PERSONAL"],
        1 => vec!["INBOX", "Label_2"],
        2 => vec!["SENT"],
        3 => vec!["Label_5"],
        4 => vec!["INBOX", "STARRED", "IMPORTANT"],
        5 => vec!["INBOX", "Label_3"],
        6 => vec!["SENT", "Label_1"],
        7 => vec!["Label_4"],
        8 => vec!["INBOX", "CATEGORY_UPDATES", "UNREAD"],
        _ => vec!["INBOX", "Label_1", "Label_2"],
    }
}

const SUBJECTS: &[&str] = &[
    "Kvartalsrapport Q3",
    "Grüße från Økonomi – møte 日本",
    "Lunch on Friday?",
    "Invoice 2024-117",
    "Prosjekt Alfa: oppstart",
    "Weekly status update",
    "Kontrakt utkast v3",
    "Welcome to the team! 🎉",
    "",
    "Travel plans",
];

fn system_and_user_labels() -> Vec<GLabel> {
    let mut v: Vec<GLabel> = SYSTEM_LABELS
        .iter()
        .map(|l| GLabel {
            id: l.to_string(),
            name: l.to_string(),
            kind: "system".into(),
        })
        .collect();
    for (i, n) in USER_LABELS.iter().enumerate() {
        v.push(GLabel {
            id: format!("Label_{}", i + 1),
            name: n.to_string(),
            kind: "user".into(),
        });
    }
    v
}

/// A new message id: Gmail's ids grow with time (ms << 20 | random bits).
pub(crate) fn message_id(rng: &mut Rng, ms: i64) -> String {
    format!("{:016x}", ((ms as u64) << 20) | (rng.next_u64() & 0xF_FFFF))
}

fn make_mailbox(
    rng: &mut Rng,
    cfg: &GoogleConfig,
    user: &GUser,
    others: &[(String, String)],
) -> GMailbox {
    let n = cfg.messages_per_user + 4;
    let owner = (user.name.clone(), user.email.clone());
    let mut msgs: Vec<GMessage> = Vec::with_capacity(n);
    let mut t = EPOCH_2024_MS + rng.below(86_400_000) as i64;
    for i in 0..n {
        t += 3_600_000 + rng.below(3 * 86_400_000) as i64;
        let extra = i.checked_sub(cfg.messages_per_user);
        let labels: Vec<String> = match extra {
            Some(0) => vec!["SPAM".into()],
            Some(1) => vec!["SPAM".into(), "UNREAD".into()],
            Some(_) => vec!["TRASH".into()],
            None => labels_for(i).into_iter().map(str::to_string).collect(),
        };
        let other = if others.is_empty() {
            (
                "Ekstern Avsender".to_string(),
                "news@external.example".into(),
            )
        } else {
            others[rng.below(others.len() as u64) as usize].clone()
        };
        let sent = labels.iter().any(|l| l == "SENT");
        let (from, to) = if sent {
            (owner.clone(), vec![other])
        } else {
            (other, vec![owner.clone()])
        };
        let subject = match extra {
            Some(0 | 1) => "You have WON a prize!!!".to_string(),
            Some(_) => format!("Old newsletter #{i}"),
            None => SUBJECTS[i % SUBJECTS.len()].to_string(),
        };
        let ms = t + rng.below(1000) as i64;
        let id = message_id(rng, ms);
        let key = key_of(cfg.seed, &id);
        let mut attachments = Vec::new();
        if extra.is_none() && i % 5 == 2 {
            attachments.push(AttachmentSpec {
                name: if i % 2 == 0 {
                    "rapport.pdf".into()
                } else {
                    "Ørsted – notater.txt".into()
                },
                mime_type: "application/octet-stream".into(),
                content: ContentSpec {
                    key: mix(key ^ 1),
                    len: 2_000 + rng.below(18_000),
                    kind: ContentKind::Binary,
                },
            });
        }
        if extra.is_none() && i % 13 == 6 {
            attachments.push(AttachmentSpec {
                name: "scan.jpg".into(),
                mime_type: "image/jpeg".into(),
                content: ContentSpec {
                    key: mix(key ^ 2),
                    len: 75_000 + rng.below(150_000),
                    kind: ContentKind::Binary,
                },
            });
        }
        let spec = MessageSpec {
            key,
            from,
            to,
            cc: vec![],
            subject: subject.clone(),
            date: ms / 1000,
            message_id: format!("{id}.{}@mail.gmail.com", i),
            alternative: i % 2 == 1,
            body_lines: 3 + rng.below(40) as usize,
            unicode_body: i % 3 == 0,
            attachments,
        };
        let size = build_mime(&spec).len() as u64;
        // Every fourth regular message replies in the thread of the one before it.
        let thread_id = match msgs.last() {
            Some(prev) if extra.is_none() && i % 4 == 1 => prev.thread_id.clone(),
            _ => id.clone(),
        };
        msgs.push(GMessage {
            id,
            thread_id,
            label_ids: labels,
            internal_date_ms: ms,
            history_id: 0,
            subject,
            size_estimate: size,
            spec,
        });
    }
    if user.is_admin && cfg.large_message_bytes > 0 {
        t += 3_600_000;
        let id = message_id(rng, t);
        let key = key_of(cfg.seed, &id);
        let spec = MessageSpec {
            key,
            from: others.first().cloned().unwrap_or_else(|| owner.clone()),
            to: vec![owner.clone()],
            cc: vec![],
            subject: "Large attachment".into(),
            date: t / 1000,
            message_id: format!("{id}.large@mail.gmail.com"),
            alternative: false,
            body_lines: 3,
            unicode_body: false,
            attachments: vec![AttachmentSpec {
                name: "archive.bin".into(),
                mime_type: "application/octet-stream".into(),
                content: ContentSpec {
                    key: mix(key ^ 3),
                    len: cfg.large_message_bytes,
                    kind: ContentKind::Binary,
                },
            }],
        };
        let size = build_mime(&spec).len() as u64;
        msgs.push(GMessage {
            thread_id: id.clone(),
            id,
            label_ids: vec!["INBOX".into()],
            internal_date_ms: t,
            history_id: 0,
            subject: "Large attachment".into(),
            size_estimate: size,
            spec,
        });
    }
    // History ids grow with time; the list is newest first.
    let base = 1_000 + cfg.seed % 1_000;
    for (rank, m) in msgs.iter_mut().enumerate() {
        m.history_id = base + 7 * (rank as u64 + 1);
    }
    let history_id = msgs.last().map_or(base, |m| m.history_id);
    msgs.sort_by_key(|m| std::cmp::Reverse(m.internal_date_ms));
    GMailbox {
        history_id,
        labels: system_and_user_labels(),
        messages: msgs,
    }
}

/// The history id below which a mailbox keeps no records, as seeded.
pub(crate) fn history_floor(seed: u64) -> u64 {
    1_000 + seed % 1_000
}

// ---------------------------------------------------------------------------------------------
// Drive.

struct DriveGen<'a> {
    rng: &'a mut Rng,
    seed: u64,
    files: Vec<GFile>,
    time: i64,
}

/// What to seed.
enum Kind {
    Folder,
    Binary(u64, ContentKind, &'static str),
    Native(&'static str),
    Shortcut(String),
}

impl DriveGen<'_> {
    /// Adds an item under `parent` (an index into `files`, or None for the drive root).
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        root: &str,
        owner: Option<&str>,
        drive: Option<&str>,
        parent: Option<usize>,
        name: &str,
        kind: Kind,
    ) -> usize {
        let id = file_id(self.rng);
        self.time += 60_000 + self.rng.below(86_400_000) as i64;
        let created = self.time;
        let modified = created + self.rng.below(30 * 86_400_000) as i64;
        let (parent_id, mut path) = match parent {
            Some(p) => (self.files[p].id.clone(), self.files[p].path.clone()),
            None => (root.to_string(), Vec::new()),
        };
        path.push(name.to_string());
        let version = 1 + self.rng.below(60);
        let key = key_of(self.seed, &id) ^ version;
        let mut f = GFile {
            id: id.clone(),
            name: name.to_string(),
            mime_type: String::new(),
            parents: vec![parent_id],
            owner: owner.map(str::to_string),
            drive_id: drive.map(str::to_string),
            trashed: false,
            size: None,
            md5: None,
            sha1: None,
            sha256: None,
            created_time: rfc3339_ms(created),
            modified_time: rfc3339_ms(modified),
            version,
            head_revision_id: None,
            shortcut_target: None,
            shared_with: Vec::new(),
            path,
            content: ContentSpec {
                key,
                len: 0,
                kind: ContentKind::Binary,
            },
            export_len: None,
        };
        match kind {
            Kind::Folder => f.mime_type = FOLDER.into(),
            Kind::Native(m) => f.mime_type = m.into(),
            Kind::Shortcut(target) => {
                f.mime_type = SHORTCUT.into();
                let t = self.files.iter().find(|x| x.id == target).expect("target");
                f.shortcut_target = Some((t.id.clone(), t.mime_type.clone()));
            }
            Kind::Binary(len, ck, mime) => {
                f.mime_type = mime.into();
                f.content.len = len;
                f.content.kind = ck;
                let old_upload = self.rng.chance(0.2);
                set_binary_meta(&mut f, self.seed, old_upload);
            }
        }
        self.files.push(f);
        self.files.len() - 1
    }
}

/// Size and checksums from the content spec; revision from the version.
pub(crate) fn set_binary_meta(f: &mut GFile, seed: u64, md5_only: bool) {
    let (md5, sha1, sha256) = checksums(&f.content);
    f.size = Some(f.content.len);
    f.md5 = Some(md5);
    f.sha1 = (!md5_only).then_some(sha1);
    f.sha256 = (!md5_only).then_some(sha256);
    f.head_revision_id = Some(revision_id(seed, &f.id, f.version));
}

fn seed_my_drive(
    g: &mut DriveGen<'_>,
    cfg: &GoogleConfig,
    users: &[GUser],
    ui: usize,
    share_with: Option<&str>,
) {
    use ContentKind::{Binary as B, Text as T};
    let u = &users[ui];
    let root = u.root_folder_id.clone();
    let me = Some(u.email.as_str());
    let add = |g: &mut DriveGen<'_>, parent: Option<usize>, name: &str, kind: Kind| {
        g.add(&root, me, None, parent, name, kind)
    };
    let docs = add(g, None, "Documents", Kind::Folder);
    let projects = add(g, Some(docs), "Projects", Kind::Folder);
    let y2024 = add(g, Some(projects), "2024", Kind::Folder);
    let len = 300_000 + g.rng.below(1_700_000);
    let report = add(
        g,
        Some(docs),
        "report.pdf",
        Kind::Binary(len, B, "application/pdf"),
    );
    let len = 5_000 + g.rng.below(45_000);
    add(
        g,
        Some(projects),
        "data.csv",
        Kind::Binary(len, T, "text/csv"),
    );
    let len = 100_000 + g.rng.below(900_000);
    add(
        g,
        Some(y2024),
        "photo.jpg",
        Kind::Binary(len, B, "image/jpeg"),
    );
    add(g, None, "empty.txt", Kind::Binary(0, T, "text/plain"));
    add(g, None, "Meeting notes", Kind::Native(DOCUMENT));
    add(g, Some(projects), "Budget 2024", Kind::Native(SPREADSHEET));
    add(g, Some(y2024), "Kickoff deck", Kind::Native(PRESENTATION));
    add(g, Some(docs), "Architecture diagram", Kind::Native(DRAWING));
    add(g, None, "Feedback form", Kind::Native(FORM));
    let target = g.files[report].id.clone();
    add(g, None, "report.pdf – shortcut", Kind::Shortcut(target));
    let len = 1_000 + g.rng.below(20_000);
    let old = add(
        g,
        None,
        "old-draft.docx",
        Kind::Binary(
            len,
            B,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
    );
    g.files[old].trashed = true;
    for _ in 0..2 {
        let len = 100 + g.rng.below(4_000);
        add(
            g,
            Some(docs),
            "notes.txt",
            Kind::Binary(len, T, "text/plain"),
        );
    }
    let len = 10_000 + g.rng.below(40_000);
    add(
        g,
        Some(docs),
        "Q1/Q2 report.pdf",
        Kind::Binary(len, B, "application/pdf"),
    );
    let len = 64 + g.rng.below(500);
    add(g, None, "../escape.txt", Kind::Binary(len, T, "text/plain"));
    let len = 64 + g.rng.below(500);
    add(
        g,
        Some(docs),
        "Cafe\u{301}.txt",
        Kind::Binary(len, T, "text/plain"),
    );
    let len = 64 + g.rng.below(500);
    add(
        g,
        Some(docs),
        "Caf\u{e9}.txt",
        Kind::Binary(len, T, "text/plain"),
    );
    let len = 10 + g.rng.below(100);
    add(
        g,
        None,
        "bell\u{7}name.txt",
        Kind::Binary(len, T, "text/plain"),
    );
    if let Some(other) = share_with {
        let len = 2_000 + g.rng.below(30_000);
        let s = add(
            g,
            None,
            &format!("Shared plan from {}.pdf", u.given_name),
            Kind::Binary(len, B, "application/pdf"),
        );
        g.files[s].shared_with.push(other.to_string());
    }
    if ui == 0 && cfg.large_file_bytes > 0 {
        let large = add(g, None, "Large", Kind::Folder);
        add(
            g,
            Some(large),
            "big-file.bin",
            Kind::Binary(cfg.large_file_bytes, B, "application/octet-stream"),
        );
    }
    if ui == 0 && cfg.large_export_bytes > 0 {
        let big = add(g, None, "Big report", Kind::Native(DOCUMENT));
        g.files[big].export_len = Some(cfg.large_export_bytes);
    }
    let folders = [None, Some(docs), Some(projects), Some(y2024)];
    for k in 0..cfg.files_per_user {
        let parent = folders[g.rng.below(4) as usize];
        match g.rng.below(10) {
            0 | 1 => add(g, parent, &format!("Doc {k:04}"), Kind::Native(DOCUMENT)),
            2 => add(
                g,
                parent,
                &format!("Sheet {k:04}"),
                Kind::Native(SPREADSHEET),
            ),
            _ => {
                let len = 1 + g.rng.below(64_000);
                add(
                    g,
                    parent,
                    &format!("file-{k:04}.bin"),
                    Kind::Binary(len, B, "application/octet-stream"),
                )
            }
        };
    }
}

fn seed_shared_drive(g: &mut DriveGen<'_>, d: &GSharedDrive, orphan: bool) {
    use ContentKind::{Binary as B, Text as T};
    let id = d.id.clone();
    let add = |g: &mut DriveGen<'_>, parent: Option<usize>, name: &str, kind: Kind| {
        g.add(&id, None, Some(&id), parent, name, kind)
    };
    if orphan {
        add(
            g,
            None,
            "orphan.bin",
            Kind::Binary(10_000, B, "application/octet-stream"),
        );
        return;
    }
    let specs = add(g, None, "Specs", Kind::Folder);
    let archive = add(g, Some(specs), "Archive", Kind::Folder);
    let len = 50_000 + g.rng.below(450_000);
    add(
        g,
        Some(specs),
        "design.pdf",
        Kind::Binary(len, B, "application/pdf"),
    );
    add(g, None, "Roadmap", Kind::Native(DOCUMENT));
    add(g, Some(archive), "Costs", Kind::Native(SPREADSHEET));
    let len = 1_000 + g.rng.below(4_000);
    add(g, None, "readme.txt", Kind::Binary(len, T, "text/plain"));
}

const DRIVE_NAMES: &[&str] = &["Engineering", "Økonomi – Felles", "Sales & Marketing"];

/// Generates the domain for `cfg`.
pub(crate) fn generate(cfg: &GoogleConfig) -> GoogleTruth {
    let mut rng = Rng::new(cfg.seed ^ 0x600613);
    let domain = cfg.domain.to_ascii_lowercase();
    let customer_id = format!("C0{}", id_chars(&mut rng, 7).replace(['-', '_'], "x"));
    let mut users = Vec::new();
    let n = cfg.users.max(1);
    for i in 0..=n {
        let suspended = i == n;
        let (given, family, local) = if suspended {
            ("Former".into(), "Employee".into(), "former.employee".into())
        } else if let Some(p) = PEOPLE.get(i) {
            (p.0.to_string(), p.1.to_string(), p.2.to_string())
        } else {
            (format!("User{i}"), "Test".into(), format!("user{i}"))
        };
        let id = format!(
            "1{:010}{:010}",
            rng.below(10_000_000_000),
            rng.below(10_000_000_000)
        );
        users.push(GUser {
            id,
            email: format!("{local}@{domain}"),
            name: format!("{given} {family}"),
            given_name: given,
            family_name: family,
            suspended,
            is_admin: i == 0,
            root_folder_id: drive_id(&mut rng),
        });
    }
    let active: Vec<GUser> = users.iter().filter(|u| !u.suspended).cloned().collect();
    let addrs: Vec<(String, String)> = active
        .iter()
        .map(|u| (u.name.clone(), u.email.clone()))
        .collect();
    let mut mailboxes = BTreeMap::new();
    for (i, u) in active.iter().enumerate() {
        let others: Vec<(String, String)> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect();
        let mut mrng = Rng::new(key_of(cfg.seed, &u.email));
        mailboxes.insert(u.email.clone(), make_mailbox(&mut mrng, cfg, u, &others));
    }
    let mut drng = Rng::new(cfg.seed ^ 0xD41FE);
    let mut g = DriveGen {
        rng: &mut drng,
        seed: cfg.seed,
        files: Vec::new(),
        time: EPOCH_2024_MS - 200 * 86_400_000,
    };
    for ui in 0..active.len() {
        // Non-admins share one file each, around the ring of non-admins (with the admin if
        // there is only one).
        let n = active.len();
        let to = if n > 2 { ui % (n - 1) + 1 } else { 0 };
        let share_with = (ui > 0).then(|| active[to].email.as_str());
        seed_my_drive(&mut g, cfg, &active, ui, share_with);
    }
    let members: Vec<String> = if active.len() >= 3 {
        vec![active[1].email.clone(), active[2].email.clone()]
    } else if active.len() == 2 {
        vec![active[1].email.clone()]
    } else {
        vec![active[0].email.clone()]
    };
    let mut shared_drives = Vec::new();
    for d in 0..=cfg.shared_drives {
        let orphan = d == cfg.shared_drives;
        let name = if orphan {
            "Orphaned drive".to_string()
        } else if let Some(n) = DRIVE_NAMES.get(d) {
            n.to_string()
        } else {
            format!("Team drive {}", d + 1)
        };
        g.time += 86_400_000;
        let sd = GSharedDrive {
            id: drive_id(g.rng),
            name,
            members: if orphan { vec![] } else { members.clone() },
            created_time: rfc3339_ms(g.time),
        };
        seed_shared_drive(&mut g, &sd, orphan);
        shared_drives.push(sd);
    }
    users.sort_by(|a, b| a.email.cmp(&b.email));
    GoogleTruth {
        seed: cfg.seed,
        domain,
        customer_id,
        users,
        mailboxes,
        files: g.files,
        shared_drives,
    }
}
