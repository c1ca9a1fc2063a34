//! Host actions `machina-launch` performs for one VM, each beside its undo.
//!
//! Every action returns a guard that holds what it created or changed. A
//! guard undoes its action when dropped (or through its `undo` method), so a
//! launch that fails half-way unwinds by simply returning: the guards drop
//! in reverse order. A launch that succeeds never drops them: it execs QEMU,
//! and what must outlive the launcher (the TAP and vhost fds) is passed to
//! QEMU. What is left after QEMU ends is removed by [`teardown::teardown`].
//!
//! Every action is idempotent, acts through file descriptors rather than
//! paths where it can, and never follows a symbolic link as root except in
//! sysfs, which only the kernel writes.

pub mod fs;
pub mod grant;
pub mod kvm;
pub mod link;
pub mod lock;
pub mod mdev;
pub mod netns;
pub mod privdrop;
pub mod procs;
pub mod reach;
pub mod runtime_dir;
pub mod sys;
pub mod sysfs;
pub mod tap;
pub mod teardown;
pub mod tpm;

use std::io;
use std::path::{Path, PathBuf};

/// Why a host action failed. Every message is one line naming the path or
/// object concerned; the launcher prefixes the VM and the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a path failed.
    #[error("{path}: {op}: {source}", path = path.display())]
    Io {
        /// What was being done (`open`, `chown`, …).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A system call not tied to a path failed.
    #[error("{op}: {source}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A symbolic link was found where machina refuses to follow one.
    #[error("{0}: a symbolic link is in the path; machina never follows symbolic links as root (use the real path)")]
    Symlink(PathBuf),
    /// A file has more than one hard link.
    #[error("{path}: has {nlink} hard links; machina refuses to change a file reachable under another name")]
    HardLink {
        /// The file.
        path: PathBuf,
        /// Its link count.
        nlink: u64,
    },
    /// A file is of a type the action does not accept.
    #[error("{path}: is a {found}, expected {expected}")]
    WrongType {
        /// The file.
        path: PathBuf,
        /// What it is.
        found: &'static str,
        /// What was wanted.
        expected: &'static str,
    },
    /// A directory on the way to a path is writable by others or owned by
    /// someone other than root, so its contents could change under us.
    #[error("{0}: is not owned by root or is writable by group/others without the sticky bit; refusing to use it")]
    UnsafeDir(PathBuf),
    /// The bridge of a TAP does not exist.
    #[error("bridge {0:?} not found")]
    BridgeNotFound(String),
    /// The bridge of a TAP is some other kind of interface.
    #[error("interface {0:?} is not a bridge")]
    NotABridge(String),
    /// An interface with the TAP's name already exists.
    #[error("interface {0:?} already exists; is the VM already running? (`machina teardown` removes leftovers)")]
    InterfaceExists(String),
    /// `/dev/vhost-net` is missing.
    #[error("/dev/vhost-net is missing: load the vhost_net module (`modprobe vhost_net`) or set \"qemu\": {{\"vhost\": false}} in the host file")]
    NoVhostNet,
    /// `/dev/kvm` cannot be reached through a group.
    #[error("{0}")]
    Kvm(String),
    /// A mediated device could not be prepared.
    #[error("{0}")]
    Mdev(String),
    /// A lock is held by someone else.
    #[error("{0}")]
    Busy(String),
    /// Anything else the plan asks for that cannot be done.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// An [`Error::Io`] from an error value.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Result of a host action.
pub type Result<T> = std::result::Result<T, Error>;
