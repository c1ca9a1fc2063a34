//! `machina teardown` and `machina register`, which act on the host as
//! root (`run` is in `run.rs`).

use std::path::Path;

use super::{machine_names, CliError, EXIT_FAILURE};
use crate::launcher;
use crate::names::MachineName;
use crate::plan::Plan;
use crate::prepare::teardown;

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

/// `machina register VM…`: registers each running VM with systemd-machined
/// (see [`crate::systemd::machined`]): its unit's main pid (QEMU, or the
/// launcher about to become QEMU), its UUID and its TAPs. One line per VM
/// that could not be registered; exit 1 if any.
pub fn register(plan_dir: &Path, names: &[String]) -> Result<i32, CliError> {
    use crate::systemd::{machined, unit_name, unit_status};
    let mut code = 0;
    for name in machine_names(names)? {
        let result = installed_plan(plan_dir, &name).and_then(|plan| {
            let unit = unit_name(&plan.machine);
            let status = unit_status(std::slice::from_ref(&unit))
                .map_err(|e| CliError(format!("{name}: {e}")))?;
            let Some(leader) = status.first().and_then(|s| s.main_pid) else {
                return Err(CliError(format!(
                    "{name}: is not running ({unit} has no main process)"
                )));
            };
            // A TAP that is gone already is left out, not an error.
            let ifindices = plan
                .taps
                .iter()
                .filter_map(|t| nix::net::if_::if_nametoindex(t.ifname.as_str()).ok())
                .map(|i| i as i32)
                .collect();
            let r = machined::Registration {
                name: plan.machine.as_str(),
                uuid: *plan.uuid.as_bytes(),
                leader,
                ifindices,
            };
            machined::register(&r)
                .map_err(|e| CliError(format!("{name}: not registered with systemd-machined: {e}")))
        });
        if let Err(e) = result {
            eprintln!("machina: {e}");
            code = EXIT_FAILURE;
        }
    }
    Ok(code)
}
