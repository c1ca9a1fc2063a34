//! Opening a QMP socket safely: the path is walked without following a
//! symbolic link, the socket is reached through the directory's fd, and the
//! peer is checked with `SO_PEERCRED` before anything is sent.
//!
//! Why: the VM owns its runtime and `qmp/` directories, so a compromised
//! guest can replace a socket with a link to another VM's socket (or its own
//! listener bound by another uid); root's `machina shutdown` would then stop
//! the other VM. A link anywhere in the path is refused, a socket swapped
//! while connecting is refused, and a listener that is not the VM's own uid
//! and gid is refused.
//!
//! QEMU creates the socket file at `bind()` and listens a moment later, so
//! during start-up `ENOENT` (no file yet) and `ECONNREFUSED` (not listening
//! yet) mean "not yet": [`connect`] retries them until its timeout.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::error::QmpError;

/// The identity a QMP socket's listener must have: the VM's own uid and gid
/// (QEMU listens after the launcher dropped to them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The VM's uid.
    pub uid: u32,
    /// The VM's gid.
    pub gid: u32,
}

/// Why one attempt failed.
enum Attempt {
    /// Not there yet, or not listening yet: retry within the timeout.
    NotYet(QmpError),
    /// Final.
    Fail(QmpError),
}

fn connect_error(path: &Path, e: std::io::Error) -> QmpError {
    QmpError::Connect {
        path: path.to_owned(),
        source: Arc::new(e),
    }
}

fn unsafe_socket(path: &Path, reason: impl Into<String>) -> QmpError {
    QmpError::UnsafeSocket {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Opens the directory holding the socket, one component at a time with
/// `O_NOFOLLOW`: a symbolic link anywhere on the way is refused.
fn open_dir(path: &Path, dir: &Path) -> Result<OwnedFd, Attempt> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = openat(
        AT_FDCWD,
        if dir.is_absolute() { "/" } else { "." },
        flags,
        Mode::empty(),
    )
    .map_err(|e| Attempt::Fail(connect_error(path, e.into())))?;
    let mut walked = PathBuf::new();
    for c in dir.components() {
        let name = match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Prefix(_) => continue,
            Component::ParentDir => {
                return Err(Attempt::Fail(unsafe_socket(
                    path,
                    "the path contains \"..\"",
                )))
            }
            Component::Normal(n) => n,
        };
        walked.push(name);
        fd = match openat(&fd, name, flags, Mode::empty()) {
            Ok(next) => next,
            // A directory that does not exist: the VM is not running (the
            // launcher makes them before QEMU starts), no point waiting.
            Err(Errno::ENOENT) => {
                return Err(Attempt::Fail(connect_error(
                    path,
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                )))
            }
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(Attempt::Fail(unsafe_socket(
                    path,
                    format!("{} is not a directory (a symbolic link?)", dir.display()),
                )))
            }
            Err(e) => return Err(Attempt::Fail(connect_error(path, e.into()))),
        };
    }
    Ok(fd)
}

/// `lstat` of the socket itself, relative to its directory.
fn stat_socket(path: &Path, dir: &OwnedFd, name: &std::ffi::OsStr) -> Result<FileStat, Attempt> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK => {
            Ok(st)
        }
        Ok(st) => {
            let what = if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
                "is a symbolic link, not a socket machina created"
            } else {
                "is not a socket"
            };
            Err(Attempt::Fail(unsafe_socket(path, what)))
        }
        Err(Errno::ENOENT) => Err(Attempt::NotYet(connect_error(
            path,
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ))),
        Err(e) => Err(Attempt::Fail(connect_error(path, e.into()))),
    }
}

async fn attempt(path: &Path, peer: Option<PeerIdentity>) -> Result<UnixStream, Attempt> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            },
            n,
        ),
        _ => return Err(Attempt::Fail(unsafe_socket(path, "not a socket path"))),
    };
    let dirfd = open_dir(path, dir)?;
    let before = stat_socket(path, &dirfd, name)?;
    // Through the directory's fd: the directory walked above is the one
    // connected in, whatever is renamed meanwhile.
    let mut via = PathBuf::from(format!("/proc/self/fd/{}", dirfd.as_raw_fd()));
    via.push(std::ffi::OsStr::from_bytes(name.as_bytes()));
    let stream = match UnixStream::connect(&via).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(Attempt::NotYet(connect_error(path, e)))
        }
        Err(e) => return Err(Attempt::Fail(connect_error(path, e))),
    };
    // The name still denotes the socket inode checked before: a swap for a
    // link between the check and connect(2) is refused.
    match stat_socket(path, &dirfd, name) {
        Ok(after) if after.st_dev == before.st_dev && after.st_ino == before.st_ino => {}
        Ok(_) | Err(Attempt::NotYet(_)) => {
            return Err(Attempt::Fail(unsafe_socket(
                path,
                "the socket was replaced while connecting",
            )))
        }
        Err(e) => return Err(e),
    }
    if let Some(want) = peer {
        let cred = getsockopt(&stream.as_fd(), PeerCredentials)
            .map_err(|e| Attempt::Fail(connect_error(path, e.into())))?;
        if cred.uid() != want.uid || cred.gid() != want.gid {
            return Err(Attempt::Fail(QmpError::WrongPeer {
                path: path.to_owned(),
                uid: cred.uid(),
                gid: cred.gid(),
                expected: want,
            }));
        }
    }
    Ok(stream)
}

/// Connects to the QMP socket at `path` as described in the module doc,
/// retrying "not yet" until `limit` has passed. After the limit, the last
/// `ENOENT`/`ECONNREFUSED` is returned ([`QmpError::is_not_running`]).
pub async fn connect(
    path: &Path,
    peer: Option<PeerIdentity>,
    limit: Duration,
) -> Result<UnixStream, QmpError> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let tried = tokio::time::timeout(left.max(Duration::from_millis(1)), attempt(path, peer));
        match tried.await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(Attempt::Fail(e))) => return Err(e),
            Ok(Err(Attempt::NotYet(e))) => {
                if Instant::now() + pause >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(_) => {
                return Err(QmpError::SetupTimeout {
                    path: path.to_owned(),
                    step: "connection",
                    timeout: limit,
                })
            }
        }
    }
}
