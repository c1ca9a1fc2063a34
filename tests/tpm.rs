//! TPM 2.0 through swtpm running as the VM's own uid (issue 10): the test
//! Linux guest boots under TCG with `attrs.tpm.enabled`, swtpm prepared and
//! started by `machina-launch --swtpm`, QEMU by `machina-launch`.

mod common;

use std::process::Stdio;
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

#[test]
fn guest_sees_a_tpm2_served_by_swtpm_as_the_vm_uid() {
    let test = "guest_sees_a_tpm2_served_by_swtpm_as_the_vm_uid";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    if !std::path::Path::new("/usr/bin/swtpm").exists() {
        common::skip(
            test,
            "swtpm is not installed (apt-get install swtpm swtpm-tools)",
        );
        return;
    }
    let Some(image) = common::guest::guest_image(test) else {
        return;
    };
    let mut pool = None;
    let s = Setup::with(&qemu, |host, m| {
        host["qemu"]["accelerator"] = "tcg".into();
        host["tag"]["small"]["attrs"]["memory"]["ram"] = 256.into();
        let p = std::path::PathBuf::from(host["storage"]["disks"]["path"].as_str().unwrap())
            .with_file_name("tpm");
        host["storage"]["tpm"] = serde_json::json!({"path": p, "type": "tpm-data"});
        pool = Some(p);
        m["attrs"] = serde_json::json!({"tpm": {"enabled": true, "data": {"storage": "tpm", "name": "state"}}});
    });
    let pool = pool.unwrap();
    std::fs::create_dir_all(&pool).unwrap();
    let ns = NetNs::new(true);
    let out = s.machina(&["gen", "--root", s.dir.join("root").to_str().unwrap(), &s.vm]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(s.dir.join(format!(
        "root/etc/systemd/system/machina-swtpm-{}.service",
        s.vm
    )))
    .unwrap();
    assert!(unit.contains("--swtpm"), "{unit}");
    let mut plan =
        machina::plan::Plan::from_json(&std::fs::read_to_string(s.plan_path()).unwrap()).unwrap();
    let tpm = plan.tpm.clone().expect("plan has a TPM");
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

    let ek = |run: u32| -> Vec<u8> {
        // swtpm: its step returns once the socket listens and swtpm runs.
        let swtpm_err = s.dir.join(format!("swtpm-{run}.err"));
        let mut swtpm = ns
            .command(common::bin("machina-launch").to_str().unwrap())
            .arg("--swtpm")
            .arg("--plan")
            .arg(s.plan_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&swtpm_err).unwrap())
            .spawn()
            .unwrap();
        let setup_ran_before = std::fs::read_to_string(&swtpm_err).unwrap_or_default();
        let _ = setup_ran_before;
        // QEMU connects; the backlog holds it until swtpm accepts.
        let deadline = Instant::now() + Duration::from_secs(120);
        // Wait for the socket by trying the launch: the swtpm step binds it
        // before it execs swtpm, so the launcher's own checks are enough.
        while !tpm.socket.exists() {
            if let Ok(Some(st)) = swtpm.try_wait() {
                panic!(
                    "swtpm step ended ({st}): {}",
                    std::fs::read_to_string(&swtpm_err).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "no swtpm socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        let stderr = s.dir.join(format!("qemu-{run}.err"));
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
        loop {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            if log.contains(common::guest::READY_MARKER) {
                let line = log
                    .lines()
                    .find(|l| l.contains(common::guest::TPM_MARKER))
                    .unwrap_or_else(|| panic!("{log}"));
                assert!(line.trim().ends_with(" 2"), "guest TPM: {line}");
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
