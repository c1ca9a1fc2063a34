//! `machina-launch --swtpm <vm>` / `--swtpm --plan FILE`: prepares a VM's
//! software TPM as root ([`crate::prepare::tpm`]), manufactures it with
//! `swtpm_setup` on first start only, then drops to the VM's uid:gid (no
//! capabilities, `no_new_privs`) and execs `swtpm socket --terminate` on
//! the control socket root bound.
//!
//! swtpm runs as the VM's own uid, the one QEMU runs as: QEMU already holds
//! everything the TPM protects (the guest's disks and memory, where an
//! unsealed BitLocker key lives), so a second id would add an allocation and
//! a group for little; every other VM's uid is kept out (state 0700,
//! socket 0600), as libvirt keeps other users out of its `tss`-owned state.

use std::os::fd::AsFd;
use std::path::Path;

use super::{refuse, Failure, Step};
use crate::plan::Plan;
use crate::prepare::{self, privdrop, sys, tpm};

/// The fd number swtpm finds its listening control socket at.
pub const CTRL_FD: i32 = 3;

/// The fd number swtpm holds its instance lock at (never used by it).
pub const LOCK_FD: i32 = 4;

/// The name of a VM's swtpm lock ([`crate::plan::Lock::Swtpm`]): held (as
/// QEMU holds the VM's) by swtpm for as long as it lives, so a second
/// swtpm for the same TPM state (`machina run` beside the unit) is refused
/// before anything is touched.
pub fn lock_name(plan: &Plan) -> String {
    crate::plan::Lock::Swtpm(&plan.machine).file_name()
}

/// What to install when a swtpm binary is missing.
pub const PACKAGE_HINT: &str =
    "install the Debian packages swtpm and swtpm-tools (`apt-get install swtpm swtpm-tools`)";

/// Prepares and execs swtpm for `plan`. Returns only on failure.
pub fn run(plan: &Plan) -> Failure {
    match run_inner(plan) {
        Ok(never) => match never {},
        Err(f) => f,
    }
}

fn run_inner(plan: &Plan) -> Result<std::convert::Infallible, Failure> {
    let Some(t) = &plan.tpm else {
        return refuse(
            "tpm",
            "the plan has no TPM (attrs.tpm.enabled is off or attrs.tpm.data is unset); run `machina gen`".into(),
        );
    };
    if let Err(e) = crate::identity::check_vm_id(plan.uid, plan.machine.as_str()) {
        return refuse("identity", e.to_string());
    }
    for b in [&t.swtpm, &t.swtpm_setup, &t.swtpm_localca] {
        if std::fs::symlink_metadata(b).is_err() {
            return refuse("tpm", format!("{} is missing: {PACKAGE_HINT}", b.display()));
        }
    }
    let lock_dir = crate::prepare::runtime_dir::open_lock_dir().step("lock")?;
    let lock = crate::prepare::lock::FileLock::acquire(
        &lock_dir,
        Path::new(crate::plan::LOCK_DIR),
        &lock_name(plan),
        std::time::Duration::ZERO,
        || {
            format!(
                "the VM's TPM is already served (swtpm holds {}/{}); stop the VM first",
                crate::plan::LOCK_DIR,
                lock_name(plan)
            )
        },
    )
    .step("lock")?;
    let gids = [plan.gid];
    let swtpm_fd = privdrop::check_binary(&t.swtpm, plan.uid, &gids).step("tpm")?;
    let setup_fd = privdrop::check_binary(&t.swtpm_setup, plan.uid, &gids).step("tpm")?;
    let p = tpm::prepare(plan, t).step("tpm state")?;
    let prefix = format!("machina-launch: {}: swtpm: ", plan.machine);
    let path_env = format!(
        "PATH={}",
        t.swtpm.parent().unwrap_or(Path::new("/usr/bin")).display()
    );
    let env = [path_env, "HOME=/".to_owned()];
    if !p.manufactured {
        let args: Vec<String> = [
            "--tpm-state",
            &p.state_dir.to_string_lossy(),
            "--config",
            &p.setup_config.to_string_lossy(),
            "--create-ek-cert",
            "--create-platform-cert",
            "--lock-nvram",
            "--not-overwrite",
            "--tpm2",
            "--display",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = sys::fork_single_threaded()
            .map_err(|source| prepare::Error::Sys {
                op: "fork for swtpm_setup",
                source,
            })
            .step("tpm setup")?;
        match child {
            None => {
                let spec = privdrop::ExecSpec {
                    binary: &t.swtpm_setup,
                    binary_fd: &setup_fd,
                    hint: String::new(),
                    args: &args,
                    env: &env,
                    uid: plan.uid,
                    gid: plan.gid,
                    kvm_gid: plan.gid,
                    fds: Vec::new(),
                };
                let e = privdrop::drop_and_exec(&spec, &prefix);
                sys::die(&format!("{prefix}swtpm_setup: {e}\n"));
            }
            Some(pid) => match nix::sys::wait::waitpid(pid, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => {}
                Ok(status) => {
                    return refuse(
                        "tpm setup",
                        format!("swtpm_setup failed ({status:?}); its output is above; the TPM state in {} was not manufactured", t.data_dir.display()),
                    )
                }
                Err(e) => {
                    return refuse("tpm setup", format!("wait for swtpm_setup: {e}"));
                }
            },
        }
    }
    // Said before the drop: the socket listens from here on, so this line
    // is the event a caller may wait for.
    eprintln!(
        "{prefix}serving the TPM on {} as uid {} (swtpm_setup {})",
        t.socket.display(),
        plan.uid,
        if p.manufactured {
            "skipped: the TPM was manufactured before"
        } else {
            "ran"
        }
    );
    notify_ready();
    privdrop::detach_terminal(&prefix).step("terminal")?;
    let args: Vec<String> = vec![
        "socket".into(),
        "--tpm2".into(),
        "--ctrl".into(),
        format!("type=unixio,fd={CTRL_FD}"),
        "--tpmstate".into(),
        format!("dir={},mode=0600", p.state_dir.display()),
        "--terminate".into(),
        "--log".into(),
        "level=1".into(),
    ];
    let spec = privdrop::ExecSpec {
        binary: &t.swtpm,
        binary_fd: &swtpm_fd,
        hint: String::new(),
        args: &args,
        env: &env,
        uid: plan.uid,
        gid: plan.gid,
        kvm_gid: plan.gid,
        fds: vec![(p.listener.as_fd(), CTRL_FD), (lock.fd().as_fd(), LOCK_FD)],
    };
    let e = privdrop::drop_and_exec(&spec, &prefix);
    Err(Failure {
        step: "swtpm".into(),
        error: e.error,
    })
}

/// Tells systemd (`Type=notify`) that the TPM is served: the socket
/// listens and swtpm is about to be exec'd in this very process. Until
/// then the QEMU unit, ordered after this one, does not start (with
/// `Type=exec` it would, while `swtpm_setup` still runs). Without
/// `NOTIFY_SOCKET` (`machina run`), nothing to do.
fn notify_ready() {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        None => SocketAddr::from_pathname(&path),
    };
    if let (Ok(addr), Ok(sock)) = (addr, UnixDatagram::unbound()) {
        let _ = sock.send_to_addr(b"READY=1", &addr);
    }
}
