//! Safe payload names.
//!
//! Sources allow names no archive should contain: `../`, `%`, line breaks, control characters,
//! trailing spaces, 1,024-byte keys, names that differ only in case or Unicode normalisation.
//! [`PathMapper`] turns each source path into a payload path that is safe on every common
//! filesystem and in every BagIt validator, and keeps the mapping injective: two different
//! source paths never share a payload path, not even on a case-insensitive filesystem.
//!
//! The rules, per path component:
//! - Unicode NFC (macOS writes NFD; validators compare NFC).
//! - Control characters (C0, DEL, C1), bidirectional overrides, `/`, `\`, `%` and the
//!   characters Windows forbids (`< > : " | ? *`) become `_`.
//! - Leading and trailing whitespace and trailing dots are removed; an empty result, `.` and
//!   `..` become `_`; Windows device names (`CON`, `nul.txt`, `COM1`, …) get a `_`.
//! - At most [`MAX_COMPONENT_BYTES`] bytes, cut at a character boundary.
//! - A component changed by any rule but NFC gets a suffix `~` + 8 hex digits of the SHA-256
//!   of the original (before the extension), so mapped names cannot take a natural name.
//! - A name that collides, after case folding and NFKC, with one already used in the same
//!   folder (case twins, NFD/NFC twins, a file and a folder of the same name) gets a suffix
//!   derived from its full original path, so the first one keeps the plain name.
//!
//! Only the payload name changes: the original is always kept in `items.jsonl`.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use sha2::{Digest, Sha256};
use unicode_normalization::{IsNormalized, UnicodeNormalization};

/// Longest component, in bytes, that ferry writes (ext4, APFS, NTFS and zip tools all manage).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Longest extension kept intact when a name has to be shortened or suffixed.
const MAX_EXTENSION_BYTES: usize = 16;

/// A sanitised component and whether anything but NFC normalisation changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeComponent {
    /// The safe name.
    pub name: String,
    /// True when characters were replaced, trimmed or cut.
    pub lossy: bool,
}

fn forbidden(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(c, '/' | '\\' | '%' | '<' | '>' | ':' | '"' | '|' | '?' | '*')
        // Bidirectional overrides and isolates make names display as something else.
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        || c == '\u{FEFF}'
}

fn is_windows_device_name(name: &str) -> bool {
    let stem = name
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end()
        .to_ascii_uppercase();
    matches!(
        stem.as_str(),
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$"
    ) || ((stem.starts_with("COM") || stem.starts_with("LPT"))
        && stem.len() == 4
        && matches!(stem.as_bytes()[3], b'0'..=b'9' | 0xB9 | 0xB2 | 0xB3))
}

/// Splits `name` into stem and extension (with its dot) when the extension is short and plain.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 => {
            let ext = &name[dot..];
            if ext.len() > 1
                && ext.len() <= MAX_EXTENSION_BYTES
                && ext[1..]
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            {
                (&name[..dot], ext)
            } else {
                (name, "")
            }
        }
        _ => (name, ""),
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn truncate_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `stem~tag.ext`, shortened so the whole stays within [`MAX_COMPONENT_BYTES`].
fn with_tag(name: &str, tag: &str) -> String {
    let (stem, ext) = split_extension(name);
    let room = MAX_COMPONENT_BYTES - ext.len() - 1 - tag.len();
    let stem = truncate_to(stem, room).trim_end();
    let stem = if stem.is_empty() { "_" } else { stem };
    format!("{stem}~{tag}{ext}")
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..4])
}

/// Makes one path component safe (see the module documentation); collisions are not handled
/// here but by [`PathMapper`].
pub fn safe_component(original: &str) -> SafeComponent {
    // Most names are NFC already and have nothing to replace: they are copied once.
    let nfc: std::borrow::Cow<str> =
        if unicode_normalization::is_nfc_quick(original.chars()) == IsNormalized::Yes {
            original.into()
        } else {
            original.nfc().collect::<String>().into()
        };
    let mut lossy = false;
    let mut name: String = if nfc.chars().any(forbidden) {
        nfc.chars()
            .map(|c| {
                if forbidden(c) {
                    lossy = true;
                    '_'
                } else {
                    c
                }
            })
            .collect()
    } else {
        nfc.into_owned()
    };
    let trimmed = name
        .trim_matches(char::is_whitespace)
        .trim_end_matches('.')
        .trim_end_matches(char::is_whitespace);
    if trimmed.len() != name.len() {
        lossy = true;
        name = trimmed.to_string();
    }
    if name.is_empty() || name == "." || name == ".." {
        lossy = true;
        name = "_".to_string();
    }
    if is_windows_device_name(&name) {
        lossy = true;
        let (stem, ext) = split_extension(&name);
        name = format!("{stem}_{ext}");
    }
    if name.len() > MAX_COMPONENT_BYTES {
        lossy = true;
    }
    if lossy {
        name = with_tag(&name, &short_hash(&[original.as_bytes()]));
    }
    SafeComponent { name, lossy }
}

/// The key under which two names count as the same on a case-insensitive, normalising
/// filesystem (APFS, NTFS, most zip extractors on those).
fn fold_key(name: &str) -> u128 {
    let folded: String = if name.is_ascii() {
        // The same as below for ASCII, which NFKC leaves as it is.
        name.to_ascii_lowercase()
    } else {
        name.nfkc()
            .flat_map(char::to_lowercase)
            .collect::<String>()
            .replace('ß', "ss")
    };
    let mut a = std::collections::hash_map::DefaultHasher::new();
    folded.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (folded.len(), &folded, 0x5eed_u32).hash(&mut b);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

/// Identifies a folder inside the mapper.
type DirId = u32;
const ROOT: DirId = 0;

/// Maps source paths to safe, distinct payload paths; see the module documentation.
///
/// Memory: one entry per folder (its name) plus 24 bytes per name used, so a million items
/// cost some tens of MiB at most.
#[derive(Default)]
pub struct PathMapper {
    /// Parent folder → original component → (folder id, safe name). Nested so that a lookup
    /// needs no owned key.
    dirs: HashMap<DirId, HashMap<String, (DirId, String)>>,
    /// Names used in each folder, by fold key.
    taken: HashSet<(DirId, u128)>,
    next_dir: DirId,
}

/// A path could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The path had no components.
    #[error("an item has an empty path")]
    Empty,
}

impl PathMapper {
    /// An empty mapper.
    pub fn new() -> Self {
        PathMapper {
            next_dir: ROOT + 1,
            ..Default::default()
        }
    }

    /// Maps the path of a file: every component but the last is a folder. Returns the safe
    /// path joined with `/`.
    pub fn map_file<S: AsRef<str>>(&mut self, components: &[S]) -> Result<String, MapError> {
        let (file, dirs) = components.split_last().ok_or(MapError::Empty)?;
        let mut parent = ROOT;
        // Safe names are mostly the names themselves: sized for that, `out` seldom grows.
        let mut out = String::with_capacity(
            components
                .iter()
                .map(|c| c.as_ref().len() + 1)
                .sum::<usize>(),
        );
        for (depth, dir) in dirs.iter().enumerate() {
            parent = self.dir(parent, dir.as_ref(), &components[..=depth], &mut out);
            out.push('/');
        }
        let name = self.claim(parent, file.as_ref(), components);
        out.push_str(&name);
        Ok(out)
    }

    /// Records a mapping made earlier (when resuming), so new names avoid it and files in the
    /// same folders land in the same mapped folders.
    pub fn register(&mut self, components: &[String], mapped: &str) {
        let parts: Vec<&str> = mapped.split('/').collect();
        if parts.len() != components.len() || components.is_empty() {
            return;
        }
        let mut parent = ROOT;
        for (orig, safe) in components[..components.len() - 1].iter().zip(&parts) {
            parent = match self.dirs.get(&parent).and_then(|m| m.get(orig)) {
                Some((id, _)) => *id,
                None => {
                    let id = self.next_dir;
                    self.next_dir += 1;
                    self.taken.insert((parent, fold_key(safe)));
                    self.dirs
                        .entry(parent)
                        .or_default()
                        .insert(orig.clone(), (id, safe.to_string()));
                    id
                }
            };
        }
        self.taken
            .insert((parent, fold_key(parts[parts.len() - 1])));
    }

    /// The folder `original` in `parent` (mapped now if it is new); appends its safe name to
    /// `out`.
    fn dir<S: AsRef<str>>(
        &mut self,
        parent: DirId,
        original: &str,
        full: &[S],
        out: &mut String,
    ) -> DirId {
        if let Some((id, name)) = self.dirs.get(&parent).and_then(|m| m.get(original)) {
            out.push_str(name);
            return *id;
        }
        let name = self.claim(parent, original, full);
        let id = self.next_dir;
        self.next_dir += 1;
        out.push_str(&name);
        self.dirs
            .entry(parent)
            .or_default()
            .insert(original.to_string(), (id, name));
        id
    }

    /// Picks a free safe name for `original` in folder `parent` and marks it used.
    fn claim<S: AsRef<str>>(&mut self, parent: DirId, original: &str, full: &[S]) -> String {
        let safe = safe_component(original).name;
        if self.taken.insert((parent, fold_key(&safe))) {
            return safe;
        }
        let full_bytes: Vec<&[u8]> = full.iter().map(|c| c.as_ref().as_bytes()).collect();
        for attempt in 0u32.. {
            let n = attempt.to_le_bytes();
            let mut parts = full_bytes.clone();
            parts.push(&n);
            let candidate = with_tag(&safe, &short_hash(&parts));
            if self.taken.insert((parent, fold_key(&candidate))) {
                return candidate;
            }
        }
        unreachable!("u32 attempts exhausted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_names_are_kept() {
        let mut m = PathMapper::new();
        assert_eq!(
            m.map_file(&p(&["share", "Rapport 2026.pdf"])).unwrap(),
            "share/Rapport 2026.pdf"
        );
        assert_eq!(
            m.map_file(&p(&["share", "æøå", "ü.txt"])).unwrap(),
            "share/æøå/ü.txt"
        );
    }

    #[test]
    fn hostile_names_are_made_safe() {
        for hostile in [
            "..",
            ".",
            "",
            "a\nb",
            "a\rb",
            "100%",
            " lead",
            "trail ",
            "tab\t",
            "CON",
            "nul.txt",
            "a\\b",
            "x/y",
            "dots...",
            "\u{202E}gpj.exe",
        ] {
            let s = safe_component(hostile);
            assert!(s.lossy, "{hostile:?}");
            assert!(
                !s.name.contains(['%', '\n', '\r', '/', '\\', '\t']),
                "{hostile:?} -> {:?}",
                s.name
            );
            assert!(s.name != "." && s.name != "..");
            assert_eq!(s.name.trim(), s.name);
            assert!(
                s.name.contains('~'),
                "lossy names carry a tag: {:?}",
                s.name
            );
        }
        assert_eq!(safe_component("report.pdf").name, "report.pdf");
        let long = "å".repeat(200) + ".txt";
        let s = safe_component(&long);
        assert!(
            s.name.len() <= MAX_COMPONENT_BYTES && s.name.ends_with(".txt"),
            "{}",
            s.name
        );
    }

    #[test]
    fn nfd_becomes_nfc_without_tag() {
        let nfd = "e\u{301}t\u{e9}.txt";
        let s = safe_component(nfd);
        assert_eq!(s.name, "\u{e9}t\u{e9}.txt");
        assert!(!s.lossy);
    }

    #[test]
    fn twins_are_made_distinct_and_the_first_keeps_its_name() {
        let mut m = PathMapper::new();
        let a = m.map_file(&p(&["r", "Case.txt"])).unwrap();
        let b = m.map_file(&p(&["r", "case.txt"])).unwrap();
        let c = m.map_file(&p(&["r", "caf\u{e9}"])).unwrap();
        let d = m.map_file(&p(&["r", "cafe\u{301}"])).unwrap();
        assert_eq!(a, "r/Case.txt");
        assert!(b.starts_with("r/case~") && b.ends_with(".txt"), "{b}");
        assert_eq!(c, "r/caf\u{e9}");
        assert!(d.starts_with("r/caf\u{e9}~"), "{d}");
    }

    #[test]
    fn file_and_folder_of_the_same_name() {
        let mut m = PathMapper::new();
        let file = m.map_file(&p(&["b", "x"])).unwrap();
        let inside = m.map_file(&p(&["b", "x", "y"])).unwrap();
        let inside2 = m.map_file(&p(&["b", "x", "z"])).unwrap();
        assert_eq!(file, "b/x");
        assert!(
            inside.starts_with("b/x~") && inside.ends_with("/y"),
            "{inside}"
        );
        assert_eq!(
            inside.rsplit_once('/').unwrap().0,
            inside2.rsplit_once('/').unwrap().0
        );
    }

    #[test]
    fn mapped_name_cannot_take_a_natural_one() {
        let mut m = PathMapper::new();
        let mapped = m.map_file(&p(&["r", "a%b"])).unwrap();
        let natural = m.map_file(&p(&["r", "a_b"])).unwrap();
        assert_eq!(natural, "r/a_b");
        assert_ne!(mapped, natural);
    }

    #[test]
    fn register_replays_earlier_mappings() {
        let mut first = PathMapper::new();
        let a = first.map_file(&p(&["r", "Dir", "a"])).unwrap();
        let b = first.map_file(&p(&["r", "dir", "b"])).unwrap();
        let mut resumed = PathMapper::new();
        resumed.register(&p(&["r", "Dir", "a"]), &a);
        resumed.register(&p(&["r", "dir", "b"]), &b);
        let c = resumed.map_file(&p(&["r", "dir", "c"])).unwrap();
        assert_eq!(c.rsplit_once('/').unwrap().0, b.rsplit_once('/').unwrap().0);
        let d = resumed.map_file(&p(&["r", "DIR", "d"])).unwrap();
        assert_ne!(d.rsplit_once('/').unwrap().0, a.rsplit_once('/').unwrap().0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Pieces that make hostile names: case and normalisation twins, separators, escapes,
        /// control characters, dots, spaces, device names, long runs.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("a".to_string()),
                Just("A".to_string()),
                Just("\u{e9}".to_string()),
                Just("e\u{301}".to_string()),
                Just("\u{df}".to_string()),
                Just("SS".to_string()),
                Just("%".to_string()),
                Just("%25".to_string()),
                Just("\n".to_string()),
                Just("\r".to_string()),
                Just("\u{0}".to_string()),
                Just("\u{7f}".to_string()),
                Just("\u{85}".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just(" ".to_string()),
                Just("/".to_string()),
                Just("\\".to_string()),
                Just(":".to_string()),
                Just("CON".to_string()),
                Just(".txt".to_string()),
                Just("~".to_string()),
                Just("_".to_string()),
                Just("\u{202e}".to_string()),
                "[a-z\u{e5}\u{4e2d}]{1,3}",
                Just("x".repeat(120)),
                Just("\u{6f22}".repeat(40)),
            ]
        }

        fn component() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..5).prop_map(|v| v.concat())
        }

        fn path() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec(component(), 1..4)
        }

        fn valid_component(c: &str) -> bool {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.len() <= MAX_COMPONENT_BYTES
                && c.trim() == c
                && !c.ends_with('.')
                && !c.chars().any(forbidden)
                && c.nfc().collect::<String>() == c
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn every_component_is_safe(paths in prop::collection::vec(path(), 1..20)) {
                let mut m = PathMapper::new();
                for p in &paths {
                    let out = m.map_file(p).unwrap();
                    prop_assert_eq!(out.split('/').count(), p.len());
                    for c in out.split('/') {
                        prop_assert!(valid_component(c), "{:?} -> {:?}", p, out);
                    }
                }
            }

            #[test]
            fn distinct_sources_never_share_a_payload_path(paths in prop::collection::vec(path(), 1..30)) {
                let mut m = PathMapper::new();
                let mut seen_sources = std::collections::HashSet::new();
                let mut files: HashMap<String, Vec<String>> = HashMap::new();
                let mut folders: HashMap<String, Vec<String>> = HashMap::new();
                for p in paths {
                    if !seen_sources.insert(p.clone()) {
                        continue;
                    }
                    let out = m.map_file(&p).unwrap();
                    let parts: Vec<&str> = out.split('/').collect();
                    // Compare as a case-insensitive, normalising filesystem would.
                    let folded = |s: &str| s.nfkc().flat_map(char::to_lowercase).collect::<String>().replace('\u{df}', "ss");
                    let key = folded(&out);
                    prop_assert!(!files.contains_key(&key), "{:?} and {:?} both -> {}", files.get(&key), p, out);
                    prop_assert!(!folders.contains_key(&key), "file {:?} collides with a folder", p);
                    for depth in 1..parts.len() {
                        let dir = folded(&parts[..depth].join("/"));
                        prop_assert!(!files.contains_key(&dir), "folder of {:?} collides with a file", p);
                        // A folder maps from exactly one original folder path.
                        if let Some(orig) = folders.get(&dir) {
                            prop_assert_eq!(&orig[..], &p[..depth]);
                        }
                        folders.insert(dir, p[..depth].to_vec());
                    }
                    files.insert(key, p);
                }
            }

            #[test]
            fn mapping_is_deterministic(paths in prop::collection::vec(path(), 1..20)) {
                let mut a = PathMapper::new();
                let mut b = PathMapper::new();
                for p in &paths {
                    prop_assert_eq!(a.map_file(p).unwrap(), b.map_file(p).unwrap());
                }
            }

            #[test]
            fn safe_names_map_to_themselves(name in "[a-z0-9][a-z0-9 ._-]{0,40}[a-z0-9]") {
                prop_assume!(!is_windows_device_name(&name));
                prop_assert_eq!(safe_component(&name).name, name);
            }
        }
    }
}
