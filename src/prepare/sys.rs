//! The only `unsafe` code of the privileged side: the few system calls
//! `nix` does not wrap, each behind a safe function. Everything else in
//! `prepare` and `launcher` goes through `nix`.
//!
//! `nix` rather than `rustix`: it is already a dependency, covers
//! `openat2`, `execveat`, credentials, `prctl`, rlimits and fd handling, and
//! returns `std` fd types; what it lacks (xattrs, pidfds, `close_range`,
//! the bounding-set `prctl`s, a few ioctls) is below.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `getxattr(2)` of `path` (may be a `/proc/self/fd/N` path); `Ok(None)`
/// when the attribute is not set.
pub fn getxattr(path: &CStr, name: &CStr, follow: bool) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings; the kernel writes at most buf.len()
    // bytes into buf, which we own.
    let n = unsafe {
        if follow {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        } else {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    };
    match check(n as libc::c_long) {
        Ok(n) => {
            buf.truncate(n as usize);
            Ok(Some(buf))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `setxattr(2)` (`Some`) or `removexattr(2)` (`None`) of `path`.
pub fn setxattr(path: &CStr, name: &CStr, value: Option<&[u8]>) -> io::Result<()> {
    // SAFETY: NUL-terminated strings and a buffer we own, read only.
    let rc = unsafe {
        match value {
            Some(v) => libc::setxattr(path.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0),
            None => libc::removexattr(path.as_ptr(), name.as_ptr()),
        }
    };
    check(rc as libc::c_long).map(drop)
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel returned a new fd, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`: signals the process the pidfd pins (never a
/// recycled pid).
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: a pidfd we hold, a null siginfo (allowed), flags 0.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// `close_range(first, last, CLOSE_RANGE_CLOEXEC)`: every fd in the range
/// is closed at the next `execve` (none is closed now, so no owner's fd
/// disappears under it).
pub fn cloexec_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    check(unsafe {
        libc::close_range(first, last, libc::CLOSE_RANGE_CLOEXEC as i32) as libc::c_long
    })
    .map(drop)
}

/// Whether capability `cap` is in the bounding set (`None`: the kernel
/// does not know it).
pub fn capbset_read(cap: i32) -> Option<bool> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
    (r >= 0).then_some(r == 1)
}

/// Drops capability `cap` from the bounding set.
pub fn capbset_drop(cap: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } as libc::c_long).map(drop)
}

/// `ioctl(fd, TIOCNOTTY)`: gives up the controlling terminal `fd` is.
pub fn give_up_tty(fd: impl AsFd) -> io::Result<()> {
    // SAFETY: TIOCNOTTY takes no argument.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCNOTTY) } as libc::c_long).map(drop)
}

/// `struct ifreq` with the members machina uses.
#[repr(C)]
pub struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    /// The union: `ifr_flags` (short) or `ifr_ifindex` (int) at its start.
    data: [u8; 24],
}

impl IfReq {
    pub fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        // Interface names are validated to at most 15 bytes.
        let n = name.len().min(libc::IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }
    pub fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }
    pub fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
    pub fn name(&self) -> &[u8] {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        &self.name[..end]
    }
}

/// The interface ioctls that read and write a `struct ifreq`.
#[derive(Debug, Clone, Copy)]
pub enum IfReqIoctl {
    /// `TUNSETIFF` on a `/dev/net/tun` fd: create or attach a TAP.
    TunSetIff,
    /// `SIOCBRADDIF` on a socket: enslave interface `ifindex` to the bridge.
    BridgeAddIf,
    /// `SIOCBRDELIF` on a socket: release interface `ifindex` from the bridge.
    BridgeDelIf,
    /// `SIOCGIFFLAGS`.
    GetFlags,
    /// `SIOCSIFFLAGS`.
    SetFlags,
}

/// `SIOCBRADDIF` from `<linux/sockios.h>`.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
/// `SIOCBRDELIF` from `<linux/sockios.h>`.
const SIOCBRDELIF: libc::c_ulong = 0x89a3;
/// `SIOCETHTOOL` and `ETHTOOL_GDRVINFO` from the kernel headers.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// One of the [`IfReqIoctl`]s.
pub fn ifreq_ioctl(fd: impl AsFd, op: IfReqIoctl, req: &mut IfReq) -> io::Result<()> {
    let request = match op {
        IfReqIoctl::TunSetIff => libc::TUNSETIFF,
        IfReqIoctl::BridgeAddIf => SIOCBRADDIF,
        IfReqIoctl::BridgeDelIf => SIOCBRDELIF,
        IfReqIoctl::GetFlags => libc::SIOCGIFFLAGS,
        IfReqIoctl::SetFlags => libc::SIOCSIFFLAGS,
    };
    // SAFETY: each of these requests reads and writes exactly a struct
    // ifreq, which IfReq is (repr(C), full size), valid for the call.
    check(
        unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request as _, req as *mut IfReq) }
            as libc::c_long,
    )
    .map(drop)
}

/// `TUNSETPERSIST` on a TAP fd.
pub fn tun_set_persist(fd: impl AsFd, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an integer by value.
    check(unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            libc::TUNSETPERSIST as _,
            persist as libc::c_ulong,
        )
    } as libc::c_long)
    .map(drop)
}

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    rest: [u8; 160],
}

/// The ethtool driver name of interface `name` (`ETHTOOL_GDRVINFO`), as
/// `ethtool -i` shows it, NUL-padded.
pub fn ethtool_driver(sock: impl AsFd, name: &str) -> io::Result<[u8; 32]> {
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq::new(name);
    let ptr = (&mut info as *mut DrvInfo as usize).to_ne_bytes();
    req.data[..ptr.len()].copy_from_slice(&ptr);
    // SAFETY: SIOCETHTOOL reads the ifreq and writes the DrvInfo it points
    // to, which outlives the call.
    check(
        unsafe { libc::ioctl(fd_raw(&sock), SIOCETHTOOL as _, &mut req as *mut IfReq) }
            as libc::c_long,
    )?;
    Ok(info.driver)
}

fn fd_raw(fd: &impl AsFd) -> std::os::fd::RawFd {
    fd.as_fd().as_raw_fd()
}

/// Puts fd `fd` at number `target` (`dup3`, not close-on-exec). Only for
/// the last steps before `execve`, when nothing else owns fds any more.
pub(super) fn place_fd(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup3 on fd numbers; the caller execs or exits right after, so
    // no owner of an fd replaced at `target` runs again.
    check(unsafe { libc::dup3(fd, target, 0) } as libc::c_long).map(drop)
}

/// Resets what `execve` keeps of signal handling: SIGPIPE (which the Rust
/// runtime ignores) back to the default, and an empty signal mask.
pub fn default_signals() {
    use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
    // SAFETY: installing the default disposition runs no handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// `execveat(fd, "", args, [], AT_EMPTY_PATH)`: runs the very file `fd`
/// refers to, with the environment `env` (empty for QEMU). Returns only on failure.
pub fn exec_fd(fd: RawFd, args: &[std::ffi::CString], env: &[std::ffi::CString]) -> io::Error {
    // SAFETY: fd was opened by the caller and stays open until execveat
    // replaces the process or fails.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match nix::unistd::execveat(fd, c"", args, env, nix::fcntl::AtFlags::AT_EMPTY_PATH) {
        Err(e) => e.into(),
        Ok(never) => match never {},
    }
}

/// Writes `msg` to fd 2 and ends the process at once, without destructors
/// or `atexit` handlers (after the privilege drop nothing may run again).
pub fn die(msg: &str) -> ! {
    let _ = nix::unistd::write(io::stderr().as_fd(), msg.as_bytes());
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(127) }
}

/// `fork(2)`, refused unless this process has a single thread (checked in
/// `/proc/self/task`): the child then may run any code before it execs.
/// `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
pub fn fork_single_threaded() -> io::Result<Option<nix::unistd::Pid>> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "cannot fork: the process has {threads} threads"
        )));
    }
    // SAFETY: the process has one thread (checked above), so no lock or
    // allocator state can be held by another thread in the child.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => Ok(None),
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
    }
}
