//! Locks: `flock` on directories in [`crate::plan::LOCK_DIR`], with a
//! bounded wait and a safe removal.
//!
//! A VM's lock is the directory `/run/machina/.lock/vm.<vm>`; the host-wide
//! mdev lock is `/run/machina/.lock` itself. Directories, because `flock`
//! works on a read-only fd and systemd can create one for the unit
//! (`RuntimeDirectory=`) where the unit's read-only `/run` forbids creating
//! files. VM names start with a letter or digit, so no VM's runtime
//! directory is, or is inside, the lock directory.
//!
//! Whoever removes a lock does so while holding it, so after taking the
//! lock a holder checks it is still linked at its path (and retries
//! otherwise): two processes can never both believe they hold it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fs::{cstr, fstat, mkdir_at, open_nofollow, openat_nofollow, stat_at, unlink_at};
use super::{Error, Result};

/// A held lock. Released when dropped (the directory stays);
/// [`FileLock::remove`] also removes it.
#[derive(Debug)]
pub struct FileLock {
    fd: OwnedFd,
    /// The directory holding it and its name there, when it can be removed.
    entry: Option<(OwnedFd, PathBuf)>,
    path: PathBuf,
}

/// `flock(LOCK_EX|LOCK_NB)`. Released when the fd (and every copy of it,
/// such as QEMU's) is closed.
fn try_flock(fd: &OwnedFd, path: &Path) -> Result<bool> {
    #[allow(deprecated)] // Flock<T> would own the fd, which QEMU inherits.
    match nix::fcntl::flock(fd.as_raw_fd(), nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(Error::io("lock", path, e.into())),
    }
}

fn backoff(attempt: &mut u32) {
    *attempt = (*attempt + 1).min(20);
    std::thread::sleep(Duration::from_millis(2 * *attempt as u64));
}

/// A lock directory must be root's alone.
fn check_owner(st: &libc::stat, path: &Path) -> Result<()> {
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 || st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::UnsafeDir(path.to_owned()));
    }
    Ok(())
}

impl FileLock {
    /// Takes the lock directory `name` in directory `dir` (shown as
    /// `dir_path`), creating it (root, 0700) if missing, waiting up to
    /// `wait`. On timeout the error is [`Error::Busy`] with `busy` as its
    /// message.
    pub fn acquire(
        dir: &OwnedFd,
        dir_path: &Path,
        name: &str,
        wait: Duration,
        busy: impl FnOnce() -> String,
    ) -> Result<FileLock> {
        let path = dir_path.join(name);
        let cname = cstr(Path::new(name))?;
        let deadline = Instant::now() + wait;
        let mut attempt: u32 = 0;
        loop {
            // EEXIST is the common case; an error (EROFS under the unit,
            // where systemd made it) shows in the open below if it matters.
            let _ = mkdir_at(dir, &cname, 0o700, &path);
            let fd = openat_nofollow(
                dir.as_fd(),
                Path::new(name),
                // Read-only is enough for flock, and a holder (QEMU keeps
                // the VM's lock) can do nothing with it.
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )?;
            if !try_flock(&fd, &path)? {
                if Instant::now() >= deadline {
                    return Err(Error::Busy(busy()));
                }
                backoff(&mut attempt);
                continue;
            }
            // Still the directory at the path? If a remover took it away
            // between our open and flock, start over with a fresh one.
            let st = fstat(&fd, &path)?;
            if st.st_nlink == 0 || !same_file_at(dir, name, &st) {
                continue;
            }
            check_owner(&st, &path)?;
            let dir = dir.try_clone().map_err(|e| Error::io("dup", dir_path, e))?;
            return Ok(FileLock {
                fd,
                entry: Some((dir, PathBuf::from(name))),
                path,
            });
        }
    }

    /// Takes the lock on the existing root-owned directory `path` itself
    /// (never removed), waiting up to `wait`.
    pub fn acquire_dir(
        path: &Path,
        wait: Duration,
        busy: impl FnOnce() -> String,
    ) -> Result<FileLock> {
        let fd = open_nofollow(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        check_owner(&fstat(&fd, path)?, path)?;
        let deadline = Instant::now() + wait;
        let mut attempt: u32 = 0;
        while !try_flock(&fd, path)? {
            if Instant::now() >= deadline {
                return Err(Error::Busy(busy()));
            }
            backoff(&mut attempt);
        }
        Ok(FileLock {
            fd,
            entry: None,
            path: path.to_owned(),
        })
    }

    /// The lock's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked fd (close-on-exec), for a holder that must keep the lock
    /// past `execve`.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Removes the lock directory (still holding the lock), then releases
    /// it. Under a unit whose `RuntimeDirectory=` it is, it is a mount point
    /// (EBUSY) that systemd removes itself.
    pub fn remove(self) {
        if let (Some((dir, name)), Ok(st)) = (&self.entry, fstat(&self.fd, &self.path)) {
            if same_file_at(dir, name.to_str().unwrap_or(""), &st) {
                if let Ok(c) = cstr(name) {
                    let _ = unlink_at(dir, &c, true);
                }
            }
        }
        // Dropping self closes the fd, which releases the flock.
    }
}

/// Whether `name` in `dir` is (without following links) the file `st`.
pub fn same_file_at(dir: &OwnedFd, name: &str, st: &libc::stat) -> bool {
    let Ok(c) = cstr(Path::new(name)) else {
        return false;
    };
    stat_at(dir, &c).is_ok_and(|st2| st2.st_dev == st.st_dev && st2.st_ino == st.st_ino)
}
