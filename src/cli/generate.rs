//! `machina gen`: the launch plan and the systemd unit of each VM.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{load_all, CliError};
use crate::config::ConfigDir;
use crate::plan::{Plan, TakenIds};
use crate::qemu;
use crate::systemd::unit::{self as unit, UnitOptions};

/// Where `gen` writes and what the unit refers to.
pub struct Target<'a> {
    /// `--root`.
    pub root: Option<&'a Path>,
    /// `--plan-dir`.
    pub plan_dir: &'a Path,
    /// `--unit-dir`.
    pub unit_dir: &'a Path,
    /// `--bin-dir`.
    pub bin_dir: &'a Path,
}

/// `machina gen`: plans and units for `names`, all built before any is
/// written.
pub fn generate(
    dir: &ConfigDir,
    names: &[String],
    preview: bool,
    target: &Target<'_>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (_, machines) = load_all(dir, names)?;
    let plan_dir = under_root(target.root, target.plan_dir);
    let unit_dir = under_root(target.root, target.unit_dir);
    if !target.bin_dir.is_absolute() {
        return Err(CliError(format!(
            "--bin-dir {} is not absolute",
            target.bin_dir.display()
        )));
    }
    let mut taken = TakenIds::scan(&under_root(target.root, Path::new("/etc")), &plan_dir);
    // Build everything first: any error aborts before anything is written,
    // and every machine's problem is reported.
    let mut outputs: Vec<(Plan, String, Option<String>)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut one = |m: &crate::config::Machine| -> Result<(Plan, String, Option<String>), CliError> {
        if m.tpm.as_ref().is_some_and(|t| t.data.is_none()) {
            // swtpm needs a place for the TPM's state, as in the Go program.
            return Err(CliError(format!(
                "{}: attrs.tpm.data: a TPM needs a state directory; set attrs.tpm.data to a volume of a tpm-data storage pool (e.g. {{\"storage\": \"tpm\", \"name\": \"{}\"}}), or disable the TPM",
                m.origin.file.display(),
                m.name
            )));
        }
        let hw = qemu::build(m)?;
        let id = taken.id_for(m).map_err(|e| CliError(e.to_string()))?;
        taken.take(m, id);
        let plan = crate::plan::plan_for(m, &hw, id, Path::new("/sys"));
        let mut opts = UnitOptions::new(&plan);
        opts.launcher = target.bin_dir.join("machina-launch");
        opts.machina = target.bin_dir.join("machina");
        opts.plan_path = target.plan_dir.join(format!("{}.json", plan.machine));
        let text = unit::render(&plan, &opts).map_err(|e| CliError(e.to_string()))?;
        let swtpm = crate::systemd::swtpm_unit::render(&plan, &opts)
            .map_err(|e| CliError(e.to_string()))?;
        if m.qmp_sockets.is_empty() {
            eprintln!(
                "machina: {}: QMP is not enabled (attrs.qmp.enabled): `systemctl stop` will end QEMU without an orderly guest shutdown",
                m.name
            );
        }
        Ok((plan, text, swtpm))
    };
    for m in &machines {
        match one(m) {
            Ok(o) => outputs.push(o),
            Err(e) => problems.push(e.0),
        }
    }
    if !problems.is_empty() {
        return Err(CliError(problems.join("\n")));
    }
    for (i, (plan, text, swtpm)) in outputs.iter().enumerate() {
        let plan_path = plan_dir.join(format!("{}.json", plan.machine));
        let unit_path = unit_dir.join(unit::unit_name(&plan.machine));
        let swtpm_path = unit_dir.join(crate::systemd::swtpm_unit::swtpm_unit_name(&plan.machine));
        if preview {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "----{}----", plan_path.display())?;
            write!(out, "{}", plan.to_json())?;
            writeln!(out, "----{}----", unit_path.display())?;
            write!(out, "{text}")?;
            if let Some(s) = swtpm {
                writeln!(out, "----{}----", swtpm_path.display())?;
                write!(out, "{s}")?;
            }
        } else {
            write_file_atomic(&plan_path, plan.to_json().as_bytes(), 0o644)?;
            match swtpm {
                Some(s) => write_file_atomic(&swtpm_path, s.as_bytes(), 0o644)?,
                // TPM turned off: the unit goes, the state stays.
                None => match std::fs::remove_file(&swtpm_path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(CliError(format!("{}: {e}", swtpm_path.display()))),
                },
            }
            write_file_atomic(&unit_path, text.as_bytes(), 0o644)?;
        }
    }
    if !preview && target.root.is_none() && crate::systemd::control::systemd_running() {
        crate::systemd::control::daemon_reload().map_err(|e| CliError(e.to_string()))?;
    }
    Ok(())
}

/// `<root>/<abs>`, or `abs` without a root.
fn under_root(root: Option<&Path>, abs: &Path) -> PathBuf {
    match root {
        Some(r) => r.join(abs.strip_prefix("/").unwrap_or(abs)),
        None => abs.to_owned(),
    }
}
/// Writes `data` to `path` through a temporary file and a rename, so a
/// reader never sees a partial file; creates the parent directory (0755).
fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let parent = path
        .parent()
        .ok_or_else(|| CliError(format!("{}: no parent directory", path.display())))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|e| CliError(format!("{}: {e}", parent.display())))?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("machina")
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError(format!("{}: {e}", path.display()))
    })
}
