//! The QMP client against a hostile peer: a fake QMP server on a UNIX socket
//! that misbehaves on purpose (oversized lines, garbage, silence, closing
//! mid-reply). This is not a mock of QEMU (tests/qmp_qemu.rs runs the real
//! one): it is what a compromised QEMU could do. The client must return an
//! error, never hang past its timeout, never panic.

#[path = "common/qemu.rs"]
mod qemu;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use machina::qmp::{self, Client, Options, QmpError, ShutdownOptions, ShutdownOutcome};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"#;

/// One accepted connection of the fake server.
struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Conn {
    async fn send(&mut self, line: &str) {
        let _ = self.wr.write_all(line.as_bytes()).await;
        let _ = self.wr.write_all(b"\r\n").await;
    }
    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.wr.write_all(bytes).await;
    }
    /// The next request, or `None` at EOF.
    async fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.rd.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("client sent invalid JSON")),
        }
    }
    /// Reads a request and answers it with `{"return": ret}`, plus the
    /// request's `id` if it had one (as QEMU does).
    async fn answer(&mut self, ret: Value) -> Option<Value> {
        let req = self.recv().await?;
        self.send(&with_id(json!({"return": ret}), &req)).await;
        Some(req)
    }
    /// Greeting plus `qmp_capabilities`, as QEMU does.
    async fn handshake(&mut self) {
        self.send(GREETING).await;
        let req = self.answer(json!({})).await.expect("no qmp_capabilities");
        assert_eq!(req["execute"], "qmp_capabilities");
    }
}

/// `reply` as a line, with `req`'s id copied when present.
fn with_id(mut reply: Value, req: &Value) -> String {
    if let Some(id) = req.get("id") {
        reply["id"] = id.clone();
    }
    reply.to_string()
}

/// Serves `script` on the first connection to a fresh socket.
struct Fake {
    _dir: qemu::TempDir,
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fake<F, Fut>(script: F) -> Fake
where
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = qemu::TempDir::new("qmpfake").unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let task = tokio::spawn(async move {
        if let Ok((stream, _)) = listener.accept().await {
            let (rd, wr) = stream.into_split();
            script(Conn {
                rd: BufReader::new(rd),
                wr,
            })
            .await;
        }
    });
    Fake {
        _dir: dir,
        path,
        task,
    }
}

fn short() -> Options {
    Options {
        connect_timeout: Duration::from_millis(300),
        greeting_timeout: Duration::from_millis(300),
        command_timeout: Duration::from_millis(300),
        ..Options::default()
    }
}

async fn connect(f: &Fake) -> Client {
    Client::connect(&f.path, &short()).await.unwrap().0
}

fn assert_within(start: Instant, limit: Duration) {
    let took = start.elapsed();
    assert!(took < limit, "took {took:?}, limit {limit:?}");
}

#[tokio::test]
async fn handshake_and_query() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        let req = c
            .answer(json!({"status": "prelaunch", "running": false}))
            .await
            .unwrap();
        // Compact and id-less by default: QEMU reads it byte by byte.
        assert_eq!(req, json!({"execute": "query-status"}));
        c.recv().await; // hold the socket open until the client leaves
    });
    let (client, greeting) = Client::connect(&f.path, &short()).await.unwrap();
    assert_eq!((greeting.qemu.major, greeting.qemu.minor), (7, 2));
    assert_eq!(greeting.capabilities, ["oob"]);
    let v = client.execute("query-status", None).await.unwrap();
    assert_eq!(v["status"], "prelaunch");
}

#[tokio::test]
async fn missing_directory_fails_at_once() {
    let dir = qemu::TempDir::new("qmpfake").unwrap();
    let start = Instant::now();
    let err = Client::connect(&dir.path().join("gone/nope.sock"), &short())
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    assert!(err.is_not_running());
    assert!(err.to_string().contains("nope.sock"), "{err}");
    assert_within(start, Duration::from_millis(100));
    let err = Client::connect_any(&[], &short()).await.unwrap_err();
    assert!(matches!(err, QmpError::NoSockets));
}

#[tokio::test]
async fn missing_socket_is_waited_for_until_the_connect_timeout() {
    let dir = qemu::TempDir::new("qmpfake").unwrap();
    let start = Instant::now();
    let err = Client::connect(&dir.path().join("nope.sock"), &short())
        .await
        .unwrap_err();
    assert!(err.is_not_running(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(250), "{err}");
    assert_within(start, Duration::from_secs(5));
}

/// A server that behaves like QEMU starting up: the socket file exists
/// (bound) `listen_after` before it listens, then it greets one client.
fn slow_listener(
    path: PathBuf,
    create_after: Duration,
    listen_after: Duration,
) -> std::thread::JoinHandle<()> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    std::thread::spawn(move || {
        std::thread::sleep(create_after);
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        std::thread::sleep(listen_after);
        listen(&fd, Backlog::new(4).unwrap()).unwrap();
        let listener = std::os::unix::net::UnixListener::from(fd);
        let (mut s, _) = listener.accept().unwrap();
        use std::io::{BufRead, Write};
        writeln!(s, "{GREETING}").unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        writeln!(s, r#"{{"return": {{}}}}"#).unwrap();
        line.clear();
        let _ = r.read_line(&mut line);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_not_listening_yet_is_not_yet() {
    // Issue 8 item 4: QEMU creates the file at bind() and listens later;
    // ECONNREFUSED (and ENOENT) then mean "not yet" within the timeout.
    let dir = qemu::TempDir::new("qmpfake").unwrap();
    let path = dir.path().join("qmp.sock");
    let server = slow_listener(
        path.clone(),
        Duration::from_millis(100),
        Duration::from_millis(300),
    );
    let opts = Options {
        connect_timeout: Duration::from_secs(20),
        greeting_timeout: Duration::from_secs(20),
        ..Options::default()
    };
    let start = Instant::now();
    let (client, greeting) = Client::connect(&path, &opts).await.unwrap();
    assert_eq!(greeting.qemu.package, "fake");
    assert!(start.elapsed() >= Duration::from_millis(400));
    drop(client);
    server.join().unwrap();
}

#[tokio::test]
async fn a_socket_that_never_listens_is_not_running() {
    let dir = qemu::TempDir::new("qmpfake").unwrap();
    let path = dir.path().join("qmp.sock");
    let _bound = {
        use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        fd
    };
    let start = Instant::now();
    let err = Client::connect(&path, &short()).await.unwrap_err();
    assert!(err.is_not_running(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(250), "{err}");
    assert_within(start, Duration::from_secs(5));
}

#[tokio::test]
async fn a_symlinked_socket_or_directory_is_refused() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        c.recv().await;
    });
    let dir = qemu::TempDir::new("qmpfake").unwrap();
    let link = dir.path().join("qmp.sock");
    std::os::unix::fs::symlink(&f.path, &link).unwrap();
    let err = Client::connect(&link, &short()).await.unwrap_err();
    assert!(matches!(err, QmpError::UnsafeSocket { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    let linked_dir = dir.path().join("qmp");
    std::os::unix::fs::symlink(f.path.parent().unwrap(), &linked_dir).unwrap();
    let err = Client::connect(&linked_dir.join("qmp.sock"), &short())
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::UnsafeSocket { .. }), "{err}");
    // The real path still works.
    Client::connect(&f.path, &short()).await.unwrap();
}

#[tokio::test]
async fn the_peer_must_have_the_expected_uid_and_gid() {
    let me = qmp::PeerIdentity {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let f = fake(|mut c| async move {
        c.send(GREETING).await;
        let _ = tx.send(c.recv().await);
    });
    let wrong = Options {
        peer: Some(qmp::PeerIdentity {
            uid: me.uid + 1,
            ..me
        }),
        ..short()
    };
    let err = Client::connect(&f.path, &wrong).await.unwrap_err();
    assert!(matches!(err, QmpError::WrongPeer { .. }), "{err}");
    assert!(err.to_string().contains("not the VM's own"), "{err}");
    // Refused before anything was sent: the server read end-of-stream.
    assert_eq!(rx.await.unwrap(), None);
    let f = fake(|mut c| async move {
        c.handshake().await;
        c.recv().await;
    });
    let right = Options {
        peer: Some(me),
        ..short()
    };
    Client::connect(&f.path, &right).await.unwrap();
}

#[tokio::test]
async fn server_that_never_greets() {
    let f = fake(|mut c| async move {
        c.recv().await;
    });
    let start = Instant::now();
    let err = Client::connect(&f.path, &short()).await.unwrap_err();
    assert!(
        matches!(
            err,
            QmpError::SetupTimeout {
                step: "greeting",
                ..
            }
        ),
        "{err}"
    );
    assert_within(start, Duration::from_millis(600));
}

#[tokio::test]
async fn server_that_greets_endless_blank_lines() {
    let f = fake(|mut c| async move {
        loop {
            c.send("").await;
            tokio::task::yield_now().await;
        }
    });
    let start = Instant::now();
    let err = Client::connect(&f.path, &short()).await.unwrap_err();
    assert!(
        matches!(
            err,
            QmpError::SetupTimeout {
                step: "greeting",
                ..
            }
        ),
        "{err}"
    );
    assert_within(start, Duration::from_millis(600));
}

#[tokio::test]
async fn first_line_not_a_greeting() {
    let f = fake(|mut c| async move {
        c.send(r#"{"return": {}}"#).await;
        c.recv().await;
    });
    let err = Client::connect(&f.path, &short()).await.unwrap_err();
    assert!(matches!(err, QmpError::BadGreeting { .. }), "{err}");
}

#[tokio::test]
async fn capabilities_never_answered() {
    let f = fake(|mut c| async move {
        c.send(GREETING).await;
        c.recv().await;
        c.recv().await;
    });
    let start = Instant::now();
    let err = Client::connect(&f.path, &short()).await.unwrap_err();
    assert!(
        matches!(
            err,
            QmpError::SetupTimeout {
                step: "capabilities reply",
                ..
            }
        ),
        "{err}"
    );
    assert_within(start, Duration::from_millis(600));
}

#[tokio::test]
async fn command_never_answered_times_out() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        // Read requests, never answer.
        while c.recv().await.is_some() {}
    });
    let client = connect(&f).await;
    let start = Instant::now();
    let err = client.execute("query-status", None).await.unwrap_err();
    assert!(
        matches!(err, QmpError::Timeout { ref command, .. } if command == "query-status"),
        "{err}"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(600),
        "{took:?}"
    );
}

#[tokio::test]
async fn closes_mid_reply() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        c.recv().await;
        c.send_raw(br#"{"return": {"status": "runn"#).await;
        // Dropping the connection closes it.
    });
    let client = Client::connect(
        &f.path,
        &Options {
            command_timeout: Duration::from_secs(10),
            ..short()
        },
    )
    .await
    .unwrap()
    .0;
    let mut events = client.events();
    let start = Instant::now();
    let err = client.execute("query-status", None).await.unwrap_err();
    assert!(
        matches!(err, QmpError::Closed { ref reason, .. } if reason.contains("mid-message")),
        "{err}"
    );
    // Promptly: long before the 10 s command timeout.
    assert_within(start, Duration::from_millis(200));
    // Subscribers see the end, later commands fail at once.
    assert!(matches!(
        events.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Closed)
    ));
    let start = Instant::now();
    assert!(client
        .execute("query-status", None)
        .await
        .unwrap_err()
        .is_closed());
    assert_within(start, Duration::from_millis(50));
    client.closed().await;
    assert!(client.close_reason().is_some());
}

#[tokio::test]
async fn oversized_line_closes_the_session() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        c.recv().await;
        // 4 MiB with no newline at all, then keep the socket open.
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..64 {
            c.send_raw(&chunk).await;
        }
        c.recv().await;
    });
    let client = Client::connect(
        &f.path,
        &Options {
            command_timeout: Duration::from_secs(10),
            ..short()
        },
    )
    .await
    .unwrap()
    .0;
    let start = Instant::now();
    let err = client.execute("query-status", None).await.unwrap_err();
    assert!(
        matches!(err, QmpError::Closed { ref reason, .. } if reason.contains("longer than")),
        "{err}"
    );
    assert_within(start, Duration::from_secs(2));
}

#[tokio::test]
async fn oversized_line_with_newline_is_refused_too() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        c.recv().await;
        let big = format!(
            r#"{{"return": "{}", "id": 2}}"#,
            "x".repeat(qmp::MAX_LINE + 10)
        );
        c.send(&big).await;
        c.recv().await;
    });
    let client = connect(&f).await;
    let err = client.execute("query-status", None).await.unwrap_err();
    assert!(err.is_closed(), "{err}");
}

#[tokio::test]
async fn garbage_is_tolerated_up_to_a_bound() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        let req = c.recv().await.unwrap();
        for junk in [
            "not json",
            "[1,2,3]",
            "\u{1}\u{2}",
            r#"{"event": 5}"#,
            r#"{"error": "flat"}"#,
            r#"{"hello": "unknown shape"}"#,
            r#"{"return": {}, "id": "machina.0.1"}"#,
            r#"{"return": {}, "id": 999999}"#,
            r#"{"error": {"class": "GenericError", "desc": "JSON parse error"}}"#,
        ] {
            c.send(junk).await;
        }
        c.send_raw(b"\xff\xfe\n").await;
        c.send(&json!({"return": {"ok": true}, "id": req["id"], "extra": [1]}).to_string())
            .await;
        // Now more garbage than allowed in a row.
        c.recv().await.unwrap();
        for _ in 0..20 {
            c.send("}}}").await;
        }
        c.recv().await;
    });
    let opts = Options {
        send_ids: true,
        ..short()
    };
    let client = Client::connect(&f.path, &opts).await.unwrap().0;
    let v = client.execute("query-status", None).await.unwrap();
    assert_eq!(v, json!({"ok": true}));
    let err = client.execute("query-status", None).await.unwrap_err();
    assert!(
        matches!(err, QmpError::Closed { ref reason, .. } if reason.contains("undecodable")),
        "{err}"
    );
}

#[tokio::test]
async fn random_bytes_never_panic() {
    // A deterministic xorshift stream of bytes, newlines included.
    let f = fake(|mut c| async move {
        c.handshake().await;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut bytes = Vec::with_capacity(1 << 20);
        for _ in 0..(1 << 20) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(if x.is_multiple_of(50) { b'\n' } else { x as u8 });
        }
        c.send_raw(&bytes).await;
        c.recv().await;
    });
    let client = connect(&f).await;
    let start = Instant::now();
    let err = client.execute("query-status", None).await.unwrap_err();
    assert!(
        err.is_closed() || matches!(err, QmpError::Timeout { .. }),
        "{err}"
    );
    assert_within(start, Duration::from_secs(1));
}

#[tokio::test]
async fn unknown_events_and_fields_decode() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        c.send(r#"{"event": "FROM_THE_FUTURE", "data": {"kind": "new-enum-value", "nested": {"a": [1, 2]}}, "timestamp": {"seconds": 1700000000, "microseconds": 42}, "new-top-level": true}"#).await;
        c.send(r#"{"event": "STOP", "timestamp": {"seconds": "not a number"}}"#)
            .await;
        c.recv().await;
    });
    let client = connect(&f).await;
    let mut events = client.events();
    let ev = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.name, "FROM_THE_FUTURE");
    assert_eq!(ev.data.as_ref().unwrap()["kind"], "new-enum-value");
    assert_eq!(ev.timestamp, Some((1_700_000_000, 42)));
    assert_eq!(
        qmp::format_event("vm1", &ev),
        r#"vm1: FROM_THE_FUTURE: {"kind":"new-enum-value","nested":{"a":[1,2]}}"#
    );
    assert_eq!(
        qmp::format_event_json("vm1", &ev),
        r#"{"vm":"vm1","event":"FROM_THE_FUTURE","data":{"kind":"new-enum-value","nested":{"a":[1,2]}},"timestamp":{"seconds":1700000000,"microseconds":42}}"#
    );
    let ev = events.recv().await.unwrap();
    assert_eq!((ev.name.as_str(), ev.timestamp), ("STOP", None));
    assert_eq!(qmp::format_event("vm1", &ev), "vm1: STOP");
}

#[tokio::test]
async fn late_reply_is_not_given_to_the_next_command() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        c.recv().await.unwrap();
        // Stay silent past the client's timeout, then answer both.
        let second = c.recv().await.unwrap();
        assert_eq!(second["arguments"]["n"], 2);
        c.send(r#"{"return": "first"}"#).await;
        c.send(r#"{"return": "second"}"#).await;
        c.recv().await;
    });
    let client = connect(&f).await;
    let err = client
        .execute("echo", Some(json!({"n": 1})))
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    let v = client.execute("echo", Some(json!({"n": 2}))).await.unwrap();
    assert_eq!(v, "second");
}

#[tokio::test]
async fn qmp_errors_become_command_errors() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        let req = c.recv().await.unwrap();
        c.send(&with_id(
            json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}),
            &req,
        ))
        .await;
        c.recv().await;
    });
    let client = connect(&f).await;
    let err = client.execute("nope", None).await.unwrap_err();
    match err {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "nope");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("not been found"));
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_get_their_own_replies() {
    // With ids the server may answer in any order (here reversed); without
    // ids, in order, as QEMU does for in-band commands.
    for send_ids in [true, false] {
        concurrent_commands(send_ids).await;
    }
}

async fn concurrent_commands(send_ids: bool) {
    const N: usize = 20;
    let f = fake(move |mut c| async move {
        c.handshake().await;
        let mut reqs = Vec::new();
        for _ in 0..N {
            reqs.push(c.recv().await.unwrap());
        }
        assert_eq!(reqs[0].get("id").is_some(), send_ids);
        if send_ids {
            reqs.reverse();
        }
        // Echo each command's argument.
        for req in &reqs {
            c.send(&with_id(json!({"return": req["arguments"]["n"]}), req))
                .await;
        }
        c.recv().await;
    });
    let opts = Options {
        send_ids,
        ..short()
    };
    let client = Client::connect(&f.path, &opts).await.unwrap().0;
    let tasks: Vec<_> = (0..N)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { (n, client.execute("echo", Some(json!({"n": n}))).await) })
        })
        .collect();
    for t in tasks {
        let (n, res) = t.await.unwrap();
        assert_eq!(res.unwrap(), json!(n));
    }
}

#[tokio::test]
async fn connect_any_skips_a_busy_socket() {
    let busy = fake(|mut c| async move {
        c.recv().await; // accepted but never greets, like a taken QEMU socket
    });
    let ok = fake(|mut c| async move {
        c.handshake().await;
        c.recv().await;
    });
    let start = Instant::now();
    let (client, _) = Client::connect_any(&[busy.path.clone(), ok.path.clone()], &short())
        .await
        .unwrap();
    assert_eq!(client.path(), ok.path);
    assert_within(start, Duration::from_millis(700));

    // All failing: the first error is reported.
    let dir = qemu::TempDir::new("qmpfake").unwrap();
    let err = Client::connect_any(
        &[dir.path().join("a.sock"), dir.path().join("b.sock")],
        &short(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("a.sock"), "{err}");
}

fn fast_shutdown(wait: bool, timeout: Option<Duration>) -> ShutdownOptions {
    ShutdownOptions {
        wait,
        timeout,
        powerdown_interval: Duration::from_millis(200),
        quit_grace: Duration::from_millis(300),
        client: short(),
    }
}

#[tokio::test]
async fn shutdown_completes_when_the_socket_closes() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        let req = c.answer(json!({})).await.unwrap();
        assert_eq!(req["execute"], "system_powerdown");
        c.send(r#"{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 2}}"#)
            .await;
        c.send(r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1, "microseconds": 3}}"#).await;
    });
    let mut lines = Vec::new();
    let out = qmp::shutdown(
        "vm1",
        std::slice::from_ref(&f.path),
        &fast_shutdown(true, None),
        |l| lines.push(l.to_owned()),
    )
    .await
    .unwrap();
    assert_eq!(out, ShutdownOutcome::Completed { quit_sent: false });
    assert_eq!(
        lines,
        [
            "vm1: Issued shutdown command.",
            "vm1: POWERDOWN",
            r#"vm1: SHUTDOWN: {"guest":true,"reason":"guest-shutdown"}"#,
            "vm1: QMP socket closed. Shutdown complete.",
        ]
    );
}

#[tokio::test]
async fn shutdown_without_wait_only_issues() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        c.answer(json!({})).await;
        c.recv().await;
    });
    let mut lines = Vec::new();
    let out = qmp::shutdown(
        "vm1",
        std::slice::from_ref(&f.path),
        &fast_shutdown(false, None),
        |l| lines.push(l.to_owned()),
    )
    .await
    .unwrap();
    assert_eq!(out, ShutdownOutcome::Issued);
    assert_eq!(lines, ["vm1: Issued shutdown command."]);
}

#[tokio::test]
async fn shutdown_repeats_powerdown_then_quits() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let f = fake(|mut c| async move {
        c.handshake().await;
        let start = Instant::now();
        let mut log = Vec::new();
        loop {
            let req = c.answer(json!({})).await.unwrap();
            let cmd = req["execute"].as_str().unwrap().to_owned();
            log.push((cmd.clone(), start.elapsed()));
            if cmd == "quit" {
                break;
            }
        }
        let _ = tx.send(log);
        // Returning closes the socket, as QEMU exiting does.
    });
    let mut lines = Vec::new();
    let start = Instant::now();
    let out = qmp::shutdown(
        "vm1",
        std::slice::from_ref(&f.path),
        &fast_shutdown(false, Some(Duration::from_millis(500))),
        |l| lines.push(l.to_owned()),
    )
    .await
    .unwrap();
    assert_eq!(out, ShutdownOutcome::Completed { quit_sent: true });
    assert_within(start, Duration::from_millis(1000));
    let log = rx.await.unwrap();
    let cmds: Vec<&str> = log.iter().map(|(c, _)| c.as_str()).collect();
    // Powerdown at 0, 200, 400 ms, quit at 500 ms.
    assert_eq!(
        cmds,
        [
            "system_powerdown",
            "system_powerdown",
            "system_powerdown",
            "quit"
        ],
        "{log:?}"
    );
    assert!(log[3].1 >= Duration::from_millis(490), "{log:?}");
    assert_eq!(
        lines,
        [
            "vm1: Issued shutdown command.",
            "vm1: Timeout expired. Sending QUIT message.",
            "vm1: QMP socket closed. Shutdown complete.",
        ]
    );
}

#[tokio::test]
async fn shutdown_fails_when_quit_is_ignored() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        // Accept everything, never exit.
        while c.answer(json!({})).await.is_some() {}
    });
    let start = Instant::now();
    let err = qmp::shutdown(
        "vm1",
        std::slice::from_ref(&f.path),
        &fast_shutdown(true, Some(Duration::from_millis(100))),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, QmpError::QuitIgnored { .. }), "{err}");
    assert!(err.to_string().starts_with("vm1: "), "{err}");
    // 100 ms timeout + 300 ms grace.
    assert_within(start, Duration::from_millis(800));
}

#[tokio::test]
async fn shutdown_refused_is_an_error() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        let req = c.recv().await.unwrap();
        c.send(&with_id(
            json!({"error": {"class": "GenericError", "desc": "no"}}),
            &req,
        ))
        .await;
        c.recv().await;
    });
    let err = qmp::shutdown(
        "vm1",
        std::slice::from_ref(&f.path),
        &fast_shutdown(true, None),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, QmpError::Command { .. }), "{err}");
}

#[tokio::test]
async fn observe_prints_events_until_close() {
    for json_mode in [false, true] {
        let f = fake(|mut c| async move {
            c.handshake().await;
            // Events right after the handshake must not be lost.
            c.send(r#"{"event": "STOP", "timestamp": {"seconds": 3, "microseconds": 4}}"#)
                .await;
            c.send(r#"{"event": "RESUME", "data": {"x": 1}}"#).await;
        });
        let mut lines = Vec::new();
        qmp::observe(
            "vm1",
            std::slice::from_ref(&f.path),
            json_mode,
            &short(),
            |l| lines.push(l.to_owned()),
        )
        .await
        .unwrap();
        if json_mode {
            assert_eq!(
                lines,
                [
                    r#"{"vm":"vm1","event":"STOP","timestamp":{"seconds":3,"microseconds":4}}"#,
                    r#"{"vm":"vm1","event":"RESUME","data":{"x":1}}"#,
                ]
            );
        } else {
            assert_eq!(
                lines,
                [
                    "Connected to vm1 (qemu 7.2.0 / fake, capabilities: [oob])",
                    "vm1: STOP",
                    r#"vm1: RESUME: {"x":1}"#,
                    "vm1: QMP socket closed.",
                ]
            );
        }
    }
}

#[tokio::test]
async fn query_and_ping() {
    let f = fake(|mut c| async move {
        c.handshake().await;
        let req = c.answer(json!([{"bus": 0, "devices": []}])).await.unwrap();
        assert_eq!(req["execute"], "query-pci");
    });
    let v = qmp::query(std::slice::from_ref(&f.path), qmp::Query::Pci, &short())
        .await
        .unwrap();
    assert_eq!(v, json!([{"bus": 0, "devices": []}]));
    assert_eq!(
        qmp::pretty_tabs(&v),
        "[\n\t{\n\t\t\"bus\": 0,\n\t\t\"devices\": []\n\t}\n]"
    );

    let up = fake(|mut c| async move {
        c.handshake().await;
        c.recv().await;
    });
    let silent = fake(|mut c| async move {
        c.recv().await;
    });
    assert!(qmp::ping(std::slice::from_ref(&up.path), Duration::from_millis(300)).await);
    let start = Instant::now();
    assert!(
        !qmp::ping(
            std::slice::from_ref(&silent.path),
            Duration::from_millis(200)
        )
        .await
    );
    assert_within(start, Duration::from_millis(500));
}

#[tokio::test]
async fn dropping_the_client_frees_the_socket() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let f = fake(|mut c| async move {
        c.handshake().await;
        // EOF arrives once the client (and its reader task) are gone.
        let eof = c.recv().await.is_none();
        let _ = tx.send(eof);
    });
    let client = connect(&f).await;
    drop(client);
    let eof = tokio::time::timeout(Duration::from_secs(1), rx)
        .await
        .unwrap()
        .unwrap();
    assert!(eof);
    let _ = UnixStream::connect(&f.path).await; // the listener is gone; must not matter
}

/// The CLI runs these for many VMs at once with `tokio::spawn`, so their
/// futures must be `Send` (checked at compile time).
#[test]
fn operation_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    let paths: Vec<PathBuf> = Vec::new();
    let opts = Options::default();
    let sopts = ShutdownOptions::default();
    let (tx, _rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    assert_send(qmp::shutdown("vm", &paths, &sopts, move |l| {
        let _ = tx.send(l.to_owned());
    }));
    assert_send(qmp::observe("vm", &paths, true, &opts, move |l| {
        let _ = tx2.send(l.to_owned());
    }));
    assert_send(qmp::query(&paths, qmp::Query::Cpus, &opts));
    assert_send(qmp::ping(&paths, Duration::from_millis(1)));
    assert_send(Client::connect_any(&paths, &opts));
}
