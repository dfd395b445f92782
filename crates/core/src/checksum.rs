//! Computes the checksums sources state, while the bytes stream past: plain digests (through
//! [`MultiHasher`](crate::MultiHasher), shared with the archive's own digests), CRCs, and
//! checksums over parts such as S3 multipart ETags (`md5(md5(part 1) ‖ … ‖ md5(part N))-N`)
//! and S3 composite checksums.

use md5::Digest as _;

use crate::hash::{block_pieces, DigestAlgorithm, Digests, MultiHasher, BLOCK};
use crate::item::{ChecksumAlgorithm, SourceChecksum};

/// One running checksum computation.
trait Running: Send {
    fn update(&mut self, data: &[u8]);
    /// The raw checksum bytes (big-endian for CRCs, as S3 states them).
    fn finish(self: Box<Self>) -> Vec<u8>;
}

struct Crc32(crc32fast::Hasher);
impl Running for Crc32 {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self: Box<Self>) -> Vec<u8> {
        self.0.finalize().to_be_bytes().to_vec()
    }
}

struct Crc32c(u32);
impl Running for Crc32c {
    fn update(&mut self, data: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, data);
    }
    fn finish(self: Box<Self>) -> Vec<u8> {
        self.0.to_be_bytes().to_vec()
    }
}

struct Crc64(crc64fast_nvme::Digest);
impl Running for Crc64 {
    fn update(&mut self, data: &[u8]) {
        self.0.write(data);
    }
    fn finish(self: Box<Self>) -> Vec<u8> {
        self.0.sum64().to_be_bytes().to_vec()
    }
}

/// Microsoft's QuickXorHash: byte `i` of the content is XORed into a 160-bit register at bit
/// offset `11·i mod 160`, then the 64-bit length is XORed into the register's last 8 bytes.
///
/// Since `11·160 ≡ 0 (mod 160)`, bytes 160 apart land at the same offset, so the stream is
/// first folded into 160 bytes with plain XORs (which the compiler vectorises) and spread over
/// the register only once, at the end: hashing costs about as much as reading the bytes.
pub struct QuickXorHash {
    folded: [u8; 160],
    position: usize,
    length: u64,
}

impl Default for QuickXorHash {
    fn default() -> Self {
        QuickXorHash {
            folded: [0; 160],
            position: 0,
            length: 0,
        }
    }
}

impl QuickXorHash {
    /// A new, empty hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        // Finish the current 160-byte round, then whole rounds, then the rest.
        if self.position != 0 {
            let take = (160 - self.position).min(data.len());
            for (a, b) in self.folded[self.position..self.position + take]
                .iter_mut()
                .zip(&data[..take])
            {
                *a ^= b;
            }
            self.position = (self.position + take) % 160;
            data = &data[take..];
        }
        let mut rounds = data.chunks_exact(160);
        for round in &mut rounds {
            for (a, b) in self.folded.iter_mut().zip(round) {
                *a ^= b;
            }
        }
        let rest = rounds.remainder();
        for (a, b) in self.folded.iter_mut().zip(rest) {
            *a ^= b;
        }
        self.position = (self.position + rest.len()) % 160;
    }

    /// The 20 bytes of the hash (Graph states them in base64).
    pub fn finish(&self) -> [u8; 20] {
        let mut register = [0u8; 20];
        for (j, &byte) in self.folded.iter().enumerate() {
            if byte == 0 {
                continue;
            }
            let offset = (11 * j) % 160;
            for bit in 0..8 {
                if byte >> bit & 1 == 1 {
                    let at = (offset + bit) % 160;
                    register[at / 8] ^= 1 << (at % 8);
                }
            }
        }
        for (r, l) in register[12..].iter_mut().zip(self.length.to_le_bytes()) {
            *r ^= l;
        }
        register
    }
}

struct QuickXor(QuickXorHash);
impl Running for QuickXor {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self: Box<Self>) -> Vec<u8> {
        self.0.finish().to_vec()
    }
}

struct Plain(crate::hash::MultiHasher, DigestAlgorithm);
impl Running for Plain {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self: Box<Self>) -> Vec<u8> {
        let alg = self.1;
        hex::decode(self.0.finish().remove(&alg).unwrap_or_default()).unwrap_or_default()
    }
}

fn running(algorithm: ChecksumAlgorithm) -> Box<dyn Running> {
    match algorithm {
        ChecksumAlgorithm::Crc32 => Box::new(Crc32(crc32fast::Hasher::new())),
        ChecksumAlgorithm::Crc32c => Box::new(Crc32c(0)),
        ChecksumAlgorithm::Crc64nvme => Box::new(Crc64(crc64fast_nvme::Digest::new())),
        ChecksumAlgorithm::QuickXor => Box::new(QuickXor(QuickXorHash::new())),
        other => {
            let alg = other
                .digest()
                .expect("every other algorithm is a plain digest");
            Box::new(Plain(crate::hash::MultiHasher::new([alg]), alg))
        }
    }
}

/// A checksum over parts: the algorithm over each part, then over the concatenated results.
struct OverParts {
    algorithm: ChecksumAlgorithm,
    part_size: u64,
    in_part: u64,
    current: Box<dyn Running>,
    joined: Vec<u8>,
    parts: u64,
}

impl OverParts {
    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.in_part == self.part_size {
                self.close_part();
            }
            let take = ((self.part_size - self.in_part) as usize).min(data.len());
            self.current.update(&data[..take]);
            self.in_part += take as u64;
            data = &data[take..];
        }
    }
    fn close_part(&mut self) {
        let done = std::mem::replace(&mut self.current, running(self.algorithm));
        self.joined.extend(done.finish());
        self.parts += 1;
        self.in_part = 0;
    }
    fn finish(mut self) -> String {
        if self.in_part > 0 || self.parts == 0 {
            self.close_part();
        }
        let mut outer = running(self.algorithm);
        outer.update(&self.joined);
        format!("{}-{}", hex::encode(outer.finish()), self.parts)
    }
}

enum Computation {
    /// Read from the shared digests at the end.
    Shared(DigestAlgorithm),
    Own(Box<dyn Running>),
    Parts(Box<OverParts>),
}

/// The checksums of one transfer that the shared digests do not cover.
pub struct ChecksumSet {
    items: Vec<(SourceChecksum, Computation)>,
    /// Whether one of `items` computes a digest of 64-byte blocks of its own (see
    /// [`ChecksumSet::update_with`]).
    own_block_digest: bool,
}

impl ChecksumSet {
    /// Plans the computation of `stated`; plain whole-content digests are left to the shared
    /// hasher, whose algorithms the caller gets from [`ChecksumSet::shared_digests`].
    pub fn new(stated: &[SourceChecksum]) -> Self {
        let items = stated
            .iter()
            .map(|c| {
                let computation = match (c.part_size, c.algorithm.digest()) {
                    (Some(part_size), _) if part_size > 0 => {
                        Computation::Parts(Box::new(OverParts {
                            algorithm: c.algorithm,
                            part_size,
                            in_part: 0,
                            current: running(c.algorithm),
                            joined: Vec::new(),
                            parts: 0,
                        }))
                    }
                    (_, Some(digest)) => Computation::Shared(digest),
                    _ => Computation::Own(running(c.algorithm)),
                };
                (c.clone(), computation)
            })
            .collect::<Vec<_>>();
        let own_block_digest = items.iter().any(|(stated, c)| {
            !matches!(c, Computation::Shared(_))
                && stated
                    .algorithm
                    .digest()
                    .is_some_and(|d| d.block_size() == BLOCK)
        });
        ChecksumSet {
            items,
            own_block_digest,
        }
    }

    /// Digest algorithms the shared hasher must compute for these checksums.
    pub fn shared_digests(&self) -> Vec<DigestAlgorithm> {
        self.items
            .iter()
            .filter_map(|(_, c)| match c {
                Computation::Shared(d) => Some(*d),
                _ => None,
            })
            .collect()
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        for (_, c) in &mut self.items {
            match c {
                Computation::Shared(_) => {}
                Computation::Own(r) => r.update(data),
                Computation::Parts(p) => p.update(data),
            }
        }
    }

    /// Feeds the next bytes to these checksums and to the shared digests.
    ///
    /// Where this set computes a digest of its own (the MD5 of each part of a multipart S3
    /// upload), the bytes go to it and to the shared digests one 64-byte block at a time in
    /// turn, for the reason given at [`MultiHasher::update`]: digests side by side cost less
    /// than one after the other.
    pub fn update_with(&mut self, shared: &mut MultiHasher, data: &[u8]) {
        if !self.own_block_digest || shared.block_hashers() == 0 {
            shared.update(data);
            self.update(data);
            return;
        }
        for piece in block_pieces(shared.len(), data) {
            shared.update(piece);
            self.update(piece);
        }
    }

    /// Compares every stated checksum with what the bytes gave; returns (stated, computed) pairs.
    pub fn finish(self, shared: &Digests) -> Vec<(SourceChecksum, String)> {
        self.items
            .into_iter()
            .map(|(stated, c)| {
                let computed = match c {
                    Computation::Shared(d) => shared.get(&d).cloned().unwrap_or_default(),
                    Computation::Own(r) => hex::encode(r.finish()),
                    Computation::Parts(p) => p.finish(),
                };
                (stated, computed)
            })
            .collect()
    }
}

/// The MD5 of some bytes, as hex (for tests and for connectors that check small bodies).
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(md5::Md5::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compute(
        stated: &[SourceChecksum],
        data: &[u8],
        chunk: usize,
    ) -> Vec<(SourceChecksum, String)> {
        // As in a transfer: the archive's SHA-256 beside the source's checksums, so that
        // digests of 64-byte blocks are fed in turn (`update_with`).
        let mut set = ChecksumSet::new(stated);
        let mut algorithms = set.shared_digests();
        algorithms.push(DigestAlgorithm::Sha256);
        let mut shared = MultiHasher::new(algorithms);
        for c in data.chunks(chunk.max(1)) {
            set.update_with(&mut shared, c);
        }
        let shared = shared.finish();
        assert_eq!(
            shared[&DigestAlgorithm::Sha256],
            hex::encode(sha2::Sha256::digest(data))
        );
        set.finish(&shared)
    }

    /// QuickXorHash bit by bit, as the algorithm is described.
    fn quickxor_naive(data: &[u8]) -> [u8; 20] {
        let mut register = [0u8; 20];
        for (i, &byte) in data.iter().enumerate() {
            for bit in 0..8 {
                if byte >> bit & 1 == 1 {
                    let at = (11 * i + bit) % 160;
                    register[at / 8] ^= 1 << (at % 8);
                }
            }
        }
        for (r, l) in register[12..]
            .iter_mut()
            .zip((data.len() as u64).to_le_bytes())
        {
            *r ^= l;
        }
        register
    }

    #[test]
    fn quickxor_matches_published_vectors_and_the_naive_form() {
        // Vectors from Microsoft's description as quoted in rclone's tests (base64 decoded).
        assert_eq!(hex::encode(QuickXorHash::new().finish()), "0".repeat(40));
        let mut h = QuickXorHash::new();
        h.update(b"hello world");
        assert_eq!(
            hex::encode(h.finish()),
            "6828031bd8f00610dce10d726b03190000000000"
        );
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for chunk in [1, 7, 159, 160, 161, 1000, 5000] {
            let stated = [SourceChecksum::new(
                ChecksumAlgorithm::QuickXor,
                hex::encode(quickxor_naive(&data)),
            )];
            for (stated, computed) in compute(&stated, &data, chunk) {
                assert_eq!(computed, stated.value, "chunks of {chunk}");
            }
        }
    }

    #[test]
    fn crcs_match_known_values() {
        // "123456789" check values of each CRC's catalogue entry.
        let data = b"123456789";
        let stated = [
            SourceChecksum::new(ChecksumAlgorithm::Crc32, "cbf43926"),
            SourceChecksum::new(ChecksumAlgorithm::Crc32c, "e3069283"),
            SourceChecksum::new(ChecksumAlgorithm::Crc64nvme, "ae8b14860a799888"),
            SourceChecksum::new(ChecksumAlgorithm::Md5, "25f9e794323b453885f5181f1b624d0b"),
        ];
        for (stated, computed) in compute(&stated, data, 4) {
            assert_eq!(computed, stated.value, "{:?}", stated.algorithm);
        }
    }

    #[test]
    fn s3_multipart_etag_over_parts() {
        let data: Vec<u8> = (0..(5 * 1024 + 100)).map(|i| (i % 251) as u8).collect();
        // Parts on and off the 64-byte block boundaries the digests are fed by.
        for part in [2048u64, 2000] {
            let mut joined = Vec::new();
            for p in data.chunks(part as usize) {
                joined.extend(md5::Md5::digest(p));
            }
            let expected = format!("{}-3", md5_hex(&joined));
            for chunk in [1, 7, 63, 65, 2048, 4096, 100_000] {
                let out = compute(
                    &[SourceChecksum::over_parts(
                        ChecksumAlgorithm::Md5,
                        &expected,
                        part,
                    )],
                    &data,
                    chunk,
                );
                assert_eq!(out[0].1, expected, "part {part}, chunk {chunk}");
            }
        }
        // Exactly one part still carries "-1"; an empty object is one empty part.
        let out = compute(
            &[SourceChecksum::over_parts(
                ChecksumAlgorithm::Md5,
                "x",
                1 << 20,
            )],
            &data,
            512,
        );
        assert!(out[0].1.ends_with("-1"));
        let out = compute(
            &[SourceChecksum::over_parts(
                ChecksumAlgorithm::Md5,
                "x",
                1 << 20,
            )],
            b"",
            512,
        );
        assert!(out[0].1.ends_with("-1"));
    }
}
