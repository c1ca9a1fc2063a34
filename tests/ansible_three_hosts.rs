//! The Ansible role in `contrib/ansible/` against three "hosts": three
//! systemd-nspawn containers booting systemd, each with its own bridge and
//! disk pool, reached by Debian's `ansible-playbook` through the
//! `community.docker.nsenter` connection plugin. Each host boots a clean
//! Debian 12 root (`nspawn::debian_root`, with python3 and python3-apt for
//! Ansible) on a throw-away overlay, so the role's `apt` task installs the
//! `.deb` with its dependencies as on a real host: QEMU comes from Debian,
//! out of the root's apt archive cache (the containers have no network).
//! One run installs the freshly built `.deb` and brings up one VM per host
//! (QEMU as the VM's uid); a second run reports `changed=0` everywhere;
//! editing one machine file changes only that host.
//!
//! The `.deb` comes from `scripts/package` (the packaging issue), or from
//! `$MACHINA_DEB`; without either the test is skipped, saying so.

mod common;

use common::TempDir;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::nspawn::Container;
use serde_json::json;

const TEST: &str = "ansible_role_on_three_hosts";
const POOL: &str = "/var/lib/machina-pool";

/// The package to install, built now when `scripts/package` exists.
fn package(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MACHINA_DEB") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/package");
    if !script.exists() {
        common::skip(
            test,
            "scripts/package (the packaging issue) is not in this tree: it builds the .deb the role installs (or set MACHINA_DEB)",
        );
        return None;
    }
    let out = Command::new(&script).current_dir(root).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/package failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // machina's own .deb, not machina-cockpit's next to it.
    let deb = root.join(format!(
        "target/packages/machina_{}-1_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(deb.exists(), "scripts/package made no {}", deb.display());
    Some(deb)
}

/// `host : ok=… changed=N …` lines of the PLAY RECAP: host → changed.
fn recap(stdout: &str) -> BTreeMap<String, u32> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .filter_map(|l| {
            let (host, rest) = l.split_once(" : ")?;
            let changed = rest
                .split_whitespace()
                .find_map(|f| f.strip_prefix("changed="))?
                .parse()
                .ok()?;
            Some((host.trim().to_owned(), changed))
        })
        .collect()
}

#[test]
fn ansible_role_on_three_hosts() {
    let Some(qemu) = common::privileged(TEST) else {
        return;
    };
    if !Path::new("/usr/bin/ansible-playbook").exists() {
        return common::skip(
            TEST,
            "ansible-playbook is not installed (apt-get install ansible)",
        );
    }
    if let Some(why) = common::nspawn::missing_prerequisite() {
        return common::skip(TEST, &why);
    }
    let Some(deb) = package(TEST) else {
        return;
    };
    let Some(root) = common::nspawn::debian_root(TEST) else {
        return;
    };
    let tmp = TempDir::new("ansible");
    let bin_dir = common::bin("machina").parent().unwrap().to_owned();
    let t0 = Instant::now();
    let mut hosts = Vec::new();
    for _ in 0..3 {
        let Some(c) = Container::boot_root(TEST, &root, &bin_dir) else {
            return;
        };
        hosts.push(c);
    }
    println!("three hosts booted in {:?}", t0.elapsed());
    // Does the packaged machina (built from this tree) have `check`?
    let has_check = Command::new(common::bin("machina"))
        .args(["check", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());

    // Per host: a bridge, a disk pool, a host file and one machine file.
    let host_file = json!({
        "qemu": {"binary": qemu, "accelerator": "tcg", "cpu-model": "qemu64", "vhost": false, "nic-option-rom": false},
        "storage": {"pool": {"path": POOL, "pattern": "${machine-name}-${volume}.raw", "type": "raw"}},
        "network": {"lan": {"device": "br0"}},
    });
    std::fs::write(tmp.0.join("machina.conf.json"), host_file.to_string()).unwrap();
    let machine = |i: usize, ram: u64| {
        json!({
            "id": format!("a5b1e000-0000-4000-8000-{:012}", i),
            "attrs": {"memory": {"ram": ram}, "qmp": {"enabled": true}},
            "volumes": [{"name": "os", "storage": "pool"}],
            "connections": [{"name": "0", "network": "lan"}],
        })
        .to_string()
    };
    let mut inventory = serde_json::Map::new();
    let mut vms = Vec::new();
    for (i, c) in hosts.iter().enumerate() {
        let vm = format!("ans{}h{i}", std::process::id());
        let dir = tmp.0.join(format!("host{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{vm}.conf.json"));
        std::fs::write(&file, machine(i, 128)).unwrap();
        c.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        c.exec_ok(&["ip", "link", "set", "br0", "up"]);
        c.exec_ok(&["mkdir", "-p", POOL]);
        c.exec_ok(&["truncate", "-s", "1M", &format!("{POOL}/{vm}-os.raw")]);
        inventory.insert(
            format!("host{i}"),
            json!({
                "ansible_connection": "community.docker.nsenter",
                "ansible_nsenter_pid": c.pid(),
                "ansible_python_interpreter": "/usr/bin/python3",
                "machina_deb": deb,
                "machina_host_file": tmp.0.join("machina.conf.json"),
                "machina_machine_files": [file],
                "machina_check": has_check,
            }),
        );
        vms.push((vm, file));
    }
    let inv = tmp.0.join("inventory.json");
    std::fs::write(&inv, json!({"all": {"hosts": inventory}}).to_string()).unwrap();
    let playbook = |what: &str| -> BTreeMap<String, u32> {
        let out = Command::new("/usr/bin/ansible-playbook")
            .arg("-i")
            .arg(&inv)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/ansible/site.yml"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_LOCAL_TEMP", tmp.0.join("ansible-local"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: ansible-playbook failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = recap(&stdout);
        assert_eq!(r.len(), 3, "{what}: recap of 3 hosts in\n{stdout}");
        println!("{what}: changed per host {r:?}");
        r
    };

    // First run: everything is installed and started on every host.
    let t = Instant::now();
    let first = playbook("first run");
    println!(
        "first run (QEMU from Debian on each host): {:?}",
        t.elapsed()
    );
    assert!(first.values().all(|&n| n > 0), "{first:?}");
    for (c, (vm, _)) in hosts.iter().zip(&vms) {
        let unit = format!("machina-qemu-{vm}.service");
        let st = c
            .systemctl()
            .status(std::slice::from_ref(&unit))
            .unwrap()
            .remove(0);
        assert_eq!(st.active_state, "active", "{}", c.journal(&unit));
        let plan: machina::plan::Plan = machina::plan::Plan::from_json(
            &std::fs::read_to_string(c.path(&format!("/etc/machina/launch/{vm}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(st.main_uid, Some(plan.uid), "QEMU runs as the VM's uid");
        assert_ne!(plan.uid, 0);
    }

    // Second run, same input: nothing changes anywhere.
    let second = playbook("second run");
    assert!(second.values().all(|&n| n == 0), "{second:?}");

    // One machine file edited: only its host changes.
    std::fs::write(&vms[1].1, machine(1, 160)).unwrap();
    let third = playbook("one machine file changed");
    assert_eq!(third.get("host0"), Some(&0), "{third:?}");
    assert!(third.get("host1").is_some_and(|&n| n > 0), "{third:?}");
    assert_eq!(third.get("host2"), Some(&0), "{third:?}");
    let s: serde_json::Value =
        serde_json::from_str(&hosts[1].exec_ok(&["machina", "status", "--json", &vms[1].0]))
            .unwrap();
    assert_eq!(s["machines"][0]["needs-restart"], true, "{s}");

    // The guests have no OS to answer the power button: quit after 1 s, so
    // the containers stop at once.
    for (c, (vm, _)) in hosts.iter().zip(&vms) {
        c.exec_ok(&["machina", "shutdown", "--timeout", "1s", vm]);
    }
}
