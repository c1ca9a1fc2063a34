//! Lock files: `flock` on an fd, with a bounded wait and a safe unlink.
//!
//! The lock file is created in a root-owned directory held by fd. Whoever
//! removes a lock file does so while holding the lock, so after taking the
//! lock a holder checks the file is still linked at its path (and retries
//! otherwise): two processes can never both believe they hold it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::fs::{cstr, fstat, openat_nofollow};
use super::{Error, Result};

/// A held lock. Released when dropped (the file stays); [`FileLock::remove`]
/// also unlinks it.
#[derive(Debug)]
pub struct FileLock {
    fd: OwnedFd,
    dir: OwnedFd,
    name: PathBuf,
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock `name` in directory `dir` (shown as `dir_path`),
    /// waiting up to `wait`. On timeout the error is [`Error::Busy`] with
    /// `busy` as its message.
    pub fn acquire(
        dir: &OwnedFd,
        dir_path: &Path,
        name: &str,
        wait: Duration,
        busy: impl FnOnce() -> String,
    ) -> Result<FileLock> {
        let path = dir_path.join(name);
        let deadline = Instant::now() + wait;
        let mut attempt: u32 = 0;
        loop {
            let fd = openat_nofollow(
                dir.as_raw_fd(),
                Path::new(name),
                // Read-only is enough for flock, and a holder (QEMU keeps
                // the VM's lock) cannot write into the file.
                libc::O_RDONLY | libc::O_CREAT,
                0o600,
            )?;
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(Error::io("lock", &path, err));
                }
                if Instant::now() >= deadline {
                    return Err(Error::Busy(busy()));
                }
                attempt = (attempt + 1).min(20);
                std::thread::sleep(Duration::from_millis(2 * attempt as u64));
                continue;
            }
            // Still the file at the path? If a remover unlinked it between
            // our open and flock, start over with a fresh file.
            let st = fstat(&fd, &path)?;
            if st.st_nlink == 0 || !same_file_at(dir, name, &st) {
                continue;
            }
            if st.st_uid != 0
                || st.st_mode & 0o022 != 0
                || st.st_mode & libc::S_IFMT != libc::S_IFREG
            {
                return Err(Error::UnsafeDir(path));
            }
            // Dup the directory so the lock can unlink relative to it later.
            let dir = dir.try_clone().map_err(|e| Error::io("dup", dir_path, e))?;
            return Ok(FileLock {
                fd,
                dir,
                name: PathBuf::from(name),
                path,
            });
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked fd (close-on-exec), for a holder that must keep the lock
    /// past `execve`.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Unlinks the lock file (still holding the lock), then releases it.
    pub fn remove(self) {
        if let Ok(st) = fstat(&self.fd, &self.path) {
            if same_file_at(&self.dir, self.name.to_str().unwrap_or(""), &st) {
                if let Ok(c) = cstr(&self.name) {
                    // SAFETY: unlinkat relative to a directory fd we hold.
                    unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) };
                }
            }
        }
        // Dropping self closes the fd, which releases the flock.
    }
}

/// Whether `name` in `dir` is (without following links) the file `st`.
fn same_file_at(dir: &OwnedFd, name: &str, st: &libc::stat) -> bool {
    let Ok(c) = cstr(Path::new(name)) else {
        return false;
    };
    // SAFETY: st2 is written by the kernel.
    let mut st2: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st2,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    rc == 0 && st2.st_dev == st.st_dev && st2.st_ino == st.st_ino
}
