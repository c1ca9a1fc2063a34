//! Attacks on root's QMP clients (issue 7 item 1): a compromised guest,
//! i.e. a process running as VM A's uid, owns A's `qmp/` directory and
//! plants something in place of A's `systemd.0.qmp.socket`, hoping that
//! root's `machina shutdown --system A` (the unit's `ExecStop=`) stops VM B
//! instead. Two real VMs; the attacker runs through `setpriv` with A's uid,
//! gid and the kvm group, and no capabilities.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::launch as l;
use common::netns::NetNs;
use common::vm::Setup;
use machina::plan::Plan;

fn kvm_gid() -> u32 {
    nix::unistd::Group::from_name("kvm")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .expect("a kvm group (scripts/test makes one)")
}

/// Runs `script` with `sh` as the VM's uid and gid, as a QEMU escape would.
fn as_vm(plan: &Plan, script: &str) {
    let (u, g) = (plan.uid, plan.gid);
    let out = Command::new("setpriv")
        .arg(format!("--reuid={u}"))
        .arg(format!("--regid={g}"))
        .arg(format!("--groups={g},{}", kvm_gid()))
        .arg("--inh-caps=-all")
        .args(["sh", "-c", script])
        .output()
        .expect("setpriv");
    assert!(
        out.status.success(),
        "as uid {u}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/run/machina/<vm>`, from the name as machina derives it.
fn runtime_dir(plan: &Plan) -> PathBuf {
    Path::new(machina::plan::RUNTIME_ROOT).join(plan.machine.as_str())
}

fn system_socket(plan: &Plan) -> PathBuf {
    runtime_dir(plan).join("qmp/systemd.0.qmp.socket")
}

/// The attacked command: the unit's `ExecStop=`. It must refuse with one
/// line naming the socket.
fn shutdown_refused(a: &Setup) {
    let out = a.machina(&["shutdown", "--system", "--timeout", "5s", &a.vm]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("refusing QMP socket") && stderr.contains(&a.vm),
        "{stderr}"
    );
}

/// B is untouched: its QEMU lives and answers QMP with a running guest.
fn still_running(b: &Setup, qb: &mut l::Qemu, plan_b: &Plan) {
    assert!(
        qb.child.try_wait().unwrap().is_none(),
        "VM B's QEMU ended: {}",
        std::fs::read_to_string(&qb.stderr).unwrap_or_default()
    );
    let out = b.machina(&["query", "cpu", "--json", &b.vm]);
    assert!(
        out.status.success(),
        "B answers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut r = l::qmp_connect(qb, &runtime_dir(plan_b).join("qmp/command.1.qmp.socket"));
    let status = l::qmp(&mut r, r#"{"execute":"query-status"}"#);
    assert!(status.contains("\"running\""), "{status}");
}

#[test]
fn shutdown_refuses_a_socket_swapped_by_the_guest() {
    let test = "shutdown_refuses_a_socket_swapped_by_the_guest";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let a = Setup::new(&qemu);
    let b = Setup::new(&qemu);
    let ns = NetNs::new(true);
    let (plan_a, mut qa) = a.launch(&ns);
    let (plan_b, mut qb) = b.launch(&ns);
    let sock_a = system_socket(&plan_a);
    let sock_b = system_socket(&plan_b);

    // Attack 1: A's socket becomes a link to B's socket.
    as_vm(
        &plan_a,
        &format!(
            "ln -s {b} {a}.new && mv -T {a}.new {a}",
            a = sock_a.display(),
            b = sock_b.display()
        ),
    );
    assert!(std::fs::symlink_metadata(&sock_a)
        .unwrap()
        .file_type()
        .is_symlink());
    shutdown_refused(&a);
    still_running(&b, &mut qb, &plan_b);

    // Attack 2: A opens its directory to everyone and another uid (B's)
    // binds a listening socket where A's was; root must not talk to it.
    as_vm(
        &plan_a,
        &format!(
            "rm {a} && chmod 0777 {dir} && chmod 0755 {rt}",
            a = sock_a.display(),
            dir = sock_a.parent().unwrap().display(),
            rt = runtime_dir(&plan_a).display()
        ),
    );
    let (listener_pid, mut ready, heard) = listen_as(plan_b.uid, plan_b.gid, &sock_a);
    let mut byte = [0u8; 1];
    ready.read_exact(&mut byte).expect("listener ready");
    shutdown_refused(&a);
    // The impostor greeted, then read end-of-stream: nothing was sent.
    let mut got = String::new();
    let _ = nix::sys::signal::kill(listener_pid, nix::sys::signal::Signal::SIGTERM);
    let mut heard = heard;
    heard.read_to_string(&mut got).unwrap();
    let _ = nix::sys::wait::waitpid(listener_pid, None);
    assert_eq!(got, "", "root sent something to the impostor");
    still_running(&b, &mut qb, &plan_b);
    // A itself was not harmed either (only its socket file was replaced).
    assert!(qa.child.try_wait().unwrap().is_none());
}

/// Forks a process with `uid:gid` that listens on `path`, greets each
/// client like QEMU, and writes to a pipe whatever a client sends. Returns
/// its pid, a pipe that yields one byte once it listens, and the pipe of
/// what it heard.
fn listen_as(uid: u32, gid: u32, path: &Path) -> (nix::unistd::Pid, std::fs::File, std::fs::File) {
    let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
    let (heard_r, heard_w) = nix::unistd::pipe().unwrap();
    let path = path.to_owned();
    // SAFETY: fork in a test; the child only makes syscalls and _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(ready_r);
            drop(heard_r);
            let ok = nix::unistd::setgroups(&[]).is_ok()
                && nix::unistd::setresgid(gid.into(), gid.into(), gid.into()).is_ok()
                && nix::unistd::setresuid(uid.into(), uid.into(), uid.into()).is_ok();
            if ok {
                if let Ok(listener) = UnixListener::bind(&path) {
                    let mut ready = std::fs::File::from(ready_w);
                    let mut heard = std::fs::File::from(heard_w);
                    let _ = ready.write_all(b"1");
                    for mut s in listener.incoming().flatten() {
                        let _ = s.write_all(GREETING);
                        let mut buf = Vec::new();
                        let _ = s.read_to_end(&mut buf);
                        let _ = heard.write_all(&buf);
                    }
                }
            }
            // SAFETY: leaving the forked child without unwinding.
            unsafe { libc::_exit(1) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            drop(heard_w);
            (
                child,
                std::fs::File::from(ready_r),
                std::fs::File::from(heard_r),
            )
        }
    }
}

const GREETING: &[u8] =
    b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"impostor\"}, \"capabilities\": []}}\r\n";
