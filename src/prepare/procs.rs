//! Finding and ending the processes that provably belong to one VM.
//!
//! The proof is the VM's lock: the launcher takes it with `flock` and execs
//! QEMU with the locked fd, so the kernel records the launcher's pid, which
//! is QEMU's pid after the exec, as the holder in `/proc/locks`. A process
//! is this VM's QEMU when it holds that lock *and* runs as the VM's uid;
//! nothing else of that uid (nor of any other) is ever signalled. A uid
//! alone proves nothing: an id can be reused, configured by mistake, or
//! shared with a login user. Signals go through pidfds, checked again after
//! the pid is pinned, so a recycled pid is never signalled.

use std::io::Read;
use std::time::{Duration, Instant};

use super::{sys, Error, Result};

/// Reads at most `max` bytes of a small kernel file.
fn read_bounded(path: &str, max: usize) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::with_capacity(max.min(1 << 16));
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    String::from_utf8(buf).ok()
}

/// What `/proc/<pid>/status` says about a process, if it still exists:
/// whether it is a zombie, and its real, effective and saved uids.
fn status_uid(pid: i32) -> Option<(bool, [u32; 3])> {
    let text = read_bounded(&format!("/proc/{pid}/status"), 4096)?;
    let mut zombie = false;
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("State:") {
            zombie = s.trim_start().starts_with(['Z', 'X']);
        } else if let Some(u) = line.strip_prefix("Uid:") {
            let mut it = u.split_whitespace().map(|x| x.parse::<u32>().ok());
            let (r, e, s) = (it.next()??, it.next()??, it.next()??);
            return Some((zombie, [r, e, s]));
        }
    }
    None
}

/// Whether `pid` is alive and runs as `uid` (real, effective and saved).
fn runs_as(pid: i32, uid: u32) -> bool {
    matches!(status_uid(pid), Some((false, ids)) if ids == [uid; 3])
}

/// Live (non-zombie) processes whose real, effective or saved uid is
/// `uid`, other than this one (tests use it to show nothing is left).
pub fn processes_of(uid: u32) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| matches!(status_uid(pid), Some((false, ids)) if ids.contains(&uid)))
        .collect()
}

/// The identity of a lock file as `/proc/locks` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockId {
    /// Device major.
    pub major: u64,
    /// Device minor.
    pub minor: u64,
    /// Inode.
    pub ino: u64,
}

impl LockId {
    /// The identity of the file `st` describes.
    pub fn of(st: &libc::stat) -> LockId {
        LockId {
            major: nix::sys::stat::major(st.st_dev),
            minor: nix::sys::stat::minor(st.st_dev),
            ino: st.st_ino,
        }
    }
}

/// Pids holding a `flock` on the file `id`, from `/proc/locks`; `None`
/// when `/proc/locks` cannot be read (e.g. under `ProcSubset=pid`).
pub fn flock_holders(id: LockId) -> Option<Vec<i32>> {
    let text = read_bounded("/proc/locks", 1 << 20)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<ino> 0 EOF"; blocked
        // waiters have "->" in second place and hold nothing.
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let (Ok(pid), Some(dev)) = (f[4].parse::<i32>(), parse_dev(f[5])) else {
            continue;
        };
        if dev == id && pid > 0 && !out.contains(&pid) {
            out.push(pid);
        }
    }
    Some(out)
}

fn parse_dev(s: &str) -> Option<LockId> {
    let mut it = s.split(':');
    let major = u64::from_str_radix(it.next()?, 16).ok()?;
    let minor = u64::from_str_radix(it.next()?, 16).ok()?;
    let ino = it.next()?.parse().ok()?;
    Some(LockId { major, minor, ino })
}

/// The holders of lock `id` that run as `uid`: the VM's QEMU.
pub fn vm_processes(id: LockId, uid: u32) -> Vec<i32> {
    flock_holders(id)
        .unwrap_or_default()
        .into_iter()
        .filter(|&pid| runs_as(pid, uid))
        .collect()
}

/// Signals every holder of lock `id` running as `uid`, checking both again
/// once the pid is pinned by a pidfd. Returns how many were signalled.
fn signal_vm(id: LockId, uid: u32, sig: i32) -> usize {
    let mut n = 0;
    for pid in vm_processes(id, uid) {
        let Ok(pidfd) = sys::pidfd_open(pid) else {
            continue;
        };
        if !runs_as(pid, uid) || !flock_holders(id).unwrap_or_default().contains(&pid) {
            continue;
        }
        if sys::pidfd_send_signal(&pidfd, sig).is_ok() {
            n += 1;
        }
    }
    n
}

fn wait_gone(id: LockId, uid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if vm_processes(id, uid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Another VM whose QEMU runs as `uid`: a holder of a VM lock other than
/// `own`'s (lock name `vm.<vm>` in `lock_dir`) running as `uid`. Returns the
/// VM's name and the pid. (A process of `uid` that holds no VM lock, such
/// as the VM's own swtpm, is no other VM.)
pub fn other_vm_with_uid(lock_dir: &std::path::Path, own: &str, uid: u32) -> Option<(String, i32)> {
    use std::os::unix::fs::MetadataExt;
    let entries = std::fs::read_dir(lock_dir).ok()?;
    for e in entries.flatten().take(100_000) {
        let name = e.file_name();
        let Some(vm) = name.to_str().and_then(|n| n.strip_prefix("vm.")) else {
            continue;
        };
        if vm == own {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let id = LockId {
            major: nix::sys::stat::major(md.dev()),
            minor: nix::sys::stat::minor(md.dev()),
            ino: md.ino(),
        };
        if let Some(&pid) = vm_processes(id, uid).first() {
            return Some((vm.to_owned(), pid));
        }
    }
    None
}

/// Ends the VM's QEMU (the holders of lock `id` running as `uid`):
/// SIGTERM, then SIGKILL after `grace`. Returns how many there were.
pub fn end_vm(id: LockId, uid: u32, grace: Duration) -> Result<usize> {
    let n = signal_vm(id, uid, libc::SIGTERM);
    if n == 0 || wait_gone(id, uid, grace) {
        return Ok(n);
    }
    signal_vm(id, uid, libc::SIGKILL);
    if wait_gone(id, uid, Duration::from_secs(5)) {
        return Ok(n);
    }
    Err(Error::Refused(format!(
        "the VM's QEMU survives SIGKILL: {:?}",
        vm_processes(id, uid)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        assert_eq!(
            parse_dev("00:1a:1234"),
            Some(LockId {
                major: 0,
                minor: 26,
                ino: 1234
            })
        );
        assert_eq!(parse_dev("zz"), None);
    }
}
