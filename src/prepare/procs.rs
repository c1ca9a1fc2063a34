//! Processes of a VM's uid.
//!
//! The uid belongs to one VM alone, so a live process with it means that
//! VM's QEMU (or a stray child of it) runs. The launcher uses this to refuse
//! a second launch; teardown uses it to end stray processes. Signals go
//! through pidfds, so a recycled pid is never signalled.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{Error, Result};

/// What `/proc/<pid>/status` says about a process, if it still exists.
fn status_uid(pid: i32) -> Option<(bool, [u32; 3])> {
    let mut f = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    let text = std::str::from_utf8(&buf[..n]).ok()?;
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

/// Live (non-zombie) processes whose real, effective or saved uid is `uid`.
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

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a returned fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Signals every process of `uid`, checking the uid again once the pid is
/// pinned by a pidfd. Returns how many were signalled.
fn signal_all(uid: u32, sig: i32) -> usize {
    let mut n = 0;
    for pid in processes_of(uid) {
        let Some(pidfd) = pidfd_open(pid) else {
            continue;
        };
        if !matches!(status_uid(pid), Some((false, ids)) if ids.contains(&uid)) {
            continue;
        }
        // SAFETY: pidfd_send_signal on a pidfd we hold.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            n += 1;
        }
    }
    n
}

fn wait_gone(uid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if processes_of(uid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends every process of `uid`: SIGTERM, then SIGKILL after `grace`.
/// Returns how many processes there were.
pub fn kill_all(uid: u32, grace: Duration) -> Result<usize> {
    let n = signal_all(uid, libc::SIGTERM);
    if n == 0 || wait_gone(uid, grace) {
        return Ok(n);
    }
    signal_all(uid, libc::SIGKILL);
    if wait_gone(uid, Duration::from_secs(5)) {
        return Ok(n);
    }
    Err(Error::Refused(format!(
        "processes of uid {uid} survive SIGKILL: {:?}",
        processes_of(uid)
    )))
}
