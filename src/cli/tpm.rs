//! The TPM side of `status` and `dissolve --purge-tpm`.

use std::path::Path;

use crate::names::MachineName;
use crate::plan::Plan;
use crate::systemd::{control, swtpm_unit};

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

/// The TPM's state for `status`: `None` for a VM without a TPM in its
/// installed plan; else the swtpm unit's state (when systemd runs) and the
/// swtpm process (as the VM's uid), e.g. `machina-swtpm-w11.service
/// (active, running); swtpm pid 812 (uid 200123)`.
pub fn status_line(plan_dir: &Path, vm: &MachineName) -> Option<String> {
    let plan = installed(plan_dir, vm)?;
    plan.tpm.as_ref()?;
    let mut parts = Vec::new();
    if control::systemd_running() {
        let unit = swtpm_unit::swtpm_unit_name(vm);
        match control::unit_status(std::slice::from_ref(&unit)) {
            Ok(mut s) if !s.is_empty() => {
                let s = s.remove(0);
                parts.push(format!("{unit} ({}, {})", s.load_state, s.state()));
            }
            _ => parts.push(format!("{unit} (state unknown)")),
        }
    }
    let pids = swtpm_pids(plan.uid);
    parts.push(match pids.as_slice() {
        [] => "swtpm not running".to_owned(),
        p => format!(
            "swtpm pid {} (uid {})",
            p.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
            plan.uid
        ),
    });
    Some(parts.join("; "))
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
