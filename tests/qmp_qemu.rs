//! The QMP client against real QEMU (root, KVM): a bare paused q35 guest
//! started directly (tests/common/qemu.rs), one QEMU per test, killed and
//! reaped on drop.

mod common;

use common::qemu;

use std::time::{Duration, Instant};

use machina::qmp::{self, Client, Options, Query, ShutdownOptions, ShutdownOutcome};
use qemu::Qemu;
use serde_json::{json, Value};

fn start(test: &str, sockets: usize, extra: &[&str]) -> Option<Qemu> {
    let binary = common::privileged(test)?;
    match Qemu::start_with(&binary, sockets, extra) {
        Ok(q) => Some(q),
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Limits for tests that do not measure them: a loaded host may take
/// more than the interactive default to greet.
fn patient() -> Options {
    Options::with_timeout(Duration::from_secs(10))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn status_and_kvm() {
    let Some(q) = start("status_and_kvm", 1, &[]) else {
        return;
    };
    rt().block_on(async {
        let (client, greeting) = Client::connect(&q.sockets[0], &patient()).await.unwrap();
        assert!(greeting.qemu.major >= 7, "{greeting:?}");
        let status = client.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "prelaunch", "{status}");
        assert_eq!(status["running"], false);
        let kvm = client.execute("query-kvm", None).await.unwrap();
        assert_eq!(kvm, json!({"enabled": true, "present": true}));
        // QEMU's own errors come back as Command errors.
        let err = client.execute("no-such-command", None).await.unwrap_err();
        assert!(
            matches!(err, qmp::QmpError::Command { ref class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        // Arguments are passed through.
        let err = client
            .execute("device_del", Some(json!({"id": "nope"})))
            .await
            .unwrap_err();
        assert!(matches!(err, qmp::QmpError::Command { .. }), "{err}");
        // Its only socket is taken by this client, so it does not answer.
        assert!(!qmp::ping(&q.sockets, Duration::from_millis(300)).await);
    });
}

#[test]
fn one_client_per_socket_and_connect_any() {
    let Some(q) = start("one_client_per_socket_and_connect_any", 2, &[]) else {
        return;
    };
    rt().block_on(async {
        let opts = Options::with_timeout(Duration::from_millis(300));
        let (_first, _) = Client::connect(&q.sockets[0], &opts).await.unwrap();
        // QEMU does not serve a second client on a busy socket.
        let err = Client::connect(&q.sockets[0], &opts).await.unwrap_err();
        assert!(
            matches!(
                err,
                qmp::QmpError::SetupTimeout {
                    step: "greeting",
                    ..
                }
            ),
            "{err}"
        );
        let start = Instant::now();
        let (second, _) = Client::connect_any(&q.sockets, &opts).await.unwrap();
        assert_eq!(second.path(), q.sockets[1]);
        // One greeting timeout on the busy socket, then the free one; the
        // bound is generous for a loaded host, the point is "not stuck".
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(!qmp::ping(&q.sockets[1..], Duration::from_millis(300)).await);
        drop(second);
        // The socket is free again once the client is dropped.
        assert!(qmp::ping(&q.sockets[1..], Duration::from_secs(10)).await);
    });
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("observer printed nothing within 30 s")
        .expect("observer ended early")
}

#[test]
fn observer_sees_stop_and_resume() {
    let Some(q) = start("observer_sees_stop_and_resume", 2, &[]) else {
        return;
    };
    rt().block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let sockets = vec![q.sockets[1].clone()];
        let observer = tokio::spawn(async move {
            qmp::observe("vm1", &sockets, false, &patient(), |l| {
                let _ = tx.send(l.to_owned());
            })
            .await
        });
        let connected = next(&mut rx).await;
        assert!(
            connected.starts_with("Connected to vm1 (qemu "),
            "{connected}"
        );

        let (control, _) = Client::connect(&q.sockets[0], &patient()).await.unwrap();
        control.execute("cont", None).await.unwrap();
        assert_eq!(next(&mut rx).await, "vm1: RESUME");
        control.execute("stop", None).await.unwrap();
        assert_eq!(next(&mut rx).await, "vm1: STOP");
        let status = control.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "paused");

        control.execute("quit", None).await.ok();
        let shutdown = next(&mut rx).await;
        assert!(
            shutdown.starts_with("vm1: SHUTDOWN: ") && shutdown.contains("host-qmp-quit"),
            "{shutdown}"
        );
        assert_eq!(next(&mut rx).await, "vm1: QMP socket closed.");
        observer.await.unwrap().unwrap();
    });
}

#[test]
fn query_pci_and_cpus() {
    let Some(q) = start(
        "query_pci_and_cpus",
        1,
        &[
            "-device",
            "pcie-root-port,id=rp1,bus=pcie.0,addr=0x2.0x0,chassis=1",
        ],
    ) else {
        return;
    };
    rt().block_on(async {
        let pci = qmp::query(&q.sockets, Query::Pci, &patient())
            .await
            .unwrap();
        let devices = pci[0]["devices"].as_array().expect("bus 0 devices");
        let find = |slot: u64, func: u64| {
            devices
                .iter()
                .find(|d| d["slot"] == slot && d["function"] == func)
                .cloned()
                .unwrap_or(Value::Null)
        };
        // The q35 host bridge, the LPC bridge, and the root port we added.
        assert_eq!(find(0, 0)["id"]["device"], 0x29c0, "{pci}");
        assert_eq!(find(31, 0)["id"]["device"], 0x2918, "{pci}");
        assert_eq!(find(2, 0)["qdev_id"], "rp1", "{pci}");
        assert!(qmp::pretty_tabs(&pci).contains("\n\t{\n\t\t\"bus\": 0,"));

        let cpus = qmp::query(&q.sockets, Query::Cpus, &patient())
            .await
            .unwrap();
        assert_eq!(cpus.as_array().map(Vec::len), Some(1), "{cpus}");
        assert_eq!(cpus[0]["cpu-index"], 0);
    });
}

#[test]
fn shutdown_of_paused_guest_ends_with_quit() {
    let Some(mut q) = start("shutdown_of_paused_guest_ends_with_quit", 1, &[]) else {
        return;
    };
    q.watch_exit();
    let mut lines = Vec::new();
    let start = Instant::now();
    let outcome = rt().block_on(qmp::shutdown(
        "vm1",
        &q.sockets,
        &ShutdownOptions {
            wait: true,
            timeout: Some(Duration::from_millis(1250)),
            powerdown_interval: Duration::from_millis(500),
            client: patient(),
            ..ShutdownOptions::default()
        },
        |l| lines.push(l.to_owned()),
    ));
    let returned = Instant::now();
    let outcome = outcome.unwrap();
    assert_eq!(outcome, ShutdownOutcome::Completed { quit_sent: true });
    assert!(start.elapsed() >= Duration::from_millis(1250));
    let (exited, status) = q
        .exit_instant(Duration::from_secs(5))
        .expect("QEMU still running after shutdown returned");
    assert!(status.is_some());
    assert!(!q.is_running());
    // Afterwards the socket is gone or refuses: "not running".
    let err = rt()
        .block_on(Client::connect(&q.sockets[0], &Options::default()))
        .unwrap_err();
    assert!(err.is_not_running(), "{err}");

    // The socket closes while the process exits, so shutdown() may return
    // a little before waitpid() does; both orders are measured.
    let delta_us = if returned >= exited {
        returned.duration_since(exited).as_micros() as i64
    } else {
        -(exited.duration_since(returned).as_micros() as i64)
    };
    println!("QEMU exit -> shutdown() returned: {delta_us} us");
    // Typically well under 10 ms; the bound only catches "noticed late"
    // (e.g. by polling) on a loaded host.
    assert!(
        delta_us < 2_000_000,
        "shutdown returned {delta_us} us after exit"
    );

    // A paused guest ignores ACPI: powerdowns, POWERDOWN events, then quit.
    assert_eq!(lines[0], "vm1: Issued shutdown command.");
    assert!(lines.contains(&"vm1: POWERDOWN".to_owned()), "{lines:#?}");
    let quit = lines
        .iter()
        .position(|l| l == "vm1: Timeout expired. Sending QUIT message.")
        .expect("no quit");
    assert!(lines[quit + 1..]
        .iter()
        .any(|l| l.starts_with("vm1: SHUTDOWN: ") && l.contains("host-qmp-quit")));
    assert_eq!(
        lines.last().unwrap(),
        "vm1: QMP socket closed. Shutdown complete."
    );
    // Powerdown at 0, 0.5 and (unless the host is slow) 1.0 s; QEMU
    // handles them before the quit, so all their events arrive.
    let powerdowns = lines.iter().filter(|l| *l == "vm1: POWERDOWN").count();
    assert!((2..=3).contains(&powerdowns), "{lines:#?}");
}
