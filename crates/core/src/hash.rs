//! Digests computed while bytes stream past, several algorithms in one pass.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use md5::Digest as _;
use serde::{Deserialize, Serialize};

/// A digest algorithm usable in BagIt manifests and for checking source checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestAlgorithm {
    /// MD5 (only for reading old bags and checking S3/Drive checksums; never a default).
    Md5,
    /// SHA-1 (for reading bags made by other tools).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256, ferry's default.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512, the RFC 8493 "SHOULD" algorithm.
    Sha512,
}

impl DigestAlgorithm {
    /// Every algorithm, strongest last.
    pub const ALL: [DigestAlgorithm; 6] = [
        DigestAlgorithm::Md5,
        DigestAlgorithm::Sha1,
        DigestAlgorithm::Sha224,
        DigestAlgorithm::Sha256,
        DigestAlgorithm::Sha384,
        DigestAlgorithm::Sha512,
    ];

    /// The name used in BagIt manifest file names (`manifest-<name>.txt`).
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "md5",
            DigestAlgorithm::Sha1 => "sha1",
            DigestAlgorithm::Sha224 => "sha224",
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha384 => "sha384",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// The size of the blocks the algorithm compresses, in bytes.
    pub fn block_size(self) -> usize {
        match self {
            DigestAlgorithm::Sha384 | DigestAlgorithm::Sha512 => 128,
            _ => BLOCK,
        }
    }

    /// Length of the digest in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Md5 => 32,
            DigestAlgorithm::Sha1 => 40,
            DigestAlgorithm::Sha224 => 56,
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha384 => 96,
            DigestAlgorithm::Sha512 => 128,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase().replace('-', "");
        DigestAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| format!("unknown digest algorithm {s:?} (use one of md5, sha1, sha224, sha256, sha384, sha512)"))
    }
}

/// Hex digests by algorithm.
pub type Digests = BTreeMap<DigestAlgorithm, String>;

enum OneHasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl OneHasher {
    fn new(alg: DigestAlgorithm) -> Self {
        match alg {
            DigestAlgorithm::Md5 => OneHasher::Md5(md5::Md5::new()),
            DigestAlgorithm::Sha1 => OneHasher::Sha1(sha1::Sha1::new()),
            DigestAlgorithm::Sha224 => OneHasher::Sha224(sha2::Sha224::new()),
            DigestAlgorithm::Sha256 => OneHasher::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha384 => OneHasher::Sha384(sha2::Sha384::new()),
            DigestAlgorithm::Sha512 => OneHasher::Sha512(sha2::Sha512::new()),
        }
    }
    fn update(&mut self, data: &[u8]) {
        match self {
            OneHasher::Md5(h) => h.update(data),
            OneHasher::Sha1(h) => h.update(data),
            OneHasher::Sha224(h) => h.update(data),
            OneHasher::Sha256(h) => h.update(data),
            OneHasher::Sha384(h) => h.update(data),
            OneHasher::Sha512(h) => h.update(data),
        }
    }
    fn finish(self) -> String {
        match self {
            OneHasher::Md5(h) => hex::encode(h.finalize()),
            OneHasher::Sha1(h) => hex::encode(h.finalize()),
            OneHasher::Sha224(h) => hex::encode(h.finalize()),
            OneHasher::Sha256(h) => hex::encode(h.finalize()),
            OneHasher::Sha384(h) => hex::encode(h.finalize()),
            OneHasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// The block size of MD5, SHA-1 and SHA-256, in bytes.
pub(crate) const BLOCK: usize = 64;

/// Cuts `data`, which follows `done` bytes of a stream, into pieces that end on the stream's
/// 64-byte block boundaries: the first up to the next boundary, then whole blocks.
pub(crate) fn block_pieces(done: u64, data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let misalignment = (done % BLOCK as u64) as usize;
    let first = if misalignment == 0 {
        0
    } else {
        (BLOCK - misalignment).min(data.len())
    };
    let (head, rest) = data.split_at(first);
    (!head.is_empty())
        .then_some(head)
        .into_iter()
        .chain(rest.chunks(BLOCK))
}

/// Computes several digests of one byte stream in a single pass, and counts the bytes.
pub struct MultiHasher {
    hashers: Vec<(DigestAlgorithm, OneHasher)>,
    len: u64,
}

impl MultiHasher {
    /// A hasher for each algorithm in `algorithms` (duplicates are ignored).
    pub fn new(algorithms: impl IntoIterator<Item = DigestAlgorithm>) -> Self {
        let mut hashers: Vec<(DigestAlgorithm, OneHasher)> = Vec::new();
        for alg in algorithms {
            if !hashers.iter().any(|(a, _)| *a == alg) {
                hashers.push((alg, OneHasher::new(alg)));
            }
        }
        MultiHasher { hashers, len: 0 }
    }
    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        let before = self.len;
        self.len += data.len() as u64;
        if self.block_hashers() < 2 {
            for (_, h) in &mut self.hashers {
                h.update(data);
            }
            return;
        }
        // Two or more digests of 64-byte blocks (an S3 or Drive item's MD5 beside the bag's
        // SHA-256) are fed block by block in turn, not one whole chunk after the other: each
        // compression is a chain of dependent steps that leaves most of the core idle, and
        // MD5's integer steps and SHA-256's SHA instructions overlap when they sit side by
        // side in the instruction window. MD5 + SHA-256 of the same bytes: 470 -> 560 MB/s on
        // one core (2026-12-08). The first piece is cut to the block boundary so that every
        // later one is a whole block, which the hashers compress without copying it.
        for (_, h) in self
            .hashers
            .iter_mut()
            .filter(|(a, _)| a.block_size() != BLOCK)
        {
            h.update(data);
        }
        for piece in block_pieces(before, data) {
            for (_, h) in self
                .hashers
                .iter_mut()
                .filter(|(a, _)| a.block_size() == BLOCK)
            {
                h.update(piece);
            }
        }
    }
    /// How many of the digests work on 64-byte blocks (see [`MultiHasher::update`]).
    pub(crate) fn block_hashers(&self) -> usize {
        self.hashers
            .iter()
            .filter(|(a, _)| a.block_size() == BLOCK)
            .count()
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True when no bytes were fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The hex digests.
    pub fn finish(self) -> Digests {
        self.hashers
            .into_iter()
            .map(|(a, h)| (a, h.finish()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        let mut h = MultiHasher::new(DigestAlgorithm::ALL);
        h.update(b"ab");
        h.update(b"c");
        let d = h.finish();
        assert_eq!(d[&DigestAlgorithm::Md5], "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            d[&DigestAlgorithm::Sha1],
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            d[&DigestAlgorithm::Sha256],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d[&DigestAlgorithm::Sha512].starts_with("ddaf35a193617aba"));
        assert_eq!(d[&DigestAlgorithm::Sha224].len(), 56);
        assert_eq!(d[&DigestAlgorithm::Sha384].len(), 96);
    }

    /// Fed in pieces of every awkward size, the interleaved digests equal each digest computed
    /// alone over the whole input.
    #[test]
    fn interleaved_digests_match_each_digest_alone() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let alone: Digests = DigestAlgorithm::ALL
            .into_iter()
            .map(|a| {
                let mut h = MultiHasher::new([a]);
                h.update(&data);
                h.finish().into_iter().next().unwrap()
            })
            .collect();
        for piece in [1, 3, 63, 64, 65, 100, 127, 128, 129, 1000, 4096, 5000] {
            for algs in [
                &[DigestAlgorithm::Md5, DigestAlgorithm::Sha256][..],
                &DigestAlgorithm::ALL[..],
            ] {
                let mut h = MultiHasher::new(algs.iter().copied());
                for p in data.chunks(piece) {
                    h.update(p);
                }
                assert_eq!(h.len(), data.len() as u64);
                for (a, d) in h.finish() {
                    assert_eq!(d, alone[&a], "{a} in pieces of {piece}");
                }
            }
        }
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            "SHA-256".parse::<DigestAlgorithm>().unwrap(),
            DigestAlgorithm::Sha256
        );
        assert!("crc32".parse::<DigestAlgorithm>().is_err());
    }
}
