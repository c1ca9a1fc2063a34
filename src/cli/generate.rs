//! `machina gen`: the launch plan and the systemd unit of each VM.
//!
//! Idempotent: a file whose content (and mode) would not change is left
//! alone, mtime included; `systemctl daemon-reload` runs only when a unit
//! file was written (or systemd still holds an outdated copy of one); one
//! line is printed per file written. `--check` writes nothing and exits 1
//! when anything would change.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{exact_text, machine_names, parallel_map, CliError, EXIT_FAILURE};
use crate::config::{self, ConfigDir};
use crate::plan::{plan_for, IdRequest, TakenIds};
use crate::qemu;
use crate::systemd::control;
use crate::systemd::unit::{self as unit, UnitOptions};
use crate::systemd::{machined, swtpm_unit};

/// Mode of every file `gen` writes.
const FILE_MODE: u32 = 0o644;

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

/// What `gen` does with the files it built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write the files that differ (and reload systemd if a unit did).
    Write,
    /// Print every file; write nothing.
    Preview,
    /// Report the files that would be written; write nothing; exit 1 if
    /// there are any.
    Check,
}

/// `machina gen`: plans and units for `names`, all built before any is
/// written. Returns the exit code.
pub fn generate(
    dir: &ConfigDir,
    names: &[String],
    mode: Mode,
    json: bool,
    target: &Target<'_>,
    out: &mut impl Write,
) -> Result<i32, CliError> {
    if !target.bin_dir.is_absolute() {
        return Err(CliError(format!(
            "--bin-dir {} is not absolute",
            target.bin_dir.display()
        )));
    }
    let plan_dir = under_root(target.root, target.plan_dir);
    let host = dir.load_host()?;
    let names = machine_names(names)?;
    // Everything the run needs from the host, read once, before any thread
    // starts: users and groups, and the existing plans.
    let mut taken = TakenIds::scan(&under_root(target.root, Path::new("/etc")), &plan_dir);
    taken.reserve(names.len());

    // Built a block at a time. Ids depend on the VMs before them
    // (collisions within this run), so each is confirmed in order; the rare
    // VM whose id differs from the one its plan was built with (computed
    // from the host's state alone) is built again. A preview prints each
    // block as it is confirmed; otherwise every VM is built before
    // anything is written, and any error aborts the run. Each VM keeps only
    // the text of its files, not the machine, hardware and plan they came
    // from (10,000 VMs: about 130 MiB).
    let mut errors: Vec<CliError> = Vec::new();
    let mut vms = Vec::new();
    let mut preview = (mode == Mode::Preview)
        // Block-buffered: stdout is line-buffered, a write per line.
        .then(|| std::io::BufWriter::with_capacity(1 << 16, &mut *out));
    let mut first = true;
    for block in names.chunks(super::STREAM_BLOCK) {
        let built = parallel_map(block, |n| {
            build(dir, &host, n, target, |req| taken.id_of(req).ok())
        });
        for (vm, name) in built.into_iter().zip(block) {
            let vm = vm.and_then(|vm| {
                let id = taken.id_of(&vm.id).map_err(|e| CliError(e.to_string()))?;
                taken.take(&vm.id, id);
                if vm.uid == Some(id) {
                    Ok(vm)
                } else {
                    build(dir, &host, name, target, |_| Some(id))
                }
            });
            let vm = match vm {
                Ok(vm) => vm,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if !vm.qmp {
                eprintln!(
                    "machina: {name}: QMP is not enabled (attrs.qmp.enabled): `systemctl stop` will end QEMU without an orderly guest shutdown"
                );
            }
            match &mut preview {
                Some(out) => print_preview(out, &vm, std::mem::take(&mut first))?,
                None => vms.push(vm),
            }
        }
    }
    if let Some(mut w) = preview.take() {
        w.flush()?;
    }
    // The writer's borrow of `out` ends here, for the report below.
    drop(preview);
    // One line per problem of every broken machine.
    if !errors.is_empty() {
        return Err(CliError::join(errors));
    }
    if mode == Mode::Preview {
        return Ok(0);
    }

    let mut changed: Vec<&Path> = Vec::new();
    let mut unchanged: Vec<&Path> = Vec::new();
    let mut unit_changed = false;
    // Plan, swtpm unit (or its removal when the TPM was turned off: the
    // unit goes, the TPM state stays), QEMU unit.
    let files = vms.iter().flat_map(|vm| {
        [
            (&vm.plan_path, Some(&vm.plan), false),
            (&vm.swtpm_path, vm.swtpm.as_ref(), true),
            (&vm.machined_path, Some(&vm.machined), true),
            (&vm.unit_path, Some(&vm.unit), true),
        ]
    });
    for (path, text, is_unit) in files {
        let verb = match text {
            Some(text) => {
                if !differs(path, text.as_bytes())? {
                    unchanged.push(path);
                    continue;
                }
                if mode == Mode::Write {
                    write_file_atomic(path, text.as_bytes(), FILE_MODE)?;
                }
                "write"
            }
            None => {
                if std::fs::symlink_metadata(path).is_err() {
                    continue;
                }
                if mode == Mode::Write {
                    std::fs::remove_file(path)
                        .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
                }
                "remove"
            }
        };
        if !json {
            match (mode == Mode::Write, verb) {
                (true, "write") => writeln!(out, "wrote {}", path.display())?,
                (true, _) => writeln!(out, "removed {}", path.display())?,
                (false, v) => writeln!(out, "would {v} {}", path.display())?,
            }
        }
        unit_changed |= is_unit;
        changed.push(path);
    }
    if json {
        // Lossy: a path that is not UTF-8 (from --plan-dir) must not panic.
        let text = |v: &[&Path]| -> Vec<String> {
            v.iter().map(|p| p.to_string_lossy().into_owned()).collect()
        };
        let v = serde_json::json!({"changed": text(&changed), "unchanged": text(&unchanged)});
        writeln!(out, "{v}")?;
    }
    if mode == Mode::Check {
        if changed.is_empty() {
            return Ok(0);
        }
        out.flush()?;
        eprintln!(
            "machina: {} of {} files would change",
            changed.len(),
            changed.len() + unchanged.len()
        );
        return Ok(EXIT_FAILURE);
    }
    if target.root.is_none() && control::systemd_running() {
        let units: Vec<String> = vms.iter().map(|vm| unit_file_name(&vm.unit_path)).collect();
        // Reload also when systemd still has an older copy of an unchanged
        // unit (an earlier run wrote it, then its reload failed).
        let stale = || -> Result<bool, CliError> {
            Ok(control::unit_status(&units)
                .map_err(|e| CliError(e.to_string()))?
                .iter()
                .any(|s| s.need_daemon_reload))
        };
        if unit_changed || stale()? {
            control::daemon_reload().map_err(|e| CliError(e.to_string()))?;
        }
    }
    Ok(0)
}

/// One VM's files.
struct Built {
    id: IdRequest,
    /// The uid (and gid) the plan was built with; `None`: no id was free
    /// (the ordered pass reports it).
    uid: Option<u32>,
    /// Whether QMP is enabled (else `gen` warns).
    qmp: bool,
    plan: String,
    plan_path: PathBuf,
    unit: String,
    unit_path: PathBuf,
    /// The swtpm unit of a TPM VM; `None`: no TPM (a stale unit goes).
    swtpm: Option<String>,
    swtpm_path: PathBuf,
    /// The unit that registers the VM with systemd-machined.
    machined: String,
    machined_path: PathBuf,
}

/// Loads and builds one machine: its plan, with the id `id_of` gives, and
/// its unit (which does not depend on the id).
fn build(
    dir: &ConfigDir,
    host: &config::HostFile,
    name: &crate::names::MachineName,
    target: &Target<'_>,
    id_of: impl Fn(&IdRequest) -> Option<u32>,
) -> Result<Built, CliError> {
    let m = config::load_machine(dir, host, name)?;
    if m.tpm.as_ref().is_some_and(|t| t.data.is_none()) {
        // swtpm needs a place for the TPM's state, as in the Go program.
        return Err(CliError(format!(
            "{}: attrs.tpm.data: a TPM needs a state directory; set attrs.tpm.data to a volume of a tpm-data storage pool (e.g. {{\"storage\": \"tpm\", \"name\": \"{}\"}}), or disable the TPM",
            m.origin.file.display(),
            m.name
        )));
    }
    if let Some((origin, why)) = &m.group.refused {
        return Err(CliError(format!("{origin}: {why}")));
    }
    let hw = qemu::build(&m)?;
    let id = IdRequest::of(&m);
    let uid = id_of(&id);
    let plan = plan_for(&m, hw, uid.unwrap_or(0), Path::new("/sys"));
    let mut opts = UnitOptions::new(&plan);
    opts.launcher = target.bin_dir.join("machina-launch");
    opts.machina = target.bin_dir.join("machina");
    opts.plan_path = target.plan_dir.join(format!("{}.json", plan.machine));
    // Copied into an allocation of its own size (as `exact_text` does for
    // the plan): `gen` holds every VM's texts until all have built.
    let unit = unit::render(&plan, &opts).map_err(|e| CliError(e.to_string()))?;
    let unit = unit.as_str().to_owned();
    let swtpm = swtpm_unit::render(&plan, &opts).map_err(|e| CliError(e.to_string()))?;
    let machined = machined::render(&plan, &opts).map_err(|e| CliError(e.to_string()))?;
    let unit_dir = under_root(target.root, target.unit_dir);
    Ok(Built {
        machined_path: unit_dir.join(machined::machined_unit_name(&plan.machine)),
        machined,
        swtpm_path: unit_dir.join(swtpm_unit::swtpm_unit_name(&plan.machine)),
        swtpm,
        qmp: !m.qmp_sockets.is_empty(),
        id,
        uid,
        plan_path: under_root(target.root, target.plan_dir).join(format!("{}.json", plan.machine)),
        unit_path: unit_dir.join(unit::unit_name(&plan.machine)),
        plan: exact_text(|buf| plan.write_json(buf)),
        unit,
    })
}

/// Prints one VM's files for `gen --preview`, each under a `----<path>----`
/// line; a blank line before every VM but the first.
fn print_preview(out: &mut impl Write, vm: &Built, first: bool) -> std::io::Result<()> {
    if !first {
        writeln!(out)?;
    }
    // Without the formatter's lossy conversion when the path is text (four
    // headings per VM).
    fn heading(out: &mut impl Write, path: &Path) -> std::io::Result<()> {
        let Some(p) = path.to_str() else {
            return writeln!(out, "----{}----", path.display());
        };
        out.write_all(b"----")?;
        out.write_all(p.as_bytes())?;
        out.write_all(b"----\n")
    }
    heading(out, &vm.plan_path)?;
    out.write_all(vm.plan.as_bytes())?;
    heading(out, &vm.unit_path)?;
    out.write_all(vm.unit.as_bytes())?;
    if let Some(s) = &vm.swtpm {
        heading(out, &vm.swtpm_path)?;
        out.write_all(s.as_bytes())?;
    }
    heading(out, &vm.machined_path)?;
    out.write_all(vm.machined.as_bytes())
}

/// The file name of a unit path (what systemctl calls the unit).
fn unit_file_name(path: &Path) -> String {
    path.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<root>/<abs>`, or `abs` without a root.
fn under_root(root: Option<&Path>, abs: &Path) -> PathBuf {
    match root {
        Some(r) => r.join(abs.strip_prefix("/").unwrap_or(abs)),
        None => abs.to_owned(),
    }
}

/// Whether writing `data` to `path` would change anything: the file is
/// missing, is not a regular file (a symlink is not followed: the rename
/// would replace it), has another mode, or other content.
fn differs(path: &Path, data: &[u8]) -> Result<bool, CliError> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        // ELOOP: a symlink; ENOTDIR: a parent is a file (the write will say).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => return Ok(true),
        Err(e) => return Err(CliError(format!("{}: {e}", path.display()))),
    };
    let meta = f
        .metadata()
        .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    if !meta.is_file()
        || meta.permissions().mode() & 0o7777 != FILE_MODE
        || meta.len() != data.len() as u64
    {
        return Ok(true);
    }
    let mut have = Vec::with_capacity(data.len());
    f.take(data.len() as u64 + 1)
        .read_to_end(&mut have)
        .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    Ok(have != data)
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
        // The umask may have narrowed the mode; the file must be exactly it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError(format!("{}: {e}", path.display()))
    })
}
