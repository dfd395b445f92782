//! The text formats of BagIt tag files (RFC 8493 §2): `bagit.txt`, `bag-info.txt`, payload and
//! tag manifests. Shared by the writer and the verifier so both read the same grammar.

/// The `bagit.txt` ferry writes: BagIt 1.0, UTF-8.
pub const BAGIT_TXT: &str = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n";

/// Percent-encodes the characters RFC 8493 §2.1.3 requires in manifest paths: CR, LF and `%`.
pub fn encode_manifest_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes `%25`, `%0A` and `%0D` (either case) and leaves every other `%` sequence alone, as
/// RFC 8493 asks of BagIt 1.0 readers.
pub fn decode_manifest_path(path: &str) -> String {
    if !path.contains('%') {
        return path.to_string();
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let code = tail.get(1..3).map(|s| s.to_ascii_uppercase());
        match code.as_deref() {
            Some("25") => out.push('%'),
            Some("0A") => out.push('\n'),
            Some("0D") => out.push('\r'),
            _ => {
                out.push('%');
                rest = &tail[1..];
                continue;
            }
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    out
}

/// One manifest line: `<digest> <path>`. Returns `None` for a line that has no separator.
///
/// Tolerates what other tools write: several spaces or tabs between the fields (md5deep,
/// `sha256sum` style), and the `*` binary-mode marker of coreutils before the path.
pub fn parse_manifest_line(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (digest, rest) = line.split_once([' ', '\t'])?;
    let path = rest.trim_start_matches([' ', '\t']);
    let path = path.strip_prefix('*').unwrap_or(path);
    if digest.is_empty() || path.is_empty() {
        return None;
    }
    Some((digest, path))
}

/// `bag-info.txt`: ordered `Label: value` pairs; a label may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BagInfo {
    /// The entries in file order.
    pub entries: Vec<(String, String)>,
}

impl BagInfo {
    /// Appends an entry.
    pub fn push(&mut self, label: impl Into<String>, value: impl Into<String>) {
        self.entries.push((label.into(), value.into()));
    }

    /// The first value of `label` (compared case-insensitively, as bagit-python does).
    pub fn get(&self, label: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(l, _)| l.eq_ignore_ascii_case(label))
            .map(|(_, v)| v.as_str())
    }

    /// Renders the file. Values with line breaks are folded onto indented continuation lines,
    /// so no value can inject a label of its own.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (label, value) in &self.entries {
            out.push_str(label);
            out.push_str(": ");
            let mut lines = value.split(['\n', '\r']).filter(|l| !l.is_empty());
            if let Some(first) = lines.next() {
                out.push_str(first.trim());
            }
            for more in lines {
                out.push_str("\n  ");
                out.push_str(more.trim());
            }
            out.push('\n');
        }
        out
    }

    /// Parses the file. Lines starting with whitespace continue the previous value. Lines that
    /// are neither are returned as errors (line number, text) but do not stop the parse.
    pub fn parse(text: &str) -> (BagInfo, Vec<(usize, String)>) {
        let mut info = BagInfo::default();
        let mut bad = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                match info.entries.last_mut() {
                    Some((_, value)) => {
                        value.push(' ');
                        value.push_str(line.trim());
                    }
                    None => bad.push((i + 1, line.to_string())),
                }
                continue;
            }
            match line.split_once(':') {
                Some((label, value)) if !label.trim().is_empty() => {
                    info.entries
                        .push((label.trim().to_string(), value.trim().to_string()));
                }
                _ => bad.push((i + 1, line.to_string())),
            }
        }
        (info, bad)
    }
}

/// `Payload-Oxum`: `<octets>.<file count>`.
pub fn payload_oxum(octets: u64, files: u64) -> String {
    format!("{octets}.{files}")
}

/// Parses a `Payload-Oxum` value.
pub fn parse_payload_oxum(value: &str) -> Option<(u64, u64)> {
    let (octets, files) = value.trim().split_once('.')?;
    Some((octets.parse().ok()?, files.parse().ok()?))
}

/// `Bag-Size`: a human-readable size, as bagit-python writes it (`1.2 GB`, decimal units).
pub fn bag_size(octets: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KB", "MB", "GB", "TB", "PB"];
    if octets < 1000 {
        return format!("{octets} bytes");
    }
    let mut value = octets as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_round_trip() {
        for p in [
            "data/a b.txt",
            "data/100%.txt",
            "data/line\nbreak",
            "data/cr\rx",
            "data/%0A-literal",
        ] {
            assert_eq!(decode_manifest_path(&encode_manifest_path(p)), p);
        }
        assert_eq!(encode_manifest_path("data/100%\n"), "data/100%25%0A");
        assert_eq!(decode_manifest_path("data/a%0d%0a%41"), "data/a\r\n%41");
        assert_eq!(decode_manifest_path("data/trail%"), "data/trail%");
    }

    #[test]
    fn manifest_lines_from_other_tools() {
        assert_eq!(
            parse_manifest_line("abc data/x y"),
            Some(("abc", "data/x y"))
        );
        assert_eq!(
            parse_manifest_line("abc  *data/x\r"),
            Some(("abc", "data/x"))
        );
        assert_eq!(parse_manifest_line("abc\tdata/x"), Some(("abc", "data/x")));
        assert_eq!(parse_manifest_line("abc"), None);
    }

    #[test]
    fn bag_info_folds_and_parses() {
        let mut info = BagInfo::default();
        info.push("Source-Organization", "Kommune");
        info.push("External-Description", "line one\nEvil-Label: injected");
        let text = info.to_text();
        assert_eq!(text, "Source-Organization: Kommune\nExternal-Description: line one\n  Evil-Label: injected\n");
        let (parsed, bad) = BagInfo::parse(&text);
        assert!(bad.is_empty());
        assert_eq!(parsed.entries.len(), 2);
        assert_eq!(
            parsed.get("external-description"),
            Some("line one Evil-Label: injected")
        );
        let (_, bad) = BagInfo::parse("no colon here\n");
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn oxum_and_size() {
        assert_eq!(parse_payload_oxum(&payload_oxum(1234, 5)), Some((1234, 5)));
        assert_eq!(parse_payload_oxum("12"), None);
        assert_eq!(bag_size(999), "999 bytes");
        assert_eq!(bag_size(1_250_000), "1.2 MB");
    }
}
