//! TPM 2.0 through swtpm running as the VM's own uid (issue 10): the test
//! Linux guest boots under TCG with `attrs.tpm.enabled`, swtpm prepared and
//! started by `machina-launch --swtpm`, QEMU by `machina-launch`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::launch as l;
use common::netns::NetNs;
use common::vm::Setup;

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Reads the swtpm step's stderr until it says the TPM is served (the
/// socket listens from then on); drains the rest in a thread.
fn wait_served(swtpm: &mut Child) -> String {
    let mut lines = BufReader::new(swtpm.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        if l.contains("serving the TPM on") {
            std::thread::spawn(move || lines.for_each(drop));
            return l;
        }
        seen.push(l);
    }
    panic!("the swtpm step ended: {seen:#?} ({:?})", swtpm.wait());
}

/// Connects to `socket` as `uid:uid` in a child (between fork and exec,
/// after the uid change); the error if it cannot.
fn connect_as(uid: u32, socket: &Path) -> std::io::Result<()> {
    let socket = socket.to_owned();
    let mut c = Command::new("/bin/true");
    c.uid(uid)
        .gid(uid)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure only connects a socket (no allocation: the
    // address is built on the stack) and returns.
    unsafe {
        c.pre_exec(move || std::os::unix::net::UnixStream::connect(&socket).map(drop));
    }
    c.status().map(drop)
}

/// A TPM VM (TCG, 256 MiB, `attrs.console`) whose bootable volume holds
/// the test guest; `None` after a SKIP.
fn tpm_guest_setup(test: &str, qemu: &Path) -> Option<Setup> {
    let image = common::guest::guest_image(test)?;
    let (s, _pool) = tpm_setup_with(qemu, |host, m| {
        host["qemu"]["accelerator"] = "tcg".into();
        m["attrs"]["memory"] = serde_json::json!({"ram": 256});
        m["attrs"]["console"] = serde_json::json!({"enabled": true});
    });
    let disk = s.dir.join(format!("pool/{}-os.raw", s.vm));
    common::bootdisk::write_boot_disk(test, &image, &disk).then_some(s)
}

#[test]
fn guest_sees_a_tpm2_served_by_swtpm_as_the_vm_uid() {
    let test = "guest_sees_a_tpm2_served_by_swtpm_as_the_vm_uid";
    let Some(qemu) = common::privileged_with_swtpm(test) else {
        return;
    };
    let Some(s) = tpm_guest_setup(test, &qemu) else {
        return;
    };
    let ns = NetNs::new(true);
    let unit = std::fs::read_to_string(s.dir.join(format!(
        "root/etc/systemd/system/machina-swtpm-{}.service",
        s.vm
    )))
    .unwrap();
    assert!(unit.contains("--swtpm"), "{unit}");
    let plan = s.plan();
    let tpm = plan.tpm.clone().expect("plan has a TPM");
    let console = plan.runtime_dir().join("console.log");

    let ek = |run: u32| -> Vec<u8> {
        // swtpm: its step returns once the socket listens and swtpm runs.
        let mut swtpm = ns
            .command(common::bin("machina-launch").to_str().unwrap())
            .arg("--swtpm")
            .arg("--plan")
            .arg(s.plan_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let served = wait_served(&mut swtpm);
        assert_eq!(served.contains("swtpm_setup ran"), run == 1, "{served}");
        let (_, mut q) = s.launch_with(&ns, |_| {});
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            if log.contains(common::guest::READY_MARKER) {
                assert_eq!(common::guest::tpm_version(&log), "2", "guest TPM");
                break;
            }
            if let Ok(Some(st)) = q.child.try_wait() {
                panic!(
                    "QEMU ended ({st}): {}",
                    std::fs::read_to_string(&q.stderr).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "guest not ready: {log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        // swtpm: the VM's uid/gid, no capabilities, no_new_privs.
        let pid = swtpm.id();
        let uid = status_field(pid, "Uid");
        assert!(
            uid.split_whitespace().all(|u| u == plan.uid.to_string()),
            "{uid}"
        );
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
        }
        assert_eq!(status_field(pid, "NoNewPrivs"), "1");
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(&tpm.data_dir).unwrap();
        assert_eq!((md.uid(), md.mode() & 0o7777), (plan.uid, 0o700));
        let sock = std::fs::symlink_metadata(&tpm.socket).unwrap();
        assert_eq!((sock.uid(), sock.mode() & 0o777), (plan.uid, 0o600));
        // Another VM's uid can neither read the state nor reach the TPM.
        let other = plan.uid + 1;
        let read = Command::new("/bin/cat")
            .arg(tpm.data_dir.join("state/tpm2-00.permall"))
            .uid(other)
            .gid(other)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!read.success(), "uid {other} read the TPM state");
        let e = connect_as(other, &tpm.socket).expect_err("another uid connected");
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        let mut c = l::qmp_connect(&mut q, &plan.runtime_dir().join("qmp/command.0.qmp.socket"));
        let r = l::qmp(&mut c, r#"{"execute":"query-tpm"}"#);
        assert!(r.contains("tpm-crb") && r.contains("emulator"), "{r}");
        l::qmp(&mut c, r#"{"execute":"quit"}"#);
        q.child.wait().unwrap();
        std::mem::forget(q);
        // --terminate: swtpm ends with QEMU's connection.
        assert!(swtpm.wait().unwrap().success());
        let _ = s.machina(&["teardown", &s.vm]);
        let _ = std::fs::remove_file(&console);
        // swtpm_localca bumps certserial on every certificate it makes: the
        // same serial after the second start means swtpm_setup did not run.
        let mut v = std::fs::read(tpm.data_dir.join("authority/issuercert.pem")).unwrap();
        v.extend(std::fs::read(tpm.data_dir.join("authority/certserial")).unwrap());
        v
    };
    let first = ek(1);
    let second = ek(2);
    assert_eq!(first, second, "the TPM's CA is the same after a restart");
}

/// A VM with a TPM whose state directory is `pool/state.tpm-data`.
fn tpm_setup(qemu: &Path) -> (Setup, std::path::PathBuf) {
    tpm_setup_with(qemu, |_, _| {})
}

/// As [`tpm_setup`], with the host and machine JSON then adjusted by `f`.
fn tpm_setup_with(
    qemu: &Path,
    f: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
) -> (Setup, std::path::PathBuf) {
    let mut pool = None;
    let s = Setup::with(qemu, |host, m| {
        let p = std::path::PathBuf::from(host["storage"]["disks"]["path"].as_str().unwrap())
            .with_file_name("tpm");
        host["storage"]["tpm"] = serde_json::json!({"path": p, "type": "tpm-data"});
        pool = Some(p);
        m["attrs"] = serde_json::json!({"tpm": {"enabled": true, "data": {"storage": "tpm", "name": "state"}}});
        f(host, m);
    });
    let pool = pool.unwrap();
    std::fs::create_dir_all(&pool).unwrap();
    let out = s.machina(&["gen", "--root", s.dir.join("root").to_str().unwrap(), &s.vm]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (s, pool)
}

fn swtpm_step(s: &Setup) -> (Option<i32>, String) {
    let out = Command::new(common::bin("machina-launch"))
        .arg("--swtpm")
        .arg("--plan")
        .arg(s.plan_path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_swtpm_is_one_line_naming_the_packages() {
    let test = "missing_swtpm_is_one_line_naming_the_packages";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let (s, pool) = tpm_setup(&qemu);
    let mut plan = s.plan();
    plan.tpm.as_mut().unwrap().swtpm = s.dir.join("no-such-dir/swtpm");
    std::fs::write(s.plan_path(), plan.to_json()).unwrap();
    let (code, err) = swtpm_step(&s);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is missing") && err.contains("apt-get install swtpm swtpm-tools"),
        "{err}"
    );
    // Nothing was prepared.
    assert!(!pool.join("state.tpm-data").exists());
}

#[test]
fn a_state_directory_that_is_a_symlink_is_refused() {
    let test = "a_state_directory_that_is_a_symlink_is_refused";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let (s, pool) = tpm_setup(&qemu);
    let elsewhere = s.dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, pool.join("state.tpm-data")).unwrap();
    let (code, err) = swtpm_step(&s);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("symbolic link") && err.contains("state.tpm-data"),
        "{err}"
    );
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&elsewhere).unwrap();
    assert_eq!(md.uid(), 0, "the link's target was handed over");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn state_left_root_owned_by_the_go_program_is_handed_to_the_vm() {
    let test = "state_left_root_owned_by_the_go_program_is_handed_to_the_vm";
    let Some(qemu) = common::privileged_with_swtpm(test) else {
        return;
    };
    let (s, pool) = tpm_setup(&qemu);
    let plan = s.plan();
    // What Go's root swtpm left: root-owned state and CA files, plus a
    // hard link that must not be followed into a chown.
    let data = pool.join("state.tpm-data");
    std::fs::create_dir_all(data.join("state")).unwrap();
    std::fs::create_dir_all(data.join("authority")).unwrap();
    std::fs::write(data.join("authority/certserial"), "7\n").unwrap();
    let outside = s.dir.join("outside");
    std::fs::write(&outside, "root's").unwrap();
    std::fs::hard_link(&outside, data.join("authority/linked")).unwrap();
    let mut swtpm = Command::new(common::bin("machina-launch"))
        .arg("--swtpm")
        .arg("--plan")
        .arg(s.plan_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let served = wait_served(&mut swtpm);
    use std::os::unix::fs::MetadataExt;
    for p in ["", "state", "authority", "authority/certserial"] {
        let md = std::fs::symlink_metadata(data.join(p)).unwrap();
        assert_eq!(md.uid(), plan.uid, "{p} {served}");
    }
    assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0);
    // A second swtpm for the same TPM is refused before it touches anything.
    let (code, err) = swtpm_step(&s);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already served"), "{err}");
    assert_eq!(std::fs::symlink_metadata(&data).unwrap().uid(), plan.uid);
    assert!(plan.tpm.as_ref().unwrap().socket.exists());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(swtpm.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = swtpm.wait();
}

/// The TPM as `status --json` and `inspect --json` report it (`tpm` and
/// `tpm.state`), checked against the plan; `pid` is the running swtpm's.
fn assert_tpm_json(tpm: &serde_json::Value, plan: &machina::plan::Plan, pid: Option<u32>) {
    let t = plan.tpm.as_ref().unwrap();
    assert_eq!(tpm["running"], pid.is_some(), "{tpm:#}");
    assert_eq!(
        tpm["pids"],
        serde_json::json!(pid.into_iter().collect::<Vec<_>>()),
        "{tpm:#}"
    );
    assert_eq!(tpm["uid"], plan.uid, "{tpm:#}");
    assert_eq!(tpm["state-dir"], t.data_dir.to_str().unwrap(), "{tpm:#}");
    assert_eq!(tpm["socket"], t.socket.to_str().unwrap(), "{tpm:#}");
    // Without systemd (here, under `machina run`) the unit is null; with
    // it, the unit is named (and unknown to this systemd).
    let unit = &tpm["unit"];
    assert!(
        unit.is_null() || unit["name"] == format!("machina-swtpm-{}.service", plan.machine),
        "{tpm:#}"
    );
}

/// `machina run` of a TPM VM whose bootable volume holds the test guest
/// (no kernel in the plan: SeaBIOS boots the disk): swtpm runs as the VM's
/// uid with nothing, the guest sees a TPM 2.0 (read from its serial
/// console), QEMU reports `tpm-crb` on the emulator; `status` and
/// `inspect`, text and JSON, show the TPM; SIGTERM shuts the guest down
/// and swtpm ends with it.
#[test]
fn guest_boots_from_its_volume_with_a_tpm_under_machina_run() {
    let test = "guest_boots_from_its_volume_with_a_tpm_under_machina_run";
    let Some(qemu) = common::privileged_with_swtpm(test) else {
        return;
    };
    let Some(s) = tpm_guest_setup(test, &qemu) else {
        return;
    };
    let plan = s.plan();
    assert!(
        !plan.qemu.args.iter().any(|a| a == "-kernel"),
        "the guest boots from its volume"
    );
    let uid = plan.uid;
    let ns = NetNs::new(true);
    let mut run = ns
        .command(common::bin("machina").to_str().unwrap())
        .arg("--config-dir")
        .arg(s.dir.join("config"))
        .arg("--plan-dir")
        .arg(s.dir.join("root/etc/machina/launch"))
        .args(["run", "--timeout", "60s", &s.vm])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = run.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut out = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for l in out.by_ref() {
        let l = l.unwrap();
        seen.push(l.clone());
        if l.contains("is running") {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("is running")),
        "{seen:#?} {:#?}",
        errs.join()
    );
    let outs = std::thread::spawn(move || out.map_while(Result::ok).collect::<Vec<_>>());

    // The guest's serial console, through `machina console --log`.
    let console_log = || {
        let out = s.machina(&["console", "--log", &s.vm]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let log = loop {
        let log = console_log();
        if log.contains(common::guest::READY_MARKER) {
            break log;
        }
        if let Ok(Some(st)) = run.try_wait() {
            panic!("machina run ended ({st}): {log}\n{:#?}", errs.join());
        }
        assert!(Instant::now() < deadline, "guest not ready:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(log.contains("SYSLINUX"), "booted by SYSLINUX:\n{log}");
    assert_eq!(common::guest::tpm_version(&log), "2", "guest TPM");

    // swtpm: one process as the VM's uid, with nothing.
    let swtpm = swtpm_pids(uid);
    assert_eq!(swtpm.len(), 1, "one swtpm as uid {uid}");
    let pid = swtpm[0];
    for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let q = qmp_once(&s.vm, r#"{"execute":"query-tpm"}"#);
    assert!(q.contains("tpm-crb") && q.contains("emulator"), "{q}");

    // status and inspect, text and JSON.
    let data = plan.tpm.as_ref().unwrap().data_dir.display().to_string();
    let st = s.machina(&["status", &s.vm]);
    let st = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(
        st.contains("  tpm: ")
            && st.contains(&format!("swtpm pid {pid} (uid {uid}); state {data}")),
        "{st}"
    );
    let status_json = || -> serde_json::Value {
        let out = s.machina(&["status", "--json", &s.vm]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_tpm_json(&status_json()["machines"][0]["tpm"], &plan, Some(pid));
    let out = s.machina(&["inspect", "--json", &s.vm]);
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    common::assert_valid_inspection(&inspected);
    assert_eq!(inspected[0]["tpm"]["data-dir"], data.as_str());
    assert_tpm_json(&inspected[0]["tpm"]["state"], &plan, Some(pid));

    // SIGTERM: the power button; the guest powers off, swtpm ends with QEMU.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = run.wait().unwrap();
    let outs = outs.join().unwrap();
    let errs = errs.join().unwrap();
    assert!(st.success(), "{st}: {outs:#?} {errs:#?}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "swtpm outlived machina run: {errs:#?}"
    );
    let lock = Path::new(machina::plan::LOCK_DIR).join(format!("swtpm.{}", s.vm));
    assert!(!lock.exists(), "the swtpm lock is left: {errs:#?}");
    assert_tpm_json(&status_json()["machines"][0]["tpm"], &plan, None);
}

/// Pids of processes named swtpm running as `uid`.
fn swtpm_pids(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "swtpm")
                && !status_field(pid, "State").starts_with('Z')
                && status_field(pid, "Uid")
                    .split_whitespace()
                    .next()
                    .is_some_and(|u| u == uid.to_string())
        })
        .collect()
}

/// One QMP command on the VM's `command.0` socket; the reply line.
fn qmp_once(vm: &str, cmd: &str) -> String {
    use std::io::Write;
    let path = Path::new(machina::plan::RUNTIME_ROOT)
        .join(vm)
        .join("qmp/command.0.qmp.socket");
    let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    writeln!(w, "{cmd}").unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.contains("\"return\"") || line.contains("\"error\"") {
            return line;
        }
    }
}

#[test]
fn dissolve_keeps_tpm_state_unless_purged_with_confirmation() {
    let test = "dissolve_keeps_tpm_state_unless_purged_with_confirmation";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let (s, pool) = tpm_setup(&qemu);
    let data = pool.join("state.tpm-data");
    std::fs::create_dir_all(data.join("state")).unwrap();
    std::fs::write(data.join("state/tpm2-00.permall"), "tpm").unwrap();
    let units = s.dir.join("root/etc/systemd/system");
    let dissolve = |extra: &[&str]| {
        let mut args = vec!["--unit-dir", units.to_str().unwrap(), "dissolve"];
        args.extend_from_slice(extra);
        args.push(&s.vm);
        s.machina(&args)
    };
    // --purge-tpm alone: refused, nothing removed.
    let out = dissolve(&["--purge-tpm"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--yes-delete-tpm-state"), "{err}");
    assert!(s.plan_path().exists() && data.join("state/tpm2-00.permall").exists());
    // Confirmed: units, plan and the state directory go.
    let swtpm_unit = units.join(format!("machina-swtpm-{}.service", s.vm));
    assert!(swtpm_unit.exists());
    let out = dissolve(&["--purge-tpm", "--yes-delete-tpm-state"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("removed {}", data.display())),
        "{text}"
    );
    assert!(!data.exists() && !swtpm_unit.exists() && !s.plan_path().exists());
    assert!(pool.exists(), "the pool stays");
    // A plain dissolve keeps the state.
    let out = s.machina(&["gen", "--root", s.dir.join("root").to_str().unwrap(), &s.vm]);
    assert!(out.status.success());
    std::fs::create_dir_all(data.join("state")).unwrap();
    let out = dissolve(&[]);
    assert!(out.status.success());
    assert!(data.join("state").exists() && !swtpm_unit.exists());
}
