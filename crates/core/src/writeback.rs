//! Writing a growing file's pages to disk while it is still being written.
//!
//! Archives are flushed to stable storage before a run reports success (the checkpoints of
//! the bag writer). Left to itself, Linux starts writing dirty pages back only once a tenth
//! of the memory is dirty or they are 30 s old, so on a machine with a lot of memory a whole
//! multi-GiB export sits in the page cache until the checkpoint's flush, which then writes it
//! all while the export waits: copy first, disk after, one after the other. Asking the kernel
//! to start writing each few MiB as soon as they are written (`sync_file_range` with
//! `SYNC_FILE_RANGE_WRITE`, which does not wait for the disk) lets the disk work while the
//! next bytes are read and hashed, and leaves the final flush little to do. It also keeps the
//! page cache clean, so a backup does not push other programs into dirty-page throttling.
//!
//! This is a hint, never a guarantee: durability still comes from the checkpoint's flush. A
//! file system that does not support it (or any error) switches it off for that file. On
//! systems other than Linux it does nothing.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};

/// Write-back is started each time this many bytes have been written since the last start.
pub const STEP: u64 = 8 << 20;

/// A file that was written to at least this size gets write-back started for its tail when it
/// is finished; smaller files are left to the checkpoint's flush, which batches them.
pub const MIN_TAIL: u64 = 1 << 20;

/// Where write-back of one file has been started up to.
#[derive(Debug, Clone)]
pub struct Writeback {
    /// Bytes before this offset have had write-back started.
    started: u64,
    /// False once the file system refused.
    enabled: bool,
}

impl Default for Writeback {
    fn default() -> Self {
        Self::new()
    }
}

impl Writeback {
    /// Nothing started yet, for a file written from offset 0.
    pub fn new() -> Self {
        Self::from_offset(0)
    }

    /// Nothing started yet, for a file whose first `offset` bytes were written earlier (a
    /// resumed file): those are the checkpoint's business.
    pub fn from_offset(offset: u64) -> Self {
        Writeback {
            started: offset,
            enabled: cfg!(target_os = "linux"),
        }
    }

    /// The file's bytes are on their way to the kernel up to `written` (nothing of them left in
    /// a user-space buffer): starts write-back of those not yet started once there are
    /// [`STEP`] of them.
    pub fn advance(&mut self, file: &impl AsFd, written: u64) {
        if written >= self.started.saturating_add(STEP) {
            self.start(file.as_fd(), written);
        }
    }

    /// The file is complete at `written` bytes: starts write-back of its tail if the file is
    /// large enough for that to pay.
    pub fn finish(&mut self, file: &impl AsFd, written: u64) {
        if written >= MIN_TAIL && written > self.started {
            self.start(file.as_fd(), written);
        }
    }

    fn start(&mut self, file: BorrowedFd<'_>, upto: u64) {
        if !self.enabled {
            return;
        }
        if start_writeback(file, self.started, upto).is_err() {
            self.enabled = false;
        }
        self.started = upto;
    }
}

/// Asks the kernel to start writing `file`'s dirty pages in `from..to` to disk, without
/// waiting for them.
#[cfg(target_os = "linux")]
pub fn start_writeback(file: BorrowedFd<'_>, from: u64, to: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if to <= from {
        return Ok(());
    }
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return Ok(());
    };
    // SAFETY: the descriptor is borrowed, so open for the call; the call only reads its
    // arguments.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Does nothing: other systems have no portable call for it.
#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_file: BorrowedFd<'_>, _from: u64, _to: u64) -> io::Result<()> {
    Ok(())
}

/// A file written from start to end that starts write-back of what it has been given every
/// [`STEP`] bytes (see the module's documentation). Put a `BufWriter` in front of it, not
/// behind: it counts what reaches the kernel.
#[derive(Debug)]
pub struct WritebackFile {
    file: File,
    written: u64,
    writeback: Writeback,
}

impl WritebackFile {
    /// `file`, to be written from its start.
    pub fn new(file: File) -> Self {
        WritebackFile {
            file,
            written: 0,
            writeback: Writeback::new(),
        }
    }

    /// The file.
    pub fn get_ref(&self) -> &File {
        &self.file
    }

    /// Bytes written through this so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Starts write-back of the tail (if the file is large enough) and returns the file.
    pub fn finish(mut self) -> File {
        self.writeback.finish(&self.file, self.written);
        self.file
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.writeback.advance(&self.file, self.written);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.written += n as u64;
        self.writeback.advance(&self.file, self.written);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pass_through_and_write_back_is_started_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = WritebackFile::new(File::create(&path).unwrap());
        let chunk = vec![7u8; 3 << 20];
        for _ in 0..5 {
            f.write_all(&chunk).unwrap();
        }
        assert_eq!(f.written(), 15 << 20);
        // 9 MiB crossed the first step; the second is at 17 MiB, not reached.
        assert_eq!(f.writeback.started, 9 << 20);
        f.write_all(b"tail").unwrap();
        let file = f.finish();
        drop(file);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), (15 << 20) + 4);
        let back = std::fs::read(&path).unwrap();
        assert!(back[..15 << 20].iter().all(|&b| b == 7));
        assert_eq!(&back[15 << 20..], b"tail");
    }

    #[test]
    fn small_files_are_left_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut wb = Writeback::new();
        wb.advance(&file, 4096);
        wb.finish(&file, 4096);
        assert_eq!(wb.started, 0);
        wb.finish(&file, MIN_TAIL);
        assert_eq!(wb.started, MIN_TAIL);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_descriptor_that_cannot_write_back_switches_it_off() {
        // A pipe: sync_file_range fails with ESPIPE.
        let (reader, _writer) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(reader));
        let mut wb = Writeback::new();
        wb.advance(&file, STEP);
        assert!(!wb.enabled);
        assert_eq!(wb.started, STEP);
    }
}
