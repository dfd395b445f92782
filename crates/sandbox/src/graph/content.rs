//! Deterministic content: a seeded random generator, file byte streams that can start at any
//! offset (for ranged downloads) without holding the file in memory, and RFC 822 messages.

use std::io;

use base64::Engine;

/// SplitMix64's output function: a good 64-bit mixer, used both as the RNG step and to derive
/// independent streams from (seed, id) pairs.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a string into a 64-bit key (FNV-1a then mixed), to derive streams from ids.
pub fn key_of(seed: u64, s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    mix(h ^ mix(seed))
}

/// A small seeded RNG (SplitMix64). Our own rather than `rand`'s so that the tenant a seed
/// produces never changes with a dependency upgrade.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// Random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A GUID in the usual 8-4-4-4-12 lowercase form (version 4 bits set).
    pub fn guid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}

/// What a file's bytes look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    /// Uniformly random bytes (incompressible).
    Binary,
    /// Printable ASCII text with line breaks.
    Text,
}

/// A file's content, defined by a key and a length: the bytes are a pure function of
/// (key, offset), so any range can be produced without the bytes before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentSpec {
    /// Stream key (from the seed and the file id).
    pub key: u64,
    /// Length in bytes.
    pub len: u64,
    /// Binary or text.
    pub kind: ContentKind,
}

const TEXT: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n";

impl ContentSpec {
    /// Fills `buf` with the bytes at `offset..offset+buf.len()` (the caller keeps within `len`).
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = offset;
        let mut i = 0;
        while i < buf.len() {
            let word = mix(self.key ^ (pos / 8).wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes();
            let start = (pos % 8) as usize;
            let n = (8 - start).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&word[start..start + n]);
            i += n;
            pos += n as u64;
        }
        if self.kind == ContentKind::Text {
            for b in buf.iter_mut() {
                *b = TEXT[(*b & 63) as usize];
            }
        }
    }

    /// A reader over the whole content.
    pub fn reader(&self) -> ContentReader {
        ContentReader {
            spec: *self,
            pos: 0,
        }
    }

    /// The QuickXorHash of the content (reads it once, in 1 MiB pieces).
    pub fn quick_xor_hash(&self) -> String {
        let mut h = super::quickxor::QuickXorHash::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < self.len {
            let n = (self.len - pos).min(buf.len() as u64) as usize;
            self.fill(pos, &mut buf[..n]);
            h.update(&buf[..n]);
            pos += n as u64;
        }
        h.base64()
    }
}

/// An `io::Read` over generated content.
#[derive(Clone, Debug)]
pub struct ContentReader {
    spec: ContentSpec,
    pos: u64,
}

impl io::Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.spec.len - self.pos).min(buf.len() as u64) as usize;
        self.spec.fill(self.pos, &mut buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// A mailbox (display name, address).
pub type Addr = (String, String);

/// An attachment of a generated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentSpec {
    /// File name (may be Unicode; sent RFC 2231/2047-encoded).
    pub name: String,
    /// MIME type.
    pub mime_type: String,
    /// Content (binary, generated).
    pub content: ContentSpec,
}

/// Everything needed to produce a message's MIME bytes again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageSpec {
    /// Body stream key.
    pub key: u64,
    /// Sender.
    pub from: Addr,
    /// Recipients.
    pub to: Vec<Addr>,
    /// Copy recipients.
    pub cc: Vec<Addr>,
    /// Subject (may be empty or Unicode).
    pub subject: String,
    /// Unix time of sending.
    pub date: i64,
    /// `Message-ID` without angle brackets.
    pub message_id: String,
    /// A text/html alternative as well as text/plain.
    pub alternative: bool,
    /// Body lines of text.
    pub body_lines: usize,
    /// Non-ASCII text in the body (sent base64 in UTF-8).
    pub unicode_body: bool,
    /// Attachments.
    pub attachments: Vec<AttachmentSpec>,
}

/// RFC 2047 B-encoding for a header value if it is not plain ASCII, folded into encoded words
/// short enough for the 78-character line limit.
pub fn encode_header_word(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return s.to_string();
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut words = Vec::new();
    let mut cur = String::new();
    for ch in s.chars() {
        if cur.len() + ch.len_utf8() > 36 {
            words.push(format!("=?UTF-8?B?{}?=", b64.encode(cur.as_bytes())));
            cur.clear();
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", b64.encode(cur.as_bytes())));
    }
    words.join("\r\n ")
}

fn addr_header(list: &[Addr]) -> String {
    list.iter()
        .map(|(name, addr)| format!("{} <{addr}>", quote_name(name)))
        .collect::<Vec<_>>()
        .join(",\r\n ")
}

fn quote_name(name: &str) -> String {
    if name.is_ascii() {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        encode_header_word(name)
    }
}

/// RFC 5322 date (`Mon, 01 Jan 2024 10:00:00 +0000`).
pub fn rfc2822(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

/// ISO 8601 UTC as Graph writes it (`2024-01-01T10:00:00Z`).
pub fn iso(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

const WORDS: &[&str] = &[
    "quarterly",
    "budget",
    "review",
    "meeting",
    "please",
    "find",
    "attached",
    "the",
    "report",
    "project",
    "deadline",
    "update",
    "thanks",
    "regards",
    "contract",
    "draft",
    "schedule",
    "customer",
    "invoice",
    "approval",
    "team",
    "launch",
    "notes",
    "agenda",
    "follow-up",
];
const UNICODE_WORDS: &[&str] = &[
    "Grüße",
    "café",
    "naïve",
    "日本語",
    "Ελληνικά",
    "русский",
    "🎉",
    "façade",
    "Zoë",
    "ñandú",
];

fn body_text(spec: &MessageSpec) -> String {
    let mut rng = Rng::new(spec.key);
    let mut out = String::new();
    for _ in 0..spec.body_lines {
        let n = 5 + rng.below(9) as usize;
        let mut line = Vec::new();
        for _ in 0..n {
            if spec.unicode_body && rng.below(4) == 0 {
                line.push(UNICODE_WORDS[rng.below(UNICODE_WORDS.len() as u64) as usize]);
            } else {
                line.push(WORDS[rng.below(WORDS.len() as u64) as usize]);
            }
        }
        out.push_str(&line.join(" "));
        out.push_str("\r\n");
    }
    out
}

fn push_base64_lines(out: &mut Vec<u8>, data: &[u8]) {
    let enc = base64::engine::general_purpose::STANDARD.encode(data);
    for line in enc.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
}

fn text_part(out: &mut Vec<u8>, spec: &MessageSpec, subtype: &str, text: &str) {
    if spec.unicode_body {
        out.extend_from_slice(
            format!(
                "Content-Type: text/{subtype}; charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            )
            .as_bytes(),
        );
        push_base64_lines(out, text.as_bytes());
    } else {
        out.extend_from_slice(
            format!(
                "Content-Type: text/{subtype}; charset=\"us-ascii\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(text.as_bytes());
    }
}

fn body_part(out: &mut Vec<u8>, spec: &MessageSpec, boundary: &str) {
    let text = body_text(spec);
    if spec.alternative {
        out.extend_from_slice(
            format!("Content-Type: multipart/alternative;\r\n\tboundary=\"{boundary}\"\r\n\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        text_part(out, spec, "plain", &text);
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        let html = format!(
            "<html><head><meta charset=\"utf-8\"></head><body>\r\n{}</body></html>\r\n",
            text.lines()
                .map(|l| format!("<p>{l}</p>\r\n"))
                .collect::<String>()
        );
        text_part(out, spec, "html", &html);
        out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    } else {
        text_part(out, spec, "plain", &text);
    }
}

fn percent_filename(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The RFC 822 bytes of a generated message (CRLF line ends).
pub fn build_mime(spec: &MessageSpec) -> Vec<u8> {
    let mut out = Vec::new();
    let mut h = |k: &str, v: &str| {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    };
    h("Received", &format!("from mail.contoso.example (10.0.0.1) by EX01.contoso.example with Microsoft SMTP Server;\r\n {}", rfc2822(spec.date)));
    h("From", &addr_header(std::slice::from_ref(&spec.from)));
    h("To", &addr_header(&spec.to));
    if !spec.cc.is_empty() {
        h("Cc", &addr_header(&spec.cc));
    }
    h("Subject", &encode_header_word(&spec.subject));
    h("Date", &rfc2822(spec.date));
    h("Message-ID", &format!("<{}>", spec.message_id));
    h("MIME-Version", "1.0");
    let k = spec.key;
    let outer = format!("_000_{:016x}_", k);
    let inner = format!("_001_{:016x}_", mix(k));
    if spec.attachments.is_empty() {
        body_part(&mut out, spec, &inner);
        return out;
    }
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed;\r\n\tboundary=\"{outer}\"\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(format!("--{outer}\r\n").as_bytes());
    body_part(&mut out, spec, &inner);
    for a in &spec.attachments {
        out.extend_from_slice(format!("\r\n--{outer}\r\n").as_bytes());
        out.extend_from_slice(
            format!(
                "Content-Type: {};\r\n\tname=\"{}\"\r\nContent-Disposition: attachment;\r\n\tfilename*=UTF-8''{}\r\nContent-Transfer-Encoding: base64\r\n\r\n",
                a.mime_type,
                encode_header_word(&a.name),
                percent_filename(&a.name)
            )
            .as_bytes(),
        );
        let mut data = vec![0u8; a.content.len as usize];
        a.content.fill(0, &mut data);
        push_base64_lines(&mut out, &data);
    }
    out.extend_from_slice(format!("\r\n--{outer}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn fill_is_offset_independent() {
        for kind in [ContentKind::Binary, ContentKind::Text] {
            let spec = ContentSpec {
                key: 42,
                len: 1000,
                kind,
            };
            let mut all = vec![0u8; 1000];
            spec.reader().read_exact(&mut all).unwrap();
            for start in [0u64, 1, 7, 8, 9, 500, 999] {
                let mut part = vec![0u8; (1000 - start) as usize];
                spec.fill(start, &mut part);
                assert_eq!(part, all[start as usize..]);
            }
        }
    }

    #[test]
    fn encoded_words_round_trip_in_utf8() {
        let s = "Grüße aus Köln — 日本語の件名 🎉 and a long tail to force folding";
        let enc = encode_header_word(s);
        assert!(enc.is_ascii());
        let mut back = Vec::new();
        for w in enc.split("\r\n ") {
            let b = w.trim_start_matches("=?UTF-8?B?").trim_end_matches("?=");
            back.extend(base64::engine::general_purpose::STANDARD.decode(b).unwrap());
        }
        assert_eq!(String::from_utf8(back).unwrap(), s);
    }
}
