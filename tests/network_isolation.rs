//! Network isolation (issue 11 item 7): a VM without a TCP listener runs
//! QEMU in a network namespace of its own, entered after its TAPs are open.
//! Two such VMs with the test guest (TCG) on one bridge reach each other
//! through their TAPs, while their QEMU cannot connect to a TCP listener on
//! the host's loopback (QMP `chardev-add` of a TCP client chardev fails);
//! the same request from a VM with a TCP listener (not isolated) succeeds,
//! so the probe does detect a connection.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::guest;
use common::launch::{qmp, qmp_connect};
use common::netns::NetNs;
use common::vm::{PtyProcess, Setup};
use serde_json::json;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);

fn net_ns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// QMP `chardev-add` of a TCP client chardev to `port` on 127.0.0.1:
/// QEMU itself connects (or fails to) at once. Returns the reply line.
fn qemu_connects_to(
    r: &mut std::io::BufReader<std::os::unix::net::UnixStream>,
    port: u16,
) -> String {
    let cmd = json!({"execute": "chardev-add", "arguments": {"id": "probe", "backend": {"type": "socket", "data": {
        "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": port.to_string()}},
        "server": false}}}});
    qmp(r, &cmd.to_string())
}

#[test]
fn isolated_qemu_keeps_its_taps_and_cannot_reach_the_host() {
    let test = "isolated_qemu_keeps_its_taps_and_cannot_reach_the_host";
    let Some(qemu) = common::privileged(test) else {
        return;
    };
    let Some(image) = guest::guest_image(test) else {
        return;
    };
    let ns = NetNs::new(true);
    // A listener on the loopback of the namespace the VMs' launcher runs in
    // (the "host" as far as these VMs are concerned).
    let listener = ns.run_in(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let host_ns = net_ns_inode(&format!("/run/netns/{}", ns.name));

    let guest_vm = |ip: &str| {
        let ip = ip.to_owned();
        let setup = Setup::with(&qemu, |host, machine| {
            host["qemu"]["accelerator"] = json!("tcg");
            machine["attrs"] = json!({"memory": {"ram": 256}, "console": {"enabled": true}});
        });
        let (plan, mut q) = setup.launch_with(&ns, setup.boot_guest(&image, true));
        assert!(
            plan.network_isolation,
            "a VM without TCP listener is isolated"
        );
        let mut console = {
            let mut c = Command::new(common::bin("machina"));
            c.arg("--plan-dir")
                .arg(setup.dir.join("root/etc/machina/launch"))
                .arg("console")
                .arg(&setup.vm);
            PtyProcess::spawn(c)
        };
        console.expect("Ctrl-] detaches", Duration::from_secs(30));
        let mut r = qmp_connect(&mut q, &plan.runtime_dir().join("qmp/command.0.qmp.socket"));
        assert!(qmp(&mut r, r#"{"execute":"cont"}"#).contains("return"));
        (setup, plan, q, console, r, ip)
    };
    let mut a = guest_vm("10.99.0.1");
    let mut b = guest_vm("10.99.0.2");

    for vm in [&a, &b] {
        let pid = vm.2.pid();
        let qemu_ns = net_ns_inode(&format!("/proc/{pid}/ns/net"));
        assert_ne!(
            qemu_ns, host_ns,
            "QEMU {pid} shares the host's network namespace"
        );
    }
    for vm in [&mut a, &mut b] {
        let reply = qemu_connects_to(&mut vm.4, port);
        assert!(
            reply.contains("\"error\""),
            "isolated QEMU connected: {reply}"
        );
    }

    // Guest to guest through the TAPs and the bridge.
    for vm in [&mut a, &mut b] {
        vm.3.expect(guest::READY_MARKER, BOOT_TIMEOUT);
        let cmd = format!(
            "ifconfig eth0 {} netmask 255.255.255.0 up; echo ADDR-$((40+2))\r",
            vm.5
        );
        vm.3.type_bytes(cmd.as_bytes());
        vm.3.expect("ADDR-42", GUEST_TIMEOUT);
    }
    a.3.type_bytes(
        b"while ! ping -c 1 -W 1 10.99.0.2 >/dev/null 2>&1; do :; done; echo PING-OK-$((1+1))\r",
    );
    a.3.expect("PING-OK-2", GUEST_TIMEOUT);

    // Control: a VM with a TCP listener (guest agent) is not isolated, and
    // the same probe from its QEMU reaches the listener.
    let control = Setup::with(&qemu, |_, machine| {
        machine["attrs"] = json!({"agent": {"qemu": {"enabled": true, "port": 40001}}});
    });
    let (plan, mut q) = control.launch(&ns);
    assert!(!plan.network_isolation);
    assert_eq!(net_ns_inode(&format!("/proc/{}/ns/net", q.pid())), host_ns);
    let mut r = qmp_connect(&mut q, &plan.runtime_dir().join("qmp/command.0.qmp.socket"));
    let reply = qemu_connects_to(&mut r, port);
    assert!(
        reply.contains("\"return\""),
        "control QEMU did not connect: {reply}"
    );
    listener.set_nonblocking(false).unwrap();
    let (_peer, from) = listener.accept().unwrap();
    assert!(from.ip().is_loopback());
    q.kill9();

    for vm in [&mut a, &mut b] {
        vm.3.type_bytes(&[0x1d]);
        assert!(vm.3.child.wait().unwrap().success());
        vm.2.kill9();
    }
}
