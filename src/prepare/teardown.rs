//! Teardown: removes what can be left of a VM after QEMU ends, also after
//! a crash or `kill -9`: stray processes of its uid, leftover TAPs, the
//! mediated devices and their vfio grants, per-VM ACL entries on shared
//! media, the runtime directory and the VM's lock file.
//!
//! Every item is attempted; errors are collected per item. Running it again
//! finds nothing to do.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use super::fs::{cstr, open_nofollow, remove_at};
use super::lock::FileLock;
use super::{grant, mdev, procs, tap, Error};
use crate::plan::Plan;

/// How long a launcher or other teardown may hold the VM's lock before
/// teardown goes ahead without it.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Knobs of [`teardown`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Time stray processes get between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            grace: Duration::from_secs(5),
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

/// The name of the per-VM lock file in the runtime root.
pub fn vm_lock_name(plan: &Plan) -> String {
    format!("{}.lock", plan.machine)
}

/// The directory holding the VM's runtime directory and the lock files.
pub fn runtime_root(plan: &Plan) -> &Path {
    plan.runtime_dir.parent().unwrap_or(Path::new("/"))
}

/// Removes everything a launch of `plan` may have left. Interfaces are
/// looked up in the caller's network namespace.
pub fn teardown(plan: &Plan, opts: &Options) -> Report {
    let mut r = Report::default();
    // Processes first: QEMU and anything it forked hold the VM's lock.
    match procs::kill_all(plan.uid, opts.grace) {
        Ok(0) => {}
        Ok(n) => r
            .done
            .push(format!("ended {n} process(es) of uid {}", plan.uid)),
        Err(e) => r.errors.push(("processes".into(), e)),
    }
    let root_path = runtime_root(plan);
    let root: Option<OwnedFd> = match open_nofollow(root_path, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(fd) => Some(fd),
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => None,
        Err(e) => {
            r.errors.push(("runtime root".into(), e));
            None
        }
    };
    let lock = root.as_ref().and_then(|fd| {
        match FileLock::acquire(fd, root_path, &vm_lock_name(plan), LOCK_WAIT, || {
            format!(
                "the VM is being launched or torn down by another process for more than {} s",
                LOCK_WAIT.as_secs()
            )
        }) {
            Ok(l) => Some(l),
            Err(e) => {
                r.errors.push(("lock".into(), e));
                None
            }
        }
    });

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
        match grant::revoke_shared(g, plan.gid) {
            Ok(true) => r
                .done
                .push(format!("removed ACL entry on {}", g.path.display())),
            Ok(false) => {}
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => r.errors.push((format!("grant {}", g.path.display()), e)),
        }
    }
    if let (Some(root), Some(name)) = (&root, plan.runtime_dir.file_name()) {
        let res = cstr(Path::new(name)).and_then(|c| remove_at(root, &c, &plan.runtime_dir));
        match res {
            Ok(()) => {}
            // Under the unit, RuntimeDirectory= is a mount point in the
            // service's namespace: its contents are gone now and systemd
            // removes the directory itself after ExecStopPost.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => r.errors.push(("runtime directory".into(), e)),
        }
    }
    if let Some(lock) = lock {
        lock.remove();
    }
    r
}
