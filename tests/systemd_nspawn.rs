//! The rendered unit under a real systemd (booted in systemd-nspawn).
//!
//! These tests check the *unit*: that systemd accepts it, starts it, applies
//! its sandbox, reports it through machina's `systemctl` driver, and runs its
//! orderly stop. The launcher is not under test here: a small script stands
//! in for `machina-launch` (it probes the sandbox, does what the launcher
//! does to the runtime directory and drops to the VM's uid with `setpriv`),
//! and another stands in for `machina shutdown`/`teardown` (a QMP client
//! that sends `quit`). One test execs real QEMU from the stand-in, to show
//! that QEMU (KVM and TCG) runs under the unit's seccomp filter and memory
//! policy. The end-to-end test with the real binaries comes after merging.

mod common;

use common::TempDir;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::nspawn::{Container, BIN_MOUNT};
use machina::config::schema::Accelerator;
use machina::names::MachineName;
use machina::plan::{Access, Grant, HostNeeds, Plan, QemuExec, PLAN_VERSION};
use machina::systemd::control::Verb;
use machina::systemd::unit::{render, unit_name, UnitOptions};

const UID: u32 = 70001;

/// A QMP client in Python, as `machina shutdown --system` behaves: connect to
/// the systemd socket, negotiate, `quit`, wait for the socket to close.
/// Appends its outcome to the log file given as argv[2].
const QMP_QUIT: &str = r#"
import json, socket, sys
sock, log = sys.argv[1], sys.argv[2]
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    f = s.makefile("rw")
    assert "QMP" in json.loads(f.readline())
    f.write('{"execute":"qmp_capabilities"}\n'); f.flush()
    assert "return" in json.loads(f.readline())
    f.write('{"execute":"quit"}\n'); f.flush()
    try:
        while f.readline():
            pass
    except ConnectionResetError:
        # QEMU may exit with our bytes unread: the kernel then resets.
        pass
    msg = "stop: quit sent, socket closed"
except Exception as e:
    msg = "stop: failed: %r" % (e,)
open(log, "a").write(msg + "\n")
"#;

/// A QMP server in Python, standing in for QEMU: creates its socket with the
/// process umask (0077 from the unit), answers capabilities and quits on
/// `quit`, recording it in the log file.
const FAKE_QEMU: &str = r#"
import json, os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(1)
open(log, "a").write("server: listening as uid %d\n" % os.getuid())
while True:
    c, _ = s.accept()
    f = c.makefile("rw")
    f.write('{"QMP": {"version": {}, "capabilities": []}}\n'); f.flush()
    for line in f:
        cmd = json.loads(line).get("execute")
        f.write('{"return": {}}\n'); f.flush()
        if cmd == "quit":
            open(log, "a").write("server: quit via qmp\n")
            sys.exit(0)
    c.close()
"#;

fn plan(vm: &str, args: &[&str], log: &str) -> Plan {
    Plan {
        version: PLAN_VERSION,
        machine: MachineName::new(vm).unwrap(),
        uuid: uuid::Uuid::nil(),
        uid: UID,
        gid: UID,
        taps: vec![],
        mdevs: vec![],
        grants: vec![Grant {
            path: log.into(),
            access: Access::ReadWrite,
            shared: false,
        }],
        needs: HostNeeds::new(if args.contains(&"-enable-kvm") {
            Accelerator::Kvm
        } else {
            Accelerator::Tcg
        }),
        limits: Default::default(),
        network_isolation: false,
        console_log: false,
        qemu: QemuExec {
            binary: "/usr/bin/qemu-system-x86_64".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        },
        tpm: None,
    }
}

/// The stand-ins. `payload` is what the launcher stand-in finally execs, as
/// the VM's uid with every capability dropped and no_new_privs set.
fn write_stubs(dir: &Path, vm: &str, log: &str, extra_groups: &str, payload: &str) {
    write_stubs_probing(dir, vm, log, extra_groups, payload, "")
}

/// [`write_stubs`] with an extra bash snippet run among the probes (its
/// output goes to the log).
fn write_stubs_probing(
    dir: &Path,
    vm: &str,
    log: &str,
    extra_groups: &str,
    payload: &str,
    probe: &str,
) {
    use std::os::unix::fs::PermissionsExt;
    let rt = format!("/run/machina/{vm}");
    let launch = format!(
        r#"#!/bin/bash
# Stand-in for machina-launch (test only): probe the sandbox, prepare the
# runtime directory as the launcher does, drop to the VM's uid, exec.
rt={rt}
{{
  grep -E '^Cap(Bnd|Eff):' /proc/self/status
  if exec 3<>/dev/kvm; then echo "probe: kvm open"; exec 3>&-; else echo "probe: kvm denied"; fi
  if exec 3<>/dev/net/tun; then echo "probe: tun open"; exec 3>&-; else echo "probe: tun denied"; fi
  [ -e /dev/mem ] && echo "probe: /dev/mem visible" || echo "probe: /dev/mem hidden"
  touch /etc/machina-probe 2>/dev/null && echo "probe: /etc writable" || echo "probe: /etc read-only"
  touch /var/lib/mt/other 2>/dev/null && echo "probe: grant dir writable" || echo "probe: grant dir read-only"
  echo "probe: grant append" >> {log} || echo "probe: grant not writable"
  ls /home >/dev/null 2>&1 && echo "probe: /home listed" || echo "probe: /home hidden"
{probe}
}} >> {log} 2>&1
# Subdirectory first: once the VM owns $rt, root (without
# CAP_DAC_OVERRIDE) can no longer create anything in it.
mkdir -m 0700 "$rt/qmp" && chown {UID}:{UID} "$rt/qmp" || exit 11
chown {UID}:{UID} "$rt" && chmod 0750 "$rt" || exit 10
exec /usr/bin/setpriv --reuid={UID} --regid={UID} {extra_groups} --inh-caps=-all \
  --bounding-set=-all --no-new-privs -- {payload}
"#
    );
    let machina = format!(
        r#"#!/bin/bash
# Stand-in for machina (test only): shutdown = QMP quit, teardown = a note.
case "$1" in
  shutdown) exec /usr/bin/python3 {BIN_MOUNT}/qmp-quit.py "/run/machina/${{@: -1}}/qmp/systemd.0.qmp.socket" {log} ;;
  teardown) echo "teardown $2 as uid $(id -u)" >> {log} ;;
  *) exit 2 ;;
esac
"#
    );
    for (name, text) in [
        ("machina-launch", launch),
        ("machina", machina),
        ("qmp-quit.py", QMP_QUIT.to_owned()),
        ("fake-qemu.py", FAKE_QEMU.to_owned()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn options(p: &Plan) -> UnitOptions {
    let mut o = UnitOptions::new(p);
    o.launcher = format!("{BIN_MOUNT}/machina-launch").into();
    o.machina = format!("{BIN_MOUNT}/machina").into();
    o
}

/// Polls `f` until it holds; panics after `timeout` with the unit's journal.
fn wait_for(c: &Container, unit: &str, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!(
                "timed out waiting for {what}; journal:\n{}",
                c.journal(unit)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn show(c: &Container, unit: &str, props: &str) -> std::collections::BTreeMap<String, String> {
    // Repeated keys (DeviceAllow=) are joined with "; ".
    let mut map = std::collections::BTreeMap::<String, String>::new();
    for (k, v) in c
        .exec_ok(&["systemctl", "show", "-p", props, unit])
        .lines()
        .filter_map(|l| l.split_once('='))
    {
        map.entry(k.to_owned())
            .and_modify(|old| {
                old.push_str("; ");
                old.push_str(v);
            })
            .or_insert_with(|| v.to_owned());
    }
    map
}

/// The unit's sandbox under a real systemd, with a stand-in launcher: start,
/// status through machina's driver, sandbox in effect, orderly QMP stop.
#[test]
fn unit_sandbox_start_status_and_orderly_stop_under_real_systemd() {
    const TEST: &str = "unit_sandbox_start_status_and_orderly_stop_under_real_systemd";
    let bin = TempDir::new("nspawn-bin");
    let vm = "mt1";
    let log = "/var/lib/mt/vm.log";
    write_stubs(
        &bin.0,
        vm,
        log,
        "--clear-groups",
        &format!("/usr/bin/python3 {BIN_MOUNT}/fake-qemu.py /run/machina/{vm}/qmp/systemd.0.qmp.socket {log}"),
    );
    let Some(c) = Container::boot(TEST, &bin.0) else {
        return;
    };
    // The VM's log doubles as its read-write grant.
    c.write_file(log, "", 0o666);
    let p = plan(vm, &["-enable-kvm", "-S"], log);
    let unit = unit_name(&p.machine);
    c.write_unit(&unit, &render(&p, &options(&p)).unwrap());
    c.daemon_reload();

    let sc = c.systemctl();
    sc.run(Verb::Start, std::slice::from_ref(&unit))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.journal(&unit)));
    let log_host = c.path(log);
    wait_for(
        &c,
        &unit,
        "the stand-in to listen",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log_host)
                .unwrap()
                .contains("server: listening")
        },
    );

    // Status through machina's driver: active, main PID owned by the VM.
    let st = sc.status(std::slice::from_ref(&unit)).unwrap();
    assert_eq!(st.len(), 1);
    let st = &st[0];
    assert_eq!(st.unit, unit);
    assert_eq!(st.load_state, "loaded");
    assert_eq!(st.state(), "active/running");
    assert!(st.since().is_some(), "{st:?}");
    let pid = st.main_pid.expect("a main PID");
    assert_eq!(st.main_uid, Some(UID), "{st:?}");
    let status = std::fs::read_to_string(c.path(&format!("/proc/{pid}/status"))).unwrap();
    for want in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(status.contains(want), "{want} in\n{status}");
    }

    // The sandbox systemd applied, as systemd reports it.
    let props = show(
        &c,
        &unit,
        "CapabilityBoundingSet,DevicePolicy,DeviceAllow,PrivateDevices,ProtectSystem,\
ProtectHome,NoNewPrivileges,MemoryDenyWriteExecute,RestrictAddressFamilies,\
SystemCallArchitectures,ReadWritePaths,RuntimeDirectory,IPAddressDeny,UMask,\
ProtectKernelTunables,ProtectProc,ProcSubset,RestrictNamespaces,PrivateTmp",
    );
    let want = [
        (
            "CapabilityBoundingSet",
            "cap_chown cap_fowner cap_setgid cap_setuid cap_setpcap cap_net_admin",
        ),
        ("DevicePolicy", "closed"),
        ("PrivateDevices", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_NETLINK AF_UNIX"),
        ("SystemCallArchitectures", "native"),
        ("ReadWritePaths", "-/var/lib/mt/vm.log"),
        ("RuntimeDirectory", "machina/.lock/vm.mt1 machina/mt1"),
        ("UMask", "0077"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("RestrictNamespaces", "yes"),
        ("PrivateTmp", "yes"),
    ];
    for (k, v) in want {
        assert_eq!(props.get(k).map(String::as_str), Some(v), "{k}: {props:?}");
    }
    let allow = &props["DeviceAllow"];
    assert!(allow.contains("/dev/kvm rw"), "DeviceAllow={allow}");
    // No TAP in this plan, so no /dev/net/tun (the plan's needs say so).
    assert!(!allow.contains("/dev/net/tun"), "DeviceAllow={allow}");
    assert!(props["IPAddressDeny"].contains("0.0.0.0/0"), "{props:?}");

    // The sandbox as the stand-in launcher saw it from inside.
    let seen = std::fs::read_to_string(&log_host).unwrap();
    for want in [
        "CapBnd:\t00000000000011c9",
        "probe: kvm open",
        "probe: tun denied", // no TAP in the plan: no /dev/net/tun
        "probe: /dev/mem hidden",
        "probe: /etc read-only",
        "probe: grant dir read-only",
        "probe: grant append",
        "probe: /home hidden",
        "server: listening as uid 70001",
    ] {
        assert!(seen.contains(want), "{want:?} in\n{seen}");
    }

    // enable/disable through machina's driver: [Install] is valid.
    // (The link is absolute inside the container: look at the link itself.)
    let wants = c.path(&format!(
        "/etc/systemd/system/multi-user.target.wants/{unit}"
    ));
    sc.run(Verb::Enable, std::slice::from_ref(&unit)).unwrap();
    assert!(wants.symlink_metadata().is_ok(), "enable made no link");
    sc.run(Verb::Disable, std::slice::from_ref(&unit)).unwrap();
    assert!(wants.symlink_metadata().is_err(), "disable left the link");

    // A unit systemd does not know: status says so, start fails in one line.
    let nope = "machina-qemu-nope.service".to_owned();
    let st = sc.status(std::slice::from_ref(&nope)).unwrap();
    assert_eq!(st[0].load_state, "not-found", "{st:?}");
    assert_eq!(st[0].main_pid, None);
    let e = sc
        .run(Verb::Start, std::slice::from_ref(&nope))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("systemctl start machina-qemu-nope.service failed")
            && e.contains("not found"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    // Orderly stop: ExecStop (as root, without CAP_DAC_OVERRIDE) reaches the
    // QMP socket the VM's uid created with umask 0077, because systemd hands
    // the runtime directory back to root before each Exec line.
    let t = Instant::now();
    sc.run(Verb::Stop, std::slice::from_ref(&unit))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.journal(&unit)));
    let took = t.elapsed();
    let seen = std::fs::read_to_string(&log_host).unwrap();
    for want in [
        "server: quit via qmp",
        "stop: quit sent, socket closed",
        "teardown mt1 as uid 0",
    ] {
        assert!(
            seen.contains(want),
            "{want:?} in\n{seen}\n{}",
            c.journal(&unit)
        );
    }
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    let st = &sc.status(std::slice::from_ref(&unit)).unwrap()[0];
    assert_eq!(st.state(), "inactive/dead", "{st:?}");
    assert_eq!(st.result, "success", "{st:?}");
    assert_eq!(st.main_pid, None);
    assert!(
        !c.path("/run/machina/mt1").exists(),
        "runtime directory removed at stop"
    );
}

/// Reads one JSON line from QMP.
fn qmp_line(r: &mut impl BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s
}

/// Real QEMU, exec'd by the stand-in launcher as the VM's uid, runs under
/// the unit's sandbox: KVM with MemoryDenyWriteExecute=, TCG without it;
/// QMP answers; the orderly stop ends it.
#[test]
fn qemu_runs_under_the_unit_sandbox_kvm_and_tcg() {
    const TEST: &str = "qemu_runs_under_the_unit_sandbox_kvm_and_tcg";
    let Some(qemu) = common::privileged(TEST) else {
        return;
    };
    let kvm_gid = std::fs::metadata("/dev/kvm").unwrap().gid();
    for (vm, accel) in [("mtkvm", "-enable-kvm"), ("mttcg", "-accel tcg")] {
        let bin = TempDir::new(&format!("nspawn-{vm}"));
        let log = "/var/lib/mt/vm.log";
        let sock = format!("/run/machina/{vm}/qmp/systemd.0.qmp.socket");
        let args: Vec<&str> = accel
            .split(' ')
            .chain([
                "-S",
                "-nodefaults",
                "-nographic",
                "-machine",
                "q35",
                "-cpu",
                "qemu64",
                "-m",
                "128",
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
                "-chardev",
            ])
            .collect();
        let chardev = format!("socket,id=qmp.0,server=on,wait=off,path={sock}");
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([chardev, "-mon".into(), "chardev=qmp.0,mode=control".into()]);
        let payload = format!("{} {}", qemu.display(), args.join(" "));
        // The TCG VM is network-isolated (no TCP listener in its plan):
        // its unit must let the launcher unshare a network namespace.
        let isolated = accel != "-enable-kvm";
        write_stubs_probing(
            &bin.0,
            vm,
            log,
            &format!("--groups={kvm_gid}"),
            &payload,
            "  unshare --net true && echo \"probe: unshare net ok\" || echo \"probe: unshare net denied\"",
        );
        let Some(c) = Container::boot(TEST, &bin.0) else {
            return;
        };
        c.write_file(log, "", 0o666);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = plan(vm, &argv, log);
        p.network_isolation = isolated;
        let text = render(&p, &options(&p)).unwrap();
        assert_eq!(text.contains("RestrictNamespaces=net"), isolated, "{text}");
        assert_eq!(
            text.contains("MemoryDenyWriteExecute=yes"),
            accel == "-enable-kvm",
            "{text}"
        );
        let unit = unit_name(&p.machine);
        c.write_unit(&unit, &text);
        c.daemon_reload();
        let sc = c.systemctl();
        sc.run(Verb::Start, std::slice::from_ref(&unit)).unwrap();
        let sock_host = c.path(&sock);
        wait_for(
            &c,
            &unit,
            "QEMU's QMP socket",
            Duration::from_secs(20),
            || sock_host.exists(),
        );
        // Talk to QEMU from the host (root with every capability).
        let s = UnixStream::connect(&sock_host)
            .unwrap_or_else(|e| panic!("{vm}: {e}\n{}", c.journal(&unit)));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        assert!(qmp_line(&mut r).contains("\"QMP\""));
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .unwrap();
        assert!(qmp_line(&mut r).contains("return"));
        w.write_all(b"{\"execute\":\"query-kvm\"}\n").unwrap();
        let kvm = qmp_line(&mut r);
        let want_kvm = accel == "-enable-kvm";
        assert!(
            kvm.contains(&format!("\"enabled\": {want_kvm}")),
            "{vm}: {kvm}"
        );
        drop(r);
        drop(w);

        let st = &sc.status(std::slice::from_ref(&unit)).unwrap()[0];
        assert_eq!(st.state(), "active/running", "{vm}: {st:?}");
        assert_eq!(st.main_uid, Some(UID), "{vm}: {st:?}");
        let pid = st.main_pid.unwrap();
        let comm = std::fs::read_to_string(c.path(&format!("/proc/{pid}/comm"))).unwrap();
        assert_eq!(comm.trim(), "qemu-system-x86");
        // The unit's filter plus QEMU's own `-sandbox` filter.
        let status = std::fs::read_to_string(c.path(&format!("/proc/{pid}/status"))).unwrap();
        let filters: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp_filters:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            filters >= 2,
            "{vm}: QEMU's -sandbox filter missing:\n{status}"
        );
        assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
        let probes = std::fs::read_to_string(c.path(log)).unwrap();
        let want = if isolated {
            "probe: unshare net ok"
        } else {
            "probe: unshare net denied"
        };
        assert!(probes.contains(want), "{vm}: {probes}");

        let t = Instant::now();
        sc.run(Verb::Stop, std::slice::from_ref(&unit)).unwrap();
        let took = t.elapsed();
        let seen = std::fs::read_to_string(c.path(log)).unwrap();
        assert!(
            seen.contains("stop: quit sent, socket closed"),
            "{vm}: {seen}\n{}",
            c.journal(&unit)
        );
        let st = &sc.status(std::slice::from_ref(&unit)).unwrap()[0];
        assert_eq!(st.state(), "inactive/dead", "{vm}: {st:?}");
        assert_eq!(st.result, "success", "{vm}: {st:?}");
        eprintln!("{vm}: orderly stop through QMP took {took:?}");
    }
}

/// Mediated devices against a fake sysfs tree: the stand-in launcher can
/// write the parent's `mdev_supported_types/*/create` and reach the device
/// directory created below the parent (for `remove`), through the
/// `bus/pci/devices` symlink as the real launcher does, while every other
/// device stays read-only; systemd applies the memlock limit.
#[test]
fn mdev_parent_is_the_only_writable_sysfs_device() {
    const TEST: &str = "mdev_parent_is_the_only_writable_sysfs_device";
    let bin = TempDir::new("nspawn-mdev");
    let vm = "mtgpu";
    let log = "/var/lib/mt/vm.log";
    let sys = "/var/lib/mt/sys";
    let parent = "0000:c1:00.0";
    let uuid = "4b9c1a52-7c39-4f1d-9c5e-2f5a0b0d6c11";
    let probe = format!(
        r#"
  d={sys}/bus/pci/devices/{parent}
  echo {uuid} > $d/mdev_supported_types/nvidia-1/create && echo "probe: create written" || echo "probe: create refused"
  mkdir $d/{uuid} && echo 1 > $d/{uuid}/remove && echo "probe: mdev remove written" || echo "probe: mdev remove refused"
  echo 1 > {sys}/bus/pci/devices/0000:00:02.0/remove 2>/dev/null && echo "probe: other device written" || echo "probe: other device read-only"
  echo "probe: memlock $(ulimit -l)"
"#
    );
    write_stubs_probing(
        &bin.0,
        vm,
        log,
        "--clear-groups",
        &format!("/usr/bin/python3 {BIN_MOUNT}/fake-qemu.py /run/machina/{vm}/qmp/systemd.0.qmp.socket {log}"),
        &probe,
    );
    let Some(c) = Container::boot(TEST, &bin.0) else {
        return;
    };
    c.write_file(log, "", 0o666);
    for dev in [parent, "0000:00:02.0"] {
        c.write_file(
            &format!("{sys}/devices/pci0000:00/{dev}/mdev_supported_types/nvidia-1/create"),
            "",
            0o200,
        );
        c.write_file(&format!("{sys}/devices/pci0000:00/{dev}/remove"), "", 0o200);
        let link = c.path(&format!("{sys}/bus/pci/devices/{dev}"));
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(format!("../../../devices/pci0000:00/{dev}"), &link).unwrap();
    }
    let mut p = plan(vm, &["-enable-kvm"], log);
    p.needs.add_device(machina::plan::DeviceNode::Vfio);
    p.mdevs.push(machina::plan::Mdev {
        uuid: uuid.parse().unwrap(),
        sysfs_root: sys.into(),
        parents: vec![machina::plan::MdevParent {
            address: parent.into(),
            type_name: "GRID RTX8000-6Q".into(),
            placements: vec![],
            heterogeneous: false,
        }],
    });
    p.needs.memlock = Some(4 << 20);
    let unit = unit_name(&p.machine);
    c.write_unit(&unit, &render(&p, &options(&p)).unwrap());
    c.daemon_reload();
    let sc = c.systemctl();
    sc.run(Verb::Start, std::slice::from_ref(&unit))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.journal(&unit)));
    let log_host = c.path(log);
    wait_for(
        &c,
        &unit,
        "the stand-in to listen",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log_host)
                .unwrap()
                .contains("server: listening")
        },
    );
    let seen = std::fs::read_to_string(&log_host).unwrap();
    for want in [
        "probe: create written",
        "probe: mdev remove written",
        "probe: other device read-only",
        // 4 MiB in KiB.
        "probe: memlock 4096",
    ] {
        assert!(seen.contains(want), "{want:?} in\n{seen}");
    }
    let props = show(&c, &unit, "DeviceAllow,CapabilityBoundingSet,LimitMEMLOCK");
    assert!(props["DeviceAllow"].contains("char-vfio rw"), "{props:?}");
    assert!(
        props["DeviceAllow"].contains("/dev/vfio/vfio rw"),
        "{props:?}"
    );
    assert_eq!(
        props["CapabilityBoundingSet"],
        "cap_chown cap_fowner cap_setgid cap_setuid cap_setpcap cap_net_admin"
    );
    assert_eq!(props["LimitMEMLOCK"], "4194304");
    sc.run(Verb::Stop, std::slice::from_ref(&unit)).unwrap();
    let st = &sc.status(std::slice::from_ref(&unit)).unwrap()[0];
    assert_eq!(st.result, "success", "{st:?}");
}

/// A loop device on the host, detached (and its backing file removed) on
/// drop.
struct Loop {
    dev: std::path::PathBuf,
    file: std::path::PathBuf,
}

impl Loop {
    fn new(tag: &str) -> Option<Loop> {
        let file = std::env::temp_dir().join(format!("machina-loop-{tag}-{}", std::process::id()));
        std::fs::write(&file, vec![0u8; 1 << 20]).ok()?;
        let out = std::process::Command::new("/usr/sbin/losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .ok()?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&file);
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().into();
        Some(Loop { dev, file })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/usr/sbin/losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Block-device grants under the real device cgroup: a read-write grant
/// opens read-write, a read-only grant opens read-only but not for writing
/// (EPERM from DeviceAllow=, although the node's mode would allow it), and
/// a device bound into the container but not granted is absent from the
/// unit's private /dev.
#[test]
fn block_device_grants_follow_device_allow() {
    const TEST: &str = "block_device_grants_follow_device_allow";
    if !common::is_root() || !Path::new("/dev/loop-control").exists() {
        return common::skip(
            TEST,
            "needs root and /dev/loop-control for test block devices",
        );
    }
    let (Some(rw), Some(ro), Some(other)) = (Loop::new("rw"), Loop::new("ro"), Loop::new("other"))
    else {
        return common::skip(TEST, "cannot create loop devices");
    };
    let bin = TempDir::new("nspawn-blk");
    let vm = "mtblk";
    let log = "/var/lib/mt/vm.log";
    let (a, b, o) = (
        rw.dev.display().to_string(),
        ro.dev.display().to_string(),
        other.dev.display().to_string(),
    );
    let probe = format!(
        r#"
  exec 3<>{a} && echo "probe: rw grant opened rw" || echo "probe: rw grant refused"; exec 3>&-
  exec 3<{b} && echo "probe: ro grant opened ro" || echo "probe: ro grant refused"; exec 3<&-
  (exec 3<>{b}) 2>&1 | grep -q "Operation not permitted" && echo "probe: ro grant write EPERM"
  [ -e {o} ] && echo "probe: other visible" || echo "probe: other absent"
"#
    );
    write_stubs_probing(
        &bin.0,
        vm,
        log,
        "--clear-groups",
        &format!("/usr/bin/python3 {BIN_MOUNT}/fake-qemu.py /run/machina/{vm}/qmp/systemd.0.qmp.socket {log}"),
        &probe,
    );
    let Some(c) = Container::boot_with(TEST, &bin.0, &[&rw.dev, &ro.dev, &other.dev]) else {
        return;
    };
    c.write_file(log, "", 0o666);
    let mut p = plan(vm, &["-enable-kvm"], log);
    p.grants.push(Grant {
        path: rw.dev.clone(),
        access: Access::ReadWrite,
        shared: false,
    });
    p.grants.push(Grant {
        path: ro.dev.clone(),
        access: Access::ReadOnly,
        shared: false,
    });
    let unit = unit_name(&p.machine);
    c.write_unit(&unit, &render(&p, &options(&p)).unwrap());
    c.daemon_reload();
    let sc = c.systemctl();
    sc.run(Verb::Start, std::slice::from_ref(&unit))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.journal(&unit)));
    let log_host = c.path(log);
    wait_for(
        &c,
        &unit,
        "the stand-in to listen",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log_host)
                .unwrap()
                .contains("server: listening")
        },
    );
    let seen = std::fs::read_to_string(&log_host).unwrap();
    for want in [
        "probe: rw grant opened rw",
        "probe: ro grant opened ro",
        "probe: ro grant write EPERM",
        "probe: other absent",
    ] {
        assert!(
            seen.contains(want),
            "{want:?} in\n{seen}\n{}",
            c.journal(&unit)
        );
    }
    sc.run(Verb::Stop, std::slice::from_ref(&unit)).unwrap();
}
