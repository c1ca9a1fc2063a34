//! `machina run VM`: runs a VM in the foreground through the launcher,
//! without systemd, and behaves like `systemctl start` + `systemctl stop`.
//!
//! - The launcher runs in a forked child with a new session (`setsid`),
//!   stdin `/dev/null` and stdout/stderr pipes: QEMU never gets the
//!   caller's terminal (with `TIOCSTI` it could type into root's shell).
//!   This process relays QEMU's output to its own stdout/stderr.
//! - A close-on-exec pipe tells whether QEMU was exec'd. If the launch was
//!   refused or failed before the privilege drop (e.g. the VM already runs
//!   and holds its lock), the launcher has undone its own steps and `run`
//!   touches nothing; it tears down only what its own launch left: after
//!   QEMU ran, or after a failure past the drop (which the launcher, no
//!   longer root, cannot undo).
//! - SIGINT, SIGTERM (and SIGHUP, the terminal going away) start an orderly
//!   shutdown, the same code as `machina shutdown --timeout` (ACPI power
//!   button, `quit` after the timeout); a second signal sends `quit` at once.
//!   Each prints one line.
//! - Once QEMU greets on QMP, one line says where QMP and the console are.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid, ForkResult, Pid};
use tokio::signal::unix::{signal, SignalKind};

use super::qmp::{shutdown_target, sockets, Target};
use super::{CliError, EXIT_FAILURE};
use crate::config::{self, ConfigDir};
use crate::launcher;
use crate::names::MachineName;
use crate::plan::{plan_for, Plan, TakenIds, RUNTIME_ROOT};
use crate::prepare::teardown;
use crate::qemu;
use crate::qmp::{self as qmpc, Client, Options, PeerIdentity, ShutdownOptions};

/// The default time between the ACPI power button and `quit`: the unit's
/// `ExecStop=` timeout.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(85);

/// What the launcher child reported through the close-on-exec pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LaunchResult {
    /// The pipe closed without a word: the launcher passed its point of no
    /// return (QEMU was exec'd, or exec failed after the drop).
    Execd,
    /// Refused or failed while still root: the launcher undid its steps.
    Undone,
    /// Failed after giving up root: its steps are left for teardown.
    FailedAfterDrop,
}

const UNDONE: u8 = b'U';
const AFTER_DROP: u8 = b'D';

/// Prints one line, ignoring a closed terminal (SIGHUP) or pipe: losing a
/// line must not abort the shutdown.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "machina: {line}");
    let _ = out.flush();
}

/// Copies `from` to `to` until end of file; keeps draining if `to` fails,
/// so QEMU never blocks on a full pipe.
fn relay(from: OwnedFd, mut to: impl Write + Send + 'static) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut from = std::fs::File::from(from);
        let mut buf = [0u8; 8192];
        let mut ok = true;
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if ok {
                        ok = to.write_all(&buf[..n]).and_then(|_| to.flush()).is_ok();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    })
}

/// `machina run VM`: see the module documentation.
pub fn run(
    dir: &ConfigDir,
    plan_dir: &Path,
    name: &str,
    timeout: Option<Duration>,
) -> Result<i32, CliError> {
    let name = MachineName::new(name).map_err(|e| CliError(e.to_string()))?;
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError(format!(
            "{name}: run must be started as root (the launcher prepares the host, then drops to the VM's own uid)"
        )));
    }
    let host = dir.load_host()?;
    let m = config::load_machine(dir, &host, &name)?;
    let hw = qemu::build(&m)?;
    let id = TakenIds::scan(Path::new("/etc"), plan_dir)
        .id_for(&m)
        .map_err(|e| CliError(e.to_string()))?;
    let plan = plan_for(&m, hw, id, Path::new("/sys"));
    let console = match (&m.spice, &m.console) {
        (Some(s), _) => format!("spice://127.0.0.1:{}", s.port),
        (None, Some(_)) => format!("serial (machina console {name})"),
        (None, None) => "none (no display is configured)".to_owned(),
    };
    let timeout = timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);

    let err = |what: &str, e: nix::Error| CliError(format!("{name}: {what}: {e}"));
    // Signals wait until this process can act on them (after the fork, in
    // the runtime below); the child restores the mask.
    let mut stop_signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        stop_signals.add(s);
    }
    let old_mask = stop_signals
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(|e| err("block signals", e))?;
    let flags = nix::fcntl::OFlag::O_CLOEXEC;
    let (exec_r, exec_w) = pipe2(flags).map_err(|e| err("pipe", e))?;
    let (out_r, out_w) = pipe2(flags).map_err(|e| err("pipe", e))?;
    let (err_r, err_w) = pipe2(flags).map_err(|e| err("pipe", e))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| CliError(format!("{name}: /dev/null: {e}")))?;

    // The VM's TPM first: its socket listens once swtpm is exec'd.
    let swtpm = match &plan.tpm {
        Some(_) => match start_swtpm(&plan, &null, &out_w, &err_w, &old_mask) {
            Ok(pid) => Some(pid),
            Err(e) => {
                drop((out_w, err_w));
                eprintln!("{e}");
                let relays = [
                    relay(out_r, std::io::stdout()),
                    relay(err_r, std::io::stderr()),
                ];
                finish(relays);
                return Ok(EXIT_FAILURE);
            }
        },
        None => None,
    };
    // SAFETY: machina is single-threaded here (no runtime or thread has
    // started yet), so the child may run arbitrary code before it execs.
    let child = match unsafe { fork() }.map_err(|e| err("fork", e))? {
        ForkResult::Child => {
            drop((exec_r, out_r, err_r));
            let ok = setsid().is_ok()
                && dup2_stdin(&null).is_ok()
                && dup2_stdout(&out_w).is_ok()
                && dup2_stderr(&err_w).is_ok()
                && old_mask.thread_set_mask().is_ok();
            drop((null, out_w, err_w));
            let mut report = std::fs::File::from(exec_w);
            if !ok {
                let _ = report.write_all(&[UNDONE]);
                eprintln!("machina: {name}: cannot detach the launcher from the terminal");
                // SAFETY: leaving the forked child without running the
                // parent's destructors or atexit handlers.
                unsafe { libc::_exit(1) }
            }
            let failure = launcher::run(&plan);
            // Still root: the launcher undid its steps. Not root: it could
            // not, and `run` tears down.
            let code = if nix::unistd::geteuid().is_root() {
                UNDONE
            } else {
                AFTER_DROP
            };
            let _ = report.write_all(&[code]);
            eprintln!("machina-launch: {name}: {failure}");
            // SAFETY: as above.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => child,
    };
    drop((exec_w, out_w, err_w, null));
    let relays = [
        relay(out_r, std::io::stdout()),
        relay(err_r, std::io::stderr()),
    ];
    let result = {
        let mut f = std::fs::File::from(exec_r);
        let mut b = [0u8; 1];
        loop {
            match f.read(&mut b) {
                Ok(0) => break LaunchResult::Execd,
                Ok(_) if b[0] == AFTER_DROP => break LaunchResult::FailedAfterDrop,
                Ok(_) => break LaunchResult::Undone,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break LaunchResult::Execd,
            }
        }
    };
    let status = match result {
        LaunchResult::Undone => {
            // Nothing of this launch is left and nothing else is touched:
            // a VM that already runs keeps running. Signals stay blocked:
            // there is nothing to stop, and this process ends now.
            let _ = wait_child(child);
            stop_swtpm(swtpm);
            finish(relays);
            return Ok(EXIT_FAILURE);
        }
        LaunchResult::FailedAfterDrop => {
            // Signals stay blocked so that the teardown completes.
            let _ = wait_child(child);
            stop_swtpm(swtpm);
            finish(relays);
            let _ = tear_down(&plan);
            return Ok(EXIT_FAILURE);
        }
        LaunchResult::Execd => supervise(&plan, child, &console, timeout, &old_mask),
    };
    stop_swtpm(swtpm);
    finish(relays);
    let torn = tear_down(&plan);
    Ok(if status == Ok(0) && torn.is_ok() {
        0
    } else {
        EXIT_FAILURE
    })
}

/// Forks `machina-launch --swtpm` for the VM (its output on `out`/`err`)
/// and waits until swtpm was exec'd (its socket then listens) or the step
/// failed.
fn start_swtpm(
    plan: &Plan,
    null: &std::fs::File,
    out: &OwnedFd,
    err: &OwnedFd,
    old_mask: &SigSet,
) -> Result<Pid, String> {
    let name = &plan.machine;
    let (r, w) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("machina: {name}: pipe: {e}"))?;
    // SAFETY: single-threaded here, as for the QEMU launcher below.
    match unsafe { fork() }.map_err(|e| format!("machina: {name}: fork: {e}"))? {
        ForkResult::Child => {
            drop(r);
            let ok = setsid().is_ok()
                && dup2_stdin(null).is_ok()
                && dup2_stdout(out).is_ok()
                && dup2_stderr(err).is_ok()
                && old_mask.thread_set_mask().is_ok();
            let mut report = std::fs::File::from(w);
            if ok {
                let failure = launcher::swtpm::run(plan);
                eprintln!("machina-launch: {name}: {failure}");
            }
            let _ = report.write_all(&[UNDONE]);
            // SAFETY: leaving the forked child without running the
            // parent's destructors or atexit handlers.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut f = std::fs::File::from(r);
            let mut b = [0u8; 1];
            let n = loop {
                match f.read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    other => break other.unwrap_or(1),
                }
            };
            if n == 0 {
                Ok(child)
            } else {
                let _ = wait_child(child);
                Err(format!(
                    "machina: {name}: the TPM (swtpm) did not start; see above"
                ))
            }
        }
    }
}

/// Waits for swtpm to end (it ends when QEMU's connection closes); ends it
/// after a few seconds if it does not.
fn stop_swtpm(pid: Option<Pid>) {
    let Some(pid) = pid else { return };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = kill(pid, Signal::SIGTERM);
                let _ = wait_child(pid);
                return;
            }
            Err(nix::errno::Errno::EINTR) => {}
            _ => return,
        }
    }
}

/// Waits for the relays to see end of file (QEMU's pipes close when it
/// exits), bounded in case a stray process inherited them.
fn finish(relays: [std::thread::JoinHandle<()>; 2]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for r in relays {
        while !r.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
}

/// The exit code of `child` (128 + signal when killed).
fn wait_child(child: Pid) -> Result<i32, nix::Error> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => return Ok(c),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn tear_down(plan: &Plan) -> Result<(), ()> {
    let report = teardown::teardown(plan, &teardown::Options::default());
    for line in report.to_string().lines() {
        eprintln!("machina: {}: teardown: {line}", plan.machine);
    }
    if report.ok() {
        Ok(())
    } else {
        Err(())
    }
}

/// The sockets `run` may use, in order: the one reserved for systemd (no
/// unit runs this VM), then the command sockets. Only those QEMU serves.
fn qmp_sockets(plan: &Plan) -> Vec<PathBuf> {
    let mut all = sockets(&plan.machine, true);
    all.extend(sockets(&plan.machine, false));
    all.retain(|p| {
        let p = p.display().to_string();
        plan.qemu.args.iter().any(|a| a.contains(&p))
    });
    all
}

/// Runs while QEMU runs: prints where it is, turns signals into an orderly
/// shutdown or a quit, and returns QEMU's exit code.
fn supervise(
    plan: &Plan,
    child: Pid,
    console: &str,
    timeout: Duration,
    old_mask: &SigSet,
) -> Result<i32, ()> {
    let name = plan.machine.clone();
    let (tx, mut exited) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(wait_child(child));
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!(
                "{name}: cannot start the async runtime ({e}); waiting for QEMU to end"
            ));
            let _ = old_mask.thread_set_mask();
            return exited.blocking_recv().ok().and_then(Result::ok).ok_or(());
        }
    };
    let target = Target {
        name: name.clone(),
        sockets: qmp_sockets(plan),
        peer: Some(PeerIdentity {
            uid: plan.uid,
            gid: plan.gid,
        }),
    };
    rt.block_on(async move {
        let streams = [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
        ]
        .map(|(k, n)| (signal(k).ok(), n));
        let _ = old_mask.thread_set_mask();
        let [(mut int, _), (mut term, _), (mut hup, _)] = streams;
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }

        // Ready: QMP greets (or QEMU ends first).
        let qmp_dir = format!("{RUNTIME_ROOT}/{name}/qmp");
        let ready = async {
            if target.sockets.is_empty() {
                return Ok(None);
            }
            let opts = Options {
                connect_timeout: Duration::from_secs(60),
                greeting_timeout: Duration::from_secs(30),
                peer: target.peer,
                ..Options::default()
            };
            Client::connect_any(&target.sockets, &opts)
                .await
                .map(|(_, g)| Some(g))
        };
        let mut ready: Option<std::pin::Pin<Box<dyn std::future::Future<Output = _>>>> =
            Some(Box::pin(ready));
        let announce = |g: Result<Option<qmpc::Greeting>, qmpc::QmpError>| match g {
            Ok(g) => {
                let qemu = g
                    .map(|g| format!(", qemu {}.{}.{}", g.qemu.major, g.qemu.minor, g.qemu.micro))
                    .unwrap_or_default();
                say(&format!("{name} is running (QEMU pid {child}{qemu})"));
                if target.sockets.is_empty() {
                    say(&format!("{name}: QMP: disabled; console: {console}"));
                } else {
                    say(&format!(
                        "{name}: QMP: {qmp_dir}/command.0.qmp.socket (machina observe|query|shutdown {name}); console: {console}"
                    ));
                }
                say(&format!(
                    "{name}: Ctrl-C or SIGTERM shuts it down (ACPI, quit after {timeout:?}); a second Ctrl-C quits at once"
                ));
            }
            Err(e) => say(&format!("{name}: QEMU (pid {child}) runs, but QMP does not answer: {e}")),
        };
        let mut shutdown: Option<PendingShutdown> = None;
        let mut signals = 0u32;
        loop {
            let got = tokio::select! {
                st = &mut exited => return st.ok().and_then(Result::ok).ok_or(()),
                _ = next(&mut int) => "SIGINT",
                _ = next(&mut term) => "SIGTERM",
                _ = next(&mut hup) => "SIGHUP",
                g = async { match ready.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    ready = None;
                    announce(g);
                    continue;
                }
                r = async { match shutdown.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    shutdown = None;
                    if let Err(e) = r {
                        say(&e);
                    }
                    continue;
                }
            };
            signals += 1;
            if signals == 1 {
                if target.sockets.is_empty() {
                    say(&format!("{name}: {got}: no QMP socket; stopping QEMU with SIGTERM"));
                    let _ = kill(child, Signal::SIGTERM);
                    continue;
                }
                say(&format!(
                    "{name}: {got}: shutting down (ACPI power button, quit after {timeout:?}; Ctrl-C again to quit now)"
                ));
                let opts = ShutdownOptions {
                    wait: true,
                    timeout: Some(timeout),
                    ..ShutdownOptions::default()
                };
                let t = target.clone();
                shutdown = Some(Box::pin(async move {
                    shutdown_target(&t, opts, say).await
                }));
            } else if signals == 2 {
                say(&format!("{name}: {got} again: quitting now (QMP quit)"));
                // Frees the socket the shutdown held.
                shutdown = None;
                if let Err(e) = quit(&target).await {
                    say(&format!("{name}: cannot quit over QMP ({e}); stopping QEMU with SIGTERM"));
                    let _ = kill(child, Signal::SIGTERM);
                }
            } else {
                say(&format!("{name}: {got}: still waiting for QEMU (pid {child}) to end"));
            }
        }
    })
}

/// The orderly shutdown started by the first signal.
type PendingShutdown =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<qmpc::ShutdownOutcome, String>>>>;

/// Sends `quit` over the first working socket.
async fn quit(t: &Target) -> Result<(), qmpc::QmpError> {
    let opts = Options {
        peer: t.peer,
        ..Options::default()
    };
    let (client, _) = Client::connect_any(&t.sockets, &opts).await?;
    match client.execute("quit", None).await {
        Err(e) if !e.is_closed() => Err(e),
        _ => Ok(()),
    }
}
