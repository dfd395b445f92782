//! Payload files of a folder bag that get their name only once they are complete.
//!
//! On Linux a new file is opened *unnamed* in the folder it belongs in (`O_TMPFILE`) and linked
//! to its name on commit (`linkat`): until then no name exists, so a kill or crash leaves
//! nothing behind, not even a temporary file. It is also cheaper than what it replaces (a
//! named file in the work area renamed into place), which for tens of thousands of small files
//! was a tenth of an export's time: a rename across folders takes the filesystem's rename lock
//! and walks two paths, and every writer created its file in the same work folder.
//!
//! Both calls name the folder by a descriptor kept open for the folders in use, not by path: a
//! path of seven components is looked up again on every call otherwise.
//!
//! Where the filesystem or the system does not offer unnamed files, a named file in the work
//! area is written and renamed into place, as before; the first refusal switches to that for
//! the rest of the run.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(target_os = "linux")]
use std::{os::fd::OwnedFd, sync::Arc};

/// Folder descriptors kept open at most (they are reopened when needed again).
#[cfg(target_os = "linux")]
const OPEN_FOLDERS: usize = 16;

/// Makes new payload files and puts them in place (one per bag).
pub(crate) struct NewFiles {
    /// Where named temporary files go (the work area's `tmp/`, on the bag's filesystem).
    tmp_dir: PathBuf,
    counter: AtomicU64,
    /// Unnamed files work here (until the first refusal).
    unnamed: AtomicBool,
    /// `linkat(fd, "", …, AT_EMPTY_PATH)` is allowed (it needs CAP_DAC_READ_SEARCH before
    /// Linux 6.10); otherwise the file is linked through `/proc/self/fd`.
    link_empty_path: AtomicBool,
    /// Descriptors (`O_PATH`) of the folders files were made in lately.
    #[cfg(target_os = "linux")]
    folders: ferry_core::folders::OpenFolders,
    /// Whether linking unnamed files was tried yet (see [`NewFiles::probe`]).
    #[cfg(target_os = "linux")]
    probed: std::sync::Once,
}

/// Opens a new unnamed file for writing in `folder`.
#[cfg(target_os = "linux")]
fn open_unnamed(folder: &OwnedFd) -> io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: the folder descriptor is open; the path is a NUL-terminated literal.
    let fd = unsafe {
        libc::openat(
            folder.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor just opened, owned by nothing else.
        Ok(unsafe { File::from_raw_fd(fd) })
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How a new file will get its name.
pub(crate) enum Pending {
    /// Opened unnamed in the folder of its final path (this descriptor).
    #[cfg(target_os = "linux")]
    Unnamed(Arc<OwnedFd>),
    /// A named temporary file, renamed into place.
    Named(PathBuf),
}

impl NewFiles {
    /// New files for a bag whose work area keeps temporary files in `tmp_dir`.
    pub(crate) fn new(tmp_dir: PathBuf) -> Self {
        NewFiles {
            tmp_dir,
            counter: AtomicU64::new(0),
            unnamed: AtomicBool::new(cfg!(target_os = "linux")),
            link_empty_path: AtomicBool::new(true),
            #[cfg(target_os = "linux")]
            folders: ferry_core::folders::OpenFolders::new(OPEN_FOLDERS),
            #[cfg(target_os = "linux")]
            probed: std::sync::Once::new(),
        }
    }

    /// Opens a new, empty file for writing that will become a file in `dir` (which exists).
    pub(crate) fn create(&self, dir: &Path) -> io::Result<(File, Pending)> {
        #[cfg(target_os = "linux")]
        self.probed.call_once(|| self.probe());
        #[cfg(target_os = "linux")]
        if self.unnamed.load(Ordering::Relaxed) {
            let folder = self.folders.get(dir)?;
            match open_unnamed(&folder) {
                Ok(file) => return Ok((file, Pending::Unnamed(folder))),
                // Not offered by this filesystem (EOPNOTSUPP) or kernel (EISDIR, EINVAL).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                    ) =>
                {
                    tracing::debug!(error = %e, "no unnamed files here; using named temporary files");
                    self.unnamed.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_dir.join(n.to_string());
        let file = File::create(&tmp)?;
        Ok((file, Pending::Named(tmp)))
    }

    /// Checks once, in the work area, that an unnamed file can be linked to a name here: a
    /// process that may not link by descriptor (before Linux 6.10, without CAP_DAC_READ_SEARCH)
    /// links through /proc, which a container may lack — and then every item would fail at its
    /// last step. If not, named temporary files are used from the start.
    #[cfg(target_os = "linux")]
    fn probe(&self) {
        let linked = (|| -> io::Result<()> {
            let folder = self.folders.get(&self.tmp_dir)?;
            let file = open_unnamed(&folder)?;
            let name = self.tmp_dir.join(format!("probe-{}", std::process::id()));
            let _ = fs::remove_file(&name);
            self.link(&file, Some(&folder), &name)?;
            fs::remove_file(&name)
        })();
        if let Err(e) = linked {
            tracing::debug!(error = %e, "unnamed files cannot be linked here; using named temporary files");
            self.unnamed.store(false, Ordering::Relaxed);
        }
    }

    /// Gives the complete file its final name, replacing a file already there (an item stored
    /// again because it changed since an interrupted run). `file` must still be open, and
    /// `final_path` in the folder it was created for.
    pub(crate) fn put_in_place(
        &self,
        file: &File,
        pending: &Pending,
        final_path: &Path,
    ) -> io::Result<()> {
        match pending {
            Pending::Named(tmp) => fs::rename(tmp, final_path),
            #[cfg(target_os = "linux")]
            Pending::Unnamed(folder) => match self.link(file, Some(folder), final_path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A link cannot replace a file; a rename can, atomically: link to a named
                    // temporary file first. Rare (only replaced items), so its cost is no matter.
                    let n = self.counter.fetch_add(1, Ordering::Relaxed);
                    let tmp = self.tmp_dir.join(format!("{n}.replacing"));
                    self.link(file, None, &tmp)?;
                    fs::rename(&tmp, final_path).inspect_err(|_| {
                        let _ = fs::remove_file(&tmp);
                    })
                }
                other => other,
            },
        }
    }

    /// Links `file` to `to`: with `folder` (the folder `to` is in), by its name there; else
    /// by its whole path.
    #[cfg(target_os = "linux")]
    fn link(&self, file: &File, folder: Option<&OwnedFd>, to: &Path) -> io::Result<()> {
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let (dir_fd, to) = match (folder, to.file_name()) {
            (Some(folder), Some(name)) => (folder.as_raw_fd(), name.as_bytes()),
            _ => (libc::AT_FDCWD, to.as_os_str().as_bytes()),
        };
        let to = CString::new(to)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))?;
        let fd = file.as_raw_fd();
        if self.link_empty_path.load(Ordering::Relaxed) {
            // SAFETY: fd is open for the duration of the call; both strings are NUL-terminated.
            let rc =
                unsafe { libc::linkat(fd, c"".as_ptr(), dir_fd, to.as_ptr(), libc::AT_EMPTY_PATH) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            // Not allowed for this process (EPERM), or not understood (ENOENT, EINVAL on
            // kernels that ignore the flag): link through /proc from now on.
            if !matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::ENOENT | libc::EINVAL)
            ) {
                return Err(e);
            }
            self.link_empty_path.store(false, Ordering::Relaxed);
        }
        let from = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number");
        // SAFETY: as above.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                dir_fd,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_new_file_has_no_name_until_it_is_put_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, data) = (dir.path().join("tmp"), dir.path().join("data"));
        fs::create_dir_all(&tmp).unwrap();
        fs::create_dir_all(&data).unwrap();
        let files = NewFiles::new(tmp.clone());
        let (mut file, pending) = files.create(&data).unwrap();
        file.write_all(b"payload").unwrap();
        if cfg!(target_os = "linux") {
            assert!(
                !matches!(pending, Pending::Named(_)),
                "tmpfs and ext4 offer O_TMPFILE"
            );
            assert!(names(&data).is_empty() && names(&tmp).is_empty());
        }
        files
            .put_in_place(&file, &pending, &data.join("a.txt"))
            .unwrap();
        drop(file);
        assert_eq!(names(&data), ["a.txt"]);
        assert!(names(&tmp).is_empty());
        assert_eq!(fs::read(data.join("a.txt")).unwrap(), b"payload");

        // An abandoned file leaves nothing behind.
        let (mut file, pending) = files.create(&data).unwrap();
        file.write_all(b"half").unwrap();
        drop(file);
        if let Pending::Named(p) = pending {
            fs::remove_file(p).unwrap();
        }
        assert_eq!(names(&data), ["a.txt"]);
    }

    #[test]
    fn putting_in_place_replaces_an_earlier_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        fs::write(dir.path().join("x"), b"old").unwrap();
        let files = NewFiles::new(tmp.clone());
        let (mut file, pending) = files.create(dir.path()).unwrap();
        file.write_all(b"new").unwrap();
        files
            .put_in_place(&file, &pending, &dir.path().join("x"))
            .unwrap();
        assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"new");
        assert!(names(&tmp).is_empty(), "no temporary name is left");
    }

    #[test]
    fn named_temporary_files_are_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let files = NewFiles::new(tmp.clone());
        files.unnamed.store(false, Ordering::Relaxed);
        let (mut file, pending) = files.create(dir.path()).unwrap();
        assert!(matches!(pending, Pending::Named(_)));
        assert_eq!(names(&tmp).len(), 1);
        file.write_all(b"z").unwrap();
        files
            .put_in_place(&file, &pending, &dir.path().join("z"))
            .unwrap();
        assert!(names(&tmp).is_empty());
        assert_eq!(fs::read(dir.path().join("z")).unwrap(), b"z");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_first_file_checks_that_linking_works_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let files = NewFiles::new(tmp.clone());
        let (_file, pending) = files.create(dir.path()).unwrap();
        assert!(matches!(pending, Pending::Unnamed(_)));
        assert!(names(&tmp).is_empty(), "the probe's file is gone");

        // Where the probe cannot link (here: its folder is missing), named files are used.
        let files = NewFiles::new(dir.path().join("missing"));
        assert!(
            files.create(dir.path()).is_err(),
            "the named fallback needs its folder"
        );
        assert!(!files.unnamed.load(Ordering::Relaxed));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linking_through_proc_works_too() {
        let dir = tempfile::tempdir().unwrap();
        let files = NewFiles::new(dir.path().to_path_buf());
        files.link_empty_path.store(false, Ordering::Relaxed);
        let (mut file, pending) = files.create(dir.path()).unwrap();
        file.write_all(b"via proc").unwrap();
        files
            .put_in_place(&file, &pending, &dir.path().join("p"))
            .unwrap();
        assert_eq!(fs::read(dir.path().join("p")).unwrap(), b"via proc");
    }
}
