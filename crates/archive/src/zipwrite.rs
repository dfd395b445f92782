//! A streaming zip writer made for bags: entries go straight into the archive (no second copy
//! of the bag on disk), zip64 whenever sizes or offsets need it, stored or deflated, UTF-8
//! names, Unix modes and UTC modification times.
//!
//! Why not the `zip` crate's writer: a bag export must be resumable after a kill, and must not
//! hold the central directory in memory for a million entries. Here each finished entry's
//! central-directory record is appended to a *spool* file beside the archive; the spool is both
//! the resume journal (entries it lists are complete; the archive is cut back to the end of the
//! last one) and, at the end, the source of the central directory. Reading zips is left to the
//! `zip` crate.
//!
//! Local headers carry the real CRC and sizes (patched in place after a streamed entry), so no
//! data descriptors are used: Java's `ZipInputStream` and other streaming readers reject stored
//! entries with descriptors.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use ferry_core::writeback::WritebackFile;
use flate2::{Compress, Compression, FlushCompress};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const FLAG_UTF8: u16 = 1 << 11;
const METHOD_STORED: u16 = 0;
const METHOD_DEFLATE: u16 = 8;
/// Made by "Unix" (3), spec version 4.5 (zip64).
const VERSION_MADE_BY: u16 = (3 << 8) | 45;
/// Entries whose size may reach this are written with a zip64 local header.
pub const ZIP64_THRESHOLD: u64 = 0xF000_0000;

/// What describes an entry besides its bytes.
#[derive(Debug, Clone)]
pub struct EntryMeta {
    /// Full name inside the archive (`bag/data/…`), `/`-separated, UTF-8.
    pub name: String,
    /// Modification time.
    pub modified: OffsetDateTime,
    /// Unix permission bits (0o644 for files).
    pub mode: u32,
    /// Deflate instead of store.
    pub deflate: bool,
}

/// A finished entry's central-directory facts; one JSON line of the spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CdEntry {
    name: String,
    method: u16,
    crc: u32,
    csize: u64,
    usize: u64,
    offset: u64,
    dos_time: u16,
    dos_date: u16,
    mtime: Option<u32>,
    mode: u32,
    zip64_local: bool,
}

impl CdEntry {
    fn local_header_len(&self) -> u64 {
        30 + self.name.len() as u64 + local_extra_len(self.zip64_local, self.mtime.is_some()) as u64
    }
    /// Offset just past this entry's data.
    fn end(&self) -> u64 {
        self.offset + self.local_header_len() + self.csize
    }
}

fn local_extra_len(zip64: bool, mtime: bool) -> usize {
    (if zip64 { 4 + 16 } else { 0 }) + (if mtime { 4 + 5 } else { 0 })
}

fn dos_datetime(t: OffsetDateTime) -> (u16, u16) {
    let t = t.to_offset(time::UtcOffset::UTC);
    if t.year() < 1980 {
        return (0, (1 << 5) | 1);
    }
    if t.year() > 2107 {
        return ((23 << 11) | (59 << 5) | 29, ((127) << 9) | (12 << 5) | 31);
    }
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    let date =
        (((t.year() - 1980) as u16) << 9) | ((u8::from(t.month()) as u16) << 5) | t.day() as u16;
    (time, date)
}

fn unix_mtime(t: OffsetDateTime) -> Option<u32> {
    u32::try_from(t.unix_timestamp()).ok()
}

/// The archive's file: one writer at a time writes it, in the buffer's whole pieces (see
/// [`WritebackFile::with_write_max`]).
fn zip_file(file: WritebackFile) -> WritebackFile {
    file.with_write_max(usize::MAX)
}

/// A zip archive being written.
pub struct ZipBuilder {
    /// The archive, on its way to disk while it is written (see [`WritebackFile`]).
    out: BufWriter<WritebackFile>,
    pos: u64,
    spool: BufWriter<File>,
    entries: u64,
}

/// An entry whose bytes are being streamed in (size not known in advance).
pub struct StreamEntry {
    cd: CdEntry,
    hasher: crc32fast::Hasher,
    deflater: Option<Compress>,
    scratch: Vec<u8>,
}

/// An entry prepared off the lock: its (possibly compressed) bytes are all in memory.
pub struct PreparedEntry {
    meta: EntryMeta,
    method: u16,
    crc: u32,
    usize: u64,
    data: Vec<u8>,
}

impl PreparedEntry {
    /// Computes the CRC and compresses (when asked and worthwhile) an entry held in memory.
    pub fn new(meta: EntryMeta, content: Vec<u8>) -> Self {
        let crc = crc32fast::hash(&content);
        let usize = content.len() as u64;
        if meta.deflate && !content.is_empty() {
            let mut enc = flate2::write::DeflateEncoder::new(
                Vec::with_capacity(content.len() / 2),
                Compression::default(),
            );
            if enc.write_all(&content).is_ok() {
                if let Ok(compressed) = enc.finish() {
                    if compressed.len() < content.len() {
                        return PreparedEntry {
                            meta,
                            method: METHOD_DEFLATE,
                            crc,
                            usize,
                            data: compressed,
                        };
                    }
                }
            }
        }
        PreparedEntry {
            meta,
            method: METHOD_STORED,
            crc,
            usize,
            data: content,
        }
    }
}

impl ZipBuilder {
    /// Starts a new archive at `zip_path` (truncating it) with its spool at `spool_path`.
    pub fn create(zip_path: &Path, spool_path: &Path) -> io::Result<Self> {
        let out = File::create(zip_path)?;
        let spool = File::create(spool_path)?;
        Ok(ZipBuilder {
            out: BufWriter::with_capacity(1 << 20, zip_file(WritebackFile::new(out))),
            pos: 0,
            spool: BufWriter::new(spool),
            entries: 0,
        })
    }

    /// Reopens an interrupted archive, keeping its first `keep` complete entries (or all the
    /// spool lists, if fewer) and cutting everything after them. Returns the builder and the
    /// number of entries kept.
    pub fn resume(zip_path: &Path, spool_path: &Path, keep: u64) -> io::Result<(Self, u64)> {
        let mut kept = Vec::new();
        let mut spool_len = 0u64;
        if let Ok(f) = File::open(spool_path) {
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            while (kept.len() as u64) < keep {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                match serde_json::from_str::<CdEntry>(&line) {
                    Ok(e) => kept.push(e.end()),
                    Err(_) => break,
                }
                spool_len += n as u64;
            }
        }
        let end = kept.last().copied().unwrap_or(0);
        let out = OpenOptions::new().read(true).write(true).open(zip_path)?;
        if out.metadata()?.len() < end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the partial zip is shorter than its journal says",
            ));
        }
        out.set_len(end)?;
        let mut out = out;
        out.seek(SeekFrom::Start(end))?;
        let out = BufWriter::with_capacity(1 << 20, zip_file(WritebackFile::at(out, end)));
        let spool = OpenOptions::new()
            .write(true)
            .open(spool_path)
            .or_else(|_| File::create(spool_path))?;
        spool.set_len(spool_len)?;
        let mut spool = BufWriter::new(spool);
        spool.seek(SeekFrom::Start(spool_len))?;
        let entries = kept.len() as u64;
        Ok((
            ZipBuilder {
                out,
                pos: end,
                spool,
                entries,
            },
            entries,
        ))
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn write_local_header(&mut self, cd: &CdEntry) -> io::Result<()> {
        let mut h = Vec::with_capacity(cd.local_header_len() as usize);
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&(if cd.zip64_local { 45u16 } else { 20u16 }).to_le_bytes());
        h.extend_from_slice(&FLAG_UTF8.to_le_bytes());
        h.extend_from_slice(&cd.method.to_le_bytes());
        h.extend_from_slice(&cd.dos_time.to_le_bytes());
        h.extend_from_slice(&cd.dos_date.to_le_bytes());
        h.extend_from_slice(&cd.crc.to_le_bytes());
        if cd.zip64_local {
            h.extend_from_slice(&u32::MAX.to_le_bytes());
            h.extend_from_slice(&u32::MAX.to_le_bytes());
        } else {
            h.extend_from_slice(&(cd.csize as u32).to_le_bytes());
            h.extend_from_slice(&(cd.usize as u32).to_le_bytes());
        }
        h.extend_from_slice(&(cd.name.len() as u16).to_le_bytes());
        h.extend_from_slice(
            &(local_extra_len(cd.zip64_local, cd.mtime.is_some()) as u16).to_le_bytes(),
        );
        h.extend_from_slice(cd.name.as_bytes());
        if cd.zip64_local {
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&16u16.to_le_bytes());
            h.extend_from_slice(&cd.usize.to_le_bytes());
            h.extend_from_slice(&cd.csize.to_le_bytes());
        }
        if let Some(mtime) = cd.mtime {
            h.extend_from_slice(&0x5455u16.to_le_bytes());
            h.extend_from_slice(&5u16.to_le_bytes());
            h.push(1);
            h.extend_from_slice(&mtime.to_le_bytes());
        }
        self.out.write_all(&h)?;
        self.pos += h.len() as u64;
        Ok(())
    }

    fn new_cd(&self, meta: &EntryMeta, method: u16, zip64_local: bool) -> io::Result<CdEntry> {
        if meta.name.len() > u16::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "zip entry name longer than 65,535 bytes",
            ));
        }
        let (dos_time, dos_date) = dos_datetime(meta.modified);
        Ok(CdEntry {
            name: meta.name.clone(),
            method,
            crc: 0,
            csize: 0,
            usize: 0,
            offset: self.pos,
            dos_time,
            dos_date,
            mtime: unix_mtime(meta.modified),
            mode: meta.mode,
            zip64_local,
        })
    }

    /// Writes an entry whose bytes are all in memory. It is not part of the archive until
    /// [`ZipBuilder::commit`].
    pub fn write_prepared(&mut self, entry: &PreparedEntry) -> io::Result<CdEntry> {
        let zip64 = entry.usize >= ZIP64_THRESHOLD || entry.data.len() as u64 >= ZIP64_THRESHOLD;
        let mut cd = self.new_cd(&entry.meta, entry.method, zip64)?;
        cd.crc = entry.crc;
        cd.usize = entry.usize;
        cd.csize = entry.data.len() as u64;
        self.write_local_header(&cd)?;
        self.out.write_all(&entry.data)?;
        self.pos += entry.data.len() as u64;
        Ok(cd)
    }

    /// Starts an entry whose bytes will be streamed with [`ZipBuilder::write_stream`].
    /// `size_hint` is the expected uncompressed size; `None` (unknown) or a large size reserves
    /// zip64 fields.
    pub fn begin_stream(
        &mut self,
        meta: &EntryMeta,
        size_hint: Option<u64>,
    ) -> io::Result<StreamEntry> {
        let zip64 = size_hint.is_none_or(|s| s >= ZIP64_THRESHOLD);
        let method = if meta.deflate {
            METHOD_DEFLATE
        } else {
            METHOD_STORED
        };
        let cd = self.new_cd(meta, method, zip64)?;
        self.write_local_header(&cd)?;
        Ok(StreamEntry {
            cd,
            hasher: crc32fast::Hasher::new(),
            deflater: meta
                .deflate
                .then(|| Compress::new(Compression::default(), false)),
            scratch: Vec::new(),
        })
    }

    /// Appends bytes to a streamed entry.
    pub fn write_stream(&mut self, entry: &mut StreamEntry, data: &[u8]) -> io::Result<()> {
        entry.hasher.update(data);
        entry.cd.usize += data.len() as u64;
        match &mut entry.deflater {
            None => {
                self.out.write_all(data)?;
                self.pos += data.len() as u64;
                entry.cd.csize += data.len() as u64;
            }
            Some(deflater) => {
                let mut input = data;
                while !input.is_empty() {
                    entry.scratch.clear();
                    entry.scratch.reserve(input.len().max(64 * 1024));
                    let before_in = deflater.total_in();
                    deflater
                        .compress_vec(input, &mut entry.scratch, FlushCompress::None)
                        .map_err(io::Error::other)?;
                    let consumed = (deflater.total_in() - before_in) as usize;
                    input = &input[consumed..];
                    self.out.write_all(&entry.scratch)?;
                    self.pos += entry.scratch.len() as u64;
                    entry.cd.csize += entry.scratch.len() as u64;
                }
            }
        }
        if !entry.cd.zip64_local
            && (entry.cd.usize >= u32::MAX as u64 || entry.cd.csize >= u32::MAX as u64)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "zip entry grew past 4 GiB although a smaller size was stated",
            ));
        }
        Ok(())
    }

    /// Ends a streamed entry: flushes the compressor and writes the CRC and sizes into its
    /// local header. It is not part of the archive until [`ZipBuilder::commit`].
    pub fn finish_stream(&mut self, mut entry: StreamEntry) -> io::Result<CdEntry> {
        if let Some(deflater) = &mut entry.deflater {
            loop {
                entry.scratch.clear();
                entry.scratch.reserve(64 * 1024);
                let status = deflater
                    .compress_vec(&[], &mut entry.scratch, FlushCompress::Finish)
                    .map_err(io::Error::other)?;
                self.out.write_all(&entry.scratch)?;
                self.pos += entry.scratch.len() as u64;
                entry.cd.csize += entry.scratch.len() as u64;
                if status == flate2::Status::StreamEnd {
                    break;
                }
            }
        }
        entry.cd.crc = entry.hasher.finalize();
        let cd = entry.cd;
        self.out.flush()?;
        let file = self.out.get_mut();
        file.seek(SeekFrom::Start(cd.offset + 14))?;
        let mut patch = Vec::with_capacity(12);
        patch.extend_from_slice(&cd.crc.to_le_bytes());
        if cd.zip64_local {
            file.write_all(&patch)?;
            file.seek(SeekFrom::Start(cd.offset + 30 + cd.name.len() as u64 + 4))?;
            patch.clear();
            patch.extend_from_slice(&cd.usize.to_le_bytes());
            patch.extend_from_slice(&cd.csize.to_le_bytes());
            file.write_all(&patch)?;
        } else {
            patch.extend_from_slice(&(cd.csize as u32).to_le_bytes());
            patch.extend_from_slice(&(cd.usize as u32).to_le_bytes());
            file.write_all(&patch)?;
        }
        file.seek(SeekFrom::Start(self.pos))?;
        Ok(cd)
    }

    /// Discards an entry that was begun but not committed, cutting the archive back to its
    /// start. Only the most recent entry can be discarded.
    pub fn discard(&mut self, offset: u64) -> io::Result<()> {
        self.out.flush()?;
        let file = self.out.get_mut();
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        self.pos = offset;
        Ok(())
    }

    /// The offset a streamed entry started at (for [`ZipBuilder::discard`]).
    pub fn stream_offset(entry: &StreamEntry) -> u64 {
        entry.cd.offset
    }

    /// Makes a written entry part of the archive by recording it in the spool.
    pub fn commit(&mut self, cd: &CdEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(cd).map_err(io::Error::other)?;
        line.push(b'\n');
        self.spool.write_all(&line)?;
        self.entries += 1;
        Ok(())
    }

    /// Flushes the archive and the spool to stable storage (a resume checkpoint).
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().get_ref().sync_data()?;
        self.spool.flush()?;
        self.spool.get_ref().sync_data()
    }

    /// Writes the central directory from the spool and the end records, and syncs. The
    /// archive is complete when this returns; the spool can then be deleted.
    pub fn finish(mut self, spool_path: &Path) -> io::Result<u64> {
        self.spool.flush()?;
        let cd_start = self.pos;
        let reader = BufReader::new(File::open(spool_path)?);
        let mut count = 0u64;
        for line in reader.lines() {
            let cd: CdEntry = serde_json::from_str(&line?)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.write_central_record(&cd)?;
            count += 1;
        }
        if count != self.entries {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "zip spool and archive disagree on the entry count",
            ));
        }
        let cd_size = self.pos - cd_start;
        let need_zip64 =
            count >= u16::MAX as u64 || cd_size >= u32::MAX as u64 || cd_start >= u32::MAX as u64;
        let mut end = Vec::with_capacity(98);
        if need_zip64 {
            let zip64_eocd_offset = self.pos;
            end.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
            end.extend_from_slice(&44u64.to_le_bytes());
            end.extend_from_slice(&VERSION_MADE_BY.to_le_bytes());
            end.extend_from_slice(&45u16.to_le_bytes());
            end.extend_from_slice(&0u32.to_le_bytes());
            end.extend_from_slice(&0u32.to_le_bytes());
            end.extend_from_slice(&count.to_le_bytes());
            end.extend_from_slice(&count.to_le_bytes());
            end.extend_from_slice(&cd_size.to_le_bytes());
            end.extend_from_slice(&cd_start.to_le_bytes());
            end.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
            end.extend_from_slice(&0u32.to_le_bytes());
            end.extend_from_slice(&zip64_eocd_offset.to_le_bytes());
            end.extend_from_slice(&1u32.to_le_bytes());
        }
        end.extend_from_slice(&EOCD_SIG.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        let short_count = count.min(u16::MAX as u64) as u16;
        end.extend_from_slice(&short_count.to_le_bytes());
        end.extend_from_slice(&short_count.to_le_bytes());
        end.extend_from_slice(&(cd_size.min(u32::MAX as u64) as u32).to_le_bytes());
        end.extend_from_slice(&(cd_start.min(u32::MAX as u64) as u32).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.out.write_all(&end)?;
        self.pos += end.len() as u64;
        self.out.flush()?;
        self.out.get_ref().get_ref().sync_all()?;
        Ok(self.pos)
    }

    fn write_central_record(&mut self, cd: &CdEntry) -> io::Result<()> {
        let big_u = cd.usize >= u32::MAX as u64;
        let big_c = cd.csize >= u32::MAX as u64;
        let big_o = cd.offset >= u32::MAX as u64;
        let mut zip64 = Vec::new();
        if big_u {
            zip64.extend_from_slice(&cd.usize.to_le_bytes());
        }
        if big_c {
            zip64.extend_from_slice(&cd.csize.to_le_bytes());
        }
        if big_o {
            zip64.extend_from_slice(&cd.offset.to_le_bytes());
        }
        let mut extra = Vec::new();
        if !zip64.is_empty() {
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&(zip64.len() as u16).to_le_bytes());
            extra.extend_from_slice(&zip64);
        }
        if let Some(mtime) = cd.mtime {
            extra.extend_from_slice(&0x5455u16.to_le_bytes());
            extra.extend_from_slice(&5u16.to_le_bytes());
            extra.push(1);
            extra.extend_from_slice(&mtime.to_le_bytes());
        }
        let needs45 = cd.zip64_local || !zip64.is_empty();
        let mut h = Vec::with_capacity(46 + cd.name.len() + extra.len());
        h.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        h.extend_from_slice(&VERSION_MADE_BY.to_le_bytes());
        h.extend_from_slice(&(if needs45 { 45u16 } else { 20u16 }).to_le_bytes());
        h.extend_from_slice(&FLAG_UTF8.to_le_bytes());
        h.extend_from_slice(&cd.method.to_le_bytes());
        h.extend_from_slice(&cd.dos_time.to_le_bytes());
        h.extend_from_slice(&cd.dos_date.to_le_bytes());
        h.extend_from_slice(&cd.crc.to_le_bytes());
        h.extend_from_slice(&(if big_c { u32::MAX } else { cd.csize as u32 }).to_le_bytes());
        h.extend_from_slice(&(if big_u { u32::MAX } else { cd.usize as u32 }).to_le_bytes());
        h.extend_from_slice(&(cd.name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes()); // comment
        h.extend_from_slice(&0u16.to_le_bytes()); // disk
        h.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        h.extend_from_slice(&((0o100000 | (cd.mode & 0o7777)) << 16).to_le_bytes());
        h.extend_from_slice(&(if big_o { u32::MAX } else { cd.offset as u32 }).to_le_bytes());
        h.extend_from_slice(cd.name.as_bytes());
        h.extend_from_slice(&extra);
        self.out.write_all(&h)?;
        self.pos += h.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn meta(name: &str, deflate: bool) -> EntryMeta {
        EntryMeta {
            name: name.into(),
            modified: time::macros::datetime!(2026-11-28 12:00 UTC),
            mode: 0o644,
            deflate,
        }
    }

    fn read_back(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut archive = zip::ZipArchive::new(File::open(path).unwrap()).unwrap();
        (0..archive.len())
            .map(|i| {
                let mut f = archive.by_index(i).unwrap();
                let mut v = Vec::new();
                f.read_to_end(&mut v).unwrap();
                (f.name().unwrap().to_string(), v)
            })
            .collect()
    }

    #[test]
    fn prepared_and_streamed_entries_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (zp, sp) = (dir.path().join("a.zip"), dir.path().join("a.spool"));
        let mut z = ZipBuilder::create(&zp, &sp).unwrap();
        for (name, deflate) in [("bag/a.txt", false), ("bag/b.txt", true)] {
            let e = PreparedEntry::new(meta(name, deflate), b"hello hello hello hello".to_vec());
            let cd = z.write_prepared(&e).unwrap();
            z.commit(&cd).unwrap();
        }
        for (name, deflate, hint) in [
            ("bag/c.bin", false, Some(300_000)),
            ("bag/d.bin", true, None),
            ("bag/æ ø.txt", false, None),
        ] {
            let mut s = z.begin_stream(&meta(name, deflate), hint).unwrap();
            for i in 0..3u8 {
                z.write_stream(&mut s, &vec![i; 100_000]).unwrap();
            }
            let cd = z.finish_stream(s).unwrap();
            z.commit(&cd).unwrap();
        }
        z.finish(&sp).unwrap();
        let entries = read_back(&zp);
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[1].1, b"hello hello hello hello");
        assert_eq!(entries[3].0, "bag/d.bin");
        assert_eq!(entries[3].1.len(), 300_000);
        assert_eq!(entries[4].0, "bag/æ ø.txt");
    }

    #[test]
    fn discard_and_resume_cut_back_to_committed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (zp, sp) = (dir.path().join("a.zip"), dir.path().join("a.spool"));
        let mut z = ZipBuilder::create(&zp, &sp).unwrap();
        let cd = z
            .write_prepared(&PreparedEntry::new(meta("bag/one", false), b"1".to_vec()))
            .unwrap();
        z.commit(&cd).unwrap();
        let mut s = z.begin_stream(&meta("bag/gone", false), None).unwrap();
        z.write_stream(&mut s, b"partial").unwrap();
        let off = ZipBuilder::stream_offset(&s);
        z.discard(off).unwrap();
        let cd = z
            .write_prepared(&PreparedEntry::new(meta("bag/two", false), b"22".to_vec()))
            .unwrap();
        z.commit(&cd).unwrap();
        // Simulate a kill: a third entry half-written, never committed.
        let mut s = z.begin_stream(&meta("bag/three", false), None).unwrap();
        z.write_stream(&mut s, b"33333").unwrap();
        z.sync().unwrap();
        drop(z);
        let (mut z, kept) = ZipBuilder::resume(&zp, &sp, u64::MAX).unwrap();
        assert_eq!(kept, 2);
        let cd = z
            .write_prepared(&PreparedEntry::new(
                meta("bag/four", true),
                b"4444".to_vec(),
            ))
            .unwrap();
        z.commit(&cd).unwrap();
        z.finish(&sp).unwrap();
        let names: Vec<String> = read_back(&zp).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["bag/one", "bag/two", "bag/four"]);
        // Resume can also keep fewer entries than the spool lists (journal behind spool).
        let (z, kept) = ZipBuilder::resume(&zp, &sp, 1).unwrap();
        assert_eq!(kept, 1);
        z.finish(&sp).unwrap();
        assert_eq!(read_back(&zp).len(), 1);
    }

    #[test]
    fn many_entries_use_zip64_end_records() {
        let dir = tempfile::tempdir().unwrap();
        let (zp, sp) = (dir.path().join("a.zip"), dir.path().join("a.spool"));
        let mut z = ZipBuilder::create(&zp, &sp).unwrap();
        for i in 0..70_000 {
            let cd = z
                .write_prepared(&PreparedEntry::new(meta(&format!("b/{i}"), false), vec![]))
                .unwrap();
            z.commit(&cd).unwrap();
        }
        z.finish(&sp).unwrap();
        let archive = zip::ZipArchive::new(File::open(&zp).unwrap()).unwrap();
        assert_eq!(archive.len(), 70_000);
    }
}
