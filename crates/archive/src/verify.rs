//! Verifying bags with no knowledge of the source: is it complete, does every byte still match
//! its digest, do ferry's own records agree with the manifests?
//!
//! [`verify`] opens the bag with [`BagReader`], reads the tag files, then hashes every listed
//! file once (all of its manifests' algorithms in the same pass) on a pool of worker threads,
//! biggest files first. Every finding is a [`Problem`] naming the file; the report's
//! [`Status`] follows from them:
//! - **Valid** — no problems (warnings allowed);
//! - **Incomplete** — the only problems are that the bag is not finished: an export still in
//!   progress, no payload manifest yet, or files `fetch.txt` says are still to be fetched;
//! - **Invalid** — anything else.

mod hashing;
mod items;
mod manifests;
mod text;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Serialize, Serializer};

use crate::reader::{BagLocation, BagReader, ReadError, ReadIssueKind};
use crate::tagfiles::{parse_payload_oxum, BagInfo};
use manifests::{Resolver, Tables};
use text::TagEncoding;

/// How much to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Everything: completeness, every digest, tag manifests, Payload-Oxum, items.jsonl.
    #[default]
    Full,
    /// Only `bagit.txt` and Payload-Oxum against the files present: seconds for any size.
    Fast,
    /// Everything except reading file contents: manifests against files, tag files,
    /// Payload-Oxum, items.jsonl against manifests and sizes.
    CompletenessOnly,
}

/// Options of [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// How much to check.
    pub mode: VerifyMode,
    /// Worker threads for hashing (the default: one per core; 0 also means that).
    pub threads: usize,
}

impl Default for VerifyOptions {
    /// A full check on every core.
    fn default() -> Self {
        VerifyOptions {
            mode: VerifyMode::Full,
            threads: available_cores(),
        }
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Complete, and every check made passed.
    Valid,
    /// Damaged or malformed.
    Invalid,
    /// Not finished yet (export in progress, no manifest, files still to fetch).
    Incomplete,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Valid => "VALID",
            Status::Invalid => "INVALID",
            Status::Incomplete => "INCOMPLETE",
        })
    }
}

macro_rules! problem_kinds {
    ($( $(#[$doc:meta])* $name:ident = $text:literal, )*) => {
        /// What is wrong. Serialised (and displayed) as the snake_case name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ProblemKind {
            $( $(#[$doc])* $name, )*
        }

        impl ProblemKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [ProblemKind] = &[$(ProblemKind::$name,)*];

            /// The snake_case name used in JSON and in the human report.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProblemKind::$name => $text,)*
                }
            }
        }
    };
}

problem_kinds! {
    /// A ferry export is still writing the bag or was interrupted (`.ferry-partial/` in the
    /// folder, or only `X.zip.partial` exists). Incomplete.
    ExportInProgress = "export_in_progress",
    /// No `bagit.txt`.
    MissingBagitTxt = "missing_bagit_txt",
    /// `bagit.txt` lacks `BagIt-Version` or `Tag-File-Character-Encoding`, or has stray lines.
    MalformedBagitTxt = "malformed_bagit_txt",
    /// A BagIt version outside 0.93–1.0.
    UnsupportedVersion = "unsupported_version",
    /// A `Tag-File-Character-Encoding` no decoder knows; tag files are then read as UTF-8.
    UnknownEncoding = "unknown_encoding",
    /// A tag file has bytes that are invalid in the declared encoding.
    TagFileEncoding = "tag_file_encoding",
    /// A tag file could not be read (I/O error, or larger than the tag-file limit).
    UnreadableTagFile = "unreadable_tag_file",
    /// No `data/` folder.
    MissingPayloadDir = "missing_payload_dir",
    /// No `manifest-<alg>.txt` at all. Incomplete.
    NoPayloadManifest = "no_payload_manifest",
    /// A manifest for an algorithm this verifier does not implement (a warning; its entries
    /// are not checked).
    UnsupportedAlgorithm = "unsupported_algorithm",
    /// Two manifest files for the same algorithm (e.g. different letter case); the second is
    /// ignored (a warning).
    DuplicateManifest = "duplicate_manifest",
    /// Payload manifests exist, but none for a supported algorithm.
    NoSupportedManifest = "no_supported_manifest",
    /// A manifest line without digest and path, or with a digest of the wrong form.
    MalformedManifestLine = "malformed_manifest_line",
    /// A manifest or fetch.txt path that would leave the bag (`/abs`, `../`, `~`, `C:`). Never
    /// opened.
    UnsafePath = "unsafe_path",
    /// A payload manifest or fetch.txt entry outside `data/`.
    OutsidePayload = "outside_payload",
    /// The same path twice in one manifest.
    DuplicateEntry = "duplicate_entry",
    /// A file listed in a payload manifest is not in the bag.
    MissingFile = "missing_file",
    /// A payload file is not listed in every payload manifest.
    UnlistedFile = "unlisted_file",
    /// A payload file's digest differs from its manifest (bit rot, truncation, edits).
    DigestMismatch = "digest_mismatch",
    /// A manifest path matches a file only after Unicode NFC normalisation (typical of bags
    /// copied through macOS). A warning.
    NormalizationMismatch = "normalization_mismatch",
    /// A file could not be read while hashing.
    ReadError = "read_error",
    /// A file's size differs from the size items.jsonl records, in a check that did not hash it.
    SizeMismatch = "size_mismatch",
    /// A symbolic link in the bag; never followed.
    Symlink = "symlink",
    /// A FIFO, socket or device in the bag.
    SpecialFile = "special_file",
    /// A file name that is not UTF-8.
    NonUtf8Name = "non_utf8_name",
    /// A folder of the bag could not be listed.
    UnreadableFolder = "unreadable_folder",
    /// A zip entry with an unsafe name; never opened.
    UnsafeZipEntry = "unsafe_zip_entry",
    /// The zip does not unpack to exactly one top folder.
    ZipLayout = "zip_layout",
    /// The zip's top folder is not named like the zip (a warning).
    ZipFolderName = "zip_folder_name",
    /// An encrypted zip entry or an unsupported compression method.
    UnsupportedZipEntry = "unsupported_zip_entry",
    /// The same name twice in the zip.
    DuplicateZipEntry = "duplicate_zip_entry",
    /// A `bag-info.txt` line that is not `Label: value` or a continuation, or an unreadable
    /// Payload-Oxum value.
    MalformedBagInfo = "malformed_bag_info",
    /// bag-info is under the other version's name (`package-info.txt` vs `bag-info.txt`); a
    /// warning.
    BagInfoFileName = "bag_info_file_name",
    /// Payload-Oxum disagrees with the payload's total size or file count.
    PayloadOxumMismatch = "payload_oxum_mismatch",
    /// Fast mode was asked for but bag-info has no Payload-Oxum to check.
    MissingPayloadOxum = "missing_payload_oxum",
    /// A file listed in a tag manifest is not in the bag.
    MissingTagFile = "missing_tag_file",
    /// A tag file's digest differs from its tag manifest.
    TagDigestMismatch = "tag_digest_mismatch",
    /// A tag manifest lists a payload (`data/`) file.
    TagManifestListsPayload = "tag_manifest_lists_payload",
    /// A tag manifest lists itself, which it cannot do truthfully (a warning; not checked).
    TagManifestListsItself = "tag_manifest_lists_itself",
    /// A ferry tag file (`ferry/…`) no tag manifest lists (a warning).
    UnlistedTagFile = "unlisted_tag_file",
    /// A `fetch.txt` line that is not `URL LENGTH PATH`.
    MalformedFetchLine = "malformed_fetch_line",
    /// A file `fetch.txt` lists is not in the bag yet (nothing is ever fetched). Incomplete.
    FetchPending = "fetch_pending",
    /// A `ferry/items.jsonl` line that is not a JSON object of the expected shape.
    MalformedItemsLine = "malformed_items_line",
    /// An items.jsonl record names a payload path no payload manifest lists.
    ItemsUnknownPath = "items_unknown_path",
    /// An items.jsonl record's digest or size disagrees with the manifests or the file.
    ItemsMismatch = "items_mismatch",
    /// A payload file without an items.jsonl record.
    ItemsMissingRecord = "items_missing_record",
    /// A payload file with more than one items.jsonl record.
    ItemsDuplicateRecord = "items_duplicate_record",
}

impl ProblemKind {
    /// Whether this problem only means "not finished yet" rather than damaged.
    pub fn means_incomplete(self) -> bool {
        matches!(
            self,
            ProblemKind::ExportInProgress
                | ProblemKind::NoPayloadManifest
                | ProblemKind::FetchPending
        )
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProblemKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind of finding.
    pub kind: ProblemKind,
    /// The file it concerns, relative to the bag (`data/…`, `manifest-sha256.txt`), or `None`
    /// for the bag as a whole.
    pub path: Option<String>,
    /// What is wrong, in words.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}: {}", self.kind, escape(path), self.detail),
            None => write!(f, "{}: {}", self.kind, self.detail),
        }
    }
}

/// Shows control characters in a path (a name may hold a newline) as escapes, so one problem
/// stays one line.
fn escape(path: &str) -> String {
    if !path.chars().any(char::is_control) {
        return path.to_string();
    }
    path.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Sizes and counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Files under `data/`.
    pub payload_files: u64,
    /// Their total size.
    pub payload_bytes: u64,
    /// Files read and hashed (payload and tag files).
    pub files_hashed: u64,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
}

/// One line of `fetch.txt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchEntry {
    /// Where the file can be fetched from (never fetched by the verifier).
    pub url: String,
    /// Its stated length, when not `-`.
    pub length: Option<u64>,
    /// Its path in the bag.
    pub path: String,
    /// Whether the file is already in the bag.
    pub present: bool,
}

/// The result of [`verify`]. `Serialize` gives the `--json` form, `Display` the human one.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The verdict.
    pub status: Status,
    /// The bag as given.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// `folder` or `zip`.
    pub storage: &'static str,
    /// What was checked.
    pub mode: VerifyMode,
    /// `BagIt-Version` from `bagit.txt`.
    pub bagit_version: Option<String>,
    /// `Tag-File-Character-Encoding` from `bagit.txt`.
    pub tag_file_encoding: Option<String>,
    /// Algorithms of the payload manifests found (including unsupported ones).
    pub algorithms: Vec<String>,
    /// Algorithms of the tag manifests found.
    pub tag_algorithms: Vec<String>,
    /// Sizes and counts.
    pub counts: Counts,
    /// Wall-clock time of the check, in seconds.
    pub elapsed_seconds: f64,
    /// `fetch.txt` entries, if the bag has one.
    pub fetch: Vec<FetchEntry>,
    /// What makes the bag invalid or incomplete.
    pub problems: Vec<Problem>,
    /// What is odd but allowed.
    pub warnings: Vec<Problem>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "problem  {p}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning  {w}")?;
        }
        for e in self.fetch.iter().filter(|e| !e.present) {
            writeln!(f, "fetch    {} <- {}", escape(&e.path), e.url)?;
        }
        let mode = match self.mode {
            VerifyMode::Full => "",
            VerifyMode::Fast => " (fast: Payload-Oxum only)",
            VerifyMode::CompletenessOnly => " (completeness only, no hashing)",
        };
        let algorithms = if self.mode == VerifyMode::Fast {
            "manifests not read".to_string()
        } else if self.algorithms.is_empty() {
            "no manifest".to_string()
        } else {
            self.algorithms.join(", ")
        };
        write!(
            f,
            "{}{mode}: {} — BagIt {}, {} payload files, {} bytes, {} bytes hashed ({algorithms}) in {:.1} s; {} problems, {} warnings",
            self.status,
            self.path.display(),
            self.bagit_version.as_deref().unwrap_or("?"),
            self.counts.payload_files,
            self.counts.payload_bytes,
            self.counts.bytes_hashed,
            self.elapsed_seconds,
            self.problems.len(),
            self.warnings.len()
        )
    }
}

/// Paths that are not UTF-8 still serialise (serde's own impl refuses them).
fn lossy_path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// Why verification could not even start (the CLI's exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The bag could not be opened: missing, unreadable, or not a zip.
    #[error(transparent)]
    Open(#[from] ReadError),
}

/// Verifies the bag at `path` (a folder or a zip). See the module documentation for what the
/// status means.
pub fn verify(path: &Path, options: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    if let Some(report) = partial_zip(path, options) {
        return Ok(report);
    }
    let reader = BagReader::open(path)?;
    let mut v = Verifier::new(&reader, options);
    v.run();
    Ok(v.finish(path, started))
}

/// Verifies a bag that is already open, e.g. one in an object store
/// ([`BagReader::open_store`]). `label` names it in the report. Must run outside the async
/// runtime's threads when the reader reads through one.
pub fn verify_reader(reader: &BagReader, label: &Path, options: &VerifyOptions) -> VerifyReport {
    let started = Instant::now();
    let mut v = Verifier::new(reader, options);
    v.run();
    v.finish(label, started)
}

/// `X.zip` that does not exist while `X.zip.partial` does, or `X.zip.partial` itself: ferry's
/// zip writer has not finished. Reported as incomplete rather than as a missing file.
fn partial_zip(path: &Path, options: &VerifyOptions) -> Option<VerifyReport> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let (zip, partial) = if name.ends_with(".partial") && path.is_file() {
        (
            path.with_file_name(name.trim_end_matches(".partial")),
            path.to_path_buf(),
        )
    } else if !path.exists() {
        let partial = path.with_file_name(format!("{name}.partial"));
        if !partial.is_file() {
            return None;
        }
        (path.to_path_buf(), partial)
    } else {
        return None;
    };
    let mut findings = Findings::default();
    findings.problem(
        ProblemKind::ExportInProgress,
        None,
        format!(
            "{} does not exist yet but {} does: a ferry export is still writing this zip or was interrupted; rerun the same `ferry export` command to resume it",
            zip.display(),
            partial.display()
        ),
    );
    Some(VerifyReport {
        status: Status::Incomplete,
        path: path.to_path_buf(),
        storage: "zip",
        mode: options.mode,
        bagit_version: None,
        tag_file_encoding: None,
        algorithms: Vec::new(),
        tag_algorithms: Vec::new(),
        counts: Counts::default(),
        elapsed_seconds: 0.0,
        fetch: Vec::new(),
        problems: findings.problems,
        warnings: findings.warnings,
    })
}

/// Problems and warnings as they are found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Findings {
    fn problem(&mut self, kind: ProblemKind, path: Option<&str>, detail: impl Into<String>) {
        self.problems.push(Problem {
            kind,
            path: path.map(str::to_string),
            detail: detail.into(),
        });
    }

    fn warning(&mut self, kind: ProblemKind, path: Option<&str>, detail: impl Into<String>) {
        self.warnings.push(Problem {
            kind,
            path: path.map(str::to_string),
            detail: detail.into(),
        });
    }
}

/// The BagIt version rules that change how the bag is read.
#[derive(Debug, Clone, Copy)]
struct Version {
    major: u32,
    minor: u32,
}

impl Version {
    const V1_0: Version = Version { major: 1, minor: 0 };

    fn parse(text: &str) -> Option<Version> {
        let (major, minor) = text.trim().split_once('.')?;
        Some(Version {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    fn supported(self) -> bool {
        self.at_least(0, 93) && !self.at_least(1, 1)
    }

    /// 1.0 made `%0A`, `%0D` and `%25` in manifest paths mean CR, LF and `%`.
    fn percent_encoded_paths(self) -> bool {
        self.at_least(1, 0)
    }

    /// 0.93–0.95 called bag-info `package-info.txt`.
    fn bag_info_name(self) -> &'static str {
        if self.at_least(0, 96) {
            "bag-info.txt"
        } else {
            "package-info.txt"
        }
    }
}

struct Verifier<'r> {
    reader: &'r BagReader,
    options: VerifyOptions,
    findings: Findings,
    version: Version,
    bagit_version: Option<String>,
    encoding_label: Option<String>,
    encoding: TagEncoding,
    counts: Counts,
    algorithms: Vec<String>,
    tag_algorithms: Vec<String>,
    fetch: Vec<FetchEntry>,
}

impl<'r> Verifier<'r> {
    fn new(reader: &'r BagReader, options: &VerifyOptions) -> Self {
        Verifier {
            reader,
            options: *options,
            findings: Findings::default(),
            version: Version::V1_0,
            bagit_version: None,
            encoding_label: None,
            encoding: TagEncoding::UTF8,
            counts: Counts::default(),
            algorithms: Vec::new(),
            tag_algorithms: Vec::new(),
            fetch: Vec::new(),
        }
    }

    fn run(&mut self) {
        self.reader_issues();
        let payload = self.reader.ids_with_prefix("data/");
        self.counts.payload_files = payload.len() as u64;
        self.counts.payload_bytes = payload.clone().map(|id| self.reader.size(id)).sum();
        if self.reader.has_top_dir(".ferry-partial") {
            // The writer's staging folder: whatever else is missing is simply not written yet,
            // so listing it all would bury the one thing the user needs to know.
            self.findings.problem(
                ProblemKind::ExportInProgress,
                Some(".ferry-partial"),
                "a ferry export is still writing this bag or was interrupted (its staging folder .ferry-partial/ is present); rerun the same `ferry export` command to resume it",
            );
            return;
        }
        self.bagit_txt();
        if !self.reader.has_top_dir("data") {
            self.findings.problem(
                ProblemKind::MissingPayloadDir,
                Some("data"),
                "the bag has no data/ folder",
            );
        }
        let oxum_checked = self.bag_info();
        if self.options.mode == VerifyMode::Fast {
            if !oxum_checked {
                self.findings.problem(
                    ProblemKind::MissingPayloadOxum,
                    Some(self.version.bag_info_name()),
                    "fast mode compares Payload-Oxum with the payload, but the bag has none; run a full check",
                );
            }
            return;
        }
        let mut resolver = Resolver::new(self.reader, self.version.percent_encoded_paths());
        let fetch_paths = self.fetch_txt(&mut resolver);
        let mut tables = Tables::new(self.reader.len());
        manifests::read_manifests(
            self.reader,
            self.encoding,
            &mut resolver,
            &fetch_paths,
            &mut tables,
            &mut self.findings,
        );
        self.algorithms = tables.payload_algorithm_names();
        self.tag_algorithms = tables.tag_algorithm_names();
        manifests::check_listing(self.reader, &tables, payload.clone(), &mut self.findings);
        // Without a payload manifest there is nothing to hold items.jsonl against (and the bag
        // is reported incomplete already).
        let size_claims = if tables.payload.is_empty() {
            Default::default()
        } else {
            items::check_items(self.reader, &tables, &mut resolver, &mut self.findings)
        };
        self.ferry_tag_files(&tables);
        let hashed = if self.options.mode == VerifyMode::Full {
            let outcome = hashing::hash_all(self.reader, &tables, &size_claims, self.threads());
            self.counts.files_hashed = outcome.files;
            self.counts.bytes_hashed = outcome.bytes;
            self.findings.problems.extend(outcome.problems);
            Some(outcome.mismatched)
        } else {
            None
        };
        items::report_size_claims(
            self.reader,
            &tables,
            &size_claims,
            hashed.as_ref(),
            &mut self.findings,
        );
    }

    fn threads(&self) -> usize {
        if self.options.threads > 0 {
            self.options.threads
        } else {
            available_cores()
        }
    }

    fn reader_issues(&mut self) {
        for issue in self.reader.issues() {
            let kind = match issue.kind {
                ReadIssueKind::Symlink => ProblemKind::Symlink,
                ReadIssueKind::SpecialFile => ProblemKind::SpecialFile,
                ReadIssueKind::NonUtf8Name => ProblemKind::NonUtf8Name,
                ReadIssueKind::UnreadableFolder => ProblemKind::UnreadableFolder,
                ReadIssueKind::UnsafeZipEntry => ProblemKind::UnsafeZipEntry,
                ReadIssueKind::ZipLayout => ProblemKind::ZipLayout,
                ReadIssueKind::ZipFolderName => ProblemKind::ZipFolderName,
                ReadIssueKind::UnsupportedZipEntry => ProblemKind::UnsupportedZipEntry,
                ReadIssueKind::DuplicateZipEntry => ProblemKind::DuplicateZipEntry,
            };
            if issue.is_warning() {
                self.findings
                    .warning(kind, Some(&issue.path), issue.detail.clone());
            } else {
                self.findings
                    .problem(kind, Some(&issue.path), issue.detail.clone());
            }
        }
    }

    /// Reads a small tag file, reporting why it could not be read.
    fn read_tag(&mut self, path: &str) -> Option<Vec<u8>> {
        match self.reader.read_tag_file(path) {
            Ok(bytes) => Some(bytes),
            Err(ReadError::NoSuchFile(_)) => None,
            Err(e) => {
                self.findings
                    .problem(ProblemKind::UnreadableTagFile, Some(path), e.to_string());
                None
            }
        }
    }

    fn bagit_txt(&mut self) {
        const NAME: &str = "bagit.txt";
        if self.reader.find(NAME).is_none() {
            self.findings.problem(
                ProblemKind::MissingBagitTxt,
                Some(NAME),
                "the bag has no bagit.txt; reading it as BagIt 1.0 in UTF-8",
            );
            return;
        }
        let Some(bytes) = self.read_tag(NAME) else {
            return;
        };
        // bagit.txt is always UTF-8 (RFC 8493 §2.1.1), whatever it declares for the others.
        let bytes = match bytes.strip_prefix(b"\xef\xbb\xbf") {
            Some(rest) => {
                self.findings.warning(
                    ProblemKind::MalformedBagitTxt,
                    Some(NAME),
                    "starts with a byte-order mark, which RFC 8493 forbids",
                );
                rest
            }
            None => &bytes[..],
        };
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text.to_string(),
            Err(_) => {
                self.findings.problem(
                    ProblemKind::TagFileEncoding,
                    Some(NAME),
                    "bagit.txt is not valid UTF-8",
                );
                String::from_utf8_lossy(bytes).into_owned()
            }
        };
        let (info, bad) = BagInfo::parse(&text);
        for (line, content) in bad {
            self.findings.problem(
                ProblemKind::MalformedBagitTxt,
                Some(NAME),
                format!("line {line} is not `Label: value`: {content:?}"),
            );
        }
        for (label, _) in &info.entries {
            if !label.eq_ignore_ascii_case("BagIt-Version")
                && !label.eq_ignore_ascii_case("Tag-File-Character-Encoding")
            {
                self.findings.warning(
                    ProblemKind::MalformedBagitTxt,
                    Some(NAME),
                    format!("unexpected label {label:?} (bagit.txt has exactly two)"),
                );
            }
        }
        match info.get("BagIt-Version") {
            None => self.findings.problem(
                ProblemKind::MalformedBagitTxt,
                Some(NAME),
                "no BagIt-Version; reading the bag as 1.0",
            ),
            Some(v) => {
                self.bagit_version = Some(v.to_string());
                match Version::parse(v) {
                    Some(version) if version.supported() => self.version = version,
                    Some(version) => {
                        self.findings.problem(
                            ProblemKind::UnsupportedVersion,
                            Some(NAME),
                            format!("BagIt-Version {v} is not one this verifier knows (0.93 to 1.0); checking it by the rules of the nearest"),
                        );
                        if version.at_least(1, 1) {
                            self.version = Version::V1_0;
                        } else {
                            self.version = Version {
                                major: 0,
                                minor: 93,
                            };
                        }
                    }
                    None => self.findings.problem(
                        ProblemKind::MalformedBagitTxt,
                        Some(NAME),
                        format!(
                            "BagIt-Version {v:?} is not <major>.<minor>; reading the bag as 1.0"
                        ),
                    ),
                }
            }
        }
        match info.get("Tag-File-Character-Encoding") {
            None => self.findings.problem(
                ProblemKind::MalformedBagitTxt,
                Some(NAME),
                "no Tag-File-Character-Encoding; reading tag files as UTF-8",
            ),
            Some(label) => {
                self.encoding_label = Some(label.to_string());
                match TagEncoding::for_label(label) {
                    Some(enc) => self.encoding = enc,
                    None => self.findings.problem(
                        ProblemKind::UnknownEncoding,
                        Some(NAME),
                        format!("unknown Tag-File-Character-Encoding {label:?}; reading tag files as UTF-8"),
                    ),
                }
            }
        }
    }

    /// Reads bag-info (or package-info) and checks Payload-Oxum. Returns whether there was an
    /// Oxum to check.
    fn bag_info(&mut self) -> bool {
        let expected = self.version.bag_info_name();
        let other = if expected == "bag-info.txt" {
            "package-info.txt"
        } else {
            "bag-info.txt"
        };
        let name = if self.reader.find(expected).is_some() {
            expected
        } else if self.reader.find(other).is_some() {
            self.findings.warning(
                ProblemKind::BagInfoFileName,
                Some(other),
                format!(
                    "BagIt {} calls this file {expected}; reading {other}",
                    self.bagit_version.as_deref().unwrap_or("1.0")
                ),
            );
            other
        } else {
            return false;
        };
        let Some(bytes) = self.read_tag(name) else {
            return false;
        };
        let (text, bad_bytes) = self.encoding.decode(&bytes);
        if bad_bytes {
            self.bad_encoding(name);
        }
        let (info, bad) = BagInfo::parse(&text);
        for (line, content) in bad {
            self.findings.problem(
                ProblemKind::MalformedBagInfo,
                Some(name),
                format!("line {line} is neither `Label: value` nor an indented continuation: {content:?}"),
            );
        }
        let Some(oxum) = info.get("Payload-Oxum") else {
            return false;
        };
        let Some((octets, files)) = parse_payload_oxum(oxum) else {
            self.findings.problem(
                ProblemKind::MalformedBagInfo,
                Some(name),
                format!("Payload-Oxum {oxum:?} is not <octets>.<file count>"),
            );
            return false;
        };
        let (have_octets, have_files) = (self.counts.payload_bytes, self.counts.payload_files);
        if (octets, files) != (have_octets, have_files) {
            self.findings.problem(
                ProblemKind::PayloadOxumMismatch,
                Some(name),
                format!(
                    "Payload-Oxum {oxum} says {octets} bytes in {files} files; data/ holds {have_octets} bytes in {have_files} files"
                ),
            );
        }
        true
    }

    fn bad_encoding(&mut self, name: &str) {
        let label = self
            .encoding_label
            .clone()
            .unwrap_or_else(|| "UTF-8".into());
        self.findings.problem(
            ProblemKind::TagFileEncoding,
            Some(name),
            format!("holds bytes that are not valid {label}; they were read as U+FFFD"),
        );
    }

    /// Parses fetch.txt (never fetching anything). Returns the paths it lists that are absent,
    /// so the manifests do not report them as missing too.
    fn fetch_txt(&mut self, resolver: &mut Resolver<'_>) -> HashSet<String> {
        const NAME: &str = "fetch.txt";
        let mut absent = HashSet::new();
        let Some(id) = self.reader.find(NAME) else {
            return absent;
        };
        let read = match self.reader.open_file(id) {
            Ok(read) => read,
            Err(e) => {
                self.findings
                    .problem(ProblemKind::UnreadableTagFile, Some(NAME), e.to_string());
                return absent;
            }
        };
        let mut entries = Vec::new();
        let findings = &mut self.findings;
        let result = self.encoding.for_each_line(read, |n, line| {
            let line = line.trim();
            if line.is_empty() {
                return;
            }
            let mut fields = line.splitn(2, [' ', '\t']);
            let url = fields.next().unwrap_or_default();
            let rest = fields.next().unwrap_or_default().trim_start();
            let mut fields = rest.splitn(2, [' ', '\t']);
            let length = fields.next().unwrap_or_default();
            let path = fields.next().unwrap_or_default().trim_start();
            let length = match length {
                "-" => Ok(None),
                l => l.parse::<u64>().map(Some),
            };
            let (Ok(length), false) = (length, path.is_empty()) else {
                findings.problem(
                    ProblemKind::MalformedFetchLine,
                    Some(NAME),
                    format!("line {n} is not `URL LENGTH PATH`: {line:?}"),
                );
                return;
            };
            if let Some(reason) = crate::reader::unsafe_path_reason(path) {
                findings.problem(
                    ProblemKind::UnsafePath,
                    Some(path),
                    format!("fetch.txt line {n}: {reason}; never opened"),
                );
                return;
            }
            let (shown, found) = resolver.resolve(path);
            if !shown.starts_with("data/") {
                findings.problem(
                    ProblemKind::OutsidePayload,
                    Some(&shown),
                    format!("fetch.txt line {n} lists a file outside data/"),
                );
                return;
            }
            entries.push((url.to_string(), length, shown, found.is_some()));
        });
        match result {
            Ok(true) => self.bad_encoding(NAME),
            Ok(false) => {}
            Err(e) => {
                self.findings
                    .problem(ProblemKind::UnreadableTagFile, Some(NAME), e.to_string())
            }
        }
        for (url, length, path, present) in entries {
            if !present {
                self.findings.problem(
                    ProblemKind::FetchPending,
                    Some(&path),
                    format!("listed in fetch.txt ({url}) and not in the bag yet; fetch it to complete the bag"),
                );
                absent.insert(path.clone());
            }
            self.fetch.push(FetchEntry {
                url,
                length,
                path,
                present,
            });
        }
        absent
    }

    /// ferry's own tag files should all be under a tag manifest, so their fixity is recorded.
    fn ferry_tag_files(&mut self, tables: &Tables) {
        for id in self.reader.ids_with_prefix("ferry/") {
            if !tables.tag_listed(id) {
                self.findings.warning(
                    ProblemKind::UnlistedTagFile,
                    Some(self.reader.path(id)),
                    "ferry tag file not listed in any tag manifest, so nothing records its fixity",
                );
            }
        }
    }

    fn finish(self, path: &Path, started: Instant) -> VerifyReport {
        let Findings { problems, warnings } = self.findings;
        let status = if problems.iter().any(|p| !p.kind.means_incomplete()) {
            Status::Invalid
        } else if problems.is_empty() {
            Status::Valid
        } else {
            Status::Incomplete
        };
        VerifyReport {
            status,
            path: path.to_path_buf(),
            storage: match self.reader.location() {
                BagLocation::Folder { .. } => "folder",
                BagLocation::Zip { .. } => "zip",
                BagLocation::Store { .. } => "object store",
            },
            mode: self.options.mode,
            bagit_version: self.bagit_version,
            tag_file_encoding: self.encoding_label,
            algorithms: self.algorithms,
            tag_algorithms: self.tag_algorithms,
            counts: self.counts,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            fetch: self.fetch,
            problems,
            warnings,
        }
    }
}
