//! The last steps before QEMU: the memory-lock limit, then the privilege
//! drop and `execve`.
//!
//! The drop is done single-threaded (the launcher's only helper thread,
//! which creates the network namespace, has been joined by then),
//! in the only order that works: supplementary groups and gid first, the
//! bounding and ambient sets while `CAP_SETPCAP` is still held, then the
//! uid, then whatever capability is left, `no_new_privs`, the fds, the
//! umask, and `execve` with an empty environment.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::resource::{getrlimit, Resource};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{getresuid, setgroups, setresgid, setresuid, Gid, Uid};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use caps::CapSet;

use super::{sys, Error, Result};

/// Sets `RLIMIT_MEMLOCK` (soft and hard) to `bytes`.
pub fn set_memlock(bytes: u64) -> Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    if let Err(err) = setrlimit(Resource::RLIMIT_MEMLOCK, bytes, bytes) {
        let hint = if err == nix::errno::Errno::EPERM {
            " (raising it needs CAP_SYS_RESOURCE in the unit's capabilities)"
        } else {
            ""
        };
        return Err(Error::Refused(format!(
            "set RLIMIT_MEMLOCK to {bytes} bytes: {}{hint}",
            std::io::Error::from(err)
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
    /// Environment (`KEY=value`); empty for QEMU.
    pub env: &'a [String],
    /// The VM's uid.
    pub uid: u32,
    /// The VM's gid.
    pub gid: u32,
    /// The group that owns `/dev/kvm`.
    pub kvm_gid: u32,
    /// `(current fd, number QEMU expects it at)` for every fd QEMU keeps.
    pub fds: Vec<(BorrowedFd<'a>, i32)>,
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
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, isatty};
    let sys_err = |op: &'static str| {
        move |e: nix::errno::Errno| Error::Sys {
            op,
            source: e.into(),
        }
    };
    if nix::unistd::setsid().is_err() {
        // A process-group leader cannot start a session: give up the
        // controlling terminal instead (ENXIO: there is none).
        if let Ok(tty) = open(
            c"/dev/tty",
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            super::sys::give_up_tty(&tty).map_err(|source| Error::Sys {
                op: "give up the controlling terminal",
                source,
            })?;
        }
    }
    let null = open(
        c"/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys_err("open /dev/null"))?;
    let out_tty = isatty(std::io::stdout()).unwrap_or(false);
    let err_tty = isatty(std::io::stderr()).unwrap_or(false);
    if out_tty || err_tty {
        eprintln!("{prefix}QEMU gets no terminal: its output goes to /dev/null (under systemd it goes to the journal; `machina run` relays it)");
    }
    dup2_stdin(&null).map_err(sys_err("redirect stdin to /dev/null"))?;
    if out_tty {
        dup2_stdout(&null).map_err(sys_err("redirect stdout to /dev/null"))?;
    }
    if err_tty {
        dup2_stderr(&null).map_err(sys_err("redirect stderr to /dev/null"))?;
    }
    nix::unistd::chdir("/").map_err(sys_err("chdir /"))?;
    Ok(())
}

fn fail(op: &'static str, source: impl Into<io::Error>, after_drop: bool) -> DropError {
    DropError {
        error: Error::Sys {
            op,
            source: source.into(),
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
    let mut env: Vec<CString> = Vec::with_capacity(spec.env.len());
    for e in spec.env {
        match CString::new(e.as_bytes()) {
            Ok(c) => env.push(c),
            Err(_) => {
                return DropError {
                    error: Error::Refused(format!("environment entry {e:?} contains a NUL byte")),
                    after_drop: false,
                }
            }
        }
    }
    let mut targets: Vec<i32> = spec.fds.iter().map(|&(_, t)| t).collect();
    targets.sort_unstable();
    let failed_msg = format!("{prefix}exec {}: ", spec.binary.display());
    let hint = format!(" {}", spec.hint);

    // A target the fd limit does not allow would fail only after the drop.
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if let Some(&max) = targets.last() {
            if max as u64 + 64 >= soft {
                return DropError {
                    error: Error::Refused(format!(
                        "fd number {max} is too close to the open-file limit {soft}"
                    )),
                    after_drop: false,
                };
            }
        }
    }
    let mut groups = vec![Gid::from_raw(spec.gid)];
    if spec.kvm_gid != spec.gid {
        groups.push(Gid::from_raw(spec.kvm_gid));
    }
    let gid = Gid::from_raw(spec.gid);
    let uid = Uid::from_raw(spec.uid);
    if let Err(e) = setgroups(&groups) {
        return fail("setgroups", e, false);
    }
    if let Err(e) = setresgid(gid, gid, gid) {
        return fail("setresgid", e, false);
    }
    // The bounding set needs CAP_SETPCAP, so it goes before the uid. Drop
    // every index the kernel knows, not only those the caps crate names.
    for cap in 0..64 {
        match sys::capbset_read(cap) {
            None => break,
            Some(false) => {}
            Some(true) => {
                if let Err(e) = sys::capbset_drop(cap) {
                    return fail("drop bounding capability", e, false);
                }
            }
        }
    }
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        return fail_caps("clear ambient capabilities", e, false);
    }
    if let Err(e) = setresuid(uid, uid, uid) {
        return fail("setresuid", e, false);
    }
    // Normally setresuid already emptied these; not when securebits say
    // otherwise. Effective first: it must stay a subset of permitted.
    for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
        if let Err(e) = caps::clear(None, set) {
            return fail_caps("clear capabilities", e, true);
        }
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        return fail("set no_new_privs", e, true);
    }
    match getresuid() {
        Ok(r) if [r.real, r.effective, r.saved] == [uid; 3] => {}
        Ok(_) => return fail("verify uid", io::Error::other("uid mismatch"), true),
        Err(e) => return fail("verify uid", e, true),
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return DropError {
            error: Error::Refused("root could be regained after the drop".into()),
            after_drop: true,
        };
    }

    // Point of no return: rearrange fds. Every fd goes first to a number
    // above all targets, so no placement overwrites a source still needed;
    // the binary's fd too.
    let above = targets.last().copied().unwrap_or(2) + 1;
    let dup_above = |fd: BorrowedFd<'_>| fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(above));
    let Ok(exe) = dup_above(spec.binary_fd.as_fd()) else {
        die(&failed_msg, "duplicate fd", &hint)
    };
    let mut temps: Vec<(RawFd, i32)> = Vec::with_capacity(spec.fds.len());
    for &(fd, target) in &spec.fds {
        let Ok(t) = dup_above(fd) else {
            die(&failed_msg, "duplicate fd", &hint)
        };
        temps.push((t, target));
    }
    for &(t, target) in &temps {
        if sys::place_fd(t, target).is_err() {
            die(&failed_msg, "place fd", &hint);
        }
    }
    // Every other fd is marked close-on-exec rather than closed: the
    // checked binary's fd must stay open for execveat, and goes at exec.
    let mut lo: u32 = 3;
    for &t in &targets {
        if (t as u32) > lo {
            let _ = sys::cloexec_range(lo, t as u32 - 1);
        }
        lo = t as u32 + 1;
    }
    let _ = sys::cloexec_range(lo, u32::MAX);
    umask(Mode::from_bits_truncate(0o077));
    // Ignored signals and the signal mask survive execve; the Rust runtime
    // ignores SIGPIPE. QEMU starts with the defaults.
    sys::default_signals();
    // The very file check_binary checked, not the path again.
    let err = sys::exec_fd(exe, &args, &env);
    die(&failed_msg, &format!("execve: {err}"), &hint)
}

/// Prints the failure and ends the process without running destructors.
fn die(msg: &str, op: &str, hint: &str) -> ! {
    sys::die(&format!("{msg}{op}{hint}\n"))
}
