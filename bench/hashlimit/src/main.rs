//! The machine's SHA-256 limit: every thread hashes its own in-memory buffer several times,
//! all threads at once, with the `sha2` crate ferry uses. No I/O, no page cache: this is the
//! ceiling a verifier can approach.
//!
//! Usage: hashlimit [THREADS] [BUFFER_MIB] [PASSES]   (defaults: every core, 64, 8)
//! Prints one line: `threads=N bytes=B seconds=S mbps=M` (MB = 10^6 bytes).

use sha2::{Digest, Sha256};
use std::time::Instant;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|s| s.parse().expect("arguments are integers"))
        .unwrap_or(default)
}

fn main() {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = arg(1, cores).max(1);
    let mib = arg(2, 64).max(1);
    let passes = arg(3, 8).max(1);

    // Fill the buffers before timing (xorshift, so the content is not all zeros).
    let buffers: Vec<Vec<u8>> = (0..threads)
        .map(|t| {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
            let mut v = vec![0u8; mib << 20];
            for chunk in v.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            v
        })
        .collect();

    // One untimed pass per thread warms caches, frequency and the TLB.
    for b in &buffers {
        std::hint::black_box(Sha256::digest(&b[..1 << 20]));
    }

    let start = Instant::now();
    std::thread::scope(|s| {
        for b in &buffers {
            s.spawn(move || {
                for _ in 0..passes {
                    // Hash in 1 MiB updates, like a streaming reader would.
                    let mut h = Sha256::new();
                    for chunk in b.chunks(1 << 20) {
                        h.update(chunk);
                    }
                    std::hint::black_box(h.finalize());
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let bytes = (threads * passes * (mib << 20)) as u64;
    println!(
        "threads={threads} bytes={bytes} seconds={secs:.3} mbps={:.1}",
        bytes as f64 / secs / 1e6
    );
}
