//! From configuration to a running, unprivileged QEMU: `machina gen` writes
//! the plan, `machina-launch` runs it (in a network namespace with a bridge
//! the test creates), the process runs exactly the argv `machina args`
//! prints, and `machina teardown` / `machina run` clean up after it.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::launch::{self as l};
use common::netns::NetNs;
use common::vm::Setup;

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect()
}

#[test]
fn generated_plan_launches_the_argv_machina_args_prints() {
    let Some(qemu) = common::privileged("generated_plan_launches_the_argv_machina_args_prints")
    else {
        return;
    };
    let s = Setup::new(&qemu);
    let ns = NetNs::new(true);
    ok(s.machina(&["gen", "--root", s.dir.join("root").to_str().unwrap(), &s.vm]));
    let plan =
        machina::plan::Plan::from_json(&std::fs::read_to_string(s.plan_path()).unwrap()).unwrap();
    let args_line = ok(s.machina(&["args", &s.vm]));

    let stderr = s.dir.join("qemu.err");
    let mut child = ns
        .command(common::bin("machina-launch").to_str().unwrap())
        .arg("--plan")
        .arg(s.plan_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Wait until the launcher has become QEMU.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cmdline(pid).first().map(String::as_str) != Some(qemu.to_str().unwrap()) {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "launch failed ({st}): {}",
                std::fs::read_to_string(&stderr).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "launcher did not exec QEMU");
        std::thread::sleep(Duration::from_millis(5));
    }
    let argv = cmdline(pid);
    assert_eq!(argv[1..], plan.qemu.args[..]);
    assert_eq!(
        args_line.trim_end(),
        machina::qemu::argv_line(&argv[1..]),
        "machina args shows the executed argv"
    );

    // QMP on the socket the config declared.
    let sock = plan.runtime_dir().join("qmp/command.0.qmp.socket");
    let mut q = l::Qemu {
        child,
        stderr: stderr.clone(),
    };
    let mut r = l::qmp_connect(&mut q, &sock);
    assert!(l::qmp(&mut r, r#"{"execute":"query-kvm"}"#).contains(r#""enabled": true"#));
    // QEMU installs its seccomp filter during start-up: look once QMP is up.
    let status = l::proc_status(pid);
    assert_eq!(
        status["Uid"].split_whitespace().next().unwrap(),
        plan.uid.to_string()
    );
    assert_eq!(status["CapEff"], "0000000000000000");
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["Seccomp"], "2");
    assert_eq!(
        ns.master_of(plan.taps[0].ifname.as_str()).as_deref(),
        Some("br0")
    );
    let disk = s.dir.join(format!("pool/{}-os.raw", s.vm));
    let m = std::fs::metadata(&disk).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o070), (plan.gid, 0o060));

    l::qmp(&mut r, r#"{"execute":"quit"}"#);
    let st = q.child.wait().unwrap();
    assert!(st.success() || st.code().is_some(), "{st}");
    std::mem::forget(q);

    let out = s.machina(&["teardown", &s.vm]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!plan.runtime_dir().exists(), "runtime dir left behind");
    assert!(
        !ns.links().iter().any(|l| l == plan.taps[0].ifname.as_str()),
        "TAP left behind"
    );
    // Idempotent.
    assert!(s.machina(&["teardown", &s.vm]).status.success());
}

#[test]
fn machina_run_launches_in_the_foreground_and_cleans_up() {
    let Some(qemu) = common::privileged("machina_run_launches_in_the_foreground_and_cleans_up")
    else {
        return;
    };
    let s = Setup::new(&qemu);
    let ns = NetNs::new(true);
    let mut run = ns
        .command(common::bin("machina").to_str().unwrap())
        .arg("--config-dir")
        .arg(s.dir.join("config"))
        .arg("--plan-dir")
        .arg(s.dir.join("root/etc/machina/launch"))
        .args(["run", &s.vm])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = PathBuf::from(format!("/run/machina/{}/qmp/command.0.qmp.socket", s.vm));
    let deadline = Instant::now() + Duration::from_secs(15);
    let stream = loop {
        if let Ok(st) = std::os::unix::net::UnixStream::connect(&sock) {
            break st;
        }
        if let Ok(Some(st)) = run.try_wait() {
            let mut e = String::new();
            std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut e).unwrap();
            panic!("machina run ended ({st}): {e}");
        }
        assert!(Instant::now() < deadline, "no QMP socket");
        std::thread::sleep(Duration::from_millis(10));
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = std::io::BufReader::new(stream);
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut r, &mut greeting).unwrap();
    l::qmp(&mut r, r#"{"execute":"qmp_capabilities"}"#);
    let ifname = machina::config::link_name(&s.vm, "0");
    assert_eq!(ns.master_of(ifname.as_str()).as_deref(), Some("br0"));
    l::qmp(&mut r, r#"{"execute":"quit"}"#);
    let st = run.wait().unwrap();
    assert!(st.success(), "machina run exit {st}");
    assert!(
        !Path::new(&format!("/run/machina/{}", s.vm)).exists(),
        "run tore down the runtime dir"
    );
    assert!(!ns.links().iter().any(|l| l == ifname.as_str()));
}
