//! Folders kept open while their files are read: a file is then opened by its name in its
//! folder's descriptor (`openat`) instead of by its whole path, which the kernel would walk
//! component by component for every file. Files come folder by folder in listing order, so a
//! few recent folders are enough.

use std::fs::File;
use std::io;
use std::path::Path;

/// How many recently used folders stay open.
#[cfg(target_os = "linux")]
const KEPT: usize = 8;

/// Recently used folders, opened `O_PATH` (no read permission needed, nothing to read).
pub(crate) struct OpenFolders {
    #[cfg(target_os = "linux")]
    recent: std::sync::Mutex<
        std::collections::VecDeque<(std::path::PathBuf, std::sync::Arc<std::os::fd::OwnedFd>)>,
    >,
}

impl OpenFolders {
    pub(crate) fn new() -> Self {
        OpenFolders {
            #[cfg(target_os = "linux")]
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(KEPT)),
        }
    }

    /// Opens the file at `path` for reading, as `File::open` would.
    pub(crate) fn open(&self, path: &Path) -> io::Result<File> {
        #[cfg(target_os = "linux")]
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            if let Ok(folder) = self.folder(dir) {
                match open_at(&folder, name) {
                    Ok(file) => return Ok(file),
                    // The folder may have been replaced since it was opened: the path decides,
                    // and gives the error a user would get from it.
                    Err(_) => {
                        self.forget(dir);
                        return File::open(path);
                    }
                }
            }
        }
        File::open(path)
    }

    #[cfg(target_os = "linux")]
    fn folder(&self, dir: &Path) -> io::Result<std::sync::Arc<std::os::fd::OwnedFd>> {
        use std::os::unix::ffi::OsStrExt;
        let key = dir.as_os_str().as_bytes();
        {
            let recent = self.recent.lock().expect("open folders lock");
            if let Some((_, fd)) = recent.iter().find(|(p, _)| p.as_os_str().as_bytes() == key) {
                return Ok(fd.clone());
            }
        }
        let fd = std::sync::Arc::new(open_folder(dir)?);
        let mut recent = self.recent.lock().expect("open folders lock");
        if recent.len() >= KEPT {
            recent.pop_back();
        }
        recent.push_front((dir.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    /// Closes `dir` if it is open: the next file in it is opened by its path (and `dir` anew).
    pub(crate) fn forget(&self, dir: &Path) {
        #[cfg(target_os = "linux")]
        self.recent
            .lock()
            .expect("open folders lock")
            .retain(|(p, _)| p != dir);
        #[cfg(not(target_os = "linux"))]
        let _ = dir;
    }
}

/// `dir` opened `O_PATH` (nothing to read, no read permission needed), to look names up in.
#[cfg(target_os = "linux")]
pub(crate) fn open_folder(dir: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?
        .into())
}

/// `name` NUL-terminated on the stack, for a system call that takes a name in a folder. Names
/// are at most 255 bytes on Linux filesystems; a longer one (or one with a NUL) is an error,
/// which sends the caller to the path.
#[cfg(target_os = "linux")]
pub(crate) fn c_name(name: &std::ffi::OsStr) -> io::Result<[u8; 256]> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    let mut buf = [0u8; 256];
    if bytes.len() >= buf.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(buf)
}

/// `openat(folder, name, O_RDONLY | O_CLOEXEC)`.
#[cfg(target_os = "linux")]
fn open_at(folder: &std::os::fd::OwnedFd, name: &std::ffi::OsStr) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = c_name(name)?;
    // SAFETY: `name` is NUL-terminated; `folder` is an open descriptor.
    let fd = unsafe {
        libc::openat(
            folder.as_raw_fd(),
            name.as_ptr().cast(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read(folders: &OpenFolders, path: &Path) -> io::Result<String> {
        let mut text = String::new();
        folders.open(path)?.read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn opens_files_as_their_paths_do() {
        let tmp = tempfile::tempdir().unwrap();
        let folders = OpenFolders::new();
        for i in 0..20 {
            let dir = tmp.path().join(format!("d{i}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("f"), format!("file {i}")).unwrap();
        }
        // More folders than are kept open, twice over: each file is its own.
        for _ in 0..2 {
            for i in 0..20 {
                let path = tmp.path().join(format!("d{i}")).join("f");
                assert_eq!(read(&folders, &path).unwrap(), format!("file {i}"));
            }
        }
        let missing = folders
            .open(&tmp.path().join("d1").join("nope"))
            .unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let long = "x".repeat(300);
        let err = folders.open(&tmp.path().join("d1").join(long)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    }

    #[test]
    fn a_folder_replaced_after_it_was_opened_is_read_by_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let folders = OpenFolders::new();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), "old").unwrap();
        assert_eq!(read(&folders, &dir.join("f")).unwrap(), "old");
        std::fs::rename(&dir, tmp.path().join("gone")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("g"), "new").unwrap();
        assert_eq!(read(&folders, &dir.join("g")).unwrap(), "new");
    }
}
