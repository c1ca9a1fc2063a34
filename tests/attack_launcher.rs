//! Attacks on `machina-launch` and `machina teardown` (issue 7): hostile
//! plans, a QEMU that is not root's, a guest uid attacking another VM, and
//! the terminal. Each test performs the attack against the real launcher
//! (real QEMU in a network namespace) and shows it refused with one line,
//! changing nothing.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::launch::{self as l, HostState, Sandbox};
use common::netns::NetNs;
use machina::plan::Plan;
use machina::prepare::teardown::{self, Options};

/// Launches `plan` (its file edited by `edit`), expecting a one-line refusal
/// containing `want` and no change to the host (`files` included).
fn refused(
    ns: &NetNs,
    sb: &Sandbox,
    plan: &Plan,
    files: &[&Path],
    edit: impl FnOnce(&Path),
    want: &str,
) {
    let file = sb.write_plan(plan);
    edit(&file);
    let before = HostState::take(ns, sb, files);
    let (code, err) = l::launch_fails(ns, &file);
    eprint!("refused as expected: {err}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(want), "got {err:?}, want {want:?}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert_eq!(HostState::take(ns, sb, files), before, "host changed");
    assert!(machina::prepare::procs::processes_of(plan.uid).is_empty());
}

fn rewrite_json(file: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(file, v.to_string()).unwrap();
}

/// Item 5: a plan naming its own runtime directory (another VM's, a
/// root-only one) is refused; so is an old-format plan, with a hint.
#[test]
fn attack_plan_runtime_dir_is_refused() {
    let Some(qemu) = common::privileged("attack_plan_runtime_dir_is_refused") else {
        return;
    };
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let victim = sb.dir.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
    let plan = l::plan(&sb, &qemu, "rt", vec![], vec![]);
    let v = victim.clone();
    refused(
        &ns,
        &sb,
        &plan,
        &[&victim],
        move |f| {
            rewrite_json(f, |j| {
                j["runtime-dir"] = serde_json::json!(v);
            })
        },
        "unknown field `runtime-dir`",
    );
    refused(
        &ns,
        &sb,
        &plan,
        &[&victim],
        |f| rewrite_json(f, |j| j["version"] = serde_json::json!(1)),
        "plan version 1 is not supported",
    );
    assert!(victim.exists());
}

/// Item 6: QEMU never runs as a reserved id, and never as an id another
/// VM's QEMU already runs as (two real VMs).
#[test]
fn attack_plan_foreign_uid_is_refused() {
    let Some(qemu) = common::privileged("attack_plan_foreign_uid_is_refused") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    for (id, what) in [
        (1, "a system id"),
        (65534, "nobody"),
        (65535, "16-bit"),
        (600_000, "container"),
        (1 << 31, "2^31"),
    ] {
        let mut p = l::plan(&sb, &qemu, "uid", vec![], vec![]);
        p.uid = id;
        p.gid = id;
        refused(&ns, &sb, &p, &[], |_| {}, what);
    }
    // A named account (any account in /etc/passwd with a usable id).
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    if let Some(id) = passwd
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
        .find(|&id| machina::identity::check_vm_id_range(id).is_ok())
    {
        let mut p = l::plan(&sb, &qemu, "named", vec![], vec![]);
        p.uid = id;
        p.gid = id;
        refused(&ns, &sb, &p, &[], |_| {}, "belongs to user");
    }

    // VM A runs; VM B's plan claims A's uid.
    let a = l::plan(&sb, &qemu, "a", vec![l::tap("a.0", false)], vec![]);
    let mut qa = l::launch(&ns, &sb, &sb.write_plan(&a));
    let _qmp = l::qmp_connect(&mut qa, &l::qmp_socket(&a));
    let mut b = l::plan(&sb, &qemu, "b", vec![], vec![]);
    b.uid = a.uid;
    b.gid = a.gid;
    let file = sb.write_plan(&b);
    let (code, err) = l::launch_fails(&ns, &file);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is the uid of running VM"), "{err}");
    // Teardown of B (same uid, not running) must not touch A's QEMU.
    let r = l::with_unit_caps(&ns, move || teardown::teardown(&b, &Options::default()));
    assert!(r.ok(), "{r}");
    assert!(
        qa.child.try_wait().unwrap().is_none(),
        "VM A's QEMU was killed"
    );
    qa.kill9();
    let r = l::with_unit_caps(&ns, move || teardown::teardown(&a, &Options::default()));
    assert!(r.ok(), "{r}");
}

/// Item 7: QEMU must be root's alone, and so must every directory above it.
#[test]
fn attack_plan_qemu_binary_not_roots_is_refused() {
    let Some(qemu) = common::privileged("attack_plan_qemu_binary_not_roots_is_refused") else {
        return;
    };
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let plan0 = l::plan(&sb, &qemu, "bin", vec![], vec![]);
    let bin = sb.dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = |name: &str, mode: u32, uid: u32| -> PathBuf {
        let p = bin.join(name);
        std::fs::copy(&qemu, &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), None).unwrap();
        p
    };
    let cases = [
        (
            copy("world-writable", 0o757, 0),
            "QEMU must be owned by root",
        ),
        (
            copy("vm-owned", 0o755, plan0.uid),
            "QEMU must be owned by root",
        ),
    ];
    for (path, want) in cases {
        let mut p = plan0.clone();
        p.qemu.binary = path;
        refused(&ns, &sb, &p, &[], |_| {}, want);
    }
    // A root-owned QEMU in a directory the VM can write.
    let vmdir = sb.dir.join("vmdir");
    std::fs::create_dir(&vmdir).unwrap();
    std::os::unix::fs::chown(&vmdir, Some(plan0.uid), Some(plan0.gid)).unwrap();
    std::fs::copy(&qemu, vmdir.join("qemu")).unwrap();
    let mut p = plan0.clone();
    p.qemu.binary = vmdir.join("qemu");
    refused(&ns, &sb, &p, &[], |_| {}, "is not root's alone");
    // Through a symbolic link.
    std::os::unix::fs::symlink(&qemu, bin.join("link")).unwrap();
    let mut p = plan0.clone();
    p.qemu.binary = bin.join("link");
    refused(&ns, &sb, &p, &[], |_| {}, "symbolic link");
}

/// Item 8: the launcher enforces machina's seccomp sandbox whatever the
/// plan's argv says.
#[test]
fn attack_plan_without_sandbox_is_refused() {
    let Some(qemu) = common::privileged("attack_plan_without_sandbox_is_refused") else {
        return;
    };
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let plan0 = l::plan(&sb, &qemu, "sbx", vec![], vec![]);
    let strip = |p: &mut Plan| {
        let i = p.qemu.args.iter().position(|a| a == "-sandbox").unwrap();
        p.qemu.args.drain(i..i + 2);
    };
    let mut none = plan0.clone();
    strip(&mut none);
    refused(&ns, &sb, &none, &[], |_| {}, "no -sandbox");
    for (extra, want) in [
        (&["-sandbox", "off"][..], "-sandbox off is refused"),
        (&["-runas", "nobody"][..], "-runas is refused"),
        (&["-chroot", "/"][..], "-chroot is refused"),
        (&["-daemonize"][..], "-daemonize is refused"),
        (&["-name", "x", "hda.img"][..], "is not an option"),
    ] {
        let mut p = plan0.clone();
        p.qemu.args.extend(extra.iter().map(|s| s.to_string()));
        refused(&ns, &sb, &p, &[], |_| {}, want);
    }
}

/// Item 10: a plan that is a FIFO is refused at once, not read.
#[test]
fn attack_plan_fifo_is_refused_without_hanging() {
    if common::privileged("attack_plan_fifo_is_refused_without_hanging").is_none() {
        return;
    }
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let fifo = sb.dir.join("plans/fifo.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo of a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let t = Instant::now();
    let (code, err) = l::launch_fails(&ns, &fifo);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is a fifo, not a regular file"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

/// Items 11 and 12: the lock is out of every VM name's reach, and teardown
/// never removes what a live QEMU uses; `--force` ends that QEMU first.
#[test]
fn attack_teardown_of_running_vm_is_refused() {
    let Some(qemu) = common::privileged("attack_teardown_of_running_vm_is_refused") else {
        return;
    };
    let ns = NetNs::new(true);
    let sb = Sandbox::new();
    let a = l::plan(&sb, &qemu, "lk", vec![l::tap("lk.0", false)], vec![]);
    let file = sb.write_plan(&a);
    let mut q = l::launch(&ns, &sb, &file);
    let _qmp = l::qmp_connect(&mut q, &l::qmp_socket(&a));
    let lock = l::lock_path(&a);
    assert!(lock.starts_with(machina::plan::LOCK_DIR));

    // A VM named like the old lock file: its teardown leaves A's lock.
    let mut evil = a.clone();
    evil.machine = machina::names::MachineName::new(format!("{}.lock", a.machine)).unwrap();
    evil.taps.clear();
    let r = l::with_unit_caps(&ns, move || teardown::teardown(&evil, &Options::default()));
    assert!(r.ok(), "{r}");
    assert!(lock.is_dir(), "A's lock is gone");
    let (code, err) = l::launch_fails(&ns, &file);
    assert_eq!(code, 1);
    assert!(err.contains("lock: the VM is already running"), "{err}");

    // Teardown of A while it runs: refused, nothing removed.
    let r = l::with_unit_caps(&ns, {
        let a = a.clone();
        move || teardown::teardown(&a, &Options::default())
    });
    assert!(!r.ok());
    assert!(r.to_string().contains("is running"), "{r}");
    assert!(q.child.try_wait().unwrap().is_none(), "QEMU was killed");
    assert!(a.runtime_dir().join("qmp").is_dir(), "runtime dir removed");
    assert!(ns.links().contains(&"lk.0".to_string()));

    // --force: QEMU ends (SIGTERM), then everything goes.
    let r = l::with_unit_caps(&ns, {
        let a = a.clone();
        move || {
            teardown::teardown(
                &a,
                &Options {
                    force: true,
                    grace: Duration::from_secs(10),
                },
            )
        }
    });
    assert!(r.ok(), "{r}");
    // QEMU ended (on SIGTERM it quits with status 0).
    q.child.wait().unwrap();
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(!ns.links().contains(&"lk.0".to_string()));
}

/// Items 2 and 13: QEMU gets no terminal (own session, no controlling tty,
/// stdio not the terminal) and runs in `/`; `/run/machina` is 0755.
#[test]
fn attack_terminal_and_cwd_are_not_handed_to_qemu() {
    let Some(qemu) = common::privileged("attack_terminal_and_cwd_are_not_handed_to_qemu") else {
        return;
    };
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let plan = l::plan(&sb, &qemu, "tty", vec![], vec![]);
    let file = sb.write_plan(&plan);
    // A pseudo-terminal as the launcher's stdio, as an admin's shell has.
    // SAFETY: plain libc calls on fds we own.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m)).to_owned();
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(s >= 0);
        (m, s)
    };
    use std::os::fd::FromRawFd;
    let tty = |fd: i32| unsafe { std::fs::File::from_raw_fd(libc::dup(fd)) };
    let mut cmd = ns.command("setpriv");
    cmd.args(["--bounding-set", l::UNIT_CAPS, "--"])
        .arg(common::bin("machina-launch"))
        .arg("--plan")
        .arg(&file)
        .current_dir(&sb.dir)
        .stdin(Stdio::from(tty(slave)))
        .stdout(Stdio::from(tty(slave)))
        .stderr(Stdio::from(tty(slave)));
    let child = cmd.spawn().unwrap();
    let mut q = l::Qemu {
        child,
        stderr: PathBuf::from("/dev/null"),
    };
    let _qmp = l::qmp_connect(&mut q, &l::qmp_socket(&plan));
    let pid = q.pid();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // Fields after the command: state ppid pgrp session tty_nr.
    assert_eq!(f[3], pid.to_string(), "QEMU leads its own session");
    assert_eq!(f[4], "0", "QEMU has no controlling terminal");
    for fd in 0..3 {
        let t = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(t, Path::new("/dev/null"), "fd {fd}");
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    let m = std::fs::metadata(machina::plan::RUNTIME_ROOT).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    // The one line telling where the output went reached the terminal.
    let mut buf = [0u8; 512];
    // SAFETY: non-blocking read of the master we own.
    let n = unsafe {
        libc::fcntl(master, libc::F_SETFL, libc::O_NONBLOCK);
        libc::read(master, buf.as_mut_ptr().cast(), buf.len())
    };
    let said = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
    assert!(said.contains("QEMU gets no terminal"), "{said:?}");
    q.kill9();
    unsafe {
        libc::close(master);
        libc::close(slave);
    }
    let r = l::with_unit_caps(&ns, move || teardown::teardown(&plan, &Options::default()));
    assert!(r.ok(), "{r}");
}

/// Item 14: an exec that fails after the drop says how to clean up.
#[test]
fn attack_exec_failure_after_drop_gives_the_teardown_hint() {
    let Some(qemu) = common::privileged("attack_exec_failure_after_drop_gives_the_teardown_hint")
    else {
        return;
    };
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let mut plan = l::plan(&sb, &qemu, "ex", vec![], vec![]);
    // A root-owned script passes every check, but execveat of a
    // close-on-exec fd cannot run a script: the exec fails after the drop.
    let script = sb.dir.join("qemu.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    plan.qemu.binary = script;
    let file = sb.write_plan(&plan);
    let (code, err) = l::launch_fails(&ns, &file);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!("run `machina teardown {}`", plan.machine)),
        "{err}"
    );
    let r = l::with_unit_caps(&ns, move || teardown::teardown(&plan, &Options::default()));
    assert!(r.ok(), "{r}");
}

/// Items 3 and 4, and the reachability preflight: a private volume ends
/// with no access for others; a volume in a directory someone else can
/// change, or one the VM cannot reach, is refused with one line.
#[test]
fn attack_volumes_of_others() {
    let Some(qemu) = common::privileged("attack_volumes_of_others") else {
        return;
    };
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let disk = sb.disk("open.raw", 1 << 20);
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let plan = l::plan(&sb, &qemu, "vol", vec![], vec![l::rw(&disk)]);
    let mut q = l::launch(&ns, &sb, &sb.write_plan(&plan));
    let _qmp = l::qmp_connect(&mut q, &l::qmp_socket(&plan));
    let m = std::fs::metadata(&disk).unwrap();
    assert_eq!((m.gid(), m.mode() & 0o7777), (plan.gid, 0o660));
    let other = l::test_id();
    let d = disk.clone();
    assert!(
        !l::as_uid(other, move || std::fs::File::open(&d).is_ok()),
        "another uid can read the VM's disk"
    );
    q.kill9();
    let r = l::with_unit_caps(&ns, {
        let plan = plan.clone();
        move || teardown::teardown(&plan, &Options::default())
    });
    assert!(r.ok(), "{r}");

    // A directory another user can write: the hard-link race's ground.
    let shared = sb.dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let img = shared.join("d.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let p = l::plan(&sb, &qemu, "race", vec![], vec![l::rw(&img)]);
    refused(
        &ns,
        &sb,
        &p,
        &[&img],
        |_| {},
        "can be changed by someone other than root and the VM",
    );
    // Owned by another user (who could swap entries in it).
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&shared, Some(other), None).unwrap();
    refused(
        &ns,
        &sb,
        &p,
        &[&img],
        |_| {},
        "can be changed by someone other than root and the VM",
    );

    // A volume the VM cannot reach: named, before QEMU runs.
    let closed = sb.dir.join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let img = closed.join("d.raw");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let p = l::plan(&sb, &qemu, "reach", vec![], vec![l::rw(&img)]);
    refused(
        &ns,
        &sb,
        &p,
        &[&img],
        |_| {},
        &format!("directory {} is not searchable", closed.display()),
    );
}

/// Item 9: links planted in a (fake) sysfs tree cannot make root write or
/// read outside it.
#[test]
fn attack_sysfs_links_lead_nowhere() {
    let Some(qemu) = common::privileged("attack_sysfs_links_lead_nowhere") else {
        return;
    };
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let fake = l::FakeSysfs::new(&sb);
    let victim = sb.dir.join("victim");
    std::fs::write(&victim, "secret\n").unwrap();
    let addr = "0000:c1:00.0";
    let ty = fake
        .sysfs_root()
        .join("bus/pci/devices")
        .join(addr)
        .join("mdev_supported_types/nvidia-1");
    std::fs::create_dir_all(ty.join("devices")).unwrap();
    std::fs::write(ty.join("name"), "GRID T4-2Q\n").unwrap();
    let mut plan = l::plan(&sb, &qemu, "sysfs", vec![], vec![]);
    plan.needs.add_device(machina::plan::DeviceNode::Vfio);
    plan.mdevs = vec![machina::plan::Mdev {
        uuid: uuid::Uuid::new_v4(),
        sysfs_root: fake.sysfs_root(),
        parents: vec![machina::plan::MdevParent {
            address: addr.into(),
            type_name: "GRID T4-2Q".into(),
            placements: vec![],
            heterogeneous: false,
        }],
    }];
    // `create` is an absolute link, then a link climbing out with `..`.
    for target in [
        victim.to_string_lossy().into_owned(),
        "../../../../../../../../victim".to_owned(),
    ] {
        let _ = std::fs::remove_file(ty.join("create"));
        std::os::unix::fs::symlink(&target, ty.join("create")).unwrap();
        refused(&ns, &sb, &plan, &[&victim], |_| {}, "leads outside");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
    }
    // An attribute pointing at /dev/zero is never read.
    std::fs::remove_file(ty.join("name")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", ty.join("name")).unwrap();
    let t = Instant::now();
    refused(&ns, &sb, &plan, &[&victim], |_| {}, "no type named");
    assert!(t.elapsed() < Duration::from_secs(20));
}

/// Issue 8 item 1, through the CLI: `machina teardown` leaves a running VM
/// alone (exit 1, one line); `--force` ends it and cleans up.
#[test]
fn attack_cli_teardown_of_running_vm() {
    let Some(qemu) = common::privileged("attack_cli_teardown_of_running_vm") else {
        return;
    };
    let ns = NetNs::new(false);
    let sb = Sandbox::new();
    let plan = l::plan(&sb, &qemu, "cli", vec![], vec![]);
    let file = sb.write_plan(&plan);
    let mut q = l::launch(&ns, &sb, &file);
    let _qmp = l::qmp_connect(&mut q, &l::qmp_socket(&plan));
    let teardown = |force: bool| {
        let mut c = std::process::Command::new(common::bin("machina"));
        c.arg("--plan-dir")
            .arg(sb.dir.join("plans"))
            .arg("teardown");
        if force {
            c.arg("--force");
        }
        c.arg(plan.machine.as_str()).output().unwrap()
    };
    let out = teardown(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is running"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(q.child.try_wait().unwrap().is_none(), "QEMU was killed");
    assert!(plan.runtime_dir().join("qmp").is_dir());
    let out = teardown(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    q.child.wait().unwrap();
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// Item 13: on a fresh host (no `/run/machina` yet) under `UMask=0077`,
/// the launcher still creates `/run/machina` 0755, so QEMU (as the VM's
/// uid) reaches its own socket directory. Run in a private mount
/// namespace with a fresh `/run`, so the host's is not touched.
#[test]
fn attack_fresh_run_machina_under_umask_0077() {
    let Some(qemu) = common::privileged("attack_fresh_run_machina_under_umask_0077") else {
        return;
    };
    let sb = Sandbox::new();
    let plan = l::plan(&sb, &qemu, "umask", vec![], vec![]);
    let file = sb.write_plan(&plan);
    let stderr = sb.dir.join("umask.err");
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs -o mode=0755 tmpfs /run && umask 077 && exec setpriv --bounding-set {} -- {} --plan {}",
        l::UNIT_CAPS,
        common::bin("machina-launch").display(),
        file.display()
    );
    let child = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut q = l::Qemu { child, stderr };
    // `unshare` execs sh, which execs setpriv, then the launcher: one pid.
    let root = PathBuf::from(format!("/proc/{}/root", q.pid()));
    let sock = root.join(l::qmp_socket(&plan).strip_prefix("/").unwrap());
    let _qmp = l::qmp_connect(&mut q, &sock);
    let m = std::fs::metadata(root.join("run/machina")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "/run/machina under umask 0077");
    q.kill9();
}
