//! What the walker keeps of an entry's metadata. On Linux an entry is looked up by its name in
//! its folder's descriptor (`statx` relative to it) rather than by its whole path, which the
//! kernel would walk component by component for every entry; elsewhere, and whenever that
//! fails, by its path through the standard library.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use time::OffsetDateTime;

/// What kind of entry it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryType {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
    Unknown,
}

/// The parts of an entry's metadata an item records.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EntryMeta {
    pub kind: EntryType,
    pub len: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub modified: Option<OffsetDateTime>,
    pub created: Option<OffsetDateTime>,
    /// Status change time in nanoseconds since the epoch.
    pub ctime_nanos: i128,
}

impl EntryMeta {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryType::Dir
    }
}

impl From<&Metadata> for EntryMeta {
    fn from(meta: &Metadata) -> Self {
        let t = meta.file_type();
        let kind = if t.is_file() {
            EntryType::File
        } else if t.is_dir() {
            EntryType::Dir
        } else if t.is_symlink() {
            EntryType::Symlink
        } else if t.is_fifo() {
            EntryType::Fifo
        } else if t.is_socket() {
            EntryType::Socket
        } else if t.is_block_device() {
            EntryType::BlockDevice
        } else if t.is_char_device() {
            EntryType::CharDevice
        } else {
            EntryType::Unknown
        };
        EntryMeta {
            kind,
            len: meta.len(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
            modified: meta.modified().ok().map(OffsetDateTime::from),
            created: meta.created().ok().map(OffsetDateTime::from),
            ctime_nanos: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        }
    }
}

/// The metadata of `name` in the folder `folder` (an `O_PATH` descriptor), not following a
/// symbolic link, as `std::fs::symlink_metadata` would give it.
#[cfg(target_os = "linux")]
pub(crate) fn stat_at(
    folder: &std::os::fd::OwnedFd,
    name: &std::ffi::OsStr,
) -> std::io::Result<EntryMeta> {
    use std::os::fd::AsRawFd;
    let buf = ferry_core::folders::c_name(name)?;
    // SAFETY: an all-zero statx is a valid value of the plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `buf` is NUL-terminated, `folder` is open, `st` is writable.
    let rc = unsafe {
        libc::statx(
            folder.as_raw_fd(),
            buf.as_ptr().cast(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Like the standard library: without the basic fields the answer is not usable.
    if st.stx_mask & libc::STATX_BASIC_STATS != libc::STATX_BASIC_STATS {
        return Err(std::io::Error::other(
            "statx gave less than the basic fields",
        ));
    }
    let time = |t: libc::statx_timestamp| {
        OffsetDateTime::from_unix_timestamp_nanos(
            t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128,
        )
        .ok()
    };
    let kind = match u32::from(st.stx_mode) & libc::S_IFMT {
        libc::S_IFREG => EntryType::File,
        libc::S_IFDIR => EntryType::Dir,
        libc::S_IFLNK => EntryType::Symlink,
        libc::S_IFIFO => EntryType::Fifo,
        libc::S_IFSOCK => EntryType::Socket,
        libc::S_IFBLK => EntryType::BlockDevice,
        libc::S_IFCHR => EntryType::CharDevice,
        _ => EntryType::Unknown,
    };
    Ok(EntryMeta {
        kind,
        len: st.stx_size,
        mode: u32::from(st.stx_mode),
        uid: st.stx_uid,
        gid: st.stx_gid,
        dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        nlink: u64::from(st.stx_nlink),
        modified: time(st.stx_mtime),
        created: if st.stx_mask & libc::STATX_BTIME != 0 {
            time(st.stx_btime)
        } else {
            None
        },
        ctime_nanos: st.stx_ctime.tv_sec as i128 * 1_000_000_000 + st.stx_ctime.tv_nsec as i128,
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn stat_at_agrees_with_the_standard_library() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("file"), b"12345").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.join("dangling")).unwrap();
        let folder: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)
            .unwrap()
            .into();
        for name in ["file", "sub", "link", "dangling"] {
            let ours = stat_at(&folder, name.as_ref()).unwrap();
            let std = EntryMeta::from(&std::fs::symlink_metadata(dir.join(name)).unwrap());
            assert_eq!(ours, std, "{name}");
        }
        assert_eq!(stat_at(&folder, "file".as_ref()).unwrap().len, 5);
        assert_eq!(
            stat_at(&folder, "link".as_ref()).unwrap().kind,
            EntryType::Symlink
        );
        let missing = stat_at(&folder, "missing".as_ref()).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
