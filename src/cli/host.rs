//! `machina teardown`, which acts on the host as root (`run` is in
//! `run.rs`).

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
