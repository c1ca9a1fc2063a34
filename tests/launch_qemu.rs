//! Privileged tests that launch real QEMU through `machina-launch`, each in
//! a network namespace with a bridge it creates.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::launch::{self as l, Sandbox};
use common::netns::NetNs;
use machina::prepare::teardown::{self, Options};

fn kvm_gid() -> u32 {
    std::fs::metadata("/dev/kvm").unwrap().gid()
}

/// Non-anonymous fd targets of a process, by fd number.
fn fd_targets(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let n: i32 = e.file_name().to_str().unwrap().parse().unwrap();
        if let Ok(t) = std::fs::read_link(e.path()) {
            out.push((n, t.to_string_lossy().into_owned()));
        }
    }
    out.sort();
    out
}

#[test]
fn launched_vm_runs_unprivileged_with_its_tap() {
    let Some(qemu) = common::privileged("launched_vm_runs_unprivileged_with_its_tap") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    let disk = sb.disk("a.raw", 1 << 20);
    let plan = l::plan(
        &sb,
        &qemu,
        "vm-a",
        vec![l::tap("vm-a.0", false)],
        vec![l::rw(&disk)],
    );
    let file = sb.write_plan(&plan);
    let mut q = l::launch(&ns, &sb, &file);
    let mut qmp = l::qmp_connect(&mut q, &l::qmp_socket(&plan));
    let kvm = l::qmp(&mut qmp, r#"{"execute":"query-kvm"}"#);
    assert!(kvm.contains(r#""enabled": true"#), "query-kvm: {kvm}");

    // Identity, capabilities, no_new_privs, seccomp.
    let st = l::proc_status(q.pid());
    let id = plan.uid.to_string();
    assert_eq!(
        st["Uid"].split_whitespace().collect::<Vec<_>>(),
        [id.as_str(); 4]
    );
    assert_eq!(
        st["Gid"].split_whitespace().collect::<Vec<_>>(),
        [id.as_str(); 4]
    );
    let groups: BTreeSet<u32> = st["Groups"]
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert_eq!(groups, BTreeSet::from([plan.gid, kvm_gid()]));
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "{cap}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Seccomp"], "2");
    assert_eq!(st["Umask"], "0077");
    let environ = std::fs::read(format!("/proc/{}/environ", q.pid())).unwrap();
    assert!(
        environ.is_empty(),
        "environment: {:?}",
        String::from_utf8_lossy(&environ)
    );

    // fd 3 is the TAP; nothing of the launcher's leaked into QEMU.
    let fds = fd_targets(q.pid());
    let tun: Vec<i32> = fds
        .iter()
        .filter(|(_, t)| t == "/dev/net/tun")
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(tun, [3], "fds: {fds:?}");
    let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", q.pid())).unwrap();
    assert!(info.contains("iff:\tvm-a.0"), "fdinfo: {info}");
    let stderr = q.stderr.to_string_lossy().into_owned();
    let disk_s = disk.to_string_lossy().into_owned();
    // The VM's lock, held by QEMU for its lifetime, right after the TAP.
    let lock_s = l::lock_path(&plan).to_string_lossy().into_owned();
    assert!(fds.contains(&(4, lock_s.clone())), "lock fd: {fds:?}");
    let info4 = std::fs::read_to_string(format!("/proc/{}/fdinfo/4", q.pid())).unwrap();
    let flags = info4
        .lines()
        .find_map(|l| l.strip_prefix("flags:\t"))
        .unwrap();
    let flags = i32::from_str_radix(flags, 8).unwrap();
    assert_eq!(
        flags & libc::O_ACCMODE,
        libc::O_RDONLY,
        "lock fd is read-only"
    );
    assert!(info4.contains("FLOCK"), "QEMU holds the flock: {info4}");
    for (n, t) in &fds {
        let ok = t == "/dev/null"
            || *t == stderr
            || t == "/dev/net/tun"
            || t == "/dev/kvm"
            || *t == disk_s
            || t.starts_with("anon_inode:")
            || t.starts_with("socket:")
            || t.starts_with("pipe:")
            || (*n == 4 && *t == lock_s);
        assert!(ok, "unexpected fd {n} -> {t} in QEMU (all: {fds:?})");
    }
    assert_eq!(ns.master_of("vm-a.0").as_deref(), Some("br0"));

    // Runtime directory, socket and disk ownership.
    for d in [plan.runtime_dir(), plan.runtime_dir().join("qmp")] {
        let m = std::fs::metadata(&d).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (plan.uid, plan.gid, 0o750),
            "{d:?}"
        );
    }
    let sock = std::fs::symlink_metadata(l::qmp_socket(&plan)).unwrap();
    assert_eq!(sock.uid(), plan.uid);
    assert_eq!(sock.mode() & 0o077, 0, "umask 0077 applies to QEMU's files");
    let m = std::fs::metadata(&disk).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, plan.gid, 0o660));

    drop(qmp);
    q.kill9();
    let report = l::with_unit_caps(&ns, {
        let plan = plan.clone();
        move || teardown::teardown(&plan, &Options::default())
    });
    assert!(report.ok(), "teardown: {report}");
}

#[test]
fn second_launch_refused_and_teardown_after_kill9_leaves_nothing() {
    let Some(qemu) =
        common::privileged("second_launch_refused_and_teardown_after_kill9_leaves_nothing")
    else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    let disk = sb.disk("b.raw", 1 << 20);
    let plan = l::plan(
        &sb,
        &qemu,
        "vm-b",
        vec![l::tap("vm-b.0", false)],
        vec![l::rw(&disk)],
    );
    let file = sb.write_plan(&plan);
    let before_links = ns.links();
    let mut q = l::launch(&ns, &sb, &file);
    let _qmp = l::qmp_connect(&mut q, &l::qmp_socket(&plan));

    let (code, err) = l::launch_fails(&ns, &file);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "machina-launch: {}: lock: the VM is already running",
            plan.machine
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        q.child.try_wait().unwrap().is_none(),
        "the first QEMU must survive"
    );
    assert!(ns.links().contains(&"vm-b.0".to_string()));

    // The kernel drops QEMU's lock with it: a relaunch right after
    // `kill -9` takes over the leftover runtime directory and works.
    q.kill9();
    let mut q = l::launch(&ns, &sb, &file);
    let _qmp = l::qmp_connect(&mut q, &l::qmp_socket(&plan));
    q.kill9();

    // A process of the VM's uid that does not hold the VM's lock is not
    // provably the VM's: teardown leaves it alone.
    let stray = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("/bin/sleep")
            .arg("600")
            .uid(plan.uid)
            .gid(plan.gid)
            .spawn()
            .unwrap()
    };
    let mut stray = Reap(stray);
    let report = l::with_unit_caps(&ns, {
        let plan = plan.clone();
        move || {
            teardown::teardown(
                &plan,
                &Options {
                    grace: Duration::from_millis(500),
                    force: false,
                },
            )
        }
    });
    assert!(report.ok(), "teardown: {report}");
    assert!(
        stray.0.try_wait().unwrap().is_none(),
        "teardown must not kill what it cannot prove is the VM's"
    );
    let _ = stray.0.kill();
    let _ = stray.0.wait();
    assert!(machina::prepare::procs::processes_of(plan.uid).is_empty());
    assert_eq!(ns.links(), before_links, "no interface left");
    assert!(
        sb.leftovers().is_empty(),
        "runtime root: {:?}",
        sb.leftovers()
    );
    // Idempotent.
    let again = l::with_unit_caps(&ns, {
        let plan = plan.clone();
        move || teardown::teardown(&plan, &Options::default())
    });
    assert!(
        again.ok() && again.done.is_empty(),
        "second teardown: {again:?}"
    );
    assert!(sb.leftovers().is_empty());
}

/// Kills and reaps a child on drop.
struct Reap(std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_vms_cannot_touch_each_other() {
    let Some(qemu) = common::privileged("two_vms_cannot_touch_each_other") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    let da = sb.disk("x.raw", 1 << 20);
    let db = sb.disk("y.raw", 1 << 20);
    let pa = l::plan(
        &sb,
        &qemu,
        "vm-x",
        vec![l::tap("vm-x.0", false)],
        vec![l::rw(&da)],
    );
    let pb = l::plan(
        &sb,
        &qemu,
        "vm-y",
        vec![l::tap("vm-y.0", false)],
        vec![l::rw(&db)],
    );
    let (fa, fb) = (sb.write_plan(&pa), sb.write_plan(&pb));
    let mut qa = l::launch(&ns, &sb, &fa);
    let mut qb = l::launch(&ns, &sb, &fb);
    let _ca = l::qmp_connect(&mut qa, &l::qmp_socket(&pa));
    let _cb = l::qmp_connect(&mut qb, &l::qmp_socket(&pb));

    for (me, other_plan, other_disk, other_pid) in
        [(pa.uid, &pb, &db, qb.pid()), (pb.uid, &pa, &da, qa.pid())]
    {
        let sock = l::qmp_socket(other_plan);
        let disk = other_disk.clone();
        // Control: as itself, the VM's uid can do these things to its own.
        assert!(l::as_uid(other_plan.uid, {
            let disk = disk.clone();
            move || std::fs::File::open(&disk).is_ok()
        }));
        assert!(
            !l::as_uid(me, move || std::fs::File::open(&disk).is_ok()),
            "read other's disk"
        );
        assert!(
            !l::as_uid(me, move || std::os::unix::net::UnixStream::connect(&sock)
                .is_ok()),
            "connect to other's QMP"
        );
        // SAFETY: kill with signal 0 only probes permission.
        assert!(
            !l::as_uid(me, move || unsafe { libc::kill(other_pid, 0) } == 0),
            "signal other's QEMU"
        );
        assert!(Path::new(&format!("/proc/{other_pid}")).exists());
    }
    qa.kill9();
    qb.kill9();
    for p in [pa, pb] {
        let r = l::with_unit_caps(&ns, move || teardown::teardown(&p, &Options::default()));
        assert!(r.ok(), "{r}");
    }
}

#[test]
fn multiqueue_tap_and_read_only_disk() {
    let Some(qemu) = common::privileged("multiqueue_tap_and_read_only_disk") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    let disk = sb.disk("rw.raw", 1 << 20);
    let ro = sb.disk("ro.raw", 1 << 20);
    let mut t = l::tap("vm-q.0", false);
    t.fds = vec![3, 4];
    let mut g = l::rw(&ro);
    g.access = machina::plan::Access::ReadOnly;
    let plan = l::plan(&sb, &qemu, "vm-q", vec![t], vec![l::rw(&disk), g]);
    let file = sb.write_plan(&plan);
    let mut q = l::launch(&ns, &sb, &file);
    let _qmp = l::qmp_connect(&mut q, &l::qmp_socket(&plan));
    for fd in [3, 4] {
        let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", q.pid())).unwrap();
        assert!(info.contains("iff:\tvm-q.0"), "fd {fd}: {info}");
    }
    // The lock goes after the last plan fd.
    let lock = std::fs::read_link(format!("/proc/{}/fd/5", q.pid())).unwrap();
    assert_eq!(lock, l::lock_path(&plan));
    assert_eq!(ns.master_of("vm-q.0").as_deref(), Some("br0"));
    let m = std::fs::metadata(&ro).unwrap();
    assert_eq!(
        (m.gid(), m.mode() & 0o7777),
        (plan.gid, 0o640),
        "read-only grant is g+r"
    );
    q.kill9();
    let r = l::with_unit_caps(&ns, move || teardown::teardown(&plan, &Options::default()));
    assert!(r.ok(), "{r}");
}
