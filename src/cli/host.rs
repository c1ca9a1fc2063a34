//! Commands that act on the host as root: `run` and `teardown`.

use std::path::Path;

use super::{machine_names, CliError, EXIT_FAILURE};
use crate::config::{self, ConfigDir};
use crate::launcher;
use crate::names::MachineName;
use crate::plan::{plan_for, Plan, TakenIds};
use crate::prepare::teardown;
use crate::qemu;

/// The installed plan of `name`, checked as the launcher checks it.
fn installed_plan(plan_dir: &Path, name: &MachineName) -> Result<Plan, CliError> {
    let path = plan_dir.join(format!("{name}.json"));
    launcher::read_plan(&path, Some(name)).map_err(|f| CliError(format!("{name}: {f}")))
}

/// `machina teardown [--force] VM…`: every item of every VM is attempted;
/// the exit code is 1 if anything failed (the Go program always exited 0).
/// A VM whose QEMU still runs is left alone unless `force`, which ends
/// that QEMU (and nothing else) first.
pub fn teardown(plan_dir: &Path, names: &[String], force: bool) -> Result<i32, CliError> {
    let mut code = 0;
    for name in machine_names(names)? {
        let plan = match installed_plan(plan_dir, &name) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("machina: {e}");
                code = EXIT_FAILURE;
                continue;
            }
        };
        let opts = teardown::Options {
            force,
            ..teardown::Options::default()
        };
        let report = teardown::teardown(&plan, &opts);
        for line in report.to_string().lines() {
            eprintln!("machina: {name}: teardown: {line}");
        }
        if !report.ok() {
            code = EXIT_FAILURE;
        }
    }
    Ok(code)
}

/// `machina run VM`: builds the VM's plan from the configuration (keeping
/// an installed plan's uid), launches it through the same launcher code in
/// a child process, waits for QEMU to end, then tears down.
pub fn run(dir: &ConfigDir, plan_dir: &Path, name: &str) -> Result<i32, CliError> {
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
    let plan = plan_for(&m, &hw, id, Path::new("/sys"));
    use nix::sys::signal::{signal, SigHandler, Signal};
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // SAFETY: machina is single-threaded here (no runtime has started), so
    // the child may run arbitrary code before it execs QEMU.
    match unsafe { fork() }.map_err(|e| CliError(format!("{name}: fork: {e}")))? {
        ForkResult::Child => {
            let failure = launcher::run(&plan);
            eprintln!("machina-launch: {name}: {failure}");
            // SAFETY: leaving the child without running the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(1) }
        }
        ForkResult::Parent { child } => {
            // Ctrl-C goes to QEMU (same process group); this process waits
            // for it and cleans up.
            // SAFETY: ignoring signals in the parent while it waits.
            unsafe {
                let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
                let _ = signal(Signal::SIGTERM, SigHandler::SigIgn);
            }
            let status = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, c)) => break c,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(CliError(format!("{name}: wait: {e}"))),
                }
            };
            let report = teardown::teardown(&plan, &teardown::Options::default());
            for line in report.to_string().lines() {
                eprintln!("machina: {name}: teardown: {line}");
            }
            Ok(if status == 0 && report.ok() {
                0
            } else {
                EXIT_FAILURE
            })
        }
    }
}
