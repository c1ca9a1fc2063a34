//! The console log's bound: `machina-launch --console-log`, the keeper of
//! `/run/machina/<vm>/console.log`.
//!
//! QEMU appends everything the guest writes to its serial port to the
//! chardev's `logfile`, which it can neither rotate nor cap, in
//! `/run` — a tmpfs in memory. A guest flooding its serial port would fill
//! it. machina does not control QEMU's writes, but it controls what runs
//! beside QEMU: the launcher starts this keeper just before it execs QEMU,
//! as the VM's uid with no capability (the same privilege drop as QEMU),
//! and the keeper frees everything but the last [`KEEP`] bytes of the file
//! as QEMU writes it, by punching holes (`fallocate(PUNCH_HOLE)`, which
//! tmpfs supports and which returns the memory at once). The file keeps
//! growing in apparent size (sparse, like a rotating ring seen as one
//! file) while what it holds stays at [`KEEP`] plus what QEMU wrote since
//! the keeper last woke (it wakes on every write, through inotify).
//! `machina console --log` prints the last MiB, which is always kept.
//!
//! Why not the alternatives: a pipe to a reader that rotates (as libvirt's
//! virtlogd does) would make QEMU's vCPU block when the reader lags, and
//! change QEMU's argv; an `RLIMIT_FSIZE` also caps QEMU's disk images; a
//! full file system (a small tmpfs) keeps the first bytes, not the last;
//! the journal cannot take QEMU's `logfile` (QEMU wants a write-only fd).
//!
//! The keeper is QEMU's child (forked by the launcher before the exec) and
//! asks for `SIGTERM` when its parent ends, so it lives exactly as long as
//! QEMU; under systemd it is also in the unit's cgroup, stopped with it. It
//! holds no lock and no other fd of the launcher's.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{fallocate, open, FallocateFlags, OFlag};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::stat::{fstat, Mode};

use crate::config::model::ConsoleSpec;
use crate::plan::Plan;
use crate::prepare::{self, privdrop, sys};

/// What the keeper keeps of the log: its last MiB (also what `machina
/// console --log` prints).
pub const KEEP: u64 = 1 << 20;

/// Holes are punched in whole pages.
const PAGE: u64 = 4096;

/// Runs the keeper on `log` as long as process `parent` (QEMU) lives.
/// Returns only on an error; the caller prints it.
pub fn keep(log: &Path, parent: i32) -> Result<std::convert::Infallible, String> {
    if nix::unistd::geteuid().is_root() {
        return Err("the console log keeper never runs as root".into());
    }
    // Ends with QEMU. Set after the privilege drop (a change of
    // credentials clears it), then checked: QEMU may have ended already.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    if nix::unistd::getppid().as_raw() != parent {
        std::process::exit(0);
    }
    // As the VM's uid, never through a link; QEMU opens (and truncates)
    // the same file.
    let fd: OwnedFd = open(
        log,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| format!("{}: {e}", log.display()))?;
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| format!("inotify: {e}"))?;
    inotify
        .add_watch(log, AddWatchFlags::IN_MODIFY)
        .map_err(|e| format!("inotify {}: {e}", log.display()))?;
    let mut freed = 0u64;
    loop {
        bound(&fd, &mut freed).map_err(|e| format!("{}: {e}", log.display()))?;
        // Blocks until QEMU writes again; events that pile up meanwhile
        // are read at once.
        inotify.read_events().map_err(|e| format!("inotify: {e}"))?;
    }
}

/// Frees the log below its last [`KEEP`] bytes, from `freed` on.
fn bound(fd: &OwnedFd, freed: &mut u64) -> nix::Result<()> {
    let size = fstat(fd.as_fd())?.st_size as u64;
    if size < *freed {
        // Truncated (QEMU's open): start over.
        *freed = 0;
    }
    let cut = size.saturating_sub(KEEP) / PAGE * PAGE;
    if cut > *freed {
        fallocate(
            fd.as_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            *freed as i64,
            (cut - *freed) as i64,
        )?;
        *freed = cut;
    }
    Ok(())
}

/// Starts the keeper of `plan`'s console log: forks, and the child execs
/// this very binary (checked as QEMU's is) as `machina-launch
/// --console-log <log> <pid>` after the same privilege drop as QEMU's. The
/// launcher must be single-threaded. Nothing to undo: the keeper ends with
/// its parent, the launcher or the QEMU it becomes.
pub fn start(plan: &Plan, prefix: &str) -> prepare::Result<()> {
    let exe = std::env::current_exe().map_err(|source| prepare::Error::Sys {
        op: "find machina-launch's own binary",
        source,
    })?;
    let exe_fd = privdrop::check_binary(&exe, plan.uid, &[plan.gid])?;
    let log = plan.runtime_dir().join(ConsoleSpec::LOG);
    let args = [
        "--console-log".to_string(),
        log.to_string_lossy().into_owned(),
        std::process::id().to_string(),
    ];
    let child = sys::fork_single_threaded().map_err(|source| prepare::Error::Sys {
        op: "fork the console log keeper",
        source,
    })?;
    if child.is_none() {
        let spec = privdrop::ExecSpec {
            binary: &exe,
            binary_fd: &exe_fd,
            hint: String::new(),
            args: &args,
            env: &[],
            uid: plan.uid,
            gid: plan.gid,
            kvm_gid: plan.gid,
            fds: Vec::new(),
        };
        let e = privdrop::drop_and_exec(&spec, prefix);
        sys::die(&format!("{prefix}console log keeper: {}\n", e.error));
    }
    Ok(())
}
