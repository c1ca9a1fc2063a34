//! Teardown: removes what can be left of a VM after QEMU ends, also after
//! a crash or `kill -9`: leftover TAPs, the mediated devices and their vfio
//! grants, per-VM ACL entries on shared media, the runtime directory and
//! the VM's lock.
//!
//! Teardown works only while it holds the VM's lock, so it never removes
//! anything a live QEMU uses: QEMU holds that lock for as long as it lives.
//! When the lock is held by the VM's QEMU, teardown refuses unless forced;
//! forced, it ends exactly the processes that hold the VM's lock *and* run
//! as the VM's uid (see [`super::procs`]), never anything else of that uid.
//!
//! Every item is attempted; errors are collected per item. Running it again
//! finds nothing to do.

use std::fmt;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use super::fs::{cstr, fstat, openat_nofollow, remove_at};
use super::lock::FileLock;
use super::procs::{self, LockId};
use super::{grant, mdev, runtime_dir, tap, Error};
use crate::plan::{Lock, Plan, LOCK_DIR, RUNTIME_ROOT};

/// How long a launcher or other teardown may hold the VM's lock before
/// teardown gives up (removing nothing).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Knobs of [`teardown`].
#[derive(Debug, Clone)]
pub struct Options {
    /// With `force`: time the VM's QEMU gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// End the VM's QEMU if it still runs (`machina teardown --force`).
    pub force: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            grace: Duration::from_secs(5),
            force: false,
        }
    }
}

/// What teardown did and what failed.
#[derive(Debug, Default)]
pub struct Report {
    /// What was removed or restored, one short phrase each.
    pub done: Vec<String>,
    /// Items that failed: (item, cause).
    pub errors: Vec<(String, Error)>,
}

impl Report {
    /// Whether every item succeeded.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for Report {
    /// One line per failed item.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (item, e) in &self.errors {
            writeln!(f, "{item}: {e}")?;
        }
        Ok(())
    }
}

/// Takes the VM's lock for teardown: at once if free; if the VM's QEMU
/// holds it, refused (or, forced, after ending that QEMU); if another
/// machina holds it (a launch in progress), after waiting up to
/// [`LOCK_WAIT`].
fn take_lock(plan: &Plan, opts: &Options, r: &mut Report) -> Option<FileLock> {
    let dir = match runtime_dir::open_lock_dir() {
        Ok(fd) => fd,
        Err(e) => {
            r.errors.push(("lock".into(), e));
            return None;
        }
    };
    let name = Lock::Vm(&plan.machine).file_name();
    let dir_path = Path::new(LOCK_DIR);
    match FileLock::acquire(&dir, dir_path, &name, Duration::ZERO, String::new) {
        Ok(l) => return Some(l),
        Err(Error::Busy(_)) => {}
        Err(e) => {
            r.errors.push(("lock".into(), e));
            return None;
        }
    }
    let id = openat_nofollow(dir.as_fd(), Path::new(&name), libc::O_PATH, 0)
        .and_then(|fd| fstat(&fd, &dir_path.join(&name)))
        .map(|st| LockId::of(&st));
    let qemu = id
        .as_ref()
        .map_or(Vec::new(), |id| procs::vm_processes(*id, plan.uid));
    if let (Ok(id), Some(&pid)) = (&id, qemu.first()) {
        if !opts.force {
            r.errors.push((
                "lock".into(),
                Error::Busy(format!(
                    "{vm} is running (its QEMU, pid {pid}, holds the VM's lock); nothing was removed. Stop it first (`machina shutdown {vm}`), or end it with `machina teardown --force {vm}`",
                    vm = plan.machine
                )),
            ));
            return None;
        }
        match procs::end_vm(*id, plan.uid, opts.grace) {
            Ok(n) => r
                .done
                .push(format!("ended the VM's QEMU ({n} process(es))")),
            Err(e) => {
                r.errors.push(("processes".into(), e));
                return None;
            }
        }
    }
    match FileLock::acquire(&dir, dir_path, &name, LOCK_WAIT, || {
        format!(
            "{} is held by another process for more than {} s (a launch or teardown in progress?); nothing was removed",
            dir_path.join(&name).display(),
            LOCK_WAIT.as_secs()
        )
    }) {
        Ok(l) => Some(l),
        Err(e) => {
            r.errors.push(("lock".into(), e));
            None
        }
    }
}

/// Removes everything a launch of `plan` may have left. Interfaces are
/// looked up in the caller's network namespace. Nothing is removed unless
/// the VM's lock is held: see the module documentation.
pub fn teardown(plan: &Plan, opts: &Options) -> Report {
    let mut r = Report::default();
    if let Err(e) = crate::identity::check_vm_id(plan.uid, plan.machine.as_str()) {
        r.errors.push((
            "identity".into(),
            Error::Refused(format!("{e}; nothing was removed")),
        ));
        return r;
    }
    let Some(lock) = take_lock(plan, opts, &mut r) else {
        return r;
    };
    for t in &plan.taps {
        match tap::remove_leftover(t.ifname.as_str()) {
            Ok(true) => r.done.push(format!("removed interface {}", t.ifname)),
            Ok(false) => {}
            Err(e) => r.errors.push((format!("interface {}", t.ifname), e)),
        }
    }
    for m in &plan.mdevs {
        match mdev::teardown(m, plan.gid) {
            Ok(true) => r.done.push(format!("removed mediated device {}", m.uuid)),
            Ok(false) => {}
            Err(e) => r.errors.push((format!("mediated device {}", m.uuid), e)),
        }
    }
    for g in plan.grants.iter().filter(|g| g.shared) {
        match grant::revoke_shared(g, plan.uid, plan.gid) {
            Ok(true) => r
                .done
                .push(format!("removed ACL entry on {}", g.path.display())),
            Ok(false) => {}
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => r.errors.push((format!("grant {}", g.path.display()), e)),
        }
    }
    let root =
        super::fs::open_nofollow(Path::new(RUNTIME_ROOT), libc::O_RDONLY | libc::O_DIRECTORY);
    match root {
        Ok(root) => {
            let res = cstr(Path::new(plan.machine.as_str()))
                .and_then(|c| remove_at(&root, &c, &plan.runtime_dir()));
            match res {
                Ok(()) => {}
                // Under the unit, RuntimeDirectory= is a mount point in the
                // service's namespace: its contents are gone now and systemd
                // removes the directory itself after ExecStopPost.
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => r.errors.push(("runtime directory".into(), e)),
            }
        }
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => r.errors.push(("runtime root".into(), e)),
    }
    if plan.tpm.is_some() {
        // The swtpm lock, once swtpm (which ends with QEMU's connection)
        // no longer holds it; a held one is left to its swtpm.
        if let Ok(dir) = runtime_dir::open_lock_dir() {
            let name = Lock::Swtpm(&plan.machine).file_name();
            if let Ok(l) = FileLock::acquire(
                &dir,
                Path::new(LOCK_DIR),
                &name,
                Duration::ZERO,
                String::new,
            ) {
                l.remove();
            }
        }
    }
    lock.remove();
    r
}
