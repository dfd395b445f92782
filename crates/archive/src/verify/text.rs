//! Tag-file text: the declared `Tag-File-Character-Encoding`, decoded whole or streamed line by
//! line (a payload manifest of a million files is hundreds of megabytes; it is never held whole).

use std::io::{self, Read};

use encoding_rs::{CoderResult, Decoder, Encoding};

/// A tag-file character encoding, resolved from its label.
#[derive(Debug, Clone, Copy)]
pub(super) enum TagEncoding {
    /// True ISO-8859-1: every byte is the code point of the same value. WHATWG (and so
    /// encoding_rs) maps the `ISO-8859-1` label to windows-1252, which reads 0x80–0x9F
    /// differently; BagIt tools mean the real thing.
    Latin1,
    /// Anything encoding_rs knows (UTF-8, UTF-16 with a BOM, the legacy code pages, …).
    Other(&'static Encoding),
}

const LATIN1_LABELS: [&str; 10] = [
    "iso-8859-1",
    "iso8859-1",
    "iso_8859-1",
    "iso_8859-1:1987",
    "latin1",
    "latin-1",
    "l1",
    "iso-ir-100",
    "cp819",
    "csisolatin1",
];

impl TagEncoding {
    /// The UTF-8 default of BagIt 1.0.
    pub(super) const UTF8: TagEncoding = TagEncoding::Other(encoding_rs::UTF_8);

    /// The encoding a `Tag-File-Character-Encoding` label names, if known.
    pub(super) fn for_label(label: &str) -> Option<TagEncoding> {
        let label = label.trim();
        if LATIN1_LABELS.iter().any(|l| l.eq_ignore_ascii_case(label)) {
            return Some(TagEncoding::Latin1);
        }
        Encoding::for_label(label.as_bytes()).map(TagEncoding::Other)
    }

    fn decoder(self) -> Option<Decoder> {
        match self {
            TagEncoding::Latin1 => None,
            // With BOM sniffing: a UTF-16 file's BOM decides its byte order, and a UTF-8 BOM is
            // dropped instead of becoming part of the first label or path.
            TagEncoding::Other(enc) => Some(enc.new_decoder()),
        }
    }

    /// Decodes a whole (small) tag file. The flag is true when some bytes were not valid in the
    /// encoding (they become U+FFFD).
    pub(super) fn decode(self, bytes: &[u8]) -> (String, bool) {
        match self {
            TagEncoding::Latin1 => (bytes.iter().map(|&b| char::from(b)).collect(), false),
            TagEncoding::Other(enc) => {
                let (text, _, bad) = enc.decode(bytes);
                (text.into_owned(), bad)
            }
        }
    }

    /// Streams `input` line by line (LF or CRLF endings, the ending removed), calling `line`
    /// with the 1-based line number and the text. Returns whether any bytes were invalid.
    pub(super) fn for_each_line(
        self,
        mut input: impl Read,
        mut line: impl FnMut(usize, &str),
    ) -> io::Result<bool> {
        let mut decoder = self.decoder();
        let mut raw = vec![0u8; 64 << 10];
        let mut text = String::new();
        let mut had_errors = false;
        let mut line_no = 0;
        loop {
            let n = match input.read(&mut raw) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let last = n == 0;
            match &mut decoder {
                None => text.extend(raw[..n].iter().map(|&b| char::from(b))),
                Some(dec) => {
                    let mut src = &raw[..n];
                    loop {
                        let need = dec
                            .max_utf8_buffer_length(src.len())
                            .unwrap_or(src.len() * 3 + 16);
                        text.reserve(need);
                        let (result, read, bad) = dec.decode_to_string(src, &mut text, last);
                        had_errors |= bad;
                        src = &src[read..];
                        if result == CoderResult::InputEmpty {
                            break;
                        }
                    }
                }
            }
            // Hand out the complete lines, keep the unfinished tail for the next chunk.
            let mut start = 0;
            while let Some(pos) = text[start..].find('\n') {
                line_no += 1;
                let l = &text[start..start + pos];
                line(line_no, l.strip_suffix('\r').unwrap_or(l));
                start += pos + 1;
            }
            text.drain(..start);
            if last {
                if !text.is_empty() {
                    line_no += 1;
                    line(line_no, text.strip_suffix('\r').unwrap_or(&text));
                }
                return Ok(had_errors);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(enc: TagEncoding, bytes: &[u8]) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        let bad = enc
            .for_each_line(bytes, |n, l| {
                assert_eq!(n, out.len() + 1);
                out.push(l.to_string());
            })
            .unwrap();
        (out, bad)
    }

    #[test]
    fn streams_utf8_latin1_utf16() {
        let (l, bad) = lines(TagEncoding::UTF8, b"\xef\xbb\xbfa b\r\nc\xc3\xa6\nlast");
        assert_eq!(l, ["a b", "cæ", "last"]);
        assert!(!bad);
        let latin1 = TagEncoding::for_label("ISO-8859-1").unwrap();
        let (l, _) = lines(latin1, b"caf\xe9\n\x85x\n");
        assert_eq!(l, ["café", "\u{85}x"]);
        let utf16 = TagEncoding::for_label("UTF-16").unwrap();
        let mut be = vec![0xfe, 0xff];
        for u in "x ø\ny\n".encode_utf16() {
            be.extend(u.to_be_bytes());
        }
        let (l, bad) = lines(utf16, &be);
        assert_eq!(l, ["x ø", "y"]);
        assert!(!bad);
        let (_, bad) = lines(TagEncoding::UTF8, b"ok\n\xff\n");
        assert!(bad);
        assert!(TagEncoding::for_label("klingon").is_none());
    }

    #[test]
    fn lines_split_across_chunks() {
        // Longer than one 64 KiB read, with a multibyte character straddling the boundary.
        let mut s = String::new();
        for i in 0..20_000 {
            s.push_str(&format!("{i} ø\n"));
        }
        let (l, _) = lines(TagEncoding::UTF8, s.as_bytes());
        assert_eq!(l.len(), 20_000);
        assert_eq!(l[12_345], "12345 ø");
    }
}
