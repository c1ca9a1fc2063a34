//! VM lifecycle over QMP against real QEMU started through machina-launch:
//! `machina shutdown`, `observe` and `query`, and an orderly shutdown seen
//! from inside a real Linux guest (TCG: KVM here cannot boot a guest).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::launch as l;
use common::netns::NetNs;
use common::vm::Setup;

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn shutdown_of_a_guest_that_ignores_acpi_ends_with_quit() {
    let Some(qemu) = common::privileged("shutdown_of_a_guest_that_ignores_acpi_ends_with_quit")
    else {
        return;
    };
    let s = Setup::new(&qemu);
    let ns = NetNs::new(true);
    let (_plan, mut q) = s.launch(&ns);
    // SeaBIOS with nothing to boot does not act on the ACPI power button.
    let t = Instant::now();
    let out = s.machina(&["shutdown", "--timeout", "2s", &s.vm]);
    let elapsed = t.elapsed();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}: Issued shutdown command.", s.vm)),
        "{stdout}"
    );
    assert!(
        stdout.contains("Timeout expired. Sending QUIT message."),
        "{stdout}"
    );
    assert!(
        stdout.contains("QMP socket closed. Shutdown complete."),
        "{stdout}"
    );
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(30),
        "{elapsed:?}"
    );
    let st = q.child.wait().unwrap();
    assert!(st.code().is_some(), "QEMU ended by itself after quit: {st}");
    std::mem::forget(q);
    // Nothing to shut down now: a stopped VM is already shut down (issue 8
    // item 3), with or without waiting (ExecStop after QEMU ended by
    // itself)…
    let not_running = format!("{} is not running", s.vm);
    for args in [
        &["shutdown"][..],
        &["shutdown", "--system", "--timeout", "5s"],
    ] {
        let mut args = args.to_vec();
        args.push(&s.vm);
        let out = s.machina(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
        assert_eq!(stdout.trim(), not_running, "{args:?}: {stderr}");
    }
    // …while query and observe fail with one line saying so.
    for args in [&["query", "pci"][..], &["observe"]] {
        let mut args = args.to_vec();
        args.push(&s.vm);
        let out = s.machina(&args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert_eq!(stderr.trim(), format!("machina: {not_running}"), "{args:?}");
    }
    // Once torn down (no runtime directory), the same without waiting.
    let out = s.machina(&["teardown", &s.vm]);
    assert!(out.status.success(), "{:?}", text(&out));
    let t = Instant::now();
    let out = s.machina(&["query", "cpu", &s.vm]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).1.trim(), format!("machina: {not_running}"));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn query_pci_shows_the_declared_devices() {
    let Some(qemu) = common::privileged("query_pci_shows_the_declared_devices") else {
        return;
    };
    let s = Setup::new(&qemu);
    let ns = NetNs::new(true);
    let (plan, _q) = s.launch(&ns);
    // Every device machina placed directly on pcie.0, by id and S.F.
    let mut declared = Vec::new();
    for w in plan.qemu.args.windows(2).filter(|w| w[0] == "-device") {
        let p = &w[1];
        let id = p.split(',').find_map(|kv| kv.strip_prefix("id="));
        let addr = p.split(',').find_map(|kv| kv.strip_prefix("addr="));
        if let (Some(id), Some(addr)) = (id, addr) {
            let (slot, func) = addr.split_once('.').unwrap();
            declared.push((
                id.to_owned(),
                slot.parse::<u64>().unwrap(),
                func.parse::<u64>().unwrap(),
            ));
        }
    }
    assert!(declared.len() >= 3, "{declared:?}");
    let out = s.machina(&["query", "pci", "--json", &s.vm]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["vm"], s.vm.as_str());
    let devices = v["return"][0]["devices"].as_array().unwrap();
    for (id, slot, func) in &declared {
        let d = devices
            .iter()
            .find(|d| d["qdev_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not in query-pci: {stdout}"));
        assert_eq!(
            (d["slot"].as_u64().unwrap(), d["function"].as_u64().unwrap()),
            (*slot, *func),
            "{id}"
        );
    }
    // The NIC behind its root port carries the MAC machina derived.
    assert!(stdout.contains("\"class_info\""));
    let human = s.machina(&["query", "cpu", &s.vm]);
    let (stdout, _) = text(&human);
    assert!(
        stdout.starts_with(&format!("----{}----\n[\n\t{{", s.vm)),
        "{stdout}"
    );
}

#[test]
fn observe_reports_events_caused_by_another_client() {
    let Some(qemu) = common::privileged("observe_reports_events_caused_by_another_client") else {
        return;
    };
    let s = Setup::new(&qemu);
    let ns = NetNs::new(true);
    let (plan, mut q) = s.launch(&ns);
    let mut observer = Command::new(common::bin("machina"))
        .arg("--config-dir")
        .arg(s.dir.join("config"))
        .arg("--plan-dir")
        .arg(s.dir.join("root/etc/machina/launch"))
        .args(["observe", &s.vm])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The observer holds command.0 once it printed its greeting line; this
    // client then takes command.1.
    let mut lines = BufReader::new(observer.stdout.take().unwrap()).lines();
    let Some(Ok(first)) = lines.next() else {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut observer.stderr.take().unwrap(), &mut err);
        panic!("observe printed nothing: {err}");
    };
    assert!(
        first.starts_with(&format!("Connected to {} (qemu ", s.vm)),
        "{first}"
    );
    let mut r = l::qmp_connect(&mut q, &plan.runtime_dir().join("qmp/command.1.qmp.socket"));
    l::qmp(&mut r, r#"{"execute":"stop"}"#);
    l::qmp(&mut r, r#"{"execute":"cont"}"#);
    l::qmp(&mut r, r#"{"execute":"quit"}"#);
    let mut seen = Vec::new();
    let prefix = format!("{}: ", s.vm);
    for line in lines.by_ref() {
        let line = line.unwrap();
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{line}"));
        seen.push(rest.split(':').next().unwrap().to_owned());
    }
    let st = observer.wait().unwrap();
    assert!(st.success(), "observe exits 0 when the socket closes: {st}");
    let pos = |e: &str| {
        seen.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("no {e} in {seen:?}"))
    };
    assert!(
        pos("STOP") < pos("RESUME") && pos("RESUME") < pos("SHUTDOWN"),
        "{seen:?}"
    );
    q.child.wait().unwrap();
    std::mem::forget(q);
}

#[test]
fn orderly_shutdown_seen_from_inside_a_real_guest() {
    let test = "orderly_shutdown_seen_from_inside_a_real_guest";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let Some(image) = common::guest::guest_image(test) else {
        return;
    };
    let s = Setup::with(&qemu, |host, _| {
        host["qemu"]["accelerator"] = "tcg".into();
        host["tag"]["small"]["attrs"]["memory"]["ram"] = 256.into();
    });
    let ns = NetNs::new(true);
    // The configuration language has no direct kernel boot; the test adds
    // it to the generated plan (root-owned, as the launcher requires).
    let out = s.machina(&["gen", "--root", s.dir.join("root").to_str().unwrap(), &s.vm]);
    assert!(out.status.success());
    let mut plan =
        machina::plan::Plan::from_json(&std::fs::read_to_string(s.plan_path()).unwrap()).unwrap();
    let console = plan.runtime_dir().join("console.log");
    plan.qemu.args.extend([
        "-kernel".into(),
        image.kernel.display().to_string(),
        "-initrd".into(),
        image.initrd.display().to_string(),
        "-append".into(),
        image.append.clone(),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-no-reboot".into(),
    ]);
    for p in [&image.kernel, &image.initrd] {
        plan.grants.push(machina::plan::Grant {
            path: p.clone(),
            access: machina::plan::Access::ReadOnly,
            shared: true,
        });
    }
    std::fs::write(s.plan_path(), plan.to_json()).unwrap();
    let stderr = s.dir.join("qemu.err");
    let child = ns
        .command(common::bin("machina-launch").to_str().unwrap())
        .arg("--plan")
        .arg(s.plan_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut q = l::Qemu { child, stderr };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains(common::guest::READY_MARKER) {
            break;
        }
        assert!(!log.contains(common::guest::ERROR_MARKER), "{log}");
        if let Ok(Some(st)) = q.child.try_wait() {
            panic!(
                "QEMU ended ({st}): {}",
                std::fs::read_to_string(&q.stderr).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "guest not ready: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    let out = s.machina(&["shutdown", "--wait", "--timeout", "60s", &s.vm]);
    let elapsed = t.elapsed();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let shutdown = stdout
        .lines()
        .find(|l| l.contains(": SHUTDOWN: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        shutdown.contains("\"guest\":true") && shutdown.contains("guest-shutdown"),
        "{shutdown}"
    );
    assert!(!stdout.contains("Timeout expired"), "{stdout}");
    assert!(stdout.contains("Shutdown complete."), "{stdout}");
    // Well under the 60 s timeout (no "Timeout expired" above).
    assert!(elapsed < Duration::from_secs(55), "{elapsed:?}");
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(log.contains(common::guest::POWER_BUTTON_MARKER), "{log}");
    assert!(q.child.wait().unwrap().success());
    std::mem::forget(q);
    println!("orderly shutdown: machina shutdown --wait returned after {elapsed:?}");
}
