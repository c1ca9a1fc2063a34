//! The TPM under a real systemd (in systemd-nspawn): `machina gen` writes
//! `machina-swtpm-<vm>.service` beside the QEMU unit; `systemctl start` of
//! the QEMU unit pulls the swtpm unit in (`BindsTo=`), whose
//! `machina-launch --swtpm` prepares the state as root and execs swtpm as
//! the VM's uid; the test guest (TCG), booted from its disk volume, sees a
//! TPM 2.0 on its serial console; `status --json` and `inspect --json`
//! show the swtpm unit and process; after a stop and a start the TPM is
//! the same and `swtpm_setup` did not run again.

mod common;

use common::TempDir;

use std::time::{Duration, Instant};

use common::nspawn::{Container, BIN_MOUNT};
use machina::plan::Plan;
use machina::systemd::swtpm_unit;
use machina::systemd::unit;
use serde_json::json;

const POOL: &str = "/var/lib/machina-e2e/disks";
const TPM_POOL: &str = "/var/lib/machina-e2e/tpm";

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
fn swtpm_unit_serves_a_tpm2_to_a_real_guest_under_systemd() {
    const TEST: &str = "swtpm_unit_serves_a_tpm2_to_a_real_guest_under_systemd";
    let Some(qemu) = common::privileged_with_swtpm(TEST) else {
        return;
    };
    let Some(image) = common::guest::guest_image(TEST) else {
        return;
    };
    let vm = format!("tpm{}", std::process::id());
    let tmp = TempDir::new("tpm-systemd");
    // The guest boots from its volume: no kernel in the plan.
    let disk = tmp.0.join("os.raw");
    if !common::bootdisk::write_boot_disk(TEST, &image, &disk) {
        return;
    }
    let config = tmp.0.join("config");
    std::fs::create_dir_all(config.join("machine.conf.d")).unwrap();
    let host = json!({
        "qemu": {"binary": qemu, "accelerator": "tcg", "cpu-model": "qemu64", "vhost": false, "nic-option-rom": false},
        "storage": {
            "disks": {"path": POOL, "pattern": "${machine-name}-${volume}.raw", "type": "raw"},
            "tpm": {"path": TPM_POOL, "type": "tpm-data"}
        },
        "network": {"lan": {"device": "br0"}},
    });
    let machine = json!({
        "id": uuid::Uuid::new_v4(),
        "attrs": {"memory": {"ram": 256}, "qmp": {"enabled": true}, "console": {"enabled": true},
                  "tpm": {"enabled": true, "data": {"storage": "tpm", "name": "state"}}},
        "volumes": [{"name": "os", "storage": "disks", "bootable": true}],
        "connections": [{"name": "0", "network": "lan"}]
    });
    std::fs::write(config.join("machina.conf.json"), host.to_string()).unwrap();
    std::fs::write(
        config.join(format!("machine.conf.d/{vm}.conf.json")),
        machine.to_string(),
    )
    .unwrap();
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
    let plan_text =
        std::fs::read_to_string(root.join(format!("etc/machina/launch/{vm}.json"))).unwrap();
    let plan = Plan::from_json(&plan_text).unwrap();
    let swtpm_name = swtpm_unit::swtpm_unit_name(&plan.machine);
    let swtpm_text =
        std::fs::read_to_string(root.join(format!("etc/systemd/system/{swtpm_name}"))).unwrap();
    let tpm = plan.tpm.clone().unwrap();
    let unit_name = unit::unit_name(&plan.machine);
    let unit_text =
        std::fs::read_to_string(root.join(format!("etc/systemd/system/{unit_name}"))).unwrap();
    assert!(
        unit_text.contains(&format!("BindsTo={swtpm_name}")),
        "{unit_text}"
    );
    let console = plan.runtime_dir().join("console.log");

    let bin_dir = common::bin("machina").parent().unwrap().to_owned();
    let Some(c) = Container::boot(TEST, &bin_dir) else {
        return;
    };
    c.write_file(&format!("/etc/machina/launch/{vm}.json"), &plan_text, 0o644);
    // The configuration too, for `inspect`.
    c.write_file("/etc/machina/machina.conf.json", &host.to_string(), 0o644);
    c.write_file(
        &format!("/etc/machina/machine.conf.d/{vm}.conf.json"),
        &machine.to_string(),
        0o644,
    );
    c.write_unit(&unit_name, &unit_text);
    c.write_unit(&swtpm_name, &swtpm_text);
    c.exec_ok(&["mkdir", "-p", POOL, TPM_POOL]);
    std::fs::copy(&disk, c.path(&format!("{POOL}/{vm}-os.raw"))).unwrap();
    c.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    c.exec_ok(&["ip", "link", "set", "br0", "up"]);
    c.daemon_reload();

    let console_path = c.path(console.to_str().unwrap());
    let data = tpm.data_dir.to_str().unwrap().to_owned();
    let mut ca = Vec::new();
    for round in 1..=2 {
        let out = c.exec(&["systemctl", "start", &unit_name]);
        assert!(
            out.status.success(),
            "start: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.journal(&swtpm_name),
            String::from_utf8_lossy(
                &c.exec(&["sh", "-c", &format!("ls -ld /run/machina /run/machina/{vm} /run/machina/{vm}/swtpm /run/machina/{vm}/swtpm/*")]).stdout
            )
        );
        wait_for(
            &c,
            &swtpm_name,
            "the guest to boot",
            Duration::from_secs(180),
            || {
                std::fs::read_to_string(&console_path)
                    .unwrap_or_default()
                    .contains(common::guest::READY_MARKER)
            },
        );
        let log = std::fs::read_to_string(&console_path).unwrap();
        assert!(log.contains("SYSLINUX"), "booted from its volume:\n{log}");
        assert_eq!(common::guest::tpm_version(&log), "2", "guest TPM");

        // swtpm: the unit's main process, as the VM's uid, with nothing.
        let st = c
            .systemctl()
            .status(std::slice::from_ref(&swtpm_name))
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
            "CapInh:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "CapAmb:\t0000000000000000",
            "NoNewPrivs:\t1",
        ] {
            assert!(status.contains(want), "{want} not in\n{status}");
        }
        assert_eq!(
            c.exec_ok(&["stat", "-c", "%u %a", &data]).trim(),
            format!("{} 700", plan.uid)
        );
        // status and inspect: the same TPM state, with the unit's.
        let tpm_status = || -> serde_json::Value {
            let s: serde_json::Value =
                serde_json::from_str(&c.machina(&["status", "--json", &vm])).unwrap();
            s["machines"][0]["tpm"].clone()
        };
        let t = tpm_status();
        assert_eq!(t["running"], true, "{t:#}");
        assert_eq!(t["pids"], json!([st.main_pid.unwrap()]), "{t:#}");
        assert_eq!(t["uid"], plan.uid, "{t:#}");
        assert_eq!(t["state-dir"], data.as_str(), "{t:#}");
        assert_eq!(t["socket"], tpm.socket.to_str().unwrap(), "{t:#}");
        assert_eq!(t["unit"]["name"], swtpm_name.as_str(), "{t:#}");
        assert_eq!(t["unit"]["active-state"], "active", "{t:#}");
        assert_eq!(t["unit"]["sub-state"], "running", "{t:#}");
        let i: serde_json::Value =
            serde_json::from_str(&c.machina(&["inspect", "--json", &vm])).unwrap();
        assert_eq!(i[0]["tpm"]["state"], t, "{i:#}");
        let journal = c.journal(&swtpm_name);
        let served: Vec<&str> = journal
            .lines()
            .filter(|l| l.contains("serving the TPM on"))
            .collect();
        assert_eq!(served.len(), round, "{journal}");
        let want = if round == 1 {
            "swtpm_setup ran"
        } else {
            "swtpm_setup skipped"
        };
        assert!(served[round - 1].contains(want), "{journal}");

        c.exec_ok(&["systemctl", "stop", &unit_name]);
        wait_for(
            &c,
            &swtpm_name,
            "swtpm to end with QEMU",
            Duration::from_secs(60),
            || {
                let st = c
                    .systemctl()
                    .status(std::slice::from_ref(&swtpm_name))
                    .unwrap()
                    .remove(0);
                st.active_state == "inactive"
            },
        );
        let t = tpm_status();
        assert_eq!(t["running"], false, "{t:#}");
        assert_eq!(t["pids"], json!([]), "{t:#}");
        assert_eq!(t["unit"]["active-state"], "inactive", "{t:#}");
        ca.push(c.exec_ok(&[
            "cat",
            &format!("{data}/authority/issuercert.pem"),
            &format!("{data}/authority/certserial"),
        ]));
    }
    assert_eq!(
        ca[0], ca[1],
        "the TPM's CA is the same after a stop and a start"
    );
}
