//! Parallel, streaming fixity check: every listed file is read once, feeding all of its
//! manifests' algorithms in the same pass.
//!
//! A fixed pool of worker threads takes files from one shared cursor over a list sorted by size,
//! biggest first: the long files start early and the small ones fill the gaps at the end, so
//! no core idles while another still has a big file to go. Each worker owns one read buffer;
//! nothing else grows with the number of files but the job list (one id per file).

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};

use ferry_core::MultiHasher;

use super::manifests::Tables;
use super::{Problem, ProblemKind};
use crate::reader::{BagReader, FileId, ZipEntryCorrupt};

/// Read size: large enough that syscalls are a rounding error, small enough to stay in L2.
const BUF_SIZE: usize = 256 << 10;

/// What hashing found.
pub(super) struct HashOutcome {
    pub(super) problems: Vec<Problem>,
    /// Payload files whose digest differed from a manifest (or that could not be read).
    pub(super) mismatched: HashSet<FileId>,
    pub(super) files: u64,
    pub(super) bytes: u64,
}

/// Hashes every file some manifest lists. `size_claims` are items.jsonl sizes that differ from
/// the files' sizes, mentioned in a digest mismatch since they explain it.
pub(super) fn hash_all(
    reader: &BagReader,
    tables: &Tables,
    size_claims: &HashMap<FileId, u64>,
    threads: usize,
) -> HashOutcome {
    let mut jobs: Vec<FileId> = tables
        .listed
        .iter()
        .enumerate()
        .filter(|(_, listed)| **listed != 0)
        .map(|(id, _)| id)
        .chain(tables.tag_expect.keys().copied())
        .collect();
    jobs.sort_unstable_by_key(|&id| (Reverse(reader.size(id)), id));
    jobs.dedup();

    let next = AtomicUsize::new(0);
    let workers = threads.clamp(1, jobs.len().max(1));
    let ctx = Ctx {
        reader,
        tables,
        size_claims,
    };
    let mut outcome = HashOutcome {
        problems: Vec::new(),
        mismatched: HashSet::new(),
        files: 0,
        bytes: 0,
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut w = Worker {
                        buf: vec![0; BUF_SIZE],
                        problems: Vec::new(),
                        mismatched: Vec::new(),
                        files: 0,
                        bytes: 0,
                    };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&id) = jobs.get(i) else {
                            break;
                        };
                        w.check(&ctx, id);
                    }
                    w
                })
            })
            .collect();
        for handle in handles {
            // A panicking worker is a bug; surfacing it beats a silently partial check.
            let w = handle.join().expect("hashing worker panicked");
            outcome.problems.extend(w.problems);
            outcome.mismatched.extend(w.mismatched);
            outcome.files += w.files;
            outcome.bytes += w.bytes;
        }
    });
    // Workers finish in any order; a report should not.
    outcome
        .problems
        .sort_by(|a, b| (&a.path, a.kind).cmp(&(&b.path, b.kind)));
    outcome
}

struct Ctx<'a> {
    reader: &'a BagReader,
    tables: &'a Tables,
    size_claims: &'a HashMap<FileId, u64>,
}

struct Worker {
    buf: Vec<u8>,
    problems: Vec<Problem>,
    mismatched: Vec<FileId>,
    files: u64,
    bytes: u64,
}

impl Worker {
    fn problem(&mut self, kind: ProblemKind, path: &str, detail: String) {
        self.problems.push(Problem {
            kind,
            path: Some(path.to_string()),
            detail,
        });
    }

    fn check(&mut self, ctx: &Ctx<'_>, id: FileId) {
        let tables = ctx.tables;
        let path = ctx.reader.path(id);
        let listed = tables.listed[id];
        let tag_expect = tables.tag_expect.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let payload_algs = tables
            .payload
            .iter()
            .enumerate()
            .filter(|(m, _)| listed & (1 << m) != 0)
            .map(|(_, pm)| pm.alg);
        let tag_algs = tag_expect.iter().map(|(t, _)| tables.tags[*t as usize].alg);
        let mut hasher = MultiHasher::new(payload_algs.chain(tag_algs));

        let mut corrupt_zip: Option<String> = None;
        let read = ctx.reader.open_file(id).and_then(|mut file| loop {
            match file.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => hasher.update(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A failed zip CRC comes after the last byte: the digests are complete and
                    // say more about the damage than the CRC does.
                    if let Some(c) = e
                        .get_ref()
                        .and_then(|r| r.downcast_ref::<ZipEntryCorrupt>())
                    {
                        corrupt_zip = Some(c.to_string());
                        return Ok(());
                    }
                    return Err(e);
                }
            }
        });
        self.bytes += hasher.len();
        if let Err(e) = read {
            self.mismatched.push(id);
            let kind = ProblemKind::ReadError;
            self.problem(kind, path, format!("cannot read: {e}"));
            return;
        }
        self.files += 1;
        let size = hasher.len();
        let digests = hasher.finish();
        let mut any_mismatch = false;

        for (m, pm) in tables.payload.iter().enumerate() {
            if listed & (1 << m) == 0 || tables.unusable.contains(&(m as u8, id)) {
                continue;
            }
            let actual = &digests[&pm.alg];
            if !same(actual, pm.digest(id)) {
                any_mismatch = true;
                let mut detail = format!(
                    "{} expects {} {}, the file's is {actual} ({size} bytes",
                    pm.name,
                    pm.alg,
                    hex::encode(pm.digest(id)),
                );
                if let Some(claimed) = ctx.size_claims.get(&id) {
                    detail.push_str(&format!(
                        "; items.jsonl records {claimed} bytes, so it was truncated or changed"
                    ));
                }
                detail.push(')');
                if let Some(c) = &corrupt_zip {
                    detail.push_str(&format!("; {c}"));
                }
                self.problem(ProblemKind::DigestMismatch, path, detail);
            }
        }
        for (t, expected) in tag_expect {
            let tm = &tables.tags[*t as usize];
            let actual = &digests[&tm.alg];
            if !same(actual, expected) {
                any_mismatch = true;
                let detail = format!(
                    "{} expects {} {}, the file's is {actual}",
                    tm.name,
                    tm.alg,
                    hex::encode(expected)
                );
                self.problem(ProblemKind::TagDigestMismatch, path, detail);
            }
        }
        if any_mismatch {
            self.mismatched.push(id);
        } else if let Some(c) = corrupt_zip {
            // Digests agree but the zip's own checksum does not: the central directory is the
            // damaged part. Still worth knowing.
            self.problem(ProblemKind::ReadError, path, c);
        }
    }
}

/// Compares a computed hex digest with expected bytes, without allocating.
fn same(actual_hex: &str, expected: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    let Some(out) = buf.get_mut(..expected.len()) else {
        return false;
    };
    hex::decode_to_slice(actual_hex, out).is_ok() && out == expected
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn compares_hex_with_bytes() {
        assert!(same("00ff", &[0, 255]));
        assert!(!same("00fe", &[0, 255]));
        assert!(!same("00ff00", &[0, 255]));
    }

    #[test]
    fn every_algorithm_fits_the_buffer() {
        for alg in ferry_core::DigestAlgorithm::ALL {
            assert!(alg.hex_len() / 2 <= 64);
        }
    }
}
