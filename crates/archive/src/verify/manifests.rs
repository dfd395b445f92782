//! Payload and tag manifests: streamed line by line into compact tables indexed by the reader's
//! file ids, so a million entries cost their digests' bytes and little else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use ferry_core::DigestAlgorithm;
use unicode_normalization::UnicodeNormalization;

use super::text::TagEncoding;
use super::{Findings, ProblemKind};
use crate::reader::{unsafe_path_reason, BagReader, FileId};
use crate::tagfiles::{decode_manifest_path, parse_manifest_line};

/// Finds the file a manifest, fetch.txt or items.jsonl path names, by the bag version's rules.
pub(super) struct Resolver<'r> {
    reader: &'r BagReader,
    /// BagIt ≥ 1.0: `%0A`, `%0D`, `%25` are decoded. Before, the literal name is tried first.
    percent_encoded: bool,
    /// NFC form → file, for listed files whose names are not NFC. Built on first need: most
    /// bags never need it.
    nfc_index: Option<HashMap<String, FileId>>,
}

/// How a path was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// Byte for byte.
    Exact(FileId),
    /// Only after NFC normalisation of both names.
    Normalized(FileId),
}

impl Found {
    pub(super) fn id(self) -> FileId {
        match self {
            Found::Exact(id) | Found::Normalized(id) => id,
        }
    }
}

impl<'r> Resolver<'r> {
    pub(super) fn new(reader: &'r BagReader, percent_encoded: bool) -> Self {
        Resolver {
            reader,
            percent_encoded,
            nfc_index: None,
        }
    }

    /// The path as the bag means it (decoded where the version says so) and the file it names.
    /// The path must already have passed [`unsafe_path_reason`].
    pub(super) fn resolve(&mut self, raw: &str) -> (String, Option<Found>) {
        let decoded = if raw.contains('%') {
            Some(decode_manifest_path(raw))
        } else {
            None
        };
        // 1.0: only the decoded name. Older: the literal name, then the decoded one, since
        // those versions said nothing about encoding but some tools wrote it anyway.
        let candidates: [Option<&str>; 2] = match (&decoded, self.percent_encoded) {
            (Some(d), true) => [Some(d), None],
            (Some(d), false) => [Some(raw), Some(d)],
            (None, _) => [Some(raw), None],
        };
        for c in candidates.into_iter().flatten() {
            if let Some(id) = self.reader.find(c) {
                return (c.to_string(), Some(Found::Exact(id)));
            }
        }
        for c in candidates.into_iter().flatten() {
            if let Some(id) = self.find_normalized(c) {
                return (c.to_string(), Some(Found::Normalized(id)));
            }
        }
        let shown = candidates[0].unwrap_or(raw).to_string();
        (shown, None)
    }

    /// Exact lookup only (items.jsonl records hold the stored name, never percent-encoded),
    /// falling back to NFC.
    pub(super) fn resolve_literal(&mut self, path: &str) -> Option<FileId> {
        self.reader
            .find(path)
            .or_else(|| self.find_normalized(path))
    }

    fn find_normalized(&mut self, path: &str) -> Option<FileId> {
        let query: String = path.nfc().collect();
        if let Some(id) = self.reader.find(&query) {
            return Some(id);
        }
        let reader = self.reader;
        let index = self.nfc_index.get_or_insert_with(|| {
            reader
                .files()
                .filter(|f| !unicode_normalization::is_nfc(f.path))
                .map(|f| (f.path.nfc().collect(), f.id))
                .collect()
        });
        index.get(&query).copied()
    }
}

/// One payload manifest's digests, dense by file id (`width` bytes each). Which ids it lists is
/// in [`Tables::listed`].
pub(super) struct PayloadManifest {
    pub(super) alg: DigestAlgorithm,
    pub(super) name: String,
    width: usize,
    digests: Vec<u8>,
}

impl PayloadManifest {
    pub(super) fn digest(&self, id: FileId) -> &[u8] {
        &self.digests[id * self.width..(id + 1) * self.width]
    }
}

/// A tag manifest (few entries: kept as a map).
pub(super) struct TagManifest {
    pub(super) alg: DigestAlgorithm,
    pub(super) name: String,
}

/// One tag manifest's digest of one file: (index into [`Tables::tags`], digest bytes).
pub(super) type TagExpect = (u8, Box<[u8]>);

/// What the manifests say.
pub(super) struct Tables {
    /// At most one per algorithm, so at most 6: bit `m` of `listed[id]` is manifest `m`.
    pub(super) payload: Vec<PayloadManifest>,
    /// Per file id: which payload manifests list it.
    pub(super) listed: Vec<u8>,
    /// Entries whose digest is malformed: listed, but there is nothing to compare with.
    pub(super) unusable: HashSet<(u8, FileId)>,
    /// Listed paths that are not in the bag (and not pending in fetch.txt).
    pub(super) missing: BTreeMap<String, Vec<u8>>,
    /// Names of payload manifests whose algorithm is not supported.
    unsupported: Vec<String>,
    pub(super) tags: Vec<TagManifest>,
    /// Tag file id → what the tag manifests expect of it.
    pub(super) tag_expect: HashMap<FileId, Vec<TagExpect>>,
}

impl Tables {
    pub(super) fn new(files: usize) -> Self {
        Tables {
            payload: Vec::new(),
            listed: vec![0; files],
            unusable: HashSet::new(),
            missing: BTreeMap::new(),
            unsupported: Vec::new(),
            tags: Vec::new(),
            tag_expect: HashMap::new(),
        }
    }

    /// Bits of every supported payload manifest.
    pub(super) fn all_mask(&self) -> u8 {
        ((1u16 << self.payload.len()) - 1) as u8
    }

    pub(super) fn payload_algorithm_names(&self) -> Vec<String> {
        self.payload
            .iter()
            .map(|m| m.alg.name().to_string())
            .chain(
                self.unsupported
                    .iter()
                    .map(|n| algorithm_of(n, "manifest-").to_string()),
            )
            .collect()
    }

    pub(super) fn tag_algorithm_names(&self) -> Vec<String> {
        self.tags.iter().map(|m| m.alg.name().to_string()).collect()
    }

    /// Whether some tag manifest lists file `id`.
    pub(super) fn tag_listed(&self, id: FileId) -> bool {
        self.tag_expect.contains_key(&id)
    }

    /// The payload manifest of `alg`, if any.
    pub(super) fn payload_index(&self, alg: DigestAlgorithm) -> Option<usize> {
        self.payload.iter().position(|m| m.alg == alg)
    }

    /// Names of the payload manifests in a list of manifest indexes.
    fn manifest_names_of(&self, listed: &[u8]) -> String {
        let mask = listed.iter().fold(0u8, |acc, m| acc | (1 << m));
        self.manifest_names(mask)
    }

    /// Names of the payload manifests whose bits are set in `mask`.
    fn manifest_names(&self, mask: u8) -> String {
        self.payload
            .iter()
            .enumerate()
            .filter(|(m, _)| mask & (1 << m) != 0)
            .map(|(_, p)| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn algorithm_of<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(".txt"))
        .unwrap_or(name)
}

/// Checks a manifest digest's form and decodes it.
fn decode_digest(alg: DigestAlgorithm, hex_digest: &str) -> Result<Vec<u8>, String> {
    if hex_digest.len() != alg.hex_len() {
        return Err(format!(
            "digest {hex_digest:?} has {} characters, a {alg} digest has {}",
            hex_digest.len(),
            alg.hex_len()
        ));
    }
    hex::decode(hex_digest).map_err(|_| format!("digest {hex_digest:?} is not hexadecimal"))
}

/// Finds and reads every `manifest-*.txt` and `tagmanifest-*.txt` at the top of the bag.
pub(super) fn read_manifests(
    reader: &BagReader,
    encoding: TagEncoding,
    resolver: &mut Resolver<'_>,
    fetch_pending: &HashSet<String>,
    tables: &mut Tables,
    findings: &mut Findings,
) {
    let mut payload_files = Vec::new();
    let mut tag_files = Vec::new();
    for f in reader.files() {
        if f.path.contains('/') {
            continue;
        }
        if f.path.starts_with("manifest-") && f.path.ends_with(".txt") {
            payload_files.push((f.id, f.path.to_string()));
        } else if f.path.starts_with("tagmanifest-") && f.path.ends_with(".txt") {
            tag_files.push((f.id, f.path.to_string()));
        }
    }

    for (id, name) in payload_files {
        let alg_name = algorithm_of(&name, "manifest-");
        let Ok(alg) = alg_name.parse::<DigestAlgorithm>() else {
            findings.warning(
                ProblemKind::UnsupportedAlgorithm,
                Some(&name),
                format!("algorithm {alg_name:?} is not supported; this manifest is not checked"),
            );
            tables.unsupported.push(name);
            continue;
        };
        if let Some(m) = tables.payload_index(alg) {
            findings.warning(
                ProblemKind::DuplicateManifest,
                Some(&name),
                format!(
                    "{} already gives {alg} digests; this one is ignored",
                    tables.payload[m].name
                ),
            );
            continue;
        }
        let m = tables.payload.len();
        tables.payload.push(PayloadManifest {
            alg,
            name: name.clone(),
            width: alg.hex_len() / 2,
            // Zeroed memory is only touched for files actually listed.
            digests: vec![0; reader.len() * (alg.hex_len() / 2)],
        });
        let read = match reader.open_file(id) {
            Ok(read) => read,
            Err(e) => {
                findings.problem(ProblemKind::UnreadableTagFile, Some(&name), e.to_string());
                continue;
            }
        };
        let result = encoding.for_each_line(read, |n, line| {
            payload_line(
                reader,
                resolver,
                fetch_pending,
                tables,
                findings,
                (m, &name, alg),
                n,
                line,
            );
        });
        after_read(findings, &name, result);
    }

    if tables.payload.is_empty() {
        if tables.unsupported.is_empty() {
            findings.problem(
                ProblemKind::NoPayloadManifest,
                None,
                "the bag has no payload manifest (manifest-<algorithm>.txt) yet",
            );
        } else {
            findings.problem(
                ProblemKind::NoSupportedManifest,
                None,
                format!(
                    "no payload manifest uses a supported algorithm ({}); nothing can be checked",
                    DigestAlgorithm::ALL.map(|a| a.name()).join(", ")
                ),
            );
        }
    }

    for (path, listed) in &tables.missing {
        let detail = format!(
            "listed in {} but not in the bag",
            tables.manifest_names_of(listed)
        );
        findings.problem(ProblemKind::MissingFile, Some(path), detail);
    }

    for (id, name) in tag_files {
        let alg_name = algorithm_of(&name, "tagmanifest-");
        let Ok(alg) = alg_name.parse::<DigestAlgorithm>() else {
            findings.warning(
                ProblemKind::UnsupportedAlgorithm,
                Some(&name),
                format!(
                    "algorithm {alg_name:?} is not supported; this tag manifest is not checked"
                ),
            );
            continue;
        };
        if let Some(t) = tables.tags.iter().find(|t| t.alg == alg) {
            findings.warning(
                ProblemKind::DuplicateManifest,
                Some(&name),
                format!(
                    "{} already gives {alg} digests; this one is ignored",
                    t.name
                ),
            );
            continue;
        }
        let t = tables.tags.len() as u8;
        tables.tags.push(TagManifest {
            alg,
            name: name.clone(),
        });
        let read = match reader.open_file(id) {
            Ok(read) => read,
            Err(e) => {
                findings.problem(ProblemKind::UnreadableTagFile, Some(&name), e.to_string());
                continue;
            }
        };
        let result = encoding.for_each_line(read, |n, line| {
            tag_line(resolver, tables, findings, t, &name, alg, n, line);
        });
        after_read(findings, &name, result);
    }
}

fn after_read(findings: &mut Findings, name: &str, result: std::io::Result<bool>) {
    match result {
        Ok(false) => {}
        Ok(true) => findings.problem(
            ProblemKind::TagFileEncoding,
            Some(name),
            "holds bytes that are not valid in the declared tag-file encoding; they were read as U+FFFD",
        ),
        Err(e) => findings.problem(
            ProblemKind::UnreadableTagFile,
            Some(name),
            format!("read error: {e}"),
        ),
    }
}

/// Splits a manifest line into its digest (`None` when malformed, reported) and a path that is
/// safe to look up. `None` for blank lines, lines without a path, and unsafe paths (reported).
fn parse_entry<'l>(
    findings: &mut Findings,
    (name, alg): (&str, DigestAlgorithm),
    n: usize,
    line: &'l str,
) -> Option<(Option<Vec<u8>>, &'l str)> {
    if line.trim().is_empty() {
        return None;
    }
    let Some((digest, path)) = parse_manifest_line(line) else {
        findings.problem(
            ProblemKind::MalformedManifestLine,
            Some(name),
            format!("line {n} is not `<digest> <path>`: {line:?}"),
        );
        return None;
    };
    let digest = decode_digest(alg, digest)
        .map_err(|why| {
            findings.problem(
                ProblemKind::MalformedManifestLine,
                Some(name),
                format!("line {n}: {why}"),
            );
        })
        .ok();
    if let Some(reason) = unsafe_path_reason(path) {
        findings.problem(
            ProblemKind::UnsafePath,
            Some(path),
            format!("listed in {name} line {n}: {reason}; never opened"),
        );
        return None;
    }
    Some((digest, path))
}

#[allow(clippy::too_many_arguments)]
fn payload_line(
    reader: &BagReader,
    resolver: &mut Resolver<'_>,
    fetch_pending: &HashSet<String>,
    tables: &mut Tables,
    findings: &mut Findings,
    (m, name, alg): (usize, &str, DigestAlgorithm),
    n: usize,
    line: &str,
) {
    let Some((digest, raw_path)) = parse_entry(findings, (name, alg), n, line) else {
        return;
    };
    if !raw_path.starts_with("data/") {
        findings.problem(
            ProblemKind::OutsidePayload,
            Some(raw_path),
            format!("listed in payload manifest {name} (line {n}) but outside data/"),
        );
        return;
    }
    let (path, found) = resolver.resolve(raw_path);
    let Some(found) = found else {
        if !fetch_pending.contains(&path) {
            tables.missing.entry(path).or_default().push(m as u8);
        }
        return;
    };
    let id = found.id();
    let bit = 1u8 << m;
    if tables.listed[id] & bit != 0 {
        findings.problem(
            ProblemKind::DuplicateEntry,
            Some(&path),
            format!("listed more than once in {name} (again on line {n})"),
        );
        return;
    }
    if let Found::Normalized(_) = found {
        // Once per file, not once per manifest.
        if tables.listed[id] == 0 {
            findings.warning(
                ProblemKind::NormalizationMismatch,
                Some(&path),
                format!(
                    "matches the file {:?} only after Unicode NFC normalisation (the bag was probably copied through macOS)",
                    reader.path(id)
                ),
            );
        }
    }
    tables.listed[id] |= bit;
    let pm = &mut tables.payload[m];
    match digest {
        Some(d) => pm.digests[id * pm.width..(id + 1) * pm.width].copy_from_slice(&d),
        None => {
            tables.unusable.insert((m as u8, id));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn tag_line(
    resolver: &mut Resolver<'_>,
    tables: &mut Tables,
    findings: &mut Findings,
    t: u8,
    name: &str,
    alg: DigestAlgorithm,
    n: usize,
    line: &str,
) {
    let Some((Some(digest), raw_path)) = parse_entry(findings, (name, alg), n, line) else {
        return;
    };
    if raw_path.starts_with("data/") {
        findings.problem(
            ProblemKind::TagManifestListsPayload,
            Some(raw_path),
            format!("tag manifest {name} (line {n}) lists a payload file; payload files belong in manifest-<alg>.txt"),
        );
        return;
    }
    if raw_path == name {
        findings.warning(
            ProblemKind::TagManifestListsItself,
            Some(name),
            format!("lists itself (line {n}); a file cannot hold its own digest, so this entry is not checked"),
        );
        return;
    }
    let (path, found) = resolver.resolve(raw_path);
    let Some(found) = found else {
        findings.problem(
            ProblemKind::MissingTagFile,
            Some(&path),
            format!("listed in {name} (line {n}) but not in the bag"),
        );
        return;
    };
    let expect = tables.tag_expect.entry(found.id()).or_default();
    if expect.iter().any(|(m, _)| *m == t) {
        findings.problem(
            ProblemKind::DuplicateEntry,
            Some(&path),
            format!("listed more than once in {name} (again on line {n})"),
        );
        return;
    }
    expect.push((t, digest.into_boxed_slice()));
}

/// Every payload file must be in every payload manifest (RFC 8493 §3).
pub(super) fn check_listing(
    reader: &BagReader,
    tables: &Tables,
    payload: Range<FileId>,
    findings: &mut Findings,
) {
    if tables.payload.is_empty() {
        // Already reported as a missing manifest; listing every file too would be noise.
        return;
    }
    let all = tables.all_mask();
    for id in payload {
        let listed = tables.listed[id];
        if listed == all {
            continue;
        }
        let detail = if listed == 0 {
            "in data/ but not listed in any payload manifest".to_string()
        } else {
            format!(
                "in data/ but not listed in {}",
                tables.manifest_names(all & !listed)
            )
        };
        findings.problem(ProblemKind::UnlistedFile, Some(reader.path(id)), detail);
    }
}
