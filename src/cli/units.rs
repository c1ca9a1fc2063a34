//! Commands on the VMs' systemd units: `start`, `stop`, `restart`,
//! `enable`, `disable`, `status`, `list` and `dissolve`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::{machine_names, CliError, EXIT_FAILURE};
use crate::config::{self, ConfigDir};
use crate::names::MachineName;
use crate::plan::{plan_for, Plan, TakenIds};
use crate::systemd::control::{self, UnitStatus, Verb};
use crate::systemd::unit::unit_name;

/// How long `status` and `list` wait for a QMP socket to answer.
const PING_LIMIT: Duration = Duration::from_millis(500);

fn units_of(names: &[MachineName]) -> Vec<String> {
    names.iter().map(unit_name).collect()
}

/// `start|stop|restart|enable|disable VM…` through systemctl.
pub fn control(verb: Verb, names: &[String]) -> Result<i32, CliError> {
    let names = machine_names(names)?;
    control::systemctl(verb, &units_of(&names)).map_err(|e| CliError(e.to_string()))?;
    Ok(0)
}

/// One VM's state for `status` and `list`.
struct Row {
    name: MachineName,
    description: String,
    unit: Option<UnitStatus>,
    qmp: bool,
    /// Whether the installed plan differs from what the configuration
    /// generates now (`None`: unknown, e.g. the configuration is broken).
    stale: Option<bool>,
    /// Whether the running QEMU was launched from another plan than the one
    /// installed now (`None`: not running, or no plan installed).
    needs_restart: Option<bool>,
    /// The TPM of the installed plan (`None`: no TPM, or no plan).
    tpm: Option<super::tpm::TpmState>,
    error: Option<String>,
}

fn rows(dir: &ConfigDir, plan_dir: &Path, names: Vec<MachineName>) -> (Vec<Row>, Option<String>) {
    let (statuses, note) = if control::systemd_running() {
        match control::unit_status(&units_of(&names)) {
            Ok(s) => (s.into_iter().map(Some).collect(), None),
            Err(e) => (
                vec![None; names.len()],
                Some(format!("cannot read unit states: {e}")),
            ),
        }
    } else {
        (
            vec![None; names.len()],
            Some("systemd is not running here: unit states are unknown".to_owned()),
        )
    };
    let host = dir.load_host();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
    let pings: Vec<bool> = match &rt {
        Some(rt) => rt.block_on(super::qmp::futures_join_all(names.iter().map(|n| {
            // Only a socket served by the VM's own QEMU counts as answering.
            let target = super::qmp::target(plan_dir, n, false);
            async move {
                match target {
                    Ok(t) => {
                        let opts = crate::qmp::Options {
                            peer: t.peer,
                            ..crate::qmp::Options::with_timeout(PING_LIMIT)
                        };
                        crate::qmp::ping_with(&t.sockets, &opts).await
                    }
                    Err(_) => false,
                }
            }
        }))),
        None => vec![false; names.len()],
    };
    let taken = TakenIds::scan(Path::new("/etc"), plan_dir);
    let mut out = Vec::new();
    for ((name, unit), qmp) in names.into_iter().zip(statuses).zip(pings) {
        let plan_path = plan_dir.join(format!("{name}.json"));
        let installed = std::fs::read_to_string(&plan_path)
            .ok()
            .and_then(|t| Plan::from_json(&t).ok());
        let mut row = Row {
            description: String::new(),
            needs_restart: unit
                .as_ref()
                .and_then(|u| needs_restart(u, &plan_path, Path::new("/proc"))),
            unit,
            qmp,
            stale: None,
            tpm: installed.as_ref().and_then(super::tpm::TpmState::of_plan),
            error: None,
            name,
        };
        match &host {
            Err(e) => row.error = Some(e.to_string()),
            Ok(h) => match config::load_machine(dir, h, &row.name) {
                Err(e) => row.error = Some(first_problem(&e)),
                Ok(m) => {
                    row.description = m.description.clone();
                    if let Some(installed) = &installed {
                        row.stale = config_changed(&m, installed, &taken);
                    }
                }
            },
        }
        out.push(row);
    }
    (out, note)
}

/// Whether `m` now generates another plan than `installed`; `None` when
/// its hardware cannot be built.
pub(super) fn config_changed(
    m: &config::Machine,
    installed: &Plan,
    taken: &TakenIds,
) -> Option<bool> {
    let hw = crate::qemu::build(m).ok()?;
    let id = taken.id_for(m).unwrap_or(installed.uid);
    let now = plan_for(
        m,
        hw,
        id,
        &installed
            .mdevs
            .first()
            .map_or("/sys".into(), |d| d.sysfs_root.clone()),
    );
    Some(now != *installed)
}

/// The first problem of a broken machine on one line, and how many more
/// `machina check` shows.
fn first_problem(e: &config::ConfigError) -> String {
    let all = e.problems();
    let first = super::one_line(&all[0].report().text);
    match all.len() {
        1 => first,
        n => format!("{first} (and {} more; `machina check` lists them)", n - 1),
    }
}

/// Whether the VM's running QEMU was launched from another plan than the
/// one at `plan_path`; `None` when no QEMU runs or no plan is installed.
///
/// Two independent signs, either of which says "restart":
/// - the plan file was modified after systemd forked the unit's main
///   process (the launcher reads the plan after that fork, then execs QEMU
///   in the same process). `gen` leaves an unchanged plan untouched, mtime
///   included, so a newer mtime means new content. Both times are read to
///   the microsecond; a plan written during the launcher's first
///   milliseconds errs towards "restart", never the other way.
/// - the command line of the running QEMU differs from the plan's binary
///   and arguments: catches a changed plan whose mtime was set back (`cp -p`,
///   `rsync -t`, a restored backup). Plan fields that do not reach the
///   command line (bridges, grants) are covered by the first sign.
///
/// Neither needs anything from the launcher or from the VM's runtime
/// directory (which the VM's uid could write).
fn needs_restart(unit: &UnitStatus, plan_path: &Path, proc_root: &Path) -> Option<bool> {
    if !matches!(
        unit.active_state.as_str(),
        "active" | "reloading" | "deactivating"
    ) {
        return None;
    }
    let pid = unit.main_pid?;
    let plan = Plan::from_json(&std::fs::read_to_string(plan_path).ok()?).ok()?;
    let modified = std::fs::symlink_metadata(plan_path).ok()?.modified().ok()?;
    if unit
        .main_started()
        .is_some_and(|started| modified > started)
    {
        return Some(true);
    }
    let proc = proc_root.join(pid.to_string());
    // While the launcher still prepares the host, the process is not QEMU
    // yet: only the times can tell.
    let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
    if comm.trim_end() == "machina-launch" {
        return Some(false);
    }
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return Some(false);
    };
    let mut want = Vec::new();
    for arg in std::iter::once(plan.qemu.binary.as_os_str().as_encoded_bytes())
        .chain(plan.qemu.args.iter().map(|a| a.as_bytes()))
    {
        want.extend_from_slice(arg);
        want.push(0);
    }
    Some(cmdline != want)
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn row_json(r: &Row, now: SystemTime) -> serde_json::Value {
    let unit = r.unit.as_ref().map(|u| {
        json!({
            "unit": u.unit,
            "load-state": u.load_state,
            "active-state": u.active_state,
            "sub-state": u.sub_state,
            "since": u.since().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            "for-seconds": u.duration(now).map(|d| d.as_secs()),
            "main-pid": u.main_pid,
            "main-uid": u.main_uid,
        })
    });
    let state = r
        .unit
        .as_ref()
        .map_or(control::SimpleState::Stopped, UnitStatus::simple_state);
    json!({
        "name": r.name.as_str(),
        "description": r.description,
        "state": state,
        "enabled": r.unit.as_ref().map(UnitStatus::enabled),
        "unit": unit,
        "qmp": r.qmp,
        "config-changed-since-gen": r.stale,
        "needs-restart": r.needs_restart,
        "tpm": r.tpm,
        "error": r.error,
    })
}

fn print_json(rows: &[Row], note: &Option<String>, broken: &[(String, config::ConfigError)]) {
    let now = SystemTime::now();
    let mut machines: Vec<serde_json::Value> = rows.iter().map(|r| row_json(r, now)).collect();
    machines.extend(broken.iter().map(|(stem, e)| {
        json!({"name": stem, "description": "", "state": "stopped", "enabled": null, "unit": null, "qmp": false,
               "config-changed-since-gen": null, "tpm": null, "error": e.to_string()})
    }));
    let v = json!({
        "systemd": note.is_none(),
        "note": note,
        "machines": machines,
    });
    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
}

/// `status VM…`: unit state, since when, main PID and its uid, QMP, and
/// whether the configuration changed since the last `gen`.
pub fn status(
    dir: &ConfigDir,
    plan_dir: &Path,
    names: &[String],
    json: bool,
) -> Result<i32, CliError> {
    let names = machine_names(names)?;
    let (rows, note) = rows(dir, plan_dir, names);
    if json {
        print_json(&rows, &note, &[]);
        return Ok(0);
    }
    if let Some(n) = &note {
        println!("{n}");
    }
    let now = SystemTime::now();
    for r in &rows {
        println!(
            "{}{}",
            r.name,
            if r.description.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.description)
            }
        );
        if let Some(u) = &r.unit {
            let since = u
                .duration(now)
                .map(|d| format!(" for {}", human_duration(d)))
                .unwrap_or_default();
            println!(
                "  unit: {} ({}, {}){since}",
                u.unit,
                u.load_state,
                u.state()
            );
            if let Some(pid) = u.main_pid {
                let uid = u
                    .main_uid
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "?".into());
                println!("  main process: {pid} (uid {uid})");
            }
        }
        println!("  qmp: {}", if r.qmp { "answers" } else { "no answer" });
        if let Some(t) = &r.tpm {
            println!("  tpm: {}", t.line());
        }
        match r.stale {
            Some(true) => println!("  configuration changed since the last `machina gen`"),
            Some(false) => {}
            None if r.error.is_none() => {
                println!("  no launch plan installed (run `machina gen {}`)", r.name)
            }
            None => {}
        }
        if r.needs_restart == Some(true) {
            println!(
                "  running an older launch plan: `machina restart {}` to apply the installed one",
                r.name
            );
        }
        if let Some(e) = &r.error {
            println!("  error: {e}");
        }
        if r.unit.is_some() {
            let tail = super::logs::tail(&r.name, super::logs::STATUS_LINES);
            if !tail.is_empty() {
                println!();
                for l in tail {
                    println!("  {l}");
                }
            }
        }
    }
    Ok(0)
}

/// `list`: every VM with its unit state (when systemd runs) and description.
pub fn list(dir: &ConfigDir, plan_dir: &Path, json: bool) -> Result<i32, CliError> {
    let scan = dir.scan_machines()?;
    let (rows, note) = rows(dir, plan_dir, scan.names);
    if json {
        print_json(&rows, &note, &scan.broken);
        return Ok(0);
    }
    if let Some(n) = &note {
        eprintln!("machina: {n}");
    }
    let now = SystemTime::now();
    let width = rows
        .iter()
        .map(|r| r.name.as_str().len())
        .max()
        .unwrap_or(0);
    let states: Vec<String> = rows
        .iter()
        .map(|r| r.unit.as_ref().map(|u| u.state()).unwrap_or_default())
        .collect();
    let swidth = states.iter().map(String::len).max().unwrap_or(0);
    for (r, state) in rows.iter().zip(&states) {
        let mut line = format!("{:width$}", r.name.as_str());
        if swidth > 0 {
            let since = r
                .unit
                .as_ref()
                .and_then(|u| u.duration(now))
                .map(human_duration)
                .unwrap_or_default();
            line.push_str(&format!("  {state:swidth$}  {since:>6}"));
        }
        match (&r.error, r.description.is_empty()) {
            (Some(e), _) => line.push_str(&format!("  error: {e}")),
            (None, false) => line.push_str(&format!("  ({})", r.description)),
            (None, true) => {}
        }
        println!("{}", line.trim_end());
    }
    // A badly named file is shown, not allowed to hide the others.
    for (stem, e) in &scan.broken {
        println!("{stem}  error: {}", super::one_line(&e.to_string()));
    }
    Ok(0)
}

/// What `dissolve` deletes beyond units and plans.
#[derive(Debug, Clone, Copy, Default)]
pub struct Purge {
    /// `--purge-tpm`: the TPM state directory.
    pub tpm: bool,
    /// `--yes-delete-tpm-state`.
    pub confirmed: bool,
}

/// `dissolve VM…`: removes the units (QEMU and swtpm) and the plan of VMs
/// whose unit is not active, then reloads systemd. TPM state is guest data
/// and stays, unless `--purge-tpm --yes-delete-tpm-state`.
pub fn dissolve(
    plan_dir: &Path,
    unit_dir: &Path,
    names: &[String],
    purge: Purge,
) -> Result<i32, CliError> {
    let names = machine_names(names)?;
    if purge.tpm && !purge.confirmed {
        return Err(CliError(
            "--purge-tpm deletes the guests' TPM state (and what depends on it, e.g. BitLocker keys) for good; add --yes-delete-tpm-state to confirm".into(),
        ));
    }
    if control::systemd_running() {
        let statuses =
            control::unit_status(&units_of(&names)).map_err(|e| CliError(e.to_string()))?;
        for s in &statuses {
            if !matches!(s.active_state.as_str(), "inactive" | "failed" | "") {
                return Err(CliError(format!(
                    "{} is {}; stop it first",
                    s.unit, s.active_state
                )));
            }
        }
    }
    let mut code = 0;
    for n in &names {
        if purge.tpm {
            // Before the plan goes: it names the state directory.
            match super::tpm::purge(plan_dir, n) {
                Ok(Some(p)) => println!("removed {p}"),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("machina: {e}");
                    code = EXIT_FAILURE;
                    continue;
                }
            }
        }
        for path in [
            unit_dir.join(unit_name(n)),
            unit_dir.join(crate::systemd::swtpm_unit::swtpm_unit_name(n)),
            unit_dir.join(crate::systemd::machined::machined_unit_name(n)),
            plan_dir.join(format!("{n}.json")),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    eprintln!("machina: {}: {e}", path.display());
                    code = EXIT_FAILURE;
                }
            }
        }
    }
    if control::systemd_running() {
        control::daemon_reload().map_err(|e| CliError(e.to_string()))?;
    }
    Ok(code)
}
