//! QMP errors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Everything that can go wrong talking to QEMU over QMP.
///
/// Every variant names the socket or the command, so one line tells the user
/// which VM and which step failed (socket paths contain the VM name). It is
/// `Clone` because one session failure is reported to every pending command.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    /// No socket paths were given.
    #[error("no QMP socket available")]
    NoSockets,
    /// `connect(2)` on the socket failed.
    #[error("could not connect to QMP socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The socket path is not what machina made: a symbolic link on the
    /// way, a socket that is not one, or one swapped while connecting.
    #[error("refusing QMP socket {path}: {reason}")]
    UnsafeSocket {
        /// The socket.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The process listening on the socket is not the VM's QEMU (another
    /// uid or gid than the VM's own, as the installed plan says).
    #[error(
        "refusing QMP socket {path}: it is served by uid {uid} gid {gid}, not the VM's own {}:{}",
        expected.uid,
        expected.gid
    )]
    WrongPeer {
        /// The socket.
        path: PathBuf,
        /// The listener's uid.
        uid: u32,
        /// The listener's gid.
        gid: u32,
        /// What the plan says.
        expected: super::socket::PeerIdentity,
    },
    /// A timeout expired while connecting or waiting for the greeting or for
    /// the capabilities negotiation.
    #[error(
        "QMP socket {path}: no {step} within {timeout:?} (is another client using this socket?)"
    )]
    SetupTimeout {
        /// The socket.
        path: PathBuf,
        /// What was awaited: `connection`, `greeting` or `capabilities reply`.
        step: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The first line from the socket was not a QMP greeting.
    #[error("QMP socket {path}: expected a QMP greeting, got {got}")]
    BadGreeting {
        /// The socket.
        path: PathBuf,
        /// What arrived instead.
        got: String,
    },
    /// A command got no reply within its timeout.
    #[error("QMP socket {path}: no reply to {command} within {timeout:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// The QMP error class, e.g. `GenericError`.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The session ended (the socket closed, or the peer misbehaved); the
    /// reason says which.
    #[error("QMP socket {path}: session closed: {reason}")]
    Closed {
        /// The socket.
        path: PathBuf,
        /// Why it ended.
        reason: String,
    },
    /// Writing to the socket failed.
    #[error("QMP socket {path}: write failed: {source}")]
    Write {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// `quit` was sent but the socket stayed open.
    #[error("{name}: QEMU did not exit within {timeout:?} of the quit command")]
    QuitIgnored {
        /// The VM.
        name: String,
        /// How long machina waited after `quit`.
        timeout: Duration,
    },
}

impl QmpError {
    /// Whether this error means the session is gone (socket closed or
    /// unusable), as opposed to a single command failing.
    pub fn is_closed(&self) -> bool {
        matches!(self, QmpError::Closed { .. } | QmpError::Write { .. })
    }

    /// Whether the socket is absent or nobody listens on it: QEMU is not
    /// running (never started, or already exited). A caller such as
    /// `ExecStop=` may treat this as "already stopped".
    pub fn is_not_running(&self) -> bool {
        use std::io::ErrorKind;
        matches!(self, QmpError::Connect { source, .. }
            if matches!(source.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused))
    }
}
