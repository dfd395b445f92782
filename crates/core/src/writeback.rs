//! Writing files from ferry: into the page cache in small pieces, to disk early, off the async
//! threads.
//!
//! *To disk early.* Archives are flushed to stable storage before a run reports success (the
//! checkpoints of the bag writer). Left to itself, Linux starts writing dirty pages back only
//! once a tenth of the memory is dirty or they are 30 s old, so on a machine with a lot of
//! memory a whole multi-GiB export sits in the page cache until the checkpoint's flush, which
//! then writes it all while the export waits: copy first, disk after, one after the other.
//! Asking the kernel to start writing each few MiB as soon as they are written
//! (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`, which does not wait for the disk) lets the
//! disk work while the next bytes are read and hashed, and leaves the final flush little to do.
//! It also keeps the page cache clean, so a backup does not push other programs into
//! dirty-page throttling. This is a hint, never a guarantee: durability still comes from the
//! checkpoint's flush. A file system that does not support it (or any error) switches it off
//! for that file. On systems other than Linux it does nothing.
//!
//! *In small pieces.* A write system call of N bytes makes ext4 and XFS put them in page-cache
//! folios of up to N bytes. Folios of up to 32 KiB (order 3) come from the kernel's per-CPU
//! lists of recently freed pages; larger ones from its free lists of large blocks — and on a
//! virtual machine whose host takes back free memory (virtio-balloon free page reporting, as
//! on Firecracker and many clouds) those are exactly the blocks the host has taken, so the
//! first write to each page stops for a page fault on the host. On the project's VM that made
//! the kernel time of exporting 4 × 512 MiB to ext4 three times as long (3.3 against 1.1
//! CPU-seconds) after other programs had run. [`WritebackFile`] therefore writes at most
//! [`WRITE_MAX`] bytes per call; the extra calls cost ~2 % on tmpfs, where nothing changes, and
//! are not worth it for a file only one writer writes at a time (a zip), which sets its own
//! limit.
//!
//! *Off the async threads.* [`Offloaded`] runs a writer's blocking writes on tokio's blocking
//! pool, one chunk behind the caller.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd};

use bytes::Bytes;

/// Write-back is started each time this many bytes have been written since the last start.
pub const STEP: u64 = 8 << 20;

/// The most [`WritebackFile`] hands the kernel in one write (see the module's documentation).
pub const WRITE_MAX: usize = 32 << 10;

/// A file that was written to at least this size gets write-back started for its tail when it
/// is finished; smaller files are left to the checkpoint's flush, which batches them.
pub const MIN_TAIL: u64 = 1 << 20;

/// Where write-back of one file has been started up to.
#[derive(Debug, Clone)]
struct Writeback {
    /// Bytes before this offset have had write-back started.
    started: u64,
    /// False once the file system refused.
    enabled: bool,
}

impl Writeback {
    /// Nothing started yet, for a file whose first `offset` bytes were written earlier (a
    /// resumed file): those are the checkpoint's business.
    fn from_offset(offset: u64) -> Self {
        Writeback {
            started: offset,
            enabled: cfg!(target_os = "linux"),
        }
    }

    /// The file's bytes are on their way to the kernel up to `written` (nothing of them left in
    /// a user-space buffer): starts write-back of those not yet started once there are
    /// [`STEP`] of them.
    fn advance(&mut self, file: &impl AsFd, written: u64) {
        if written >= self.started.saturating_add(STEP) {
            self.start(file.as_fd(), written);
        }
    }

    /// The file is complete at `written` bytes: starts write-back of its tail if the file is
    /// large enough for that to pay.
    fn finish(&mut self, file: &impl AsFd, written: u64) {
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
fn start_writeback(file: BorrowedFd<'_>, from: u64, to: u64) -> io::Result<()> {
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
fn start_writeback(_file: BorrowedFd<'_>, _from: u64, _to: u64) -> io::Result<()> {
    Ok(())
}

/// A file that starts write-back of what it has been given every [`STEP`] bytes and hands the
/// kernel at most [`WRITE_MAX`] bytes per write (see the module's documentation). Put a
/// `BufWriter` in front of it, not behind: it counts what reaches the kernel. Written mostly
/// from start to end; seeking back to patch a few bytes (zip headers) is fine.
#[derive(Debug)]
pub struct WritebackFile {
    file: File,
    /// The most handed to the kernel in one write.
    write_max: usize,
    /// The file's current offset.
    pos: u64,
    /// The furthest offset written.
    end: u64,
    writeback: Writeback,
}

impl WritebackFile {
    /// `file`, to be written from its start.
    pub fn new(file: File) -> Self {
        Self::at(file, 0)
    }

    /// `file`, whose offset is at `offset`, everything before it written earlier (a resumed
    /// file): write-back of those bytes is the checkpoint's business.
    pub fn at(file: File, offset: u64) -> Self {
        WritebackFile {
            file,
            write_max: WRITE_MAX,
            pos: offset,
            end: offset,
            writeback: Writeback::from_offset(offset),
        }
    }

    /// Hands the kernel up to `max` bytes per write instead of [`WRITE_MAX`]. For a file
    /// written by one writer at a time, where the extra calls of small writes are not spread
    /// over several cores (a zip: its writes in 32 KiB pieces took 2.8 s against 2.2–3.0 s for
    /// 4 × 512 MiB).
    pub fn with_write_max(mut self, max: usize) -> Self {
        self.write_max = max.max(1);
        self
    }

    /// The file.
    pub fn get_ref(&self) -> &File {
        &self.file
    }

    /// Cuts the file to `len` bytes (its offset stays where it is).
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.end = self.end.min(len);
        self.writeback.started = self.writeback.started.min(len);
        Ok(())
    }

    /// The furthest offset written so far.
    pub fn written(&self) -> u64 {
        self.end
    }

    /// Starts write-back of the tail (if the file is large enough) and returns the file.
    pub fn finish(mut self) -> File {
        self.writeback.finish(&self.file, self.end);
        self.file
    }

    fn wrote(&mut self, n: usize) {
        self.pos += n as u64;
        if self.pos > self.end {
            self.end = self.pos;
            self.writeback.advance(&self.file, self.end);
        }
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(&buf[..buf.len().min(self.write_max)])?;
        self.wrote(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for WritebackFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = self.file.seek(to)?;
        Ok(self.pos)
    }
}

/// A writer whose blocking writes run on tokio's blocking pool, one chunk behind the caller: a
/// transfer hashes (and reads) the next chunk while this one is written. At most one write is
/// in flight, so order is kept and memory stays at one chunk.
pub enum Offloaded<W> {
    /// Nothing in flight.
    Idle(W),
    /// A write is running; the writer comes back with its result.
    Busy(tokio::task::JoinHandle<(W, io::Result<()>)>),
    /// A write panicked; the writer is gone.
    Lost,
}

impl<W: Send + 'static> Offloaded<W> {
    /// Waits for the write in flight, if any, and returns the writer.
    pub async fn settle(&mut self) -> io::Result<&mut W> {
        if matches!(self, Offloaded::Busy(_)) {
            let Offloaded::Busy(handle) = std::mem::replace(self, Offloaded::Lost) else {
                unreachable!("checked above")
            };
            let (writer, result) = handle.await.map_err(io::Error::other)?;
            *self = Offloaded::Idle(writer);
            result?;
        }
        match self {
            Offloaded::Idle(writer) => Ok(writer),
            _ => Err(io::Error::other("a write failed earlier")),
        }
    }

    /// Starts writing `chunk` with `write` and returns without waiting for it.
    pub async fn write(
        &mut self,
        chunk: Bytes,
        write: fn(&mut W, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.settle().await?;
        let Offloaded::Idle(mut writer) = std::mem::replace(self, Offloaded::Lost) else {
            unreachable!("settled")
        };
        *self = Offloaded::Busy(tokio::task::spawn_blocking(move || {
            let result = write(&mut writer, &chunk);
            (writer, result)
        }));
        Ok(())
    }

    /// Waits for the last write and returns the writer.
    pub async fn into_inner(mut self) -> io::Result<W> {
        self.settle().await?;
        match self {
            Offloaded::Idle(writer) => Ok(writer),
            _ => unreachable!("settled"),
        }
    }
}

impl<W: Write + Send + 'static> Offloaded<W> {
    /// Starts writing all of `chunk` and returns without waiting for it.
    pub async fn write_all(&mut self, chunk: Bytes) -> io::Result<()> {
        self.write(chunk, |w, data| w.write_all(data)).await
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
        assert_eq!(f.pos, 15 << 20);
        // Writes of WRITE_MAX reach the first step exactly; the second, at 16 MiB, is not reached.
        assert_eq!(f.writeback.started, 8 << 20);
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
    fn one_write_hands_the_kernel_at_most_write_max() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = WritebackFile::new(File::create(dir.path().join("f")).unwrap());
        assert_eq!(f.write(&vec![1u8; 1 << 20]).unwrap(), WRITE_MAX);
        assert_eq!(f.write(b"abc").unwrap(), 3);
        assert_eq!(f.written(), WRITE_MAX as u64 + 3);
    }

    #[test]
    fn patching_earlier_bytes_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = WritebackFile::new(File::create(&path).unwrap());
        f.write_all(&[b'x'; 100]).unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        f.write_all(b"hello").unwrap();
        assert_eq!(f.written(), 100);
        assert_eq!(f.seek(SeekFrom::Start(100)).unwrap(), 100);
        f.write_all(b"!").unwrap();
        assert_eq!(f.written(), 101);
        drop(f.finish());
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 101);
        assert_eq!(&back[8..17], b"xxhelloxx");
        assert_eq!(back[100], b'!');
    }

    #[test]
    fn cutting_the_file_moves_its_end_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = WritebackFile::new(File::create(&path).unwrap());
        f.write_all(&vec![1u8; (STEP + 10) as usize]).unwrap();
        assert_eq!(f.writeback.started, STEP);
        f.set_len(100).unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        assert_eq!((f.written(), f.writeback.started), (100, 100));
        f.write_all(b"ab").unwrap();
        assert_eq!(f.written(), 102);
        drop(f.finish());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 102);
    }

    #[test]
    fn small_files_are_left_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut wb = Writeback::from_offset(0);
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
        let mut wb = Writeback::from_offset(0);
        wb.advance(&file, STEP);
        assert!(!wb.enabled);
        assert_eq!(wb.started, STEP);
    }
}
