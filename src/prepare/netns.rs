//! Network isolation of QEMU: a VM that listens on no TCP address gets a
//! network namespace of its own, entered by the launcher after its TAP fds
//! are open and before it gives up root. QEMU keeps those fds (a TAP stays
//! in the namespace it was created in, on its bridge) and its UNIX sockets
//! (path sockets are not scoped by network namespace), but sees only a
//! loopback interface that is down: it cannot open any other connection.

use super::{Error, Result};

/// Moves the calling process into a new, empty network namespace. Needs
/// `CAP_SYS_ADMIN` (the unit grants it to such VMs' launcher; it is gone
/// when QEMU is executed). Nothing to undo: the namespace lives as long as
/// the process.
pub fn isolate() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        Error::Refused(format!(
            "cannot enter a network namespace of its own: {e}{}",
            if e == nix::errno::Errno::EPERM {
                " (the launcher needs CAP_SYS_ADMIN and RestrictNamespaces=net; regenerate the unit with `machina gen`)"
            } else {
                ""
            }
        ))
    })
}
