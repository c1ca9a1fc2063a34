//! `machina check [VM…]`: validates the host file and the given (or all)
//! machine files without root and without touching anything, for editors,
//! CI pipelines and configuration management. It runs everything `gen`
//! runs short of writing: exit 0 only when every machine would generate.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::{machine_names, one_line, CliError, EXIT_FAILURE};
use crate::config::{self, ConfigDir, ConfigError, HostFile, Machine, Problem};
use crate::names::MachineName;
use crate::plan::{IdRequest, TakenIds};
use crate::systemd::unit::{self, UnitOptions};

/// One problem of `check --json`, with the machine it concerns.
#[derive(Debug, Serialize)]
struct Entry {
    /// The machine, or `null` for the host file and directory.
    machine: Option<String>,
    #[serde(flatten)]
    problem: Problem,
}

/// `machina check [--json] [VM…]`. Prints one line per problem
/// (`file:line:column: json.path: message`) on stdout, or with `--json` a
/// JSON array of `{machine, file, line, column, path, message, text}`;
/// exit 1 when there is any.
pub fn check(
    dir: &ConfigDir,
    plan_dir: &Path,
    names: &[String],
    json: bool,
    out: &mut impl Write,
) -> Result<i32, CliError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut add = |machine: Option<&MachineName>, e: &ConfigError| {
        for p in e.problems() {
            entries.push(Entry {
                machine: machine.map(|m| m.to_string()),
                problem: p.report(),
            });
        }
    };
    let host = match dir.load_host() {
        Ok(h) => Some(h),
        Err(e) => {
            add(None, &e);
            None
        }
    };
    let no_dir = host.is_none() && !dir.root().is_dir();
    let machines = if no_dir {
        Vec::new()
    } else if names.is_empty() {
        match dir.scan_machines() {
            Ok(scan) => {
                for (_, e) in &scan.broken {
                    add(None, e);
                }
                scan.names
            }
            Err(e) => {
                add(None, &e);
                Vec::new()
            }
        }
    } else {
        machine_names(names)?
    };
    let mut checked = 0;
    if let Some(host) = &host {
        let mut taken = TakenIds::scan(Path::new("/etc"), plan_dir);
        for name in &machines {
            checked += 1;
            if let Err(e) = check_machine(dir, host, name, &mut taken) {
                add(Some(name), &e);
            }
        }
    }
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&entries).expect("problems serialize")
        )?;
    } else {
        for e in &entries {
            writeln!(out, "{}", one_line(&e.problem.text))?;
        }
    }
    eprintln!(
        "machina: check: {checked} machine{}, {}",
        if checked == 1 { "" } else { "s" },
        match entries.len() {
            0 => "no problems".to_owned(),
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        }
    );
    Ok(if entries.is_empty() { 0 } else { EXIT_FAILURE })
}

/// Everything `gen` does for one machine, short of writing.
fn check_machine(
    dir: &ConfigDir,
    host: &HostFile,
    name: &MachineName,
    taken: &mut TakenIds,
) -> Result<(), ConfigError> {
    let m = config::load_machine(dir, host, name)?;
    let mut problems = config::Problems::default();
    if let Some((origin, why)) = &m.group.refused {
        problems.push(ConfigError::invalid(origin, why.clone()));
    }
    if m.tpm.as_ref().is_some_and(|t| t.data.is_none()) {
        problems.push(machine_problem(
            &m,
            "attrs.tpm.data",
            "a TPM needs a state directory; set attrs.tpm.data to a volume of a tpm-data storage pool, or disable the TPM",
        ));
    }
    let hw = problems.take(crate::qemu::build(&m));
    if m.group.refused.is_none() {
        match taken.id_for(&m) {
            Ok(id) => {
                taken.take(&IdRequest::of(&m), id);
                if let Some(hw) = hw {
                    let plan = crate::plan::plan_for(&m, hw, id, Path::new("/sys"));
                    if let Err(e) = unit::render(&plan, &UnitOptions::new(&plan)) {
                        problems.push(machine_problem(&m, "", &e.to_string()));
                    }
                }
            }
            Err(e) => problems.push(machine_problem(&m, "", &e.to_string())),
        }
    }
    match problems.into_error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A problem `gen` would report about a built machine, at `key` of its file.
fn machine_problem(m: &Machine, key: &str, message: &str) -> ConfigError {
    ConfigError::invalid(&m.origin.key(key), message)
}
