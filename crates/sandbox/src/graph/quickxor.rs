//! Microsoft's QuickXorHash, the only hash OneDrive for Business and SharePoint list
//! (`file.hashes.quickXorHash`).
//!
//! The algorithm (from Microsoft's published C# reference and rclone's port): a 160-bit register;
//! byte `i` of the input is XORed in at bit offset `(11·i) mod 160`, wrapping around the end of
//! the register; the register is serialised as 20 little-endian bytes; the 64-bit little-endian
//! total length is XORed into bytes 12–19; the result is base64-encoded.

use base64::Engine;

/// Bytes whose positions differ by 160 land at the same bit offset (11·160 ≡ 0 mod 160), so the
/// hasher XORs input into a 160-byte lane buffer (cheap, vectorisable) and folds the lanes into
/// the register once, at the end.
const LANES: usize = 160;

/// A streaming QuickXorHash.
#[derive(Clone)]
pub struct QuickXorHash {
    lanes: [u8; LANES],
    len: u64,
}

impl Default for QuickXorHash {
    fn default() -> Self {
        Self::new()
    }
}

impl QuickXorHash {
    /// An empty hash.
    pub fn new() -> Self {
        QuickXorHash {
            lanes: [0; LANES],
            len: 0,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        // Position of the next byte within the 160-byte period.
        let mut lane = (self.len % LANES as u64) as usize;
        self.len += data.len() as u64;
        // Finish a partial period first, then whole periods, then the tail.
        while !data.is_empty() && lane != 0 {
            self.lanes[lane] ^= data[0];
            data = &data[1..];
            lane = (lane + 1) % LANES;
        }
        let mut chunks = data.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (l, b) in self.lanes.iter_mut().zip(chunk) {
                *l ^= *b;
            }
        }
        for (i, b) in chunks.remainder().iter().enumerate() {
            self.lanes[i] ^= *b;
        }
    }

    /// The 20-byte digest.
    pub fn digest(&self) -> [u8; 20] {
        let mut reg = [0u8; 20];
        for (i, &b) in self.lanes.iter().enumerate() {
            if b == 0 {
                continue;
            }
            let bit = (11 * i) % 160;
            let (byte, shift) = (bit / 8, bit % 8);
            let v = (b as u16) << shift;
            reg[byte] ^= v as u8;
            reg[(byte + 1) % 20] ^= (v >> 8) as u8;
        }
        for (i, b) in self.len.to_le_bytes().iter().enumerate() {
            reg[12 + i] ^= b;
        }
        reg
    }

    /// The digest as Graph lists it (standard base64 with padding).
    pub fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.digest())
    }
}

/// The QuickXorHash of `data`, base64.
pub fn quick_xor_hash(data: &[u8]) -> String {
    let mut h = QuickXorHash::new();
    h.update(data);
    h.base64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        assert_eq!(quick_xor_hash(b""), "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(
            quick_xor_hash(b"hello world"),
            "aCgDG9jwBhDc4Q1yawMZAAAAAAA="
        );
    }

    #[test]
    fn streaming_matches_one_shot() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let one = quick_xor_hash(&data);
        for split in [1, 159, 160, 161, 333, 4999] {
            let mut h = QuickXorHash::new();
            for c in data.chunks(split) {
                h.update(c);
            }
            assert_eq!(h.base64(), one, "chunks of {split}");
        }
    }

    /// A bit-at-a-time version of the definition, to check the lane folding.
    #[test]
    fn matches_definition() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 + 5) as u8).collect();
        let mut reg = [false; 160];
        for (i, b) in data.iter().enumerate() {
            for k in 0..8 {
                if b >> k & 1 == 1 {
                    let bit = (11 * i + k) % 160;
                    reg[bit] = !reg[bit];
                }
            }
        }
        let mut bytes = [0u8; 20];
        for (bit, set) in reg.iter().enumerate() {
            if *set {
                bytes[bit / 8] |= 1 << (bit % 8);
            }
        }
        for (i, b) in (data.len() as u64).to_le_bytes().iter().enumerate() {
            bytes[12 + i] ^= b;
        }
        let mut h = QuickXorHash::new();
        h.update(&data);
        assert_eq!(h.digest(), bytes);
    }
}
