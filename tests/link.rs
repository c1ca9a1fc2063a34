//! `machina disconnect|connect`: the test guest (TCG) runs with a NIC on a
//! bridge in a namespace of the test's own; `disconnect` takes its TAP off
//! the bridge and down and the guest sees its carrier drop
//! (`/sys/class/net/eth0/carrier`, read through `machina console`);
//! `connect` restores both. Both are idempotent; a bad argument changes
//! nothing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::guest;
use common::launch::{qmp, qmp_connect};
use common::netns::NetNs;
use common::vm::{PtyProcess, Setup};
use serde_json::json;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const GUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn link_state(ns: &NetNs, ifname: &str) -> (Option<String>, bool) {
    let out = ns.ip(&["-o", "link", "show", "dev", ifname]);
    let flags = out.split('<').nth(1).and_then(|s| s.split('>').next());
    let up = flags.is_some_and(|f| f.split(',').any(|x| x == "UP"));
    (ns.master_of(ifname), up)
}

#[test]
fn disconnect_and_connect_change_bridge_link_and_guest_carrier() {
    let test = "disconnect_and_connect_change_bridge_link_and_guest_carrier";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let Some(image) = guest::guest_image(test) else {
        return;
    };
    let ns = NetNs::new(true);
    let setup = Setup::with(&qemu, |host, machine| {
        host["qemu"]["accelerator"] = json!("tcg");
        machine["attrs"] = json!({"memory": {"ram": 256}, "console": {"enabled": true}});
    });
    let (plan, mut q) = setup.launch_with(&ns, setup.boot_guest(&image, true));
    let plan_dir = setup.dir.join("root/etc/machina/launch");
    let tap = plan.taps[0].ifname.to_string();
    let machina = |args: &[&str]| {
        let mut c = ns.command(common::bin("machina").to_str().unwrap());
        c.arg("--plan-dir").arg(&plan_dir).args(args);
        c.stdin(Stdio::null()).output().unwrap()
    };

    let mut console = {
        let mut c = Command::new(common::bin("machina"));
        c.arg("--plan-dir")
            .arg(&plan_dir)
            .arg("console")
            .arg(&setup.vm);
        PtyProcess::spawn(c)
    };
    console.expect("Ctrl-] detaches", Duration::from_secs(30));
    let mut r = qmp_connect(&mut q, &plan.runtime_dir().join("qmp/command.0.qmp.socket"));
    assert!(qmp(&mut r, r#"{"execute":"cont"}"#).contains("return"));
    console.expect(guest::READY_MARKER, BOOT_TIMEOUT);
    // The guest waits for the carrier it expects, then says so.
    let wait_for = |c: &mut PtyProcess, v: u8, tag: &str| {
        c.type_bytes(
            format!(
                "ifconfig eth0 up; while [ \"$(cat /sys/class/net/eth0/carrier)\" != {v} ]; do usleep 20000; done; echo {tag}-$((1+{v}))\r"
            )
            .as_bytes(),
        );
        c.expect(&format!("{tag}-{}", 1 + v), GUEST_TIMEOUT);
    };
    wait_for(&mut console, 1, "CARRIER-ON-AT-BOOT");
    assert_eq!(link_state(&ns, &tap), (Some("br0".to_owned()), true));

    // A bad argument: refused, nothing changed.
    let bad = machina(&["disconnect", &setup.vm, &format!("{}.nope", setup.vm)]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(&format!(
            "failed to locate connection \"nope\" within \"{}\"",
            setup.vm
        )),
        "{err}"
    );
    assert_eq!(link_state(&ns, &tap), (Some("br0".to_owned()), true));

    let out = machina(&["disconnect", &format!("{}.0", setup.vm)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{tap}: disabled\n")
    );
    assert_eq!(link_state(&ns, &tap), (None, false));
    wait_for(&mut console, 0, "CARRIER-OFF");

    // Idempotent.
    let again = machina(&["disconnect", &setup.vm]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        format!("{tap}: disabled (already)\n")
    );

    let out = machina(&["connect", &setup.vm]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{tap}: enabled\n")
    );
    assert_eq!(link_state(&ns, &tap), (Some("br0".to_owned()), true));
    wait_for(&mut console, 1, "CARRIER-BACK");
    let again = machina(&["connect", &setup.vm]);
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        format!("{tap}: enabled (already)\n")
    );

    console.type_bytes(&[0x1d]);
    assert!(console.child.wait().unwrap().success());
    q.kill9();
}
