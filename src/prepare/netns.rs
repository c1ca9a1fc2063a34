//! Network isolation of QEMU: a VM that listens on no TCP address gets a
//! network namespace of its own, entered by the launcher after its TAP fds
//! are open and before it gives up root. QEMU keeps those fds (a TAP stays
//! in the namespace it was created in, on its bridge) and its UNIX sockets
//! (path sockets are not scoped by network namespace), but sees only a
//! loopback interface that is down: it cannot open any other connection.
//!
//! Creating a network namespace costs the kernel a few milliseconds
//! (loopback device, per-namespace sysctls and tables), about a tenth of
//! QEMU's start. So the launcher creates it at its start in a helper
//! thread ([`Isolation::create`]), which unshares only its own namespace and
//! hands back an fd of it, while the main thread, still in the host's
//! namespace, creates the TAPs; the main thread enters it ([`Isolation::enter`])
//! after the TAPs, exactly where it used to unshare. The thread has ended
//! by then, so the privilege drop still runs single-threaded.

use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sched::CloneFlags;

use super::{Error, Result};

/// A new, empty network namespace being created by a helper thread.
/// Nothing to undo: the namespace lives as long as an fd of it or a
/// process in it, so dropping this before [`Isolation::enter`] frees it.
pub struct Isolation(JoinHandle<std::result::Result<OwnedFd, Errno>>);

impl Isolation {
    /// Starts creating the namespace in a helper thread. Needs
    /// `CAP_SYS_ADMIN` (the unit grants it to such VMs' launcher; it is
    /// gone when QEMU is executed).
    pub fn create() -> Result<Isolation> {
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(|| {
                // unshare(CLONE_NEWNET) moves only the calling thread.
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                nix::fcntl::open(
                    c"/proc/thread-self/ns/net",
                    nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
            })
            .map(Isolation)
            .map_err(|source| Error::Sys {
                op: "start the network namespace thread",
                source,
            })
    }

    /// Waits for the namespace and moves the calling (main) thread into
    /// it, and so QEMU after exec.
    pub fn enter(self) -> Result<()> {
        let fd = self
            .0
            .join()
            .map_err(|_| Error::Refused("the network namespace thread panicked".into()))?
            .map_err(refused)?;
        nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(refused)
    }
}

fn refused(e: Errno) -> Error {
    Error::Refused(format!(
        "cannot enter a network namespace of its own: {e}{}",
        if e == Errno::EPERM {
            " (the launcher needs CAP_SYS_ADMIN and RestrictNamespaces=net; regenerate the unit with `machina gen`)"
        } else {
            ""
        }
    ))
}
