//! Entry files (gzip-compressed JSON Lines sorted by key): writing one, reading one, and
//! reading a state as the merge of a checkpoint and later changes — all streaming, so memory
//! does not grow with the number of entries.

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
    fn out_of_order_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EntryWriter::create(&dir.path().join("x")).unwrap();
        w.write(&entry("b", Op::Add, "1")).unwrap();
        assert!(w.write(&entry("a", Op::Add, "1")).is_err());
    }
}
