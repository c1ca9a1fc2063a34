//! The TPM side of `status` and `dissolve --purge-tpm`.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;

use crate::names::MachineName;
use crate::plan::Plan;
use crate::systemd::control;
use crate::systemd::swtpm_unit;

/// The VM's installed plan, if readable.
fn installed(plan_dir: &Path, vm: &MachineName) -> Option<Plan> {
    std::fs::read_to_string(plan_dir.join(format!("{vm}.json")))
        .ok()
        .and_then(|t| Plan::from_json(&t).ok())
}

/// The swtpm processes running as `uid` (by `/proc`, so also under
/// `machina run`): their pids.
fn swtpm_pids(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            comm.trim() == "swtpm"
                && status.lines().any(|l| {
                    l.strip_prefix("Uid:")
                        .and_then(|v| v.split_whitespace().next())
                        .is_some_and(|u| u == uid.to_string())
                })
                && !status
                    .lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .collect()
}

/// The TPM of a VM as `status` and `inspect` report it (text and JSON):
/// from the installed plan (what runs), systemd (the swtpm unit) and
/// `/proc` (the swtpm process, so also under `machina run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TpmState {
    /// Whether an swtpm process runs as the VM's uid.
    pub running: bool,
    /// The pids of the swtpm processes running as the VM's uid (one while
    /// the VM runs).
    pub pids: Vec<u32>,
    /// The uid (and gid) swtpm runs as: the VM's, from the installed plan.
    pub uid: u32,
    /// The swtpm unit; null when systemd is not running here (e.g. a VM
    /// under `machina run`).
    pub unit: Option<TpmUnit>,
    /// The directory swtpm keeps the TPM's state in (`attrs.tpm.data`).
    pub state_dir: PathBuf,
    /// The control socket swtpm serves and QEMU connects to.
    pub socket: PathBuf,
}

/// The swtpm unit of a VM, as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TpmUnit {
    /// `machina-swtpm-<vm>.service`.
    pub name: String,
    /// systemd's `LoadState` (empty when systemd did not answer).
    pub load_state: String,
    /// `ActiveState` (empty when systemd did not answer).
    pub active_state: String,
    /// `SubState` (empty when systemd did not answer).
    pub sub_state: String,
}

impl TpmState {
    /// The state of the TPM of the VM `plan` (its installed plan) runs;
    /// `None` when that plan has no TPM.
    pub fn of_plan(plan: &Plan) -> Option<TpmState> {
        let vm = &plan.machine;
        let tpm = plan.tpm.as_ref()?;
        let unit = control::systemd_running().then(|| {
            let name = swtpm_unit::swtpm_unit_name(vm);
            // Empty states when systemd did not answer.
            let status = control::unit_status(std::slice::from_ref(&name))
                .ok()
                .and_then(|s| s.into_iter().next())
                .unwrap_or_default();
            TpmUnit {
                name,
                load_state: status.load_state,
                active_state: status.active_state,
                sub_state: status.sub_state,
            }
        });
        let pids = swtpm_pids(plan.uid);
        Some(TpmState {
            running: !pids.is_empty(),
            pids,
            uid: plan.uid,
            unit,
            state_dir: tpm.data_dir.clone(),
            socket: tpm.socket.clone(),
        })
    }

    /// One line for `status` and `inspect`: the unit's state (when systemd
    /// runs), the swtpm process and the state directory, e.g.
    /// `machina-swtpm-w11.service (loaded, active/running); swtpm pid 812
    /// (uid 200123); state /var/lib/machina/tpm/w11.tpm-data`.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = &self.unit {
            parts.push(if u.load_state.is_empty() {
                format!("{} (state unknown)", u.name)
            } else {
                format!(
                    "{} ({}, {})",
                    u.name,
                    u.load_state,
                    control::state_text(&u.active_state, &u.sub_state)
                )
            });
        }
        parts.push(match self.pids.as_slice() {
            [] => "swtpm not running".to_owned(),
            p => format!(
                "swtpm pid {} (uid {})",
                p.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                self.uid
            ),
        });
        parts.push(format!("state {}", self.state_dir.display()));
        parts.join("; ")
    }
}

/// Deletes the TPM state directory named in `vm`'s installed plan, without
/// following links. Returns what was removed, or why not.
pub fn purge(plan_dir: &Path, vm: &MachineName) -> Result<Option<String>, String> {
    let Some(plan) = installed(plan_dir, vm) else {
        return Err(format!(
            "{vm}: --purge-tpm: no readable plan in {} names its TPM state; nothing deleted",
            plan_dir.display()
        ));
    };
    let Some(t) = &plan.tpm else {
        return Ok(None);
    };
    if !swtpm_pids(plan.uid).is_empty() {
        return Err(format!(
            "{vm}: --purge-tpm: swtpm still runs as uid {}; stop the VM first",
            plan.uid
        ));
    }
    let data = &t.data_dir;
    let (Some(parent), Some(name)) = (data.parent(), data.file_name()) else {
        return Err(format!("{}: not a TPM state directory", data.display()));
    };
    let w = crate::prepare::fs::walk_checked(parent, &|st, dir, _| {
        if crate::prepare::fs::only_root_writes(st) {
            Ok(())
        } else {
            Err(crate::prepare::Error::UnsafeDir(dir.to_owned()))
        }
    })
    .map_err(|e| format!("{vm}: --purge-tpm: {e}"))?;
    let dir = crate::prepare::fs::openat_nofollow(
        std::os::fd::AsFd::as_fd(&w.fd),
        Path::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| format!("{vm}: --purge-tpm: {e}"))?;
    let cname = crate::prepare::fs::cstr(Path::new(name)).map_err(|e| e.to_string())?;
    if crate::prepare::fs::stat_at(&dir, &cname).is_err() {
        return Ok(None);
    }
    crate::prepare::fs::remove_at(&dir, &cname, data)
        .map_err(|e| format!("{vm}: --purge-tpm: {e}"))?;
    Ok(Some(data.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(unit: Option<TpmUnit>, pids: Vec<u32>) -> TpmState {
        TpmState {
            running: !pids.is_empty(),
            pids,
            uid: 200123,
            unit,
            state_dir: "/var/lib/machina/tpm/w11.tpm-data".into(),
            socket: "/run/machina/w11/swtpm/control.socket".into(),
        }
    }

    fn unit(load: &str, active: &str, sub: &str) -> Option<TpmUnit> {
        Some(TpmUnit {
            name: "machina-swtpm-w11.service".into(),
            load_state: load.into(),
            active_state: active.into(),
            sub_state: sub.into(),
        })
    }

    #[test]
    fn the_status_line_names_unit_process_and_state_directory() {
        assert_eq!(
            state(unit("loaded", "active", "running"), vec![812]).line(),
            "machina-swtpm-w11.service (loaded, active/running); swtpm pid 812 (uid 200123); \
             state /var/lib/machina/tpm/w11.tpm-data"
        );
        assert_eq!(
            state(None, vec![]).line(),
            "swtpm not running; state /var/lib/machina/tpm/w11.tpm-data"
        );
        assert!(state(unit("", "", ""), vec![])
            .line()
            .starts_with("machina-swtpm-w11.service (state unknown); swtpm not running"));
    }

    #[test]
    fn the_json_form_is_kebab_case_with_a_null_unit_without_systemd() {
        let v = serde_json::to_value(state(None, vec![812])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "running": true, "pids": [812], "uid": 200123, "unit": null,
                "state-dir": "/var/lib/machina/tpm/w11.tpm-data",
                "socket": "/run/machina/w11/swtpm/control.socket",
            })
        );
    }
}
