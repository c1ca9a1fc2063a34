//! `machina console`: a VM with `attrs.console` boots the test guest (TCG)
//! through `machina gen` and the launcher; `machina console`, driven
//! through a pseudo-terminal as an administrator would, shows the guest's
//! boot messages, runs a command typed into the guest's shell, refuses a
//! second session, detaches on `Ctrl-]`; `--log` then shows it all.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::guest;
use common::launch::{qmp, qmp_connect};
use common::netns::NetNs;
use common::vm::{PtyProcess, Setup};
use serde_json::json;

/// Boot bound: a few seconds alone, much more with other builds on two cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn console_setup(qemu: &std::path::Path) -> Setup {
    Setup::with(qemu, |host, machine| {
        host["qemu"]["accelerator"] = json!("tcg");
        machine["attrs"] = json!({"memory": {"ram": 256}, "console": {"enabled": true}});
    })
}

#[test]
fn console_shows_boot_runs_commands_and_keeps_a_log() {
    let test = "console_shows_boot_runs_commands_and_keeps_a_log";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let Some(image) = guest::guest_image(test) else {
        return;
    };
    let ns = NetNs::new(true);
    let setup = console_setup(&qemu);
    // Paused until the console is attached, so every boot message goes to
    // the session (QEMU drops console output while no client is attached).
    let (plan, mut q) = setup.launch_with(&ns, setup.boot_guest(&image, true));
    let plan_dir = setup.dir.join("root/etc/machina/launch");
    let console_cmd = |extra: &[&str]| {
        let mut c = Command::new(common::bin("machina"));
        c.arg("--plan-dir").arg(&plan_dir).arg("console");
        c.args(extra).arg(&setup.vm);
        c
    };

    let mut session = PtyProcess::spawn(console_cmd(&[]));
    session.expect("Ctrl-] detaches", Duration::from_secs(30));

    // A second session is refused with a clear message, and changes nothing.
    let second = console_cmd(&[]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("in use by another `machina console` session"),
        "{err}"
    );

    let sock = plan.runtime_dir().join("qmp/command.0.qmp.socket");
    let mut r = qmp_connect(&mut q, &sock);
    assert!(qmp(&mut r, r#"{"execute":"cont"}"#).contains("return"));

    session.expect("Linux version", BOOT_TIMEOUT);
    session.expect(guest::READY_MARKER, BOOT_TIMEOUT);
    // Typed at the terminal, run by the guest's shell: only the guest
    // computes 42 (the echo of the typed line shows the expression).
    session.type_bytes(b"echo MACHINA-CONSOLE-$((6*7))-OK\r");
    session.expect("MACHINA-CONSOLE-42-OK", Duration::from_secs(60));

    session.type_bytes(&[0x1d]);
    session.expect("Detached from the console", Duration::from_secs(30));
    let status = session.child.wait().unwrap();
    assert!(status.success(), "console exited {status}");

    let log = console_cmd(&["--log"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(text.contains("Linux version"), "{text}");
    assert!(text.contains(guest::READY_MARKER), "{text}");
    assert!(text.contains("MACHINA-CONSOLE-42-OK"), "{text}");

    // The session's lock is gone: a new session attaches again.
    let mut again = PtyProcess::spawn(console_cmd(&[]));
    again.expect("Ctrl-] detaches", Duration::from_secs(30));
    again.type_bytes(b"echo MACHINA-AGAIN-$((2*3))\r");
    again.expect("MACHINA-AGAIN-6", Duration::from_secs(60));

    // The log's keeper runs beside QEMU as the VM's uid, with nothing.
    let keeper = common::procs_with_parent(q.pid())
        .into_iter()
        .find(|status| status.contains("machina-launc"))
        .unwrap_or_else(|| panic!("no console log keeper under QEMU {}", q.pid()));
    for want in [
        format!("Uid:\t{0}\t{0}\t{0}\t{0}", plan.uid),
        "CapEff:\t0000000000000000".into(),
        "CapBnd:\t0000000000000000".into(),
        "NoNewPrivs:\t1".into(),
    ] {
        assert!(keeper.contains(&want), "{want} not in\n{keeper}");
    }

    // A guest flooding its serial port: 3 MiB, more than the bound. The
    // log's apparent size grows, what it holds in /run stays bounded.
    again.type_bytes(b"head -c 3145728 /dev/zero | tr '\\000' x; echo; echo FLOOD-$((1+1))-DONE\r");
    again.expect("FLOOD-2-DONE", BOOT_TIMEOUT);
    again.type_bytes(&[0x1d]);
    assert!(again.child.wait().unwrap().success());
    let log_path = plan.runtime_dir().join("console.log");
    let bound = machina::launcher::console_log::KEEP + (256 << 10);
    let start = std::time::Instant::now();
    let (size, held) = loop {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&log_path).unwrap();
        if m.blocks() * 512 <= bound || start.elapsed() > Duration::from_secs(60) {
            break (m.size(), m.blocks() * 512);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(size > 3 << 20, "the log has {size} bytes");
    assert!(held <= bound, "the log holds {held} bytes (bound {bound})");
    let log = console_cmd(&["--log"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(log.status.success());
    assert!(!log.stdout.contains(&0), "--log printed a hole");
    assert!(log.stdout.len() <= 1 << 20);
    assert!(String::from_utf8_lossy(&log.stdout).contains("FLOOD-2-DONE"));
    println!("console flood: log of {size} bytes holds {held} bytes");
    q.kill9();
}

#[test]
fn console_without_the_key_is_refused_clearly() {
    let test = "console_without_the_key_is_refused_clearly";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let ns = NetNs::new(true);
    let setup = Setup::new(&qemu);
    let (_plan, mut q) = setup.launch(&ns);
    for extra in [&[][..], &["--log"][..]] {
        let out = Command::new(common::bin("machina"))
            .arg("--plan-dir")
            .arg(setup.dir.join("root/etc/machina/launch"))
            .arg("console")
            .args(extra)
            .arg(&setup.vm)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("has no console"), "{err}");
    }
    q.kill9();
}
