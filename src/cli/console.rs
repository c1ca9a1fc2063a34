//! `machina console <vm>`: an interactive session on a VM's serial console
//! (`attrs.console`), and `machina console --log <vm>`: what the guest wrote
//! to it so far.
//!
//! QEMU serves the console on `/run/machina/<vm>/console.sock` and appends
//! what the guest writes to `console.log` beside it. Both live in a
//! directory the VM owns, so, as for QMP, root reaches them without
//! following a link and only trusts a socket served by the VM's own uid and
//! gid ([`crate::qmp::connect_checked`]) and a log file the VM owns.

use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

use super::CliError;
use crate::config::model::ConsoleSpec;
use crate::launcher;
use crate::names::MachineName;
use crate::plan::{Lock, Plan, LOCK_DIR};
use crate::prepare::{self, lock::FileLock, runtime_dir};
use crate::qmp::{self, PeerIdentity};

/// The byte `Ctrl-]` sends: detaches, as in `virsh console` and telnet.
const ESCAPE: u8 = 0x1d;

/// `--log` prints at most the last this many bytes of the log.
const MAX_LOG_PRINT: u64 = 1 << 20;

/// How long to wait for QEMU to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `machina console [--log] <vm>`.
pub fn console(plan_dir: &Path, name: &str, log: bool) -> Result<i32, CliError> {
    let vm = MachineName::new(name).map_err(|e| CliError(e.to_string()))?;
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError(format!(
            "console {vm}: must run as root (the console is the VM's own)"
        )));
    }
    let plan = launcher::read_plan(&plan_dir.join(format!("{vm}.json")), Some(&vm))
        .map_err(|f| CliError(format!("console {vm}: {f}")))?;
    let dir = plan.runtime_dir();
    if std::fs::symlink_metadata(&dir).is_err() {
        return Err(CliError(format!("{vm} is not running")));
    }
    if log {
        print_log(&plan)
    } else {
        attach(&plan)
    }
}

fn no_console(vm: &MachineName) -> CliError {
    CliError(format!(
        "{vm} has no console: set attrs.console.enabled, run `machina gen {vm}` and restart it"
    ))
}

/// Prints the console log (its last [`MAX_LOG_PRINT`] bytes).
fn print_log(plan: &Plan) -> Result<i32, CliError> {
    let vm = &plan.machine;
    let path = plan.runtime_dir().join(ConsoleSpec::LOG);
    // No link anywhere in the path, and not a FIFO that would block.
    let fd = match prepare::fs::open_nofollow(&path, libc::O_RDONLY | libc::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(prepare::Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            return Err(no_console(vm))
        }
        Err(e) => return Err(CliError(format!("console {vm}: {e}"))),
    };
    let st = prepare::fs::fstat(&fd, &path).map_err(|e| CliError(format!("console {vm}: {e}")))?;
    // The VM's QEMU created it: a file owned by anyone else (a hard link
    // to a root file, say) is not its console's log.
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != plan.uid {
        return Err(CliError(format!(
            "console {vm}: {} is not a regular file owned by the VM's uid {}; refused",
            path.display(),
            plan.uid
        )));
    }
    let mut file = std::fs::File::from(fd);
    let size = st.st_size as u64;
    if size > MAX_LOG_PRINT {
        file.seek(SeekFrom::Start(size - MAX_LOG_PRINT))?;
        eprintln!(
            "machina: console {vm}: showing the last {MAX_LOG_PRINT} of {size} bytes of {}",
            path.display()
        );
    }
    let mut text = Vec::new();
    file.take(MAX_LOG_PRINT).read_to_end(&mut text)?;
    // The keeper frees the log below its last MiB while this reads: what
    // it freed since the fstat reads as zeros.
    let start = text.iter().position(|&b| b != 0).unwrap_or(text.len());
    let mut out = std::io::stdout().lock();
    out.write_all(&text[start..])?;
    out.flush()?;
    Ok(0)
}

/// Puts the terminal in raw mode; restores it when dropped.
struct RawTerminal<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawTerminal<'a> {
    fn enter(fd: BorrowedFd<'a>) -> Result<RawTerminal<'a>, CliError> {
        let saved = termios::tcgetattr(fd)
            .map_err(|e| CliError(format!("cannot read the terminal's settings: {e}")))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)
            .map_err(|e| CliError(format!("cannot set the terminal to raw mode: {e}")))?;
        Ok(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// How a session ended.
enum End {
    /// `Ctrl-]`.
    Detached,
    /// Standard input closed.
    InputClosed,
    /// QEMU closed the socket (the VM stopped).
    ConsoleClosed,
}

/// The interactive session.
fn attach(plan: &Plan) -> Result<i32, CliError> {
    let vm = &plan.machine;
    let socket = plan.runtime_dir().join(ConsoleSpec::SOCKET);
    if std::fs::symlink_metadata(&socket).is_err() {
        return Err(no_console(vm));
    }
    let lock_dir =
        runtime_dir::open_lock_dir().map_err(|e| CliError(format!("console {vm}: {e}")))?;
    let lock = FileLock::acquire(
        &lock_dir,
        Path::new(LOCK_DIR),
        &Lock::Console(vm).file_name(),
        Duration::ZERO,
        || format!("the console of {vm} is in use by another `machina console` session"),
    )
    .map_err(|e| CliError(e.to_string()))?;
    let peer = PeerIdentity {
        uid: plan.uid,
        gid: plan.gid,
    };
    let stream = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?
        .block_on(async {
            let s = qmp::connect_checked(&socket, Some(peer), CONNECT_TIMEOUT).await?;
            s.into_std().map_err(|e| qmp::QmpError::Connect {
                path: socket.clone(),
                source: std::sync::Arc::new(e),
            })
        })
        .map_err(|e| {
            if e.is_not_running() {
                CliError(format!("{vm} is not running"))
            } else {
                CliError(format!("console {vm}: {e}"))
            }
        })?;
    stream.set_nonblocking(false)?;

    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    eprint!("Connected to the console of {vm}; Ctrl-] detaches.\r\n");
    let raw = if tty {
        Some(RawTerminal::enter(stdin.as_fd())?)
    } else {
        None
    };
    let end = pump(&stream, stdin.as_fd());
    drop(raw);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    lock.remove();
    match end? {
        End::Detached => eprintln!("\r\nDetached from the console of {vm}."),
        End::InputClosed => {}
        End::ConsoleClosed => eprintln!("\r\nThe console of {vm} closed (the VM stopped)."),
    }
    Ok(0)
}

/// Copies the terminal to the console and the console to standard output
/// until `Ctrl-]`, the end of input or the end of the console.
fn pump(stream: &std::os::unix::net::UnixStream, stdin: BorrowedFd<'_>) -> Result<End, CliError> {
    let mut out = std::io::stdout().lock();
    let mut sock_r = stream;
    let mut sock_w = stream;
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(stream.as_fd(), PollFlags::POLLIN),
            PollFd::new(stdin, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(CliError(format!("poll: {e}"))),
        }
        let sock_ready = fds[0].revents().unwrap_or(PollFlags::empty());
        let in_ready = fds[1].revents().unwrap_or(PollFlags::empty());
        if !sock_ready.is_empty() {
            let n = sock_r.read(&mut buf)?;
            if n == 0 {
                return Ok(End::ConsoleClosed);
            }
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
        if !in_ready.is_empty() {
            let n = nix::unistd::read(stdin, &mut buf).map_err(std::io::Error::from)?;
            if n == 0 {
                return Ok(End::InputClosed);
            }
            let data = &buf[..n];
            if let Some(i) = data.iter().position(|&b| b == ESCAPE) {
                sock_w.write_all(&data[..i])?;
                return Ok(End::Detached);
            }
            sock_w.write_all(data)?;
        }
    }
}
