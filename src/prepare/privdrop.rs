//! The last steps before QEMU: the memory-lock limit, then the privilege
//! drop and `execve`.
//!
//! The drop is done single-threaded (the launcher never starts a thread),
//! in the only order that works: supplementary groups and gid first, the
//! bounding and ambient sets while `CAP_SETPCAP` is still held, then the
//! uid, then whatever capability is left, `no_new_privs`, the fds, the
//! umask, and `execve` with an empty environment.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use caps::CapSet;

use super::{Error, Result};

/// Sets `RLIMIT_MEMLOCK` (soft and hard) to `bytes`.
pub fn set_memlock(bytes: u64) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit reads lim.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        let err = std::io::Error::last_os_error();
        let hint = if err.raw_os_error() == Some(libc::EPERM) {
            " (raising it needs CAP_SYS_RESOURCE in the unit's capabilities)"
        } else {
            ""
        };
        return Err(Error::Refused(format!(
            "set RLIMIT_MEMLOCK to {bytes} bytes: {err}{hint}"
        )));
    }
    Ok(())
}

/// What to exec, and as whom.
#[derive(Debug)]
pub struct ExecSpec<'a> {
    /// Absolute path of QEMU (its `argv[0]`).
    pub binary: &'a Path,
    /// QEMU as checked by [`check_binary`]: the file executed.
    pub binary_fd: &'a OwnedFd,
    /// Appended to a failure after the drop: how to clean up.
    pub hint: String,
    /// Arguments after `argv[0]`.
    pub args: &'a [String],
    /// The VM's uid.
    pub uid: u32,
    /// The VM's gid.
    pub gid: u32,
    /// The group that owns `/dev/kvm`.
    pub kvm_gid: u32,
    /// `(current fd, number QEMU expects it at)` for every fd QEMU keeps.
    pub fds: Vec<(RawFd, i32)>,
}

/// Why the drop or exec failed.
#[derive(Debug)]
pub struct DropError {
    /// The cause.
    pub error: Error,
    /// Whether root was already given up, so the launcher can no longer
    /// undo what it prepared (teardown will).
    pub after_drop: bool,
}

impl std::fmt::Display for DropError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Checks the QEMU binary and returns an `O_PATH` fd of it, which is what
/// gets executed (`execveat`), so the file checked is the file run: a
/// regular file owned by root, writable by no one else, executable by the
/// VM's identity, reached through directories only root can change (root's
/// entries in a root-owned sticky directory such as `/tmp` count, as the
/// kernel protects them), with no symbolic link on the way.
pub fn check_binary(binary: &Path, uid: u32, gids: &[u32]) -> Result<OwnedFd> {
    let w = super::fs::walk_checked(binary, &|st, dir, _| {
        if super::fs::only_root_writes(st) {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "{}: QEMU's directory {} is not root's alone (owner uid {}, mode {:04o}); install QEMU where only root can write",
                binary.display(),
                dir.display(),
                st.st_uid,
                st.st_mode & 0o7777
            )))
        }
    })?;
    let st = w.st;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::WrongType {
            path: binary.to_owned(),
            found: super::fs::kind(st.st_mode),
            expected: "an executable file",
        });
    }
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err(Error::Refused(format!(
            "{}: is owned by uid {} with mode {:04o}; QEMU must be owned by root and writable by no one else",
            binary.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    let m = st.st_mode;
    let ok = if gids.contains(&st.st_gid) {
        m & 0o010 != 0
    } else {
        m & 0o001 != 0
    };
    if !ok {
        return Err(Error::Refused(format!(
            "{}: not executable by uid {uid}",
            binary.display()
        )));
    }
    Ok(w.fd)
}

/// Takes the terminal away from what is about to become QEMU: a new
/// session (or, for a process-group leader, which cannot start one, no
/// controlling terminal), stdin `/dev/null`, and `/dev/null` for a stdout or
/// stderr that is a terminal, after one line saying so. Under systemd
/// they are the journal, under `machina run` pipes it relays; a terminal
/// would let QEMU push input into the caller's shell (`TIOCSTI`).
pub fn detach_terminal(prefix: &str) -> Result<()> {
    // SAFETY: setsid/open/ioctl/dup2/isatty on fds 0–2 and one we own.
    unsafe {
        if libc::setsid() < 0 {
            let fd = libc::open(
                c"/dev/tty".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                let rc = libc::ioctl(fd, libc::TIOCNOTTY);
                libc::close(fd);
                if rc != 0 {
                    return Err(Error::last_sys("give up the controlling terminal"));
                }
            }
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return Err(Error::last_sys("open /dev/null"));
        }
        let tty_out = libc::isatty(1) == 1 || libc::isatty(2) == 1;
        if tty_out {
            let line = format!("{prefix}QEMU gets no terminal: its output goes to /dev/null (under systemd it goes to the journal; `machina run` relays it)\n");
            libc::write(2, line.as_ptr().cast(), line.len());
        }
        for fd in 0..3 {
            if (fd == 0 || libc::isatty(fd) == 1) && libc::dup2(null, fd) != fd {
                libc::close(null);
                return Err(Error::last_sys("redirect stdio to /dev/null"));
            }
        }
        libc::close(null);
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(Error::last_sys("chdir /"));
        }
    }
    Ok(())
}

fn fail(op: &'static str, after_drop: bool) -> DropError {
    DropError {
        error: Error::Sys {
            op,
            source: io::Error::last_os_error(),
        },
        after_drop,
    }
}

fn fail_caps(op: &'static str, e: caps::errors::CapsError, after_drop: bool) -> DropError {
    DropError {
        error: Error::Refused(format!("{op}: {e}")),
        after_drop,
    }
}

/// Drops every privilege and execs QEMU. Returns only on failure; once fds
/// have been rearranged a failure ends the process (exit status 127) after
/// printing `prefix` and the cause, since nothing can be undone then.
pub fn drop_and_exec(spec: &ExecSpec<'_>, prefix: &str) -> DropError {
    // Everything that allocates is done while failure is still clean.
    let binary = match CString::new(spec.binary.as_os_str().as_bytes()) {
        Ok(b) => b,
        Err(_) => {
            return DropError {
                error: Error::Refused("qemu binary path contains a NUL byte".into()),
                after_drop: false,
            }
        }
    };
    let mut args: Vec<CString> = Vec::with_capacity(spec.args.len() + 1);
    args.push(binary.clone());
    for a in spec.args {
        match CString::new(a.as_bytes()) {
            Ok(c) => args.push(c),
            Err(_) => {
                return DropError {
                    error: Error::Refused(format!("qemu argument {a:?} contains a NUL byte")),
                    after_drop: false,
                }
            }
        }
    }
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut targets: Vec<i32> = spec.fds.iter().map(|&(_, t)| t).collect();
    targets.sort_unstable();
    let failed_msg = format!("{prefix}exec {}: ", spec.binary.display());
    let hint = format!(" {}", spec.hint);

    // A target the fd limit does not allow would fail only after the drop.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes lim.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        if let Some(&max) = targets.last() {
            if max as u64 + 64 >= lim.rlim_cur {
                return DropError {
                    error: Error::Refused(format!(
                        "fd number {max} is too close to the open-file limit {}",
                        lim.rlim_cur
                    )),
                    after_drop: false,
                };
            }
        }
    }
    let groups: &[libc::gid_t] = if spec.kvm_gid == spec.gid {
        &[spec.gid][..]
    } else {
        &[spec.gid, spec.kvm_gid][..]
    };
    // SAFETY: plain credential syscalls with valid pointers.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            return fail("setgroups", false);
        }
        if libc::setresgid(spec.gid, spec.gid, spec.gid) != 0 {
            return fail("setresgid", false);
        }
    }
    // The bounding set needs CAP_SETPCAP, so it goes before the uid. Drop
    // every index the kernel knows, not only those the caps crate names.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if r < 0 {
            break;
        }
        if r == 1 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return fail("drop bounding capability", false);
        }
    }
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        return fail_caps("clear ambient capabilities", e, false);
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(spec.uid, spec.uid, spec.uid) } != 0 {
        return fail("setresuid", false);
    }
    // Normally setresuid already emptied these; not when securebits say
    // otherwise. Effective first: it must stay a subset of permitted.
    for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
        if let Err(e) = caps::clear(None, set) {
            return fail_caps("clear capabilities", e, true);
        }
    }
    // SAFETY: as above.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return fail("set no_new_privs", true);
        }
        let (mut r, mut e, mut s) = (0, 0, 0);
        if libc::getresuid(&mut r, &mut e, &mut s) != 0 || [r, e, s] != [spec.uid; 3] {
            return fail("verify uid", true);
        }
        if libc::setuid(0) == 0 {
            return DropError {
                error: Error::Refused("root could be regained after the drop".into()),
                after_drop: true,
            };
        }
    }

    // Point of no return: rearrange fds. Every fd goes first to a number
    // above all targets, so no dup2 overwrites a source still needed.
    let above = targets.last().copied().unwrap_or(2) + 1;
    let mut temps: Vec<(RawFd, i32)> = Vec::with_capacity(spec.fds.len());
    // The binary's fd too, so placing a target cannot overwrite it.
    // SAFETY: fcntl on an fd we hold.
    let exe = unsafe { libc::fcntl(spec.binary_fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
    if exe < 0 {
        die(&failed_msg, "duplicate fd", &hint);
    }
    for &(fd, target) in &spec.fds {
        // SAFETY: fcntl/dup3/close_range on fd numbers; the process execs or
        // exits right after, so no owner of a closed fd runs again.
        let t = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if t < 0 {
            die(&failed_msg, "duplicate fd", &hint);
        }
        temps.push((t, target));
    }
    for &(t, target) in &temps {
        if unsafe { libc::dup3(t, target, 0) } != target {
            die(&failed_msg, "place fd", &hint);
        }
    }
    // Every other fd is marked close-on-exec rather than closed: the
    // checked binary's fd must stay open for execveat, and goes at exec.
    let mut lo: u32 = 3;
    for &t in &targets {
        if (t as u32) > lo {
            unsafe { libc::close_range(lo, t as u32 - 1, libc::CLOSE_RANGE_CLOEXEC as i32) };
        }
        lo = t as u32 + 1;
    }
    unsafe {
        libc::close_range(lo, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32);
        libc::umask(0o077);
        // Ignored signals and the signal mask survive execve; the Rust
        // runtime ignores SIGPIPE. QEMU starts with the defaults.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // The very file check_binary checked, not the path again.
        libc::syscall(
            libc::SYS_execveat,
            exe,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    die(&failed_msg, "execve", &hint)
}

/// Prints the failure and ends the process without running destructors.
fn die(msg: &str, op: &str, hint: &str) -> ! {
    let err = io::Error::last_os_error();
    let line = format!("{msg}{op}: {err}{hint}\n");
    // SAFETY: write to stderr and _exit.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(127)
    }
}
