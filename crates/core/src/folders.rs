//! Folders kept open to work on names inside them (Linux): opening, creating or looking up a
//! file by its name in its folder's descriptor costs the kernel one name, not a walk of the
//! whole path. Items come folder by folder, so a few recent folders are enough. Shared by the
//! fs connector (reading) and the bag writer (creating payload files).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The `kept` most recently used folders, opened `O_PATH` (nothing to read, no read
/// permission needed).
pub struct OpenFolders {
    kept: usize,
    recent: Mutex<VecDeque<(PathBuf, Arc<OwnedFd>)>>,
}

impl OpenFolders {
    /// Keeps at most `kept` folders open (at least one).
    pub fn new(kept: usize) -> Self {
        let kept = kept.max(1);
        OpenFolders {
            kept,
            recent: Mutex::new(VecDeque::with_capacity(kept)),
        }
    }

    /// The descriptor of `dir`, opened now unless it is among the recent ones.
    pub fn get(&self, dir: &Path) -> io::Result<Arc<OwnedFd>> {
        let key = dir.as_os_str().as_bytes();
        {
            let recent = self.recent.lock().expect("open folders lock");
            if let Some((_, fd)) = recent.iter().find(|(p, _)| p.as_os_str().as_bytes() == key) {
                return Ok(fd.clone());
            }
        }
        let fd = Arc::new(open_folder(dir)?);
        let mut recent = self.recent.lock().expect("open folders lock");
        if recent.len() >= self.kept {
            recent.pop_back();
        }
        recent.push_front((dir.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    /// Closes `dir` if it is open: the next use opens it anew (by its path).
    pub fn forget(&self, dir: &Path) {
        self.recent
            .lock()
            .expect("open folders lock")
            .retain(|(p, _)| p != dir);
    }
}

/// `dir` opened `O_PATH | O_DIRECTORY`.
pub fn open_folder(dir: &Path) -> io::Result<OwnedFd> {
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
pub fn c_name(name: &OsStr) -> io::Result<[u8; 256]> {
    let bytes = name.as_bytes();
    let mut buf = [0u8; 256];
    if bytes.len() >= buf.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_folders_and_forgets_on_request() {
        let tmp = tempfile::tempdir().unwrap();
        let folders = OpenFolders::new(2);
        let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("d{i}"))).collect();
        for d in &dirs {
            std::fs::create_dir(d).unwrap();
        }
        let first = folders.get(&dirs[0]).unwrap();
        assert!(Arc::ptr_eq(&first, &folders.get(&dirs[0]).unwrap()));
        folders.get(&dirs[1]).unwrap();
        folders.get(&dirs[2]).unwrap();
        // d0 was the least recent of three with room for two: opened anew.
        assert!(!Arc::ptr_eq(&first, &folders.get(&dirs[0]).unwrap()));
        let again = folders.get(&dirs[0]).unwrap();
        folders.forget(&dirs[0]);
        assert!(!Arc::ptr_eq(&again, &folders.get(&dirs[0]).unwrap()));
        assert!(folders.get(&tmp.path().join("missing")).is_err());
        assert_eq!(
            c_name(OsStr::new(&"x".repeat(300)))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENAMETOOLONG)
        );
        assert_eq!(&c_name(OsStr::new("ab")).unwrap()[..3], b"ab\0");
    }
}
