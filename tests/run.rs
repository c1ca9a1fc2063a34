//! `machina run` against real QEMU (issue 8 items 1–2, issue 7 item 2): a
//! second `run` leaves a running VM alone; under a terminal (a pty made by
//! `script`), QEMU gets no terminal and its own session; SIGTERM starts an
//! orderly shutdown (power button, then quit after the timeout: SeaBIOS
//! with nothing to boot ignores ACPI); a second Ctrl-C typed on the
//! terminal quits at once.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::netns::NetNs;
use common::vm::Setup;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn runtime_dir(vm: &str) -> PathBuf {
    Path::new(machina::plan::RUNTIME_ROOT).join(vm)
}

/// `machina run` for `s`'s VM inside `ns` (its bridge is there).
fn run_command(s: &Setup, ns: &NetNs, extra: &[&str]) -> Command {
    let mut c = ns.command(common::bin("machina").to_str().unwrap());
    c.arg("--config-dir")
        .arg(s.dir.join("config"))
        .arg("--plan-dir")
        .arg(s.dir.join("root/etc/machina/launch"))
        .arg("run")
        .args(extra)
        .arg(&s.vm);
    c
}

#[test]
fn a_second_run_leaves_the_running_vm_alone() {
    let Some(qemu) = common::privileged("a_second_run_leaves_the_running_vm_alone") else {
        return;
    };
    let s = Setup::new(&qemu);
    let ns = NetNs::new(true);
    let (_plan, mut q) = s.launch(&ns);
    let pid = q.child.id();
    let out = run_command(&s, &ns, &[])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(!stderr.contains("teardown"), "run tore down: {stderr}");
    // The first VM still runs, same process, and answers QMP.
    assert!(q.child.try_wait().unwrap().is_none(), "the running VM died");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(runtime_dir(&s.vm).join("qmp").exists());
    let out = s.machina(&["query", "cpu", "--json", &s.vm]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.machina(&["shutdown", "--timeout", "1s", &s.vm]);
    assert!(out.status.success());
    q.child.wait().unwrap();
    std::mem::forget(q);
}

/// `machina run` under a pseudo-terminal, its output as lines.
struct UnderPty {
    script: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl UnderPty {
    fn start(s: &Setup, ns: &NetNs, extra: &[&str]) -> UnderPty {
        let cmd = run_command(s, ns, extra);
        // `script` runs the command with a new pty as its terminal, through
        // `$SHELL -c`. `exec` makes `machina run` the shell's replacement:
        // a shell left waiting (dash does not exec a lone command) is in the
        // terminal's foreground group, dies of the typed Ctrl-C, and its
        // status becomes script's.
        let line: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect();
        let mut script = Command::new("script")
            .env("SHELL", "/bin/sh")
            .args(["-qfec", &format!("exec {}", line.join(" ")), "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script (util-linux)");
        let out = script.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l.trim_end().to_owned()).is_err() {
                    break;
                }
            }
        });
        UnderPty {
            script,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (generously: TCG, a loaded host) for a line containing `what`.
    fn expect(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {what:?}; output so far: {:#?}", self.seen),
            }
        }
    }

    /// The rest of the output until `script` ends, and its exit status.
    fn finish(mut self) -> (Vec<String>, std::process::ExitStatus) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l);
        }
        let st = self.script.wait().unwrap();
        (std::mem::take(&mut self.seen), st)
    }

    /// Types bytes on the terminal.
    fn type_keys(&mut self, keys: &[u8]) {
        let stdin = self.script.stdin.as_mut().unwrap();
        stdin.write_all(keys).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for UnderPty {
    fn drop(&mut self) {
        if let Ok(None) = self.script.try_wait() {
            let _ = self.script.kill();
            let _ = self.script.wait();
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// QEMU's pid from the ready line `… is running (QEMU pid N, …`.
fn qemu_pid(ready: &str) -> i32 {
    let rest = ready.split("QEMU pid ").nth(1).expect(ready);
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .expect(ready)
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // pid (comm) state ppid …; comm may hold spaces, so after the last ')'.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

fn fd_target(pid: i32, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn sid(pid: i32) -> Pid {
    nix::unistd::getsid(Some(Pid::from_raw(pid))).unwrap()
}

#[test]
fn under_a_terminal_qemu_gets_none_and_sigterm_shuts_down_in_order() {
    let test = "under_a_terminal_qemu_gets_none_and_sigterm_shuts_down_in_order";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let s = Setup::new(&qemu);
    let ns = NetNs::new(true);
    let mut run = UnderPty::start(&s, &ns, &["--timeout", "3s"]);
    let ready = run.expect("is running (QEMU pid");
    let qemu = qemu_pid(&ready);
    let runner = parent_of(qemu);
    let qmp_line = run.expect(": QMP: ");
    assert!(
        qmp_line.contains(&format!("/run/machina/{}/qmp/command.0.qmp.socket", s.vm)),
        "{qmp_line}"
    );
    assert!(qmp_line.contains("console: "), "{qmp_line}");
    // `machina run` has the terminal; QEMU has none, and another session.
    assert!(
        fd_target(runner, 0).starts_with("/dev/pts/"),
        "the test did not give run a terminal: {}",
        fd_target(runner, 0)
    );
    assert_eq!(fd_target(qemu, 0), "/dev/null");
    for fd in [1, 2] {
        assert!(
            fd_target(qemu, fd).starts_with("pipe:"),
            "fd {fd}: {}",
            fd_target(qemu, fd)
        );
    }
    assert_eq!(
        parent_of(runner),
        run.script.id() as i32,
        "`machina run` is script's own child (no shell in between)"
    );
    assert_ne!(sid(qemu), sid(runner));
    assert_eq!(sid(qemu), Pid::from_raw(qemu), "QEMU's session is its own");

    let t = Instant::now();
    kill(Pid::from_raw(runner), Signal::SIGTERM).unwrap();
    run.expect("SIGTERM: shutting down");
    run.expect("Issued shutdown command.");
    run.expect("Timeout expired. Sending QUIT message.");
    run.expect("Shutdown complete.");
    let (lines, status) = run.finish();
    let elapsed = t.elapsed();
    assert!(status.success(), "{status}: {lines:#?}");
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(45),
        "{elapsed:?}"
    );
    assert!(!Path::new(&format!("/proc/{qemu}")).exists());
    assert!(!runtime_dir(&s.vm).exists(), "run tore down after QEMU");
}

#[test]
fn a_second_ctrl_c_quits_at_once() {
    let test = "a_second_ctrl_c_quits_at_once";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let s = Setup::new(&qemu);
    let ns = NetNs::new(true);
    let mut run = UnderPty::start(&s, &ns, &["--timeout", "5m"]);
    let ready = run.expect("is running (QEMU pid");
    let qemu = qemu_pid(&ready);
    run.expect(": QMP: ");
    let t = Instant::now();
    // Ctrl-C on the terminal: the line discipline signals the foreground
    // process group, which QEMU (another session) is not part of.
    run.type_keys(b"\x03");
    run.expect("SIGINT: shutting down");
    run.expect("Issued shutdown command.");
    assert!(
        Path::new(&format!("/proc/{qemu}")).exists(),
        "Ctrl-C reached QEMU"
    );
    run.type_keys(b"\x03");
    run.expect("SIGINT again: quitting now");
    let (lines, status) = run.finish();
    assert!(status.success(), "{status}: {lines:#?}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "{:?}: quit did not cut the 5 min timeout short",
        t.elapsed()
    );
    assert!(
        !lines.iter().any(|l| l.contains("Timeout expired")),
        "{lines:#?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("shutting down")).count(),
        1,
        "one line per signal: {lines:#?}"
    );
    assert!(!Path::new(&format!("/proc/{qemu}")).exists());
    assert!(!runtime_dir(&s.vm).exists());
}
