//! `machina-launch <vm>` / `machina-launch --plan FILE`: prepares the host
//! for one VM as root, drops to the VM's identity and execs QEMU.
//!
//! The steps, in order (DESIGN.md, privilege model): plan → lock → runtime
//! directory → TAPs → mediated devices → file grants → `/dev/kvm` → QEMU
//! binary check → rlimits → network namespace → console log keeper (for a
//! VM with `attrs.console`, see [`console_log`]) → drop → exec (the
//! namespace is created by a helper thread from the lock step on, see
//! [`netns`]). Each step returns a guard; if a
//! later step fails, `launch` returns and the guards undo everything in
//! reverse order before the one-line error is printed.
//!
//! Locking: the per-VM lock (`/run/machina/.lock/vm.<vm>`, see
//! [`crate::plan::Lock`]) is taken with `flock` and its fd is handed to QEMU (not close-on-exec, at the first fd
//! number after the plan's), the way `flock(1)` holds a lock for the command
//! it runs. So the kernel itself keeps the lock exactly as long as QEMU (or
//! anything it forked) lives, also through `kill -9`, and a second launch
//! is refused at once, with no race and no stale pid file. The fd is
//! read-only on an empty root-owned 0700 directory: all QEMU could do with
//! it is drop its own lock, and a second QEMU would still stop at the TAP
//! that already exists and at QEMU's own disk image locks.
//!
//! Every plan field is hostile input: the plan file itself must be a
//! regular root-owned file (checked before it is opened for reading, so a
//! FIFO cannot hang the launcher); the runtime directory is derived from
//! the VM's name; the uid must obey the id rules and be no other VM's (no
//! other plan names it, no other VM's QEMU runs as it); QEMU's argv must carry machina's sandbox
//! (see [`qemu_args`]); the QEMU binary and the directories above it must
//! be root's alone, and the checked fd is what gets executed.

pub mod console_log;
pub mod log;
pub mod qemu_args;
pub mod swtpm;

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::names::MachineName;
use crate::plan::{DeviceNode, Lock, Plan, DEFAULT_PLAN_DIR, LOCK_DIR};
use crate::prepare::lock::FileLock;
use crate::prepare::{self, fs, grant, kvm, mdev, netns, privdrop, reach, runtime_dir, tap};

/// Largest plan file accepted.
const MAX_PLAN: u64 = 1 << 20;

/// A failed step: printed as `machina-launch: <vm>: <step>: <cause>`.
#[derive(Debug)]
pub struct Failure {
    /// The step that failed.
    pub step: String,
    /// Why.
    pub error: prepare::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

/// Tags a step's error with the step's name.
trait Step<T> {
    fn step(self, name: impl fmt::Display) -> Result<T, Failure>;
}

impl<T> Step<T> for prepare::Result<T> {
    fn step(self, name: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|error| Failure {
            step: name.to_string(),
            error,
        })
    }
}

fn refuse<T>(step: &str, msg: String) -> Result<T, Failure> {
    Err(Failure {
        step: step.into(),
        error: prepare::Error::Refused(msg),
    })
}

const USAGE: &str = "usage: machina-launch [--swtpm] <vm> | machina-launch [--swtpm] --plan FILE";

/// Entry point of `machina-launch`; returns the exit code (only on
/// failure: on success the process has become QEMU).
pub fn main() -> i32 {
    ensure_stdio();
    log::init();
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // `--console-log LOG PID`: the console log's keeper, started by the
    // launcher as the VM's uid (see `console_log`).
    if args.first().is_some_and(|a| a == "--console-log") {
        let parent = args.get(2).and_then(|p| p.to_str()?.parse().ok());
        return match (args.get(1), parent, args.len()) {
            (Some(log), Some(parent), 3) => match console_log::keep(Path::new(log), parent) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("machina-launch: console log keeper: {e}");
                    1
                }
            },
            _ => {
                eprintln!("usage: machina-launch --console-log LOG PID (started by the launcher)");
                2
            }
        };
    }
    // `--swtpm`: the VM's software TPM instead of QEMU.
    let tpm = args.first().is_some_and(|a| a == "--swtpm");
    if tpm {
        args.remove(0);
    }
    let (label, path, expect) = match args.as_slice() {
        [flag, file] if flag == "--plan" => {
            // Until the plan is read, its file stem names the VM (plans are
            // `<vm>.json`); failing that, the path does.
            let path = PathBuf::from(file);
            let label = path
                .file_stem()
                .and_then(|s| MachineName::new(s.to_string_lossy().into_owned()).ok())
                .map_or_else(|| file.to_string_lossy().into_owned(), |n| n.to_string());
            (label, path, None)
        }
        [one] if one == "--help" || one == "-h" => {
            println!("{USAGE}");
            return 0;
        }
        [vm] => match MachineName::new(vm.to_string_lossy().into_owned()) {
            Ok(name) => {
                let path = Path::new(DEFAULT_PLAN_DIR).join(format!("{name}.json"));
                (name.to_string(), path, Some(name))
            }
            Err(e) => {
                eprintln!("machina-launch: {e}");
                return 2;
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return 2;
        }
    };
    let failure = match read_plan(&path, expect.as_ref()) {
        Ok(plan) => {
            let label = plan.machine.to_string();
            if tpm {
                return report(&label, swtpm::run(&plan));
            }
            return report(&label, run(&plan));
        }
        Err(f) => f,
    };
    report(&label, failure)
}

fn report(vm: &str, f: Failure) -> i32 {
    eprintln!("machina-launch: {vm}: {f}");
    1
}

/// Makes sure fds 0–2 are open, so no fd the launcher opens lands there.
fn ensure_stdio() {
    use nix::fcntl::{open, OFlag};
    // open returns the lowest free number: while one of 0–2 is closed, the
    // next open fills it, and the fd is then left open on purpose.
    while let Ok(fd) = open(c"/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty()) {
        if std::os::fd::AsRawFd::as_raw_fd(&fd) > 2 {
            break;
        }
        std::mem::forget(fd);
    }
}

/// Reads and checks the plan: root-owned, not group/world-writable, a
/// regular file reached without symbolic links; checked on the open fd.
pub fn read_plan(path: &Path, expect: Option<&MachineName>) -> Result<Plan, Failure> {
    if !nix::unistd::geteuid().is_root() {
        return refuse("start", "machina-launch must run as root".into());
    }
    // O_PATH first: a FIFO or device is refused before anything opens it.
    let opath = fs::open_nofollow(path, libc::O_PATH).step("plan")?;
    let st = fs::fstat(&opath, path).step("plan")?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return refuse(
            "plan",
            format!(
                "{}: is a {}, not a regular file",
                path.display(),
                fs::kind(st.st_mode)
            ),
        );
    }
    if st.st_uid != 0 {
        return refuse(
            "plan",
            format!(
                "{}: is owned by uid {}, not root; run `machina gen` as root",
                path.display(),
                st.st_uid
            ),
        );
    }
    if st.st_mode & 0o022 != 0 {
        return refuse(
            "plan",
            format!(
                "{}: is writable by group or others (mode {:04o}); `chmod 0644` it",
                path.display(),
                st.st_mode & 0o7777
            ),
        );
    }
    if st.st_size as u64 > MAX_PLAN {
        return refuse(
            "plan",
            format!("{}: is larger than {MAX_PLAN} bytes", path.display()),
        );
    }
    // Now open it for reading (non-blocking, in case it was swapped) and
    // make sure it is still the file checked.
    let fd = fs::open_nofollow(path, libc::O_RDONLY | libc::O_NONBLOCK).step("plan")?;
    let st2 = fs::fstat(&fd, path).step("plan")?;
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
        return refuse(
            "plan",
            format!("{}: changed while being read", path.display()),
        );
    }
    let mut text = String::with_capacity(st.st_size as usize);
    std::fs::File::from(fd)
        .take(MAX_PLAN)
        .read_to_string(&mut text)
        .map_err(|e| prepare::Error::io("read", path, e))
        .step("plan")?;
    let plan = match Plan::from_json(&text) {
        Ok(p) => p,
        Err(e) => return refuse("plan", format!("{}: {e}", path.display())),
    };
    if let Some(want) = expect {
        if &plan.machine != want {
            return refuse(
                "plan",
                format!(
                    "{}: is the plan of {:?}, not {want:?}",
                    path.display(),
                    plan.machine.as_str()
                ),
            );
        }
    }
    Ok(plan)
}

/// Checks the plan's identity and argv, locks the VM and launches it.
/// Returns only on failure, with everything undone.
pub fn run(plan: &Plan) -> Failure {
    match run_locked(plan) {
        Ok(never) => match never {},
        Err(f) => f,
    }
}

fn run_locked(plan: &Plan) -> Result<std::convert::Infallible, Failure> {
    let mut steps = log::Steps::new(plan.machine.as_str());
    if let Err(e) = crate::identity::check_vm_id(plan.uid, plan.machine.as_str()) {
        return refuse("identity", e.to_string());
    }
    if let Err(e) = qemu_args::check(&plan.qemu.args) {
        return refuse("qemu", e);
    }
    steps.done("plan checks");
    // The network namespace is made by a helper thread while the steps
    // below run (it costs the kernel milliseconds); entered after the TAPs.
    let isolation = if plan.network_isolation {
        Some(netns::Isolation::create().step("network namespace")?)
    } else {
        None
    };
    let root = runtime_dir::open_root().step("runtime directory")?;
    let lock_dir = runtime_dir::open_lock_dir().step("lock")?;
    let lock = FileLock::acquire(
        &lock_dir,
        Path::new(LOCK_DIR),
        &Lock::Vm(&plan.machine).file_name(),
        Duration::ZERO,
        || {
            format!(
                "the VM is already running, or being launched or torn down (its lock {} is held); stop it first (`systemctl stop machina-qemu-{}`)",
                Lock::Vm(&plan.machine).path().display(),
                plan.machine
            )
        },
    )
    .step("lock")?;
    // A uid another VM's QEMU runs as, or another plan names, is not this
    // VM's own.
    if let Some((other, pid)) =
        prepare::procs::other_vm_with_uid(Path::new(LOCK_DIR), plan.machine.as_str(), plan.uid)
    {
        lock.remove();
        return refuse(
            "identity",
            format!(
                "uid {} is the uid of running VM {other:?} (its QEMU is pid {pid}); a VM's uid must be its own (run `machina gen`)",
                plan.uid
            ),
        );
    }
    if let Some(other) = other_plan_with_uid(plan) {
        lock.remove();
        return refuse(
            "identity",
            format!(
                "uid {} is also the uid of VM {other:?} ({DEFAULT_PLAN_DIR}/{other}.json); a VM's uid must be its own (run `machina gen`)",
                plan.uid
            ),
        );
    }
    steps.done("lock");
    let failure = launch(plan, &root, &lock, isolation, &mut steps);
    lock.remove();
    Err(failure)
}

/// Another installed plan with the same uid, if any.
fn other_plan_with_uid(plan: &Plan) -> Option<String> {
    let entries = std::fs::read_dir(DEFAULT_PLAN_DIR).ok()?;
    for e in entries.flatten().take(100_000) {
        let p = e.path();
        let Some(stem) = p
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|_| p.extension().is_some_and(|x| x == "json"))
        else {
            continue;
        };
        if stem == plan.machine.as_str() {
            continue;
        }
        if let Ok(other) = read_plan(&p, None) {
            if other.uid == plan.uid && other.machine != plan.machine {
                return Some(other.machine.to_string());
            }
        }
    }
    None
}

/// The fd number QEMU holds the VM's lock at: the first after the plan's.
pub fn lock_fd_number(plan: &Plan) -> i32 {
    plan.taps
        .iter()
        .flat_map(|t| t.fds.iter().chain(&t.vhost_fds))
        .max()
        .map_or(3, |&n| n + 1)
}

/// The prepare steps, drop and exec. Guards live here, so returning undoes.
fn launch(
    plan: &Plan,
    root: &OwnedFd,
    lock: &FileLock,
    isolation: Option<netns::Isolation>,
    steps: &mut log::Steps<'_>,
) -> Failure {
    match launch_steps(plan, root, lock, isolation, steps) {
        Ok(never) => match never {},
        Err(f) => f,
    }
}

fn launch_steps(
    plan: &Plan,
    root: &OwnedFd,
    lock: &FileLock,
    isolation: Option<netns::Isolation>,
    steps: &mut log::Steps<'_>,
) -> Result<std::convert::Infallible, Failure> {
    let _dir = runtime_dir::RuntimeDir::prepare(root, &plan.runtime_dir(), plan.uid, plan.gid)
        .step("runtime directory")?;
    steps.done("runtime directory");
    let mut taps = Vec::with_capacity(plan.taps.len());
    for t in &plan.taps {
        taps.push(tap::prepare(t).step(format_args!("tap {}", t.ifname))?);
        steps.done(&format!("tap {}", t.ifname));
    }
    let mut mdevs = Vec::with_capacity(plan.mdevs.len());
    for m in &plan.mdevs {
        mdevs.push(mdev::prepare(m, plan.gid).step(format_args!("mdev {}", m.uuid))?);
        steps.done(&format!("mdev {}", m.uuid));
    }
    let mut grants = Vec::with_capacity(plan.grants.len());
    for g in &plan.grants {
        grants.push(grant::prepare(g, plan.uid, plan.gid).step("grant")?);
    }
    if !plan.grants.is_empty() {
        steps.done("grants");
    }
    // Only a KVM guest gets the group of /dev/kvm: a TCG one never opens it.
    let kvm_gid = if plan.needs.devices.contains(&DeviceNode::Kvm) {
        kvm::kvm_group().step("kvm")?
    } else {
        plan.gid
    };
    let gids = [plan.gid, kvm_gid];
    reach::check(plan, &gids).step("reach")?;
    let binary_fd = privdrop::check_binary(&plan.qemu.binary, plan.uid, &gids).step("qemu")?;
    steps.done("checks");
    if let Some(bytes) = plan.needs.memlock {
        privdrop::set_memlock(bytes).step("rlimit")?;
    }
    if let Some(ns) = isolation {
        // After the TAPs are open: they stay on the host's bridge.
        ns.enter().step("network namespace")?;
        steps.done("network namespace");
    }
    let prefix = format!("machina-launch: {}: ", plan.machine);
    privdrop::detach_terminal(&prefix).step("terminal")?;
    if plan.console_log {
        // After the namespace thread has ended (the fork needs a single
        // thread) and the terminal is gone; undone by itself: the keeper
        // ends with the launcher, or with the QEMU it becomes.
        console_log::start(plan, &prefix).step("console log")?;
        steps.done("console log");
    }
    steps.exec(&plan.qemu.binary);
    let hint = format!(
        "(root was already given up; run `machina teardown {}`)",
        plan.machine
    );
    let spec = privdrop::ExecSpec {
        binary: &plan.qemu.binary,
        binary_fd: &binary_fd,
        hint: hint.clone(),
        args: &plan.qemu.args,
        env: &[],
        uid: plan.uid,
        gid: plan.gid,
        kvm_gid,
        fds: taps
            .iter()
            .flat_map(|t| t.fds.iter().map(|(fd, n)| (fd.as_fd(), *n)))
            .chain([(lock.fd().as_fd(), lock_fd_number(plan))])
            .collect(),
    };
    let e = privdrop::drop_and_exec(&spec, &prefix);
    let mut error = e.error;
    if e.after_drop {
        error = prepare::Error::Refused(format!("{error} {hint}"));
    }
    Err(Failure {
        step: "privileges".into(),
        error,
    })
}
