//! Files opened by their name in their folder's descriptor (`openat`), the folder kept open
//! while its files are read (`ferry_core::folders`), instead of by their whole path, which the
//! kernel would walk component by component for every file.

use std::fs::File;
use std::io;
use std::path::Path;

/// How many recently used folders stay open.
#[cfg(target_os = "linux")]
const KEPT: usize = 8;

/// Opens files by name in recently used folders ([`ferry_core::folders::OpenFolders`]).
pub(crate) struct FileOpener {
    #[cfg(target_os = "linux")]
    folders: ferry_core::folders::OpenFolders,
}

impl FileOpener {
    pub(crate) fn new() -> Self {
        FileOpener {
            #[cfg(target_os = "linux")]
            folders: ferry_core::folders::OpenFolders::new(KEPT),
        }
    }

    /// Opens the file at `path` for reading, as `File::open` would.
    pub(crate) fn open(&self, path: &Path) -> io::Result<File> {
        #[cfg(target_os = "linux")]
        if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
            if let Ok(folder) = self.folders.get(dir) {
                match open_at(&folder, name) {
                    Ok(file) => return Ok(file),
                    // The folder may have been replaced since it was opened: the path decides,
                    // and gives the error a user would get from it.
                    Err(_) => {
                        self.folders.forget(dir);
                        return File::open(path);
                    }
                }
            }
        }
        File::open(path)
    }

    /// Closes `dir` if it is open: the next file in it is opened by its path (and `dir` anew).
    pub(crate) fn forget(&self, dir: &Path) {
        #[cfg(target_os = "linux")]
        self.folders.forget(dir);
        #[cfg(not(target_os = "linux"))]
        let _ = dir;
    }
}

/// `openat(folder, name, O_RDONLY | O_CLOEXEC)`.
#[cfg(target_os = "linux")]
fn open_at(folder: &std::os::fd::OwnedFd, name: &std::ffi::OsStr) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = ferry_core::folders::c_name(name)?;
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

    fn read(folders: &FileOpener, path: &Path) -> io::Result<String> {
        let mut text = String::new();
        folders.open(path)?.read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn opens_files_as_their_paths_do() {
        let tmp = tempfile::tempdir().unwrap();
        let folders = FileOpener::new();
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
        let folders = FileOpener::new();
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
