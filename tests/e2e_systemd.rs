//! The whole path under a real systemd (in systemd-nspawn): `machina gen`
//! output installed as is, `systemctl start` runs machina-launch, which
//! drops to the VM's uid and execs QEMU inside the unit's sandbox; a real
//! Linux guest (TCG) boots; `systemctl stop` shuts it down in order over
//! QMP (ExecStop), and ExecStopPost's teardown leaves nothing behind.

mod common;

use common::TempDir;

use std::path::Path;
use std::time::{Duration, Instant};

use common::nspawn::{Container, BIN_MOUNT};
use machina::plan::{Access, Grant, Plan};
use machina::systemd::machined;
use machina::systemd::unit::{self, UnitOptions};
use serde_json::json;

const POOL: &str = "/var/lib/machina-e2e/disks";
const GUEST: &str = "/var/lib/machina-e2e/guest";

fn wait_for(c: &Container, unit: &str, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; journal:\n{}",
            c.journal(unit)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn generated_unit_starts_and_stops_a_real_guest_under_systemd() {
    const TEST: &str = "generated_unit_starts_and_stops_a_real_guest_under_systemd";
    let Some(qemu) = common::privileged(TEST) else {
        return;
    };
    let Some(image) = common::guest::guest_image(TEST) else {
        return;
    };
    let vm = format!("e2e{}", std::process::id());
    let tmp = TempDir::new("e2e-systemd");
    let config = tmp.0.join("config");
    std::fs::create_dir_all(config.join("machine.conf.d")).unwrap();
    let host = json!({
        "qemu": {"binary": qemu, "accelerator": "tcg", "cpu-model": "qemu64", "vhost": false, "nic-option-rom": false},
        "storage": {"disks": {"path": POOL, "pattern": "${machine-name}-${volume}.raw", "type": "raw"}},
        "network": {"lan": {"device": "br0"}},
    });
    let machine = json!({
        "id": uuid::Uuid::new_v4(),
        "attrs": {"memory": {"ram": 256}, "qmp": {"enabled": true}, "console": {"enabled": true}},
        "volumes": [{"name": "os", "storage": "disks"}],
        "connections": [{"name": "0", "network": "lan"}]
    });
    std::fs::write(config.join("machina.conf.json"), host.to_string()).unwrap();
    std::fs::write(
        config.join(format!("machine.conf.d/{vm}.conf.json")),
        machine.to_string(),
    )
    .unwrap();

    // machina gen for the container: binaries where the container has them.
    let root = tmp.0.join("root");
    let out = std::process::Command::new(common::bin("machina"))
        .arg("--config-dir")
        .arg(&config)
        .args([
            "gen",
            "--root",
            root.to_str().unwrap(),
            "--bin-dir",
            BIN_MOUNT,
            &vm,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut plan = Plan::from_json(
        &std::fs::read_to_string(root.join(format!("etc/machina/launch/{vm}.json"))).unwrap(),
    )
    .unwrap();
    let generated_unit = std::fs::read_to_string(root.join(format!(
        "etc/systemd/system/{}",
        unit::unit_name(&plan.machine)
    )))
    .unwrap();
    let mut opts = UnitOptions::new(&plan);
    opts.launcher = format!("{BIN_MOUNT}/machina-launch").into();
    opts.machina = format!("{BIN_MOUNT}/machina").into();
    assert_eq!(
        generated_unit,
        unit::render(&plan, &opts).unwrap(),
        "gen wrote the rendered unit"
    );
    let machined_name = machined::machined_unit_name(&plan.machine);
    let machined_unit = machined::render(&plan, &opts).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join(format!("etc/systemd/system/{machined_name}"))).unwrap(),
        machined_unit,
        "gen wrote the machined registration unit"
    );

    // The configuration has no direct kernel boot: add it to the plan (and
    // so to the unit's writable/readable paths) for this test's guest. Its
    // console (attrs.console, ttyS0) is logged to console.log, bounded by
    // the launcher's keeper.
    assert!(plan.console_log);
    let console = plan.runtime_dir().join("console.log");
    plan.qemu.args.extend([
        "-kernel".into(),
        format!("{GUEST}/vmlinuz"),
        "-initrd".into(),
        format!("{GUEST}/initrd"),
        "-append".into(),
        image.append.clone(),
        "-no-reboot".into(),
    ]);
    for f in ["vmlinuz", "initrd"] {
        plan.grants.push(Grant {
            path: format!("{GUEST}/{f}").into(),
            access: Access::ReadOnly,
            shared: true,
        });
    }
    let unit_text = unit::render(&plan, &opts).unwrap();
    let unit_name = unit::unit_name(&plan.machine);

    let bin_dir = common::bin("machina").parent().unwrap().to_owned();
    let Some(c) = Container::boot(TEST, &bin_dir) else {
        return;
    };
    c.write_file(
        &format!("/etc/machina/launch/{vm}.json"),
        &plan.to_json(),
        0o644,
    );
    c.write_file("/etc/machina/machina.conf.json", &host.to_string(), 0o644);
    c.write_file(
        &format!("/etc/machina/machine.conf.d/{vm}.conf.json"),
        &machine.to_string(),
        0o644,
    );
    c.write_unit(&unit_name, &unit_text);
    c.write_unit(&machined_name, &machined_unit);
    c.write_file(&format!("{POOL}/{vm}-os.raw"), "", 0o600);
    c.exec_ok(&["truncate", "-s", "1M", &format!("{POOL}/{vm}-os.raw")]);
    std::fs::create_dir_all(c.path(GUEST)).unwrap();
    std::fs::copy(&image.kernel, c.path(&format!("{GUEST}/vmlinuz"))).unwrap();
    std::fs::copy(&image.initrd, c.path(&format!("{GUEST}/initrd"))).unwrap();
    c.exec_ok(&[
        "chmod",
        "0644",
        &format!("{GUEST}/vmlinuz"),
        &format!("{GUEST}/initrd"),
    ]);
    c.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    c.exec_ok(&["ip", "link", "set", "br0", "up"]);
    c.daemon_reload();

    let t = Instant::now();
    let started = c.exec(&["systemctl", "start", &unit_name]);
    assert!(
        started.status.success(),
        "systemctl start failed; journal:\n{}",
        c.journal(&unit_name)
    );
    let console_path = c.path(console.to_str().unwrap());
    wait_for(
        &c,
        &unit_name,
        "the guest to boot",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&console_path)
                .unwrap_or_default()
                .contains(common::guest::READY_MARKER)
        },
    );
    println!("guest ready {:?} after systemctl start", t.elapsed());

    // The unit's main process is QEMU itself, as the VM's uid, with nothing.
    let st = c
        .systemctl()
        .status(std::slice::from_ref(&unit_name))
        .unwrap()
        .remove(0);
    assert_eq!(
        (st.active_state.as_str(), st.sub_state.as_str()),
        ("active", "running")
    );
    assert_eq!(st.main_uid, Some(plan.uid));
    let pid = st.main_pid.unwrap().to_string();
    let status = c.exec_ok(&["cat", &format!("/proc/{pid}/status")]);
    for want in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(want), "{want} not in\n{status}");
    }
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
        "{status}"
    );
    // The console log's keeper runs under QEMU as the VM's uid.
    let keeper = c.exec_ok(&["ps", "-o", "uid=,args=", "--ppid", &pid]);
    assert!(
        keeper.lines().any(
            |l| l.split_whitespace().next() == Some(&plan.uid.to_string())
                && l.contains("--console-log")
        ),
        "no console log keeper under QEMU {pid}:\n{keeper}"
    );
    let exe = c.exec_ok(&["readlink", &format!("/proc/{pid}/exe")]);
    assert_eq!(Path::new(exe.trim()), qemu);
    // No TCP listener: QEMU runs in a network namespace of its own
    // (item 7), entered by the launcher under the unit's sandbox, while its
    // TAP stays on the container's bridge (checked below).
    assert!(plan.network_isolation);
    let qemu_ns = c.exec_ok(&["readlink", &format!("/proc/{pid}/ns/net")]);
    let init_ns = c.exec_ok(&["readlink", "/proc/1/ns/net"]);
    assert_ne!(
        qemu_ns.trim(),
        init_ns.trim(),
        "QEMU shares the host's network namespace"
    );
    assert!(c
        .exec_ok(&["ip", "-o", "link", "show", "master", "br0"])
        .contains(plan.taps[0].ifname.as_str()));

    // machina status inside the container sees the unit and QMP.
    let s: serde_json::Value = serde_json::from_str(&c.exec_ok(&[
        &format!("{BIN_MOUNT}/machina"),
        "status",
        "--json",
        &vm,
    ]))
    .unwrap();
    let m = &s["machines"][0];
    assert_eq!(m["unit"]["active-state"], "active");
    assert_eq!(m["unit"]["main-uid"], plan.uid);
    assert_eq!(m["qmp"], true);
    assert_eq!(s["systemd"], true);

    // machina inspect --json: valid against the shipped schema, and what it
    // says is what runs.
    let inspected: serde_json::Value = serde_json::from_str(&c.exec_ok(&[
        &format!("{BIN_MOUNT}/machina"),
        "inspect",
        "--json",
        &vm,
    ]))
    .unwrap();
    common::assert_valid_inspection(&inspected);
    let i = &inspected[0];
    assert_eq!(i["name"], vm.as_str());
    assert_eq!(i["uuid"], plan.uuid.to_string());
    assert_eq!(i["state"], "running");
    assert_eq!(i["main-pid"], st.main_pid.unwrap());
    assert_eq!(i["main-uid"], plan.uid);
    assert_eq!(i["main-gid"], plan.gid);
    assert_eq!(i["vm-uid"], plan.uid);
    assert_eq!(i["accelerator"], "tcg");
    assert_eq!(i["plan"], format!("/etc/machina/launch/{vm}.json"));
    assert_eq!(
        i["unit"]["path"],
        format!("/etc/systemd/system/{unit_name}")
    );
    assert_eq!(i["qmp"]["answers"], true);
    assert!(i["since"].as_u64().is_some(), "{i:#}");
    let tap = &i["taps"][0];
    assert_eq!(tap["ifname"], plan.taps[0].ifname.as_str());
    assert_eq!(tap["bridge"], "br0");
    assert_eq!(tap["master"], "br0");
    assert_eq!(tap["mac"], plan.taps[0].mac.as_str());
    assert_eq!(tap["exists"], true);
    assert_eq!(tap["up"], true);
    assert_eq!(i["volumes"][0]["name"], "os");

    // machina logs: the launcher's step lines, each with the VM, the step
    // and its duration; status ends with the journal's last lines.
    let logs = c.exec_ok(&[&format!("{BIN_MOUNT}/machina"), "logs", &vm]);
    for step in ["plan checks", "lock", "runtime directory", "checks"] {
        let line = logs
            .lines()
            .find(|l| l.contains("launch step") && l.contains(&format!("step=\"{step}\"")))
            .unwrap_or_else(|| panic!("no step {step:?} in\n{logs}"));
        assert!(line.contains(&format!("vm=\"{vm}\"")), "{line}");
        assert!(line.contains(" us="), "{line}");
    }
    assert!(
        logs.lines()
            .any(|l| l.contains("step=\"exec\"") && l.contains("total_us=")),
        "{logs}"
    );
    let status = c.exec_ok(&[&format!("{BIN_MOUNT}/machina"), "status", &vm]);
    assert!(status.contains("launch step"), "{status}");

    assert_eq!(i["volumes"][0]["path"], format!("{POOL}/{vm}-os.raw"));

    // systemd-machined knows the VM (its registration unit ran after the
    // launcher): class vm, its UUID, this unit, QEMU as leader.
    let listed = |c: &Container| {
        c.exec_ok(&["machinectl", "list", "--no-legend"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(vm.as_str()))
            .map(str::to_owned)
    };
    wait_for(
        &c,
        &machined_name,
        "machinectl list to show the VM",
        Duration::from_secs(60),
        || listed(&c).is_some(),
    );
    let row = listed(&c).unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("vm"), "{row}");
    let props = c.exec_ok(&["machinectl", "show", &vm]);
    // Printed as 32 hex digits or as a UUID, depending on systemd.
    assert!(
        props.contains(&format!("Id={}", plan.uuid.simple()))
            || props.contains(&format!("Id={}", plan.uuid.hyphenated())),
        "{props}"
    );
    for want in [
        format!("Unit={unit_name}"),
        format!("Leader={pid}"),
        "Class=vm".into(),
        "Service=machina".into(),
    ] {
        assert!(props.lines().any(|l| l == want), "{want} not in\n{props}");
    }

    // machina stop: ExecStop's orderly QMP shutdown, the guest powers off
    // itself, ExecStopPost tears down.
    let t = Instant::now();
    c.exec_ok(&[&format!("{BIN_MOUNT}/machina"), "stop", &vm]);
    let stop = t.elapsed();
    let journal = c.journal(&unit_name);
    let shutdown = journal
        .lines()
        .find(|l| l.contains(": SHUTDOWN: "))
        .unwrap_or_else(|| panic!("no SHUTDOWN in\n{journal}"));
    assert!(shutdown.contains("\"guest\":true"), "{shutdown}");
    assert!(journal.contains("Shutdown complete."), "{journal}");
    assert!(!journal.contains("Timeout expired"), "{journal}");
    assert!(stop < Duration::from_secs(30), "stop took {stop:?}");
    let st = c
        .systemctl()
        .status(std::slice::from_ref(&unit_name))
        .unwrap()
        .remove(0);
    assert_eq!(st.active_state, "inactive", "{journal}");
    assert!(
        std::fs::read_to_string(&console_path).is_err(),
        "runtime directory removed"
    );
    assert!(
        !c.exec_ok(&["ip", "-o", "link"])
            .contains(plan.taps[0].ifname.as_str()),
        "TAP removed"
    );
    // machined forgets the VM with its unit.
    wait_for(
        &c,
        &unit_name,
        "machined to drop the VM",
        Duration::from_secs(30),
        || listed(&c).is_none(),
    );
    println!("machina stop (orderly guest shutdown + teardown): {stop:?}");

    // `machinectl terminate` stops the unit: the same orderly path.
    c.exec_ok(&["systemctl", "start", &unit_name]);
    wait_for(
        &c,
        &unit_name,
        "the guest to boot again",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&console_path)
                .unwrap_or_default()
                .contains(common::guest::READY_MARKER)
        },
    );
    wait_for(
        &c,
        &machined_name,
        "machinectl list to show the VM again",
        Duration::from_secs(60),
        || listed(&c).is_some(),
    );
    c.exec_ok(&["machinectl", "terminate", &vm]);
    wait_for(
        &c,
        &unit_name,
        "machinectl terminate to stop the unit",
        Duration::from_secs(60),
        || {
            let st = c
                .systemctl()
                .status(std::slice::from_ref(&unit_name))
                .unwrap()
                .remove(0);
            st.active_state == "inactive" && listed(&c).is_none()
        },
    );
    let journal = c.journal(&unit_name);
    let shutdowns: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains(": SHUTDOWN: "))
        .collect();
    assert_eq!(shutdowns.len(), 2, "{journal}");
    assert!(shutdowns[1].contains("\"guest\":true"), "{journal}");
}
