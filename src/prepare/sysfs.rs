//! sysfs as root sees it: every path is resolved by the kernel *beneath*
//! the sysfs root (`openat2` with `RESOLVE_BENEATH`), so the kernel's own
//! relative links inside sysfs work, but no link (planted in a fake tree,
//! or absolute, or climbing out with `..`) can lead root outside it; every
//! read is bounded; writes go only to existing attributes.
//!
//! The root is `/sys`, and must be a sysfs file system. Only a debug build
//! (the test suite's) also accepts another root, and only one reached
//! through directories only root can change: a production (release) build
//! cannot be pointed at a fake tree by any plan.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::fs::{cstr, fstat, read_dir};
use super::{Error, Result};

/// Largest attribute read.
const MAX_ATTR: u64 = 4096;

/// An opened sysfs root.
#[derive(Debug)]
pub struct Sysfs {
    root: OwnedFd,
    path: PathBuf,
}

impl Sysfs {
    /// Opens the sysfs root `path` after the checks in the module
    /// documentation.
    pub fn open(path: &Path) -> Result<Sysfs> {
        if path == Path::new("/sys") {
            let root = super::fs::open_nofollow(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
            let sf = nix::sys::statfs::fstatfs(&root)
                .map_err(|e| Error::io("statfs", path, e.into()))?;
            if sf.filesystem_type() != nix::sys::statfs::SYSFS_MAGIC {
                return Err(Error::Mdev("/sys is not a sysfs file system".into()));
            }
            return Ok(Sysfs {
                root,
                path: path.to_owned(),
            });
        }
        if !cfg!(debug_assertions) {
            return Err(Error::Mdev(format!(
                "sysfs root {} refused: only /sys is used (a fake sysfs is for the test suite's debug builds)",
                path.display()
            )));
        }
        let w = super::fs::walk_checked(path, &|st, dir, _| {
            if super::fs::only_root_writes(st) {
                Ok(())
            } else {
                Err(Error::UnsafeDir(dir.to_owned()))
            }
        })?;
        if w.st.st_uid != 0 || w.st.st_mode & 0o022 != 0 {
            return Err(Error::UnsafeDir(path.to_owned()));
        }
        let root = super::fs::open_nofollow(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(Sysfs {
            root,
            path: path.to_owned(),
        })
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` shown as a full path.
    pub fn show(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens `rel` beneath the root.
    fn open_rel(&self, rel: &Path, flags: i32) -> Result<OwnedFd> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
        let c = cstr(rel)?;
        let how = OpenHow::new()
            .flags(OFlag::from_bits_retain(flags | libc::O_CLOEXEC))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        loop {
            let err = match nix::fcntl::openat2(&self.root, c.as_c_str(), how) {
                Ok(fd) => return Ok(fd),
                Err(e) => std::io::Error::from(e),
            };
            match err.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                Some(libc::EXDEV) | Some(libc::ELOOP) => {
                    return Err(Error::Mdev(format!(
                        "{}: leads outside {}; refused",
                        self.show(rel).display(),
                        self.path.display()
                    )))
                }
                Some(libc::ENOSYS) => {
                    return Err(Error::Mdev(
                        "mediated devices need openat2 (Linux 5.6 or later)".into(),
                    ))
                }
                _ => return Err(Error::io("open", &self.show(rel), err)),
            }
        }
    }

    /// Whether `rel` is a directory.
    pub fn is_dir(&self, rel: &Path) -> bool {
        self.open_rel(rel, libc::O_PATH | libc::O_DIRECTORY).is_ok()
    }

    /// Whether `rel` exists (a final link is not followed).
    pub fn exists(&self, rel: &Path) -> bool {
        self.open_rel(rel, libc::O_PATH | libc::O_NOFOLLOW).is_ok()
    }

    /// The names in directory `rel`, sorted; empty if it cannot be read.
    pub fn list(&self, rel: &Path) -> Vec<String> {
        let Ok(fd) = self.open_rel(rel, libc::O_RDONLY | libc::O_DIRECTORY) else {
            return Vec::new();
        };
        let mut v: Vec<String> = read_dir(&fd, &self.show(rel))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.into_string().ok())
            .take(100_000)
            .collect();
        v.sort();
        v
    }

    /// Reads attribute `rel` (a regular file, at most 4 KiB).
    pub fn read(&self, rel: &Path) -> Result<String> {
        let fd = self.open_rel(rel, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let st = fstat(&fd, &self.show(rel))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::Mdev(format!(
                "{}: is not an attribute file",
                self.show(rel).display()
            )));
        }
        let mut s = String::new();
        std::fs::File::from(fd)
            .take(MAX_ATTR)
            .read_to_string(&mut s)
            .map_err(|e| Error::io("read", &self.show(rel), e))?;
        Ok(s)
    }

    /// Writes `data` to the existing attribute `rel` (never creates one).
    pub fn write(&self, rel: &Path, data: &[u8]) -> Result<()> {
        let fd = self.open_rel(rel, libc::O_WRONLY)?;
        let st = fstat(&fd, &self.show(rel))?;
        // Attributes are regular files (a test's fake tree serves FIFOs).
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt != libc::S_IFREG && fmt != libc::S_IFIFO {
            return Err(Error::Mdev(format!(
                "{}: is not an attribute file",
                self.show(rel).display()
            )));
        }
        std::fs::File::from(fd)
            .write_all(data)
            .map_err(|e| Error::io("write", &self.show(rel), e))
    }

    /// The target of link `rel` (not followed).
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel
            .file_name()
            .ok_or_else(|| Error::Mdev(format!("{}: no name", rel.display())))?;
        let dir = if parent.as_os_str().is_empty() {
            self.root
                .try_clone()
                .map_err(|e| Error::io("dup", &self.path, e))?
        } else {
            self.open_rel(parent, libc::O_PATH | libc::O_DIRECTORY)?
        };
        let c = cstr(Path::new(name))?;
        nix::fcntl::readlinkat(&dir, c.as_c_str())
            .map(PathBuf::from)
            .map_err(|e| Error::io("read link", &self.show(rel), e.into()))
    }
}
