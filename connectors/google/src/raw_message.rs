//! Gmail's `messages.get?format=raw` answer decoded while it streams.
//!
//! The answer is one JSON object whose `raw` member is the whole RFC 5322 message in base64url
//! (messages reach 50 MB), with small members around it — Gmail sends `historyId` and
//! `internalDate` *after* `raw`. [`RawMessageDecoder`] walks the object byte by byte: the `raw`
//! string is decoded straight into output bytes, every other member's JSON text is kept (they
//! are small; a cap guards against a hostile answer) and parsed at the end. Memory stays a few
//! kilobytes whatever the message size.

use bytes::Bytes;
use ferry_core::{ByteStream, Error};
use futures::StreamExt;
use serde_json::{Map, Value};

/// Members other than `raw` may not exceed this much JSON text in total.
const OTHER_MEMBERS_CAP: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `{`.
    Start,
    /// Expecting a member name or `}`.
    Key,
    /// Inside a member name.
    InKey { escaped: bool },
    /// After a name, expecting `:`.
    Colon,
    /// Expecting a value.
    Value,
    /// Inside the `raw` string.
    Raw { escape: RawEscape },
    /// Inside another member's value.
    Other {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// After a value, expecting `,` or `}`.
    AfterValue,
    /// After the closing `}`.
    Done,
}

/// Escape handling inside `raw` (base64url has no characters JSON must escape, but an encoder
/// may still write `=` as `\u003d` or `/` as `\/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawEscape {
    None,
    Backslash,
    Unicode { digits: u8, value: u32 },
}

/// Base64 values of the url-safe and the standard alphabet; `0x80` for anything else.
const SEXTET: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 26 {
        t[b'A' as usize + i] = i as u8;
        t[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = 52 + d as u8;
        d += 1;
    }
    t[b'-' as usize] = 62;
    t[b'+' as usize] = 62;
    t[b'_' as usize] = 63;
    t[b'/' as usize] = 63;
    t
};

/// Decodes one `messages.get?format=raw` answer fed in chunks.
#[derive(Debug)]
pub struct RawMessageDecoder {
    state: State,
    key: Vec<u8>,
    value: Vec<u8>,
    others: Map<String, Value>,
    other_bytes: usize,
    saw_raw: bool,
    /// Up to four base64 sextets waiting to become bytes.
    quad: [u8; 4],
    quad_len: usize,
    padding: usize,
    decoded: u64,
}

impl Default for RawMessageDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RawMessageDecoder {
    /// A decoder at the start of an answer.
    pub fn new() -> Self {
        RawMessageDecoder {
            state: State::Start,
            key: Vec::new(),
            value: Vec::new(),
            others: Map::new(),
            other_bytes: 0,
            saw_raw: false,
            quad: [0; 4],
            quad_len: 0,
            padding: 0,
            decoded: 0,
        }
    }

    /// Bytes of the message decoded so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Feeds the next chunk of the answer; the message bytes it completes are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let mut i = 0;
        while i < chunk.len() {
            if self.state
                == (State::Raw {
                    escape: RawEscape::None,
                })
            {
                // Inside `raw` (nearly all of an answer): decode up to the closing quote or an
                // escape in bulk, not byte by byte.
                let rest = &chunk[i..];
                let end = rest
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\')
                    .unwrap_or(rest.len());
                self.decode_span(&rest[..end], out)?;
                i += end;
                if i == chunk.len() {
                    break;
                }
            }
            self.step(chunk[i], out)?;
            i += 1;
        }
        Ok(())
    }

    /// Decodes a run of base64 characters: whole groups through a lookup table, anything
    /// unusual (padding, line breaks, a group split across chunks) one character at a time.
    fn decode_span(&mut self, mut s: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while self.quad_len != 0 && !s.is_empty() {
            self.sextet(s[0], out)?;
            s = &s[1..];
        }
        let whole = s.len() / 4 * 4;
        out.reserve(whole / 4 * 3);
        let mut k = 0;
        if self.padding == 0 {
            while k < whole {
                let (a, b, c, d) = (
                    SEXTET[s[k] as usize],
                    SEXTET[s[k + 1] as usize],
                    SEXTET[s[k + 2] as usize],
                    SEXTET[s[k + 3] as usize],
                );
                if (a | b | c | d) & 0x80 != 0 {
                    break;
                }
                out.extend_from_slice(&[(a << 2) | (b >> 4), (b << 4) | (c >> 2), (c << 6) | d]);
                k += 4;
            }
        }
        self.decoded += (k / 4 * 3) as u64;
        for &c in &s[k..] {
            self.sextet(c, out)?;
        }
        Ok(())
    }

    /// Ends the answer: the members other than `raw`, or why the answer was not a message.
    pub fn finish(self) -> Result<Map<String, Value>, String> {
        if self.state != State::Done {
            return Err("the answer ended before its JSON did".into());
        }
        if !self.saw_raw {
            return Err("the answer has no raw message (was format=raw honoured?)".into());
        }
        if self.quad_len == 1 {
            return Err("the raw message is not valid base64 (a lone trailing character)".into());
        }
        Ok(self.others)
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> Result<(), String> {
        match self.state {
            State::Start => match b {
                b'{' => self.state = State::Key,
                b if b.is_ascii_whitespace() => {}
                _ => return Err("the answer is not a JSON object".into()),
            },
            State::Key => match b {
                b'"' => {
                    self.key.clear();
                    self.state = State::InKey { escaped: false };
                }
                b'}' => self.state = State::Done,
                b',' => {}
                b if b.is_ascii_whitespace() => {}
                _ => return Err("the answer's JSON is malformed (expected a member name)".into()),
            },
            State::InKey { escaped } => {
                if escaped {
                    self.key.push(b);
                    self.state = State::InKey { escaped: false };
                } else if b == b'\\' {
                    self.key.push(b);
                    self.state = State::InKey { escaped: true };
                } else if b == b'"' {
                    self.state = State::Colon;
                } else {
                    self.key.push(b);
                }
            }
            State::Colon => match b {
                b':' => self.state = State::Value,
                b if b.is_ascii_whitespace() => {}
                _ => return Err("the answer's JSON is malformed (expected ':')".into()),
            },
            State::Value => {
                if b.is_ascii_whitespace() {
                    return Ok(());
                }
                if self.key == b"raw" && b == b'"' {
                    if self.saw_raw {
                        return Err("the answer has two raw members".into());
                    }
                    self.saw_raw = true;
                    self.state = State::Raw {
                        escape: RawEscape::None,
                    };
                } else {
                    self.value.clear();
                    self.state = State::Other {
                        depth: 0,
                        in_string: false,
                        escaped: false,
                    };
                    return self.step(b, out);
                }
            }
            State::Raw { escape } => match escape {
                RawEscape::None => match b {
                    b'"' => {
                        self.flush_quad(out)?;
                        self.state = State::AfterValue;
                    }
                    b'\\' => {
                        self.state = State::Raw {
                            escape: RawEscape::Backslash,
                        }
                    }
                    _ => self.sextet(b, out)?,
                },
                RawEscape::Backslash => {
                    if b == b'u' {
                        self.state = State::Raw {
                            escape: RawEscape::Unicode {
                                digits: 0,
                                value: 0,
                            },
                        };
                    } else {
                        self.state = State::Raw {
                            escape: RawEscape::None,
                        };
                        self.sextet(b, out)?;
                    }
                }
                RawEscape::Unicode { digits, value } => {
                    let d = (b as char)
                        .to_digit(16)
                        .ok_or("the raw message has a malformed \\u escape")?;
                    let value = value * 16 + d;
                    if digits == 3 {
                        self.state = State::Raw {
                            escape: RawEscape::None,
                        };
                        let c = u8::try_from(value)
                            .map_err(|_| "the raw message is not valid base64".to_string())?;
                        self.sextet(c, out)?;
                    } else {
                        self.state = State::Raw {
                            escape: RawEscape::Unicode {
                                digits: digits + 1,
                                value,
                            },
                        };
                    }
                }
            },
            State::Other {
                depth,
                in_string,
                escaped,
            } => {
                if in_string {
                    self.push_value(b)?;
                    self.state = State::Other {
                        depth,
                        in_string: b != b'"' || escaped,
                        escaped: b == b'\\' && !escaped,
                    };
                    return Ok(());
                }
                match b {
                    b',' | b'}' if depth == 0 => {
                        self.end_other()?;
                        if b == b'}' {
                            self.state = State::Done;
                        } else {
                            self.state = State::Key;
                        }
                    }
                    b'{' | b'[' => {
                        self.push_value(b)?;
                        self.state = State::Other {
                            depth: depth + 1,
                            in_string: false,
                            escaped: false,
                        };
                    }
                    b'}' | b']' => {
                        self.push_value(b)?;
                        let depth = depth
                            .checked_sub(1)
                            .ok_or("the answer's JSON is malformed (unbalanced brackets)")?;
                        self.state = State::Other {
                            depth,
                            in_string: false,
                            escaped: false,
                        };
                    }
                    b'"' => {
                        self.push_value(b)?;
                        self.state = State::Other {
                            depth,
                            in_string: true,
                            escaped: false,
                        };
                    }
                    _ => self.push_value(b)?,
                }
            }
            State::AfterValue => match b {
                b',' => self.state = State::Key,
                b'}' => self.state = State::Done,
                b if b.is_ascii_whitespace() => {}
                _ => return Err("the answer's JSON is malformed (expected ',' or '}')".into()),
            },
            State::Done => {
                if !b.is_ascii_whitespace() {
                    return Err("the answer has more after its JSON object".into());
                }
            }
        }
        Ok(())
    }

    fn push_value(&mut self, b: u8) -> Result<(), String> {
        self.other_bytes += 1;
        if self.other_bytes > OTHER_MEMBERS_CAP {
            return Err("the answer's members other than raw exceed 1 MiB".into());
        }
        self.value.push(b);
        Ok(())
    }

    fn end_other(&mut self) -> Result<(), String> {
        let key: String = serde_json::from_slice(&[b"\"", &self.key[..], b"\""].concat())
            .map_err(|_| "the answer has a malformed member name".to_string())?;
        let value: Value = serde_json::from_slice(&self.value)
            .map_err(|_| format!("the answer's member {key:?} is not valid JSON"))?;
        self.others.insert(key, value);
        self.value.clear();
        Ok(())
    }

    /// One base64 character (url-safe or standard alphabet; `=` is padding).
    fn sextet(&mut self, c: u8, out: &mut Vec<u8>) -> Result<(), String> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => {
                self.padding += 1;
                return Ok(());
            }
            b'\r' | b'\n' => return Ok(()),
            _ => {
                return Err(format!(
                    "the raw message is not valid base64 (byte 0x{c:02x})"
                ))
            }
        };
        if self.padding > 0 {
            return Err("the raw message has base64 after its padding".into());
        }
        self.quad[self.quad_len] = v;
        self.quad_len += 1;
        if self.quad_len == 4 {
            let q = self.quad;
            out.push((q[0] << 2) | (q[1] >> 4));
            out.push((q[1] << 4) | (q[2] >> 2));
            out.push((q[2] << 6) | q[3]);
            self.decoded += 3;
            self.quad_len = 0;
        }
        Ok(())
    }

    /// The last, partial group at the end of the string (padded or not).
    fn flush_quad(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let q = self.quad;
        match self.quad_len {
            0 => {}
            2 => {
                out.push((q[0] << 2) | (q[1] >> 4));
                self.decoded += 1;
            }
            3 => {
                out.push((q[0] << 2) | (q[1] >> 4));
                out.push((q[1] << 4) | (q[2] >> 2));
                self.decoded += 2;
            }
            _ => {
                return Err(
                    "the raw message is not valid base64 (a lone trailing character)".into(),
                )
            }
        }
        self.quad_len = 0;
        Ok(())
    }
}

/// Decodes a `messages.get?format=raw` answer streaming in `body` into the message's bytes;
/// once the answer has ended, its other members (labels, history id, date) arrive on the
/// receiver. A malformed answer ends the stream with a transient error naming `what`.
pub fn decode_stream(
    body: ByteStream,
    what: String,
) -> (
    ByteStream,
    tokio::sync::oneshot::Receiver<Map<String, Value>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    struct S {
        body: ByteStream,
        decoder: Option<RawMessageDecoder>,
        tx: Option<tokio::sync::oneshot::Sender<Map<String, Value>>>,
        what: String,
    }
    let state = S {
        body,
        decoder: Some(RawMessageDecoder::new()),
        tx: Some(tx),
        what,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        loop {
            let decoder = s.decoder.as_mut()?;
            match s.body.next().await {
                Some(Ok(chunk)) => {
                    let mut out = Vec::with_capacity(chunk.len() * 3 / 4 + 3);
                    if let Err(e) = decoder.feed(&chunk, &mut out) {
                        s.decoder = None;
                        let e = Error::transient(format!("{}: {e}", s.what));
                        return Some((Err(e), s));
                    }
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), s));
                    }
                }
                Some(Err(e)) => {
                    s.decoder = None;
                    return Some((Err(e), s));
                }
                None => {
                    let decoder = s.decoder.take()?;
                    match decoder.finish() {
                        Ok(others) => {
                            if let Some(tx) = s.tx.take() {
                                let _ = tx.send(others);
                            }
                            return None;
                        }
                        Err(e) => {
                            let e = Error::transient(format!("{}: {e}", s.what));
                            return Some((Err(e), s));
                        }
                    }
                }
            }
        }
    });
    (stream.boxed(), rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;

    fn decode_in_chunks(answer: &[u8], chunk: usize) -> (Vec<u8>, Map<String, Value>) {
        let mut d = RawMessageDecoder::new();
        let mut out = Vec::new();
        for c in answer.chunks(chunk) {
            d.feed(c, &mut out).unwrap();
        }
        (out, d.finish().unwrap())
    }

    #[test]
    fn decodes_raw_in_any_chunking_and_keeps_the_other_members() {
        for len in [0usize, 1, 2, 3, 4, 5, 1000, 4099] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            for padded in [true, false] {
                let raw = if padded {
                    URL_SAFE.encode(&msg)
                } else {
                    URL_SAFE_NO_PAD.encode(&msg)
                };
                let answer = format!(
                    "{{\n  \"id\": \"18c\\\"x\",\n  \"labelIds\": [\"INBOX\", \"Label_1\"],\n  \"payload\": {{\"a\": [1, {{\"b\": \"}}\"}}]}},\n  \"sizeEstimate\": 12,\n  \"raw\": \"{raw}\",\n  \"historyId\": \"991\",\n  \"internalDate\": \"1700000000000\"\n}}\n"
                );
                for chunk in [1, 2, 3, 7, 64, 1 << 20] {
                    let (out, others) = decode_in_chunks(answer.as_bytes(), chunk);
                    assert_eq!(out, msg, "len {len} chunk {chunk}");
                    assert_eq!(others["id"], "18c\"x");
                    assert_eq!(others["labelIds"][1], "Label_1");
                    assert_eq!(others["historyId"], "991");
                    assert_eq!(others["internalDate"], "1700000000000");
                    assert_eq!(others["sizeEstimate"], 12);
                    assert_eq!(others["payload"]["a"][1]["b"], "}");
                }
            }
        }
    }

    #[test]
    fn escaped_padding_and_standard_alphabet_are_accepted() {
        let answer = br#"{"raw":"aGk\u003d","id":"1"}"#;
        let (out, _) = decode_in_chunks(answer, 3);
        assert_eq!(out, b"hi");
        let (out, _) = decode_in_chunks(br#"{"raw":"+/8="}"#, 1);
        assert_eq!(out, vec![0xfb, 0xff]);
    }

    #[test]
    fn broken_answers_are_errors() {
        let bad = |answer: &[u8]| {
            let mut d = RawMessageDecoder::new();
            let mut out = Vec::new();
            d.feed(answer, &mut out)
                .and_then(|()| d.finish().map(|_| ()))
        };
        assert!(bad(br#"{"raw":"aGk"#).unwrap_err().contains("ended"));
        assert!(bad(br#"{"id":"1"}"#).unwrap_err().contains("no raw"));
        assert!(bad(br#"{"raw":"a*b"}"#).unwrap_err().contains("base64"));
        assert!(bad(br#"{"raw":"a"}"#).unwrap_err().contains("base64"));
        assert!(bad(br#"{"raw":"aGk=aa"}"#).unwrap_err().contains("padding"));
        assert!(bad(b"[1]").unwrap_err().contains("object"));
    }
}
