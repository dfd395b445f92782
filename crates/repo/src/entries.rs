//! Entry files (gzip-compressed JSON Lines sorted by key): writing one, reading one, and
//! reading a state as the merge of a checkpoint and later changes — all streaming, so memory
//! does not grow with the number of entries.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::iter::Peekable;
use std::path::Path;

use ferry_core::{Error, Result};
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::Digest as _;

use crate::format::{Entry, FileInfo, Op};

/// Writes an entry file; entries must come sorted by key (checked).
pub struct EntryWriter {
    gz: GzEncoder<HashingWriter<BufWriter<File>>>,
    entries: u64,
    last: Option<String>,
    path: std::path::PathBuf,
}

/// Counts and hashes what passes through.
pub struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> Error {
    move |e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            Error::fatal(format!(
                "{what}: the disk is full; free space and run again"
            ))
        } else {
            Error::permanent(format!("{what}: {e}"))
        }
    }
}

impl EntryWriter {
    /// A new file at `path`.
    pub fn create(path: &Path) -> Result<EntryWriter> {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(io_err(format!("creating {}", p.display())))?;
        }
        let f = File::create(path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(EntryWriter {
            gz: GzEncoder::new(
                HashingWriter {
                    inner: BufWriter::with_capacity(256 * 1024, f),
                    hasher: sha2::Sha256::new(),
                    len: 0,
                },
                Compression::new(6),
            ),
            entries: 0,
            last: None,
            path: path.to_path_buf(),
        })
    }

    /// Appends an entry (its key must sort after the last one's).
    pub fn write(&mut self, e: &Entry) -> Result<()> {
        if let Some(last) = &self.last {
            if e.key <= *last {
                return Err(Error::fatal(format!(
                    "internal error: entries out of order ({:?} after {last:?})",
                    e.key
                )));
            }
        }
        let mut line = serde_json::to_vec(e).map_err(|err| Error::fatal(err.to_string()))?;
        line.push(b'\n');
        self.gz
            .write_all(&line)
            .map_err(io_err(format!("writing {}", self.path.display())))?;
        self.entries += 1;
        self.last = Some(e.key.clone());
        Ok(())
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Ends the file, flushed to disk; its digest, size and entry count.
    pub fn finish(self) -> Result<FileInfo> {
        let what = format!("writing {}", self.path.display());
        let hw = self.gz.finish().map_err(io_err(what.clone()))?;
        let HashingWriter { inner, hasher, len } = hw;
        let f = inner
            .into_inner()
            .map_err(|e| io_err(what.clone())(e.into_error()))?;
        f.sync_all().map_err(io_err(what))?;
        Ok(FileInfo {
            sha256: hex::encode(hasher.finalize()),
            size: len,
            entries: self.entries,
        })
    }
}

/// Copies an entry file of `entries` entries as it is; its digest, size and entry count.
pub fn copy_entry_file(from: &Path, to: &Path, entries: u64) -> Result<FileInfo> {
    let what = format!("writing {}", to.display());
    let mut src = File::open(from).map_err(io_err(format!("reading {}", from.display())))?;
    let f = File::create(to).map_err(io_err(what.clone()))?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(256 * 1024, f),
        hasher: sha2::Sha256::new(),
        len: 0,
    };
    io::copy(&mut src, &mut w).map_err(io_err(what.clone()))?;
    let HashingWriter { inner, hasher, len } = w;
    let f = inner
        .into_inner()
        .map_err(|e| io_err(what.clone())(e.into_error()))?;
    f.sync_all().map_err(io_err(what))?;
    Ok(FileInfo {
        sha256: hex::encode(hasher.finalize()),
        size: len,
        entries,
    })
}

/// The entries of one file, in order.
pub struct EntryReader {
    lines: std::io::Lines<BufReader<MultiGzDecoder<BufReader<File>>>>,
    what: String,
}

impl EntryReader {
    /// Opens a local entry file.
    pub fn open(path: &Path, what: &str) -> Result<EntryReader> {
        let f = File::open(path).map_err(|e| {
            Error::permanent(format!("{what}: cannot open {}: {e}", path.display()))
        })?;
        Ok(EntryReader {
            lines: BufReader::new(MultiGzDecoder::new(BufReader::new(f))).lines(),
            what: what.to_string(),
        })
    }
}

impl Iterator for EntryReader {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Self::Item> {
        let line = match self.lines.next()? {
            Ok(l) => l,
            Err(e) => {
                return Some(Err(Error::permanent(format!(
                    "{}: unreadable ({e}); the file is damaged",
                    self.what
                ))))
            }
        };
        Some(
            serde_json::from_str(&line).map_err(|e| {
                Error::permanent(format!("{}: a line is not an entry ({e})", self.what))
            }),
        )
    }
}

/// A state read as a checkpoint (first source) with later changes applied (later sources win):
/// yields the live entries in key order, each with `op: add`.
pub struct StateMerge {
    sources: Vec<Peekable<EntryReader>>,
}

impl StateMerge {
    /// Merges `sources`, oldest first.
    pub fn new(sources: Vec<EntryReader>) -> StateMerge {
        StateMerge {
            sources: sources.into_iter().map(Iterator::peekable).collect(),
        }
    }
}

impl Iterator for StateMerge {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // The smallest key any source has next.
            let mut min: Option<String> = None;
            for s in &mut self.sources {
                match s.peek() {
                    Some(Ok(e)) if min.as_ref().is_none_or(|m| e.key < *m) => {
                        min = Some(e.key.clone());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => {
                        return s.next();
                    }
                    None => {}
                }
            }
            let key = min?;
            // Take it from every source that has it; the latest source's entry wins.
            let mut winner = None;
            for s in &mut self.sources {
                if matches!(s.peek(), Some(Ok(e)) if e.key == key) {
                    winner = s.next().and_then(|r| r.ok());
                }
            }
            match winner {
                Some(mut e) if e.op != Op::Remove => {
                    e.op = Op::Add;
                    return Some(Ok(e));
                }
                _ => continue,
            }
        }
    }
}

/// A string of an entry line: borrowed from the line, or owned when it had escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// What a backup run needs of an entry — key, op, blob, size, fingerprint, the item's source
/// and when its content was read — read from its line without building the rest of the
/// provenance record (skipped, not parsed into values).
#[derive(Debug, serde::Deserialize)]
pub struct EntryHead<'a> {
    /// [`Entry::key`].
    #[serde(borrow)]
    pub key: Text<'a>,
    /// [`Entry::op`].
    pub op: Op,
    /// [`Entry::blob`].
    #[serde(borrow, default)]
    pub blob: Option<Text<'a>>,
    /// [`Entry::size`].
    #[serde(default)]
    pub size: Option<u64>,
    /// [`Entry::fingerprint`].
    #[serde(borrow, default)]
    pub fingerprint: Option<Text<'a>>,
    /// Parts of [`Entry::item`].
    #[serde(borrow, default)]
    pub item: Option<ItemHead<'a>>,
}

/// Parts of an entry's provenance record.
#[derive(Debug, serde::Deserialize)]
pub struct ItemHead<'a> {
    /// `source`.
    #[serde(borrow, default)]
    pub source: Option<SourceHead<'a>>,
    /// `retrieved_at`.
    #[serde(borrow, default)]
    pub retrieved_at: Option<Text<'a>>,
}

/// The item's source reference (what names it at the source, whatever its path).
#[derive(Debug, serde::Deserialize)]
pub struct SourceHead<'a> {
    /// `system`.
    #[serde(borrow, default)]
    pub system: Option<Text<'a>>,
    /// `account`.
    #[serde(borrow, default)]
    pub account: Option<Text<'a>>,
    /// `container`.
    #[serde(borrow, default)]
    pub container: Option<Text<'a>>,
    /// `id`.
    #[serde(borrow, default)]
    pub id: Option<Text<'a>>,
}

/// One entry file read line by line into one reused buffer.
struct LineSource {
    reader: BufReader<MultiGzDecoder<BufReader<File>>>,
    line: String,
    key: String,
    done: bool,
    what: String,
}

impl LineSource {
    fn open(path: &Path, what: &str) -> Result<LineSource> {
        let f = File::open(path).map_err(|e| {
            Error::permanent(format!("{what}: cannot open {}: {e}", path.display()))
        })?;
        Ok(LineSource {
            reader: BufReader::with_capacity(
                256 * 1024,
                MultiGzDecoder::new(BufReader::with_capacity(64 * 1024, f)),
            ),
            line: String::new(),
            key: String::new(),
            done: false,
            what: what.to_string(),
        })
    }

    /// The next line; false at the end.
    fn read(&mut self) -> Result<bool> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => {
                self.done = true;
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) => Err(Error::permanent(format!(
                "{}: unreadable ({e}); the file is damaged",
                self.what
            ))),
        }
    }

    /// The next line and its key (for merging).
    fn advance(&mut self) -> Result<()> {
        if !self.read()? {
            return Ok(());
        }
        self.key.clear();
        // ferry writes the key first: read it alone; anything else is read whole.
        let key = match self.line.strip_prefix("{\"key\":") {
            Some(rest) => {
                serde::Deserialize::deserialize(&mut serde_json::Deserializer::from_str(rest))
            }
            None => serde_json::from_str::<EntryHead>(&self.line).map(|h| h.key),
        };
        let key: Text = key.map_err(|e| self.not_an_entry(e))?;
        self.key.push_str(&key);
        Ok(())
    }

    fn head(&self) -> Result<EntryHead<'_>> {
        serde_json::from_str(&self.line).map_err(|e| self.not_an_entry(e))
    }

    fn not_an_entry(&self, e: serde_json::Error) -> Error {
        Error::permanent(format!("{}: a line is not an entry ({e})", self.what))
    }
}

/// Reads a state as [`StateMerge`] does — a checkpoint and later changes, `(path, name)`
/// oldest first — but gives `f` each live entry's [`EntryHead`] (its `op` as the latest file
/// says: `add` or `change`), in key order, with one parse per line and no allocation per entry
/// beyond strings with escapes.
pub fn for_each_head(
    sources: &[(&Path, &str)],
    mut f: impl FnMut(&EntryHead) -> Result<()>,
) -> Result<()> {
    let mut sources = sources
        .iter()
        .map(|(p, what)| LineSource::open(p, what))
        .collect::<Result<Vec<_>>>()?;
    if let [only] = sources.as_mut_slice() {
        while only.read()? {
            let head = only.head()?;
            if head.op != Op::Remove {
                f(&head)?;
            }
        }
        return Ok(());
    }
    for s in &mut sources {
        s.advance()?;
    }
    let mut same = Vec::with_capacity(sources.len());
    loop {
        // The smallest key any source has next; the latest source with it wins.
        let mut min: Option<usize> = None;
        for (i, s) in sources.iter().enumerate() {
            if !s.done && min.is_none_or(|m| s.key < sources[m].key) {
                min = Some(i);
            }
        }
        let Some(m) = min else {
            return Ok(());
        };
        same.clear();
        for (i, s) in sources.iter().enumerate() {
            if !s.done && s.key == sources[m].key {
                same.push(i);
            }
        }
        let winner = &sources[*same.last().expect("one at least")];
        let head = winner.head()?;
        if head.op != Op::Remove {
            f(&head)?;
        }
        for &i in &same {
            sources[i].advance()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, op: Op, blob: &str) -> Entry {
        Entry {
            key: key.into(),
            op,
            blob: Some(blob.into()),
            size: Some(1),
            fingerprint: None,
            item: None,
        }
    }

    fn file(dir: &Path, name: &str, entries: &[Entry]) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut w = EntryWriter::create(&p).unwrap();
        for e in entries {
            w.write(e).unwrap();
        }
        let info = w.finish().unwrap();
        assert_eq!(info.entries, entries.len() as u64);
        assert_eq!(info.size, std::fs::metadata(&p).unwrap().len());
        p
    }

    #[test]
    fn a_state_is_the_checkpoint_with_later_changes_applied() {
        let dir = tempfile::tempdir().unwrap();
        let cp = file(
            dir.path(),
            "state",
            &[
                entry("a", Op::Add, "1"),
                entry("b", Op::Add, "2"),
                entry("d", Op::Add, "4"),
            ],
        );
        let c1 = file(
            dir.path(),
            "c1",
            &[
                entry("b", Op::Change, "2b"),
                entry("c", Op::Add, "3"),
                Entry::removal("d".into()),
            ],
        );
        let c2 = file(
            dir.path(),
            "c2",
            &[Entry::removal("a".into()), entry("d", Op::Add, "4b")],
        );
        let open = |p: &Path| EntryReader::open(p, "test").unwrap();
        let got: Vec<(String, String)> = StateMerge::new(vec![open(&cp), open(&c1), open(&c2)])
            .map(|e| {
                let e = e.unwrap();
                assert_eq!(e.op, Op::Add);
                (e.key, e.blob.unwrap())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".to_string(), "2b".to_string()),
                ("c".into(), "3".into()),
                ("d".into(), "4b".into())
            ]
        );
    }

    #[test]
    fn heads_read_the_same_state_as_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = entry("a\"quoted\\", Op::Add, "1");
        a.fingerprint = Some("size=1;mtime=\u{7}".into());
        a.item = Some(serde_json::json!({
            "path": null, "extra": {"x": [1, {"y": null}]},
            "source": {"system": "s3", "account": null, "container": "b\"k", "id": "k1"},
            "retrieved_at": "2026-01-01T00:00:00Z"
        }));
        let cp = file(
            dir.path(),
            "state",
            &[
                a.clone(),
                entry("b", Op::Add, "2"),
                entry("d", Op::Add, "4"),
                entry("é", Op::Add, "5"),
            ],
        );
        let c1 = file(
            dir.path(),
            "c1",
            &[
                entry("b", Op::Change, "2b"),
                entry("c", Op::Add, "3"),
                Entry::removal("d".into()),
            ],
        );
        let c2 = file(dir.path(), "c2", &[entry("d", Op::Add, "4b")]);
        let heads = |files: &[&std::path::PathBuf]| {
            let sources: Vec<(&Path, &str)> = files.iter().map(|p| (p.as_path(), "test")).collect();
            let mut got = Vec::new();
            for_each_head(&sources, |h| {
                got.push((h.key.to_string(), h.blob.as_deref().unwrap().to_string()));
                Ok(())
            })
            .unwrap();
            got
        };
        let entries = |files: &[&std::path::PathBuf]| {
            StateMerge::new(
                files
                    .iter()
                    .map(|p| EntryReader::open(p, "test").unwrap())
                    .collect(),
            )
            .map(|e| {
                let e = e.unwrap();
                (e.key, e.blob.unwrap())
            })
            .collect::<Vec<_>>()
        };
        assert_eq!(heads(&[&cp]), entries(&[&cp]));
        assert_eq!(heads(&[&cp, &c1, &c2]), entries(&[&cp, &c1, &c2]));
        assert_eq!(heads(&[&cp, &c1]).len(), 4);
        // The parts of the record a run needs, escapes and all.
        let mut seen = false;
        for_each_head(&[(cp.as_path(), "test")], |h| {
            if h.key.starts_with('a') {
                assert_eq!(&*h.key, "a\"quoted\\");
                assert_eq!(h.fingerprint.as_deref(), Some("size=1;mtime=\u{7}"));
                let s = h.item.as_ref().unwrap().source.as_ref().unwrap();
                assert_eq!(s.system.as_deref(), Some("s3"));
                assert_eq!(s.account.as_deref(), None);
                assert_eq!(s.container.as_deref(), Some("b\"k"));
                assert_eq!(s.id.as_deref(), Some("k1"));
                seen = true;
            }
            Ok(())
        })
        .unwrap();
        assert!(seen);
    }

    #[test]
    fn out_of_order_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EntryWriter::create(&dir.path().join("x")).unwrap();
        w.write(&entry("b", Op::Add, "1")).unwrap();
        assert!(w.write(&entry("a", Op::Add, "1")).is_err());
    }
}
