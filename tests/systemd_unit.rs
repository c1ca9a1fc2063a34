//! The rendered unit checked by systemd's own tools, without a running
//! systemd (TESTING.md, "systemd-analyze without a running systemd"):
//! `systemd-analyze verify` must print nothing on stderr, and
//! `systemd-analyze security --offline=true` must score at most 3.0, for a
//! minimal VM, one with TAPs and vhost, one with mediated devices (vfio) and
//! one with block-device grants.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use machina::config::schema::Accelerator;
use machina::names::{InterfaceName, MachineName};
use machina::plan::{
    Access, DeviceNode, Grant, HostNeeds, Listener, Mdev, MdevParent, Plan, QemuExec, Service, Tap,
    PLAN_VERSION,
};
use machina::systemd::unit::{render, unit_name, UnitOptions};

const ANALYZE: &str = "/usr/bin/systemd-analyze";
/// The marker systemd-analyze leaves behind.
const MARKER: &str = "/run/systemd/systemd-units-load";
/// DESIGN.md's ceiling for the unit's exposure score.
const MAX_SCORE: f64 = 3.0;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn base(vm: &str) -> Plan {
    Plan {
        version: PLAN_VERSION,
        machine: MachineName::new(vm).unwrap(),
        uuid: uuid::Uuid::nil(),
        uid: 70001,
        gid: 70001,
        taps: vec![],
        mdevs: vec![],
        grants: vec![],
        needs: HostNeeds::new(Accelerator::Kvm),
        limits: Default::default(),
        network_isolation: false,
        console_log: false,
        qemu: QemuExec {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            args: args(&[
                "-enable-kvm",
                "-nodefaults",
                "-chardev",
                &format!("socket,id=qmp.0,server=on,wait=off,path=/run/machina/{vm}/qmp/systemd.0.qmp.socket"),
                "-mon",
                "chardev=qmp.0,mode=control",
            ]),
        },
        tpm: None,
    }
}

fn minimal() -> Plan {
    base("minimal")
}

fn taps_vhost() -> Plan {
    let mut p = base("netvm");
    for (i, fd) in [(0, 3), (1, 5)] {
        p.taps.push(Tap {
            ifname: InterfaceName::new(format!("netvm.{i}")).unwrap(),
            bridge: InterfaceName::new("br0").unwrap(),
            mac: format!("00:16:3e:00:00:0{i}"),
            fds: vec![fd],
            vhost_fds: vec![fd + 1],
        });
    }
    p.needs.add_device(DeviceNode::Tun);
    p.needs.add_device(DeviceNode::VhostNet);
    p.grants.push(Grant {
        path: "/var/lib/machina/netvm/os.raw".into(),
        access: Access::ReadWrite,
        shared: false,
    });
    p
}

fn mdevs() -> Plan {
    let mut p = base("gpuvm");
    // The Go README's machine: spice and the guest agent on loopback TCP.
    p.qemu.args.extend(args(&[
        "-spice",
        "port=59000,addr=127.0.0.1,disable-ticketing=on",
        "-chardev",
        "socket,id=guestagent,host=127.0.0.1,port=49000,server=on,wait=off,nodelay=on",
    ]));
    p.mdevs.push(Mdev {
        uuid: uuid::Uuid::nil(),
        sysfs_root: "/sys".into(),
        parents: vec![MdevParent {
            address: "0000:c1:00.0".into(),
            type_name: "GRID RTX8000-6Q".into(),
            placements: vec![],
            heterogeneous: false,
        }],
    });
    p.needs.memlock = Some(34 << 30);
    p.needs.add_device(DeviceNode::Vfio);
    for (service, port) in [(Service::Spice, 59000), (Service::Agent, 49000)] {
        p.needs.listeners.push(Listener {
            service,
            address: "127.0.0.1".parse().unwrap(),
            port,
        });
    }
    p.grants.push(Grant {
        path: "/zfs-tank/gpuvm/os/gpuvm-os.raw".into(),
        access: Access::ReadWrite,
        shared: false,
    });
    p.grants.push(Grant {
        path: "/usr/lib/machina/iso/win10.iso".into(),
        access: Access::ReadOnly,
        shared: true,
    });
    p
}

fn block_devices() -> Plan {
    let mut p = base("blkvm");
    p.grants.push(Grant {
        path: "/dev/zvol/tank/blkvm-os".into(),
        access: Access::ReadWrite,
        shared: false,
    });
    p.grants.push(Grant {
        path: "/dev/disk/by-id/ata-ST4000-DATA".into(),
        access: Access::ReadOnly,
        shared: false,
    });
    // A path from config with characters systemd treats specially.
    p.grants.push(Grant {
        path: "/srv/my vms/100%/$blkvm.vars".into(),
        access: Access::ReadWrite,
        shared: false,
    });
    p
}

/// A `--root` tree with the standard units, stub binaries at the unit's
/// ExecStart/ExecStop paths and the unit under `etc/systemd/system`.
struct Tree(PathBuf);

impl Tree {
    fn new(tag: &str, unit: &str, text: &str) -> Tree {
        let dir =
            std::env::temp_dir().join(format!("machina-analyze-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = Tree(dir);
        std::fs::create_dir_all(t.0.join("usr/lib/systemd")).unwrap();
        std::fs::create_dir_all(t.0.join("etc/systemd/system")).unwrap();
        std::fs::create_dir_all(t.0.join("usr/bin")).unwrap();
        let st = Command::new("cp")
            .args(["-a", "/usr/lib/systemd/system"])
            .arg(t.0.join("usr/lib/systemd/"))
            .status()
            .unwrap();
        assert!(st.success(), "copying the standard units");
        for bin in ["machina-launch", "machina"] {
            let p = t.0.join("usr/bin").join(bin);
            std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(t.0.join("etc/systemd/system").join(unit), text).unwrap();
        t
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(MARKER);
    }
}

fn prerequisites(test: &str) -> bool {
    if !Path::new(ANALYZE).exists() {
        common::skip(test, "systemd-analyze is not installed");
        return false;
    }
    true
}

/// Renders `plan`, verifies it and scores it; returns the score and the
/// settings still counted as exposures.
fn check(tag: &str, plan: &Plan) -> (f64, Vec<String>) {
    let unit = unit_name(&plan.machine);
    let text = render(plan, &UnitOptions::new(plan)).unwrap();
    check_text(tag, &unit, &text, &[])
}

/// Verifies and scores the unit `unit` of text `text`, with the units
/// `others` (name, text) beside it.
fn check_text(tag: &str, unit: &str, text: &str, others: &[(&str, &str)]) -> (f64, Vec<String>) {
    let unit = unit.to_owned();
    let tree = Tree::new(tag, &unit, text);
    for (name, text) in others {
        std::fs::write(tree.0.join("etc/systemd/system").join(name), text).unwrap();
    }

    let out = Command::new(ANALYZE)
        .arg("verify")
        .arg(format!("--root={}", tree.0.display()))
        .args(["--man=no", &unit])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{tag}: systemd-analyze verify ({}):\n{stderr}\n{text}",
        out.status
    );

    let path = tree.0.join("etc/systemd/system").join(&unit);
    let out = Command::new(ANALYZE)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tag}: security failed: {stderr}");
    assert!(stderr.trim().is_empty(), "{tag}: security warned: {stderr}");
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{tag}: no score in:\n{stdout}"));
    let exposures: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with('✗'))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        .collect();
    eprintln!(
        "{tag}: exposure {score}; remaining: {}",
        exposures.join(" ")
    );
    assert!(
        score <= MAX_SCORE,
        "{tag}: exposure {score} > {MAX_SCORE}:\n{stdout}"
    );
    (score, exposures)
}

#[test]
fn minimal_unit_verifies_and_scores() {
    if !prerequisites("minimal_unit_verifies_and_scores") {
        return;
    }
    let (score, exposures) = check("minimal", &minimal());
    // What is left is inherent to a launcher that must run as root on the
    // host's network; everything else is closed.
    for e in &exposures {
        assert!(
            [
                "User=/DynamicUser=",
                "RootDirectory=/RootImage=",
                "PrivateNetwork=",
                "PrivateUsers=",
                "DeviceAllow=",
                "SystemCallFilter=~@privileged",
                "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
                "CapabilityBoundingSet=~CAP_(CHOWN|FSETID|SETFCAP)",
                "CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)",
                "CapabilityBoundingSet=~CAP_NET_ADMIN",
                "RestrictAddressFamilies=~AF_NETLINK",
                "RestrictAddressFamilies=~AF_UNIX",
            ]
            .contains(&e.as_str()),
            "unexpected exposure {e}"
        );
    }
    assert!(score <= 2.2, "minimal unit regressed to {score}");
}

/// The companion unit that registers a VM with systemd-machined: root
/// with only `CAP_SYS_ADMIN` (machined's requirement), no network, a
/// read-only system.
#[test]
fn machined_unit_verifies_and_scores() {
    if !prerequisites("machined_unit_verifies_and_scores") {
        return;
    }
    let p = minimal();
    let text = machina::systemd::machined::render(&p, &UnitOptions::new(&p)).unwrap();
    let unit = machina::systemd::machined::machined_unit_name(&p.machine);
    let vm_unit = render(&p, &UnitOptions::new(&p)).unwrap();
    let (score, exposures) = check_text(
        "machined",
        &unit,
        &text,
        &[(&unit_name(&p.machine), &vm_unit)],
    );
    for e in &exposures {
        assert!(
            [
                "User=/DynamicUser=",
                "RootDirectory=/RootImage=",
                "PrivateUsers=",
                "DeviceAllow=",
                "CapabilityBoundingSet=~CAP_SYS_ADMIN",
                "RestrictAddressFamilies=~AF_UNIX",
            ]
            .contains(&e.as_str()),
            "unexpected exposure {e}"
        );
    }
    assert!(score <= 1.2, "machined unit scores {score}");
}

#[test]
fn tap_vhost_unit_verifies_and_scores() {
    if !prerequisites("tap_vhost_unit_verifies_and_scores") {
        return;
    }
    check("taps", &taps_vhost());
}

#[test]
fn mdev_unit_verifies_and_scores() {
    if !prerequisites("mdev_unit_verifies_and_scores") {
        return;
    }
    check("mdev", &mdevs());
}

#[test]
fn block_device_unit_verifies_and_scores() {
    if !prerequisites("block_device_unit_verifies_and_scores") {
        return;
    }
    check("blk", &block_devices());
}

/// A network-isolated VM's unit (no TCP listener: the launcher unshares a
/// network namespace for QEMU) pays for it with `CAP_SYS_ADMIN` in the
/// launcher's bounding set and `RestrictNamespaces=net`; nothing else opens.
#[test]
fn isolated_unit_verifies_and_scores() {
    if !prerequisites("isolated_unit_verifies_and_scores") {
        return;
    }
    let mut p = minimal();
    p.network_isolation = true;
    let (score, exposures) = check("isolated", &p);
    eprintln!("isolated unit: exposure {score}: {exposures:?}");
    for e in &exposures {
        assert!(
            [
                "User=/DynamicUser=",
                "RootDirectory=/RootImage=",
                "PrivateNetwork=",
                "PrivateUsers=",
                "DeviceAllow=",
                "SystemCallFilter=~@privileged",
                "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
                "CapabilityBoundingSet=~CAP_(CHOWN|FSETID|SETFCAP)",
                "CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)",
                "CapabilityBoundingSet=~CAP_NET_ADMIN",
                "RestrictAddressFamilies=~AF_NETLINK",
                "RestrictAddressFamilies=~AF_UNIX",
                "CapabilityBoundingSet=~CAP_SYS_ADMIN",
                "RestrictNamespaces=~net",
            ]
            .contains(&e.as_str()),
            "unexpected exposure {e}"
        );
    }
    assert!(score <= 2.6, "isolated unit regressed to {score}");
}
