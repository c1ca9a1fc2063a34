//! Privileged tests of refusals and rollback: for each prepare step a forced
//! failure leaves the host exactly as it was, with one line naming the VM,
//! the step and the cause. Also mediated devices against a fake sysfs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::launch::{self as l, FakeSysfs, HostState, Sandbox};
use common::netns::NetNs;
use machina::plan::{Access, Grant, Mdev, MdevParent, Plan};
use machina::prepare::teardown::{self, Options};

const TYPE: &str = "GRID T4-2Q";
const ADDR: &str = "0000:c1:00.0";

fn mdev(fake: &FakeSysfs, parents: &[&str]) -> Mdev {
    Mdev {
        uuid: uuid::Uuid::new_v4(),
        sysfs_root: fake.sysfs_root(),
        parents: parents
            .iter()
            .map(|a| MdevParent {
                address: a.to_string(),
                type_name: TYPE.into(),
                placements: vec![],
                heterogeneous: false,
            })
            .collect(),
    }
}

/// Runs the launcher on `plan` (after `edit` of its file), expects a failure
/// whose line starts with `machina-launch: <vm>: <want>`, and checks the
/// host is unchanged, `files` included.
fn fails_cleanly(
    ns: &NetNs,
    sb: &Sandbox,
    plan: &Plan,
    files: &[&Path],
    edit: impl FnOnce(&Path),
    want: &str,
) -> String {
    let file = sb.write_plan(plan);
    edit(&file);
    let before = HostState::take(ns, sb, files);
    let (code, err) = l::launch_fails(ns, &file);
    let want = format!("machina-launch: {}: {want}", plan.machine);
    eprint!("refused as expected: {err}");
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with(&want), "got {err:?}, want {want:?}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert_eq!(
        HostState::take(ns, sb, files),
        before,
        "host changed by {want}"
    );
    assert!(machina::prepare::procs::processes_of(plan.uid).is_empty());
    err
}

#[test]
fn every_failed_step_leaves_the_host_unchanged() {
    let Some(qemu) = common::privileged("every_failed_step_leaves_the_host_unchanged") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    let fake = FakeSysfs::new(&sb);
    fake.add_parent(ADDR, &[("nvidia-222", TYPE)]);
    let disk = sb.disk("r.raw", 1 << 20);
    let files = [disk.as_path()];
    let base = |name: &str| {
        let mut p = l::plan(
            &sb,
            &qemu,
            name,
            vec![l::tap(&format!("{name}.0"), false)],
            vec![l::rw(&disk)],
        );
        p.needs.add_device(machina::plan::DeviceNode::Vfio);
        p.mdevs = vec![mdev(&fake, &[ADDR])];
        p
    };

    // Plan refusals.
    let p = base("r-owner");
    fails_cleanly(
        &ns,
        &sb,
        &p,
        &files,
        |f| std::os::unix::fs::chown(f, Some(1234), None).unwrap(),
        "plan: ",
    );
    let p = base("r-world");
    fails_cleanly(&ns, &sb, &p, &files, |f| chmod(f, 0o646), "plan: ");
    let p = base("r-group");
    fails_cleanly(&ns, &sb, &p, &files, |f| chmod(f, 0o664), "plan: ");
    let p = base("r-version");
    fails_cleanly(
        &ns,
        &sb,
        &p,
        &files,
        |f| {
            let t = std::fs::read_to_string(f).unwrap().replacen(
                &format!("\"version\": {}", machina::plan::PLAN_VERSION),
                "\"version\": 99",
                1,
            );
            std::fs::write(f, t).unwrap();
        },
        "plan: ",
    );

    // Network: missing bridge, not a bridge, missing vhost-net. The runtime
    // directory made just before must be gone again.
    let mut p = base("r-nobr");
    p.taps[0].bridge = machina::names::InterfaceName::new("kvmbr0").unwrap();
    fails_cleanly(
        &ns,
        &sb,
        &p,
        &files,
        |_| {},
        "tap r-nobr.0: bridge \"kvmbr0\" not found",
    );
    let mut p = base("r-lo");
    p.taps[0].bridge = machina::names::InterfaceName::new("lo").unwrap();
    fails_cleanly(
        &ns,
        &sb,
        &p,
        &files,
        |_| {},
        "tap r-lo.0: interface \"lo\" is not a bridge",
    );
    // A TAP is not a bridge either (and is left as it was).
    ns.ip(&["tuntap", "add", "dev", "notabr", "mode", "tap"]);
    let mut p = base("r-tapbr");
    p.taps[0].bridge = machina::names::InterfaceName::new("notabr").unwrap();
    fails_cleanly(
        &ns,
        &sb,
        &p,
        &files,
        |_| {},
        "tap r-tapbr.0: interface \"notabr\" is not a bridge",
    );
    if !Path::new("/dev/vhost-net").exists() {
        let mut p = base("r-vhost");
        p.taps[0] = l::tap("r-vhost.0", true);
        p.needs.add_device(machina::plan::DeviceNode::VhostNet);
        fails_cleanly(
            &ns,
            &sb,
            &p,
            &files,
            |_| {},
            "tap r-vhost.0: /dev/vhost-net is missing",
        );
    }
    // A second TAP failing after the first was made: the first goes too.
    let mut p = base("r-tap2");
    let mut t2 = l::tap("r-tap2.1", false);
    t2.fds = vec![5];
    t2.bridge = machina::names::InterfaceName::new("nobr").unwrap();
    p.taps.push(t2);
    fails_cleanly(
        &ns,
        &sb,
        &p,
        &files,
        |_| {},
        "tap r-tap2.1: bridge \"nobr\" not found",
    );

    // Mediated devices: parent absent, type absent, bad address (after the
    // TAP was made).
    let mut p = base("r-mdev");
    p.needs.add_device(machina::plan::DeviceNode::Vfio);
    p.mdevs = vec![mdev(&fake, &["0000:c2:00.0"])];
    fails_cleanly(&ns, &sb, &p, &files, |_| {}, "mdev ");
    let mut p = base("r-type");
    p.mdevs[0].parents[0].type_name = "GRID T4-8Q".into();
    fails_cleanly(&ns, &sb, &p, &files, |_| {}, "mdev ");
    let mut p = base("r-addr");
    p.needs.add_device(machina::plan::DeviceNode::Vfio);
    p.mdevs = vec![mdev(&fake, &["../../../../etc"])];
    fails_cleanly(&ns, &sb, &p, &files, |_| {}, "mdev ");

    // Grants: absent, a directory for read-write, a FIFO; each after the
    // TAP, the mdev (created, then removed) and the first disk's grant.
    for (name, bad) in [
        ("r-absent", sb.dir.join("disks/absent.raw")),
        ("r-dir", sb.dir.join("disks")),
        ("r-fifo", fifo(&sb.dir.join("disks/fifo"))),
    ] {
        let mut p = base(name);
        p.grants.push(l::rw(&bad));
        fails_cleanly(
            &ns,
            &sb,
            &p,
            &files,
            |_| {},
            &format!("grant: {}: ", bad.display()),
        );
    }

    // The last check before the drop (a QEMU the VM cannot execute) undoes
    // every earlier step: runtime directory, TAP, mdev, vfio grant, disk.
    let mut p = base("r-exec");
    let fake_qemu = sb.dir.join("qemu-0700");
    std::fs::write(&fake_qemu, "#!/bin/sh\n").unwrap();
    chmod(&fake_qemu, 0o700);
    p.qemu.binary = fake_qemu;
    fails_cleanly(&ns, &sb, &p, &files, |_| {}, "qemu: ");
    assert!(fake.devices().is_empty());
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn fifo(p: &Path) -> PathBuf {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo of a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    p.to_owned()
}

#[test]
fn planted_symlinks_and_hard_links_are_refused() {
    let Some(qemu) = common::privileged("planted_symlinks_and_hard_links_are_refused") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    // What an attacker wants: root's file made readable by the VM.
    let secret = sb.dir.join("secret");
    std::fs::write(&secret, "x").unwrap();
    chmod(&secret, 0o600);
    let secret_dir = sb.dir.join("secret-dir");
    std::fs::create_dir(&secret_dir).unwrap();
    let inner = secret_dir.join("disk.raw");
    std::fs::write(&inner, "y").unwrap();
    chmod(&inner, 0o600);

    let link = sb.dir.join("disks/link.raw");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let dirlink = sb.dir.join("disks/sub");
    std::os::unix::fs::symlink(&secret_dir, &dirlink).unwrap();
    let hard = sb.dir.join("disks/hard.raw");
    let secret2 = sb.dir.join("secret2");
    std::fs::write(&secret2, "z").unwrap();
    chmod(&secret2, 0o600);
    std::fs::hard_link(&secret2, &hard).unwrap();

    let files = [secret.as_path(), inner.as_path(), secret2.as_path()];
    // Each refusal names the link itself (the walk stops at it).
    for (name, path, shown, want) in [
        (
            "s-link",
            link.clone(),
            link.clone(),
            "a symbolic link is in the path",
        ),
        (
            "s-dirlink",
            dirlink.join("disk.raw"),
            dirlink.clone(),
            "a symbolic link is in the path",
        ),
        ("s-hard", hard.clone(), hard.clone(), "has 2 hard links"),
    ] {
        let p = l::plan(
            &sb,
            &qemu,
            name,
            vec![l::tap(&format!("{name}.0"), false)],
            vec![l::rw(&path)],
        );
        let before: Vec<_> = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap())
            .collect();
        let err = fails_cleanly(
            &ns,
            &sb,
            &p,
            &files,
            |_| {},
            &format!("grant: {}: ", shown.display()),
        );
        assert!(err.contains(want), "{err}");
        for (f, b) in files.iter().zip(before) {
            let a = std::fs::metadata(f).unwrap();
            assert_eq!(
                (a.uid(), a.gid(), a.mode()),
                (b.uid(), b.gid(), b.mode()),
                "{f:?}"
            );
        }
    }
}

#[test]
fn refuses_to_run_unprivileged() {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(common::bin("machina-launch"));
    cmd.args(["--plan", "/nonexistent.json"]);
    // As root, become nobody; otherwise the test already runs unprivileged.
    if common::is_root() {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "machina-launch: nonexistent: start: machina-launch must run as root\n"
    );
}

#[test]
fn mdev_created_granted_and_torn_down_with_real_qemu() {
    let Some(qemu) = common::privileged("mdev_created_granted_and_torn_down_with_real_qemu") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    let fake = FakeSysfs::new(&sb);
    // The first parent is absent, the second lacks the type: the third,
    // which has it beside another type, is used.
    fake.add_parent("0000:c2:00.0", &[("nvidia-1", "GRID T4-1Q")]);
    fake.add_parent(ADDR, &[("nvidia-1", "GRID T4-1Q"), ("nvidia-222", TYPE)]);
    // Shared read-only media that is not world-readable: gets an ACL entry.
    let iso = sb.disk("media.iso", 4096);
    chmod(&iso, 0o640);
    let iso_before = l::file_state(&iso);
    // World-readable shared media are left exactly alone.
    let fw = sb.disk("code.fd", 4096);
    chmod(&fw, 0o644);
    let fw_before = l::file_state(&fw);
    let mut p = l::plan(&sb, &qemu, "vm-g", vec![l::tap("vm-g.0", false)], vec![]);
    p.needs.add_device(machina::plan::DeviceNode::Vfio);
    p.mdevs = vec![mdev(&fake, &["0000:c9:00.0", "0000:c2:00.0", ADDR])];
    p.grants.push(Grant {
        path: iso.clone(),
        access: Access::ReadOnly,
        shared: true,
    });
    p.grants.push(Grant {
        path: fw.clone(),
        access: Access::ReadOnly,
        shared: true,
    });
    // Lowered: raising needs CAP_SYS_RESOURCE, which this machine withholds.
    p.needs.memlock = Some(4 << 20);
    let uuid = p.mdevs[0].uuid.to_string();
    let file = sb.write_plan(&p);
    let mut q = l::launch(&ns, &sb, &file);
    let _qmp = l::qmp_connect(&mut q, &l::qmp_socket(&p));

    assert_eq!(fake.devices(), vec![uuid.clone()]);
    let in_type = fake
        .dir
        .join("sys/bus/pci/devices")
        .join(ADDR)
        .join("mdev_supported_types/nvidia-222/devices")
        .join(&uuid);
    assert!(in_type.exists(), "created through the matching type");
    let node = fake.vfio_node(&uuid);
    let m = std::fs::symlink_metadata(&node).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, p.gid, 0o660));
    let acl = l::file_state(&iso).unwrap().3.unwrap();
    assert!(acl.contains(&format!("group:{}:r--", p.gid)), "{acl}");
    assert_eq!(
        std::fs::metadata(&iso).unwrap().gid(),
        0,
        "shared media keep their group"
    );
    assert_eq!(
        l::file_state(&fw),
        fw_before,
        "world-readable media untouched"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", q.pid())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max locked memory") && l.contains("4194304")),
        "{limits}"
    );
    // The VM's uid can read the shared media through its ACL entry.
    assert!(l::as_uid(p.uid, {
        let iso = iso.clone();
        move || std::fs::File::open(&iso).is_ok()
    }));

    q.kill9();
    let r = l::with_unit_caps(&ns, {
        let p = p.clone();
        move || teardown::teardown(&p, &Options::default())
    });
    assert!(r.ok(), "{r}");
    assert!(fake.devices().is_empty(), "mdev removed");
    assert!(!node.exists());
    assert_eq!(l::file_state(&iso), iso_before, "ACL entry removed");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn existing_mdev_is_reused_and_kept_on_rollback() {
    let Some(qemu) = common::privileged("existing_mdev_is_reused_and_kept_on_rollback") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    let fake = FakeSysfs::new(&sb);
    fake.add_parent(ADDR, &[("nvidia-222", TYPE)]);
    let mut p = l::plan(&sb, &qemu, "vm-e", vec![l::tap("vm-e.0", false)], vec![]);
    p.needs.add_device(machina::plan::DeviceNode::Vfio);
    p.mdevs = vec![mdev(&fake, &[ADDR])];
    let uuid = p.mdevs[0].uuid.to_string();
    // Made beforehand, as by an admin.
    let create = fake
        .dir
        .join("sys/bus/pci/devices")
        .join(ADDR)
        .join("mdev_supported_types/nvidia-222/create");
    std::fs::write(&create, &uuid).unwrap();
    for _ in 0..200 {
        if fake.devices().contains(&uuid) && fake.vfio_node(&uuid).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    p.grants.push(l::rw(&sb.dir.join("disks/absent.raw")));
    fails_cleanly(&ns, &sb, &p, &[], |_| {}, "grant: ");
    assert_eq!(
        fake.devices(),
        vec![uuid],
        "a device the launch did not create stays"
    );
}

#[test]
fn kvm_without_group_access_is_a_clear_error() {
    if !common::is_root() {
        return common::skip(
            "kvm_without_group_access_is_a_clear_error",
            "not running as root (mknod)",
        );
    }
    // /dev/kvm itself is shared with other tests; a node of the same kind in
    // the sandbox stands in for it.
    let sb = Sandbox::new();
    let node = sb.dir.join("kvm");
    let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod of a NUL-terminated path (never opened).
    assert_eq!(
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 232)) },
        0
    );
    let err = machina::prepare::kvm::group_of(&node)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not accessible through a group") && err.contains("chmod 0660"),
        "{err}"
    );
    std::os::unix::fs::chown(&node, None, Some(4242)).unwrap();
    chmod(&node, 0o660);
    assert_eq!(machina::prepare::kvm::group_of(&node).unwrap(), 4242);
    let err = machina::prepare::kvm::group_of(&sb.dir.join("absent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is missing"), "{err}");
}

#[test]
fn teardown_removes_a_leftover_persistent_tap() {
    if common::privileged("teardown_removes_a_leftover_persistent_tap").is_none() {
        return;
    }
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    // As the Go machina's QEMU left them (`ifname=`, persistent).
    ns.ip(&["tuntap", "add", "dev", "vm-p.0", "mode", "tap"]);
    let p = l::plan(
        &sb,
        Path::new("/usr/bin/qemu-system-x86_64"),
        "vm-p",
        vec![l::tap("vm-p.0", false)],
        vec![],
    );
    // A launch refuses to reuse it...
    let (_, err) = l::launch_fails(&ns, &sb.write_plan(&p));
    assert!(err.contains("interface \"vm-p.0\" already exists"), "{err}");
    // ...and teardown removes it.
    let r = l::with_unit_caps(&ns, {
        let p = p.clone();
        move || teardown::teardown(&p, &Options::default())
    });
    assert!(r.ok(), "{r}");
    assert!(
        r.done
            .iter()
            .any(|d| d.contains("removed interface vm-p.0")),
        "{r:?}"
    );
    assert!(!ns.links().contains(&"vm-p.0".to_string()));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}
