//! `machina logs <vm> [-f] [-n N]`: the VM's journal (launcher steps,
//! QEMU's output, shutdown and teardown lines) through `journalctl`, and
//! the last lines `status` ends with. Also the CLI's `tracing` subscriber.

use std::process::{Command, Stdio};

use super::{machine_names, CliError};
use crate::names::MachineName;
use crate::systemd::unit::unit_name;

/// Lines of the journal `status` shows per VM, as `systemctl status` does.
pub const STATUS_LINES: u32 = 10;

/// Installs the CLI's subscriber on stderr: warnings by default, `-v`
/// info, `-vv` debug, `-vvv` trace; `MACHINA_LOG` (`error`, `warn`, `info`,
/// `debug`, `trace`) when no `-v` is given.
pub fn init(verbose: u8) {
    use tracing::Level;
    let level = match verbose {
        0 => std::env::var("MACHINA_LOG")
            .ok()
            .and_then(|v| v.trim().parse::<Level>().ok())
            .unwrap_or(Level::WARN),
        1 => Level::INFO,
        2 => Level::DEBUG,
        _ => Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .try_init();
}

fn journalctl(vm: &MachineName) -> Command {
    let mut c = Command::new("journalctl");
    c.args(["--no-pager", "--quiet", "--output=short-iso", "--unit"])
        .arg(unit_name(vm));
    c
}

/// `logs VM [-f] [-n N]`: runs journalctl on the VM's unit, in the
/// foreground; its exit code is the command's.
pub fn logs(name: &str, follow: bool, lines: Option<u32>) -> Result<i32, CliError> {
    let vm = machine_names(&[name.to_owned()])?.remove(0);
    let mut c = journalctl(&vm);
    if follow {
        c.arg("--follow");
    }
    if let Some(n) = lines {
        c.arg(format!("--lines={n}"));
    }
    let status = c
        .status()
        .map_err(|e| CliError(format!("cannot run journalctl: {e}")))?;
    Ok(status.code().unwrap_or(1))
}

/// The last `n` journal lines of `vm`, or nothing when the journal cannot
/// be read (no journalctl, no permission): `status` still shows the rest.
pub fn tail(vm: &MachineName, n: u32) -> Vec<String> {
    let out = journalctl(vm)
        .arg(format!("--lines={n}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}
