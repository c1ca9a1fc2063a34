//! An orderly shutdown seen from inside a real guest: Debian's kernel with a
//! busybox initramfs boots under TCG (KVM here cannot boot a guest), arms the
//! ACPI power button, and powers off when QMP `system_powerdown` presses it.
//! QEMU must report the guest's own `SHUTDOWN` and exit by itself.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::guest::{self, GuestImage};
use serde_json::Value;

/// Boot bound: about 6 s alone, much more with four builders on two cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// From `system_powerdown` to QEMU's exit; a working guest needs well under 1 s.
const POWERDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Kills and reaps QEMU if the test ends before it exited by itself.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A private directory for the console log and QMP socket, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("machina-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The console and QEMU's stderr, for failure messages.
fn diagnostics(dir: &Path) -> String {
    let console = read(&dir.join("console.log"));
    let tail: Vec<&str> = console.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "\n--- console (last 30 lines) ---\n{}\n--- qemu stderr ---\n{}",
        tail.join("\n"),
        read(&dir.join("qemu.stderr"))
    )
}

fn start_qemu(qemu: &Path, image: &GuestImage, dir: &Path) -> Qemu {
    let stderr = std::fs::File::create(dir.join("qemu.stderr")).expect("create qemu.stderr");
    let child = Command::new(qemu)
        .args([
            "-accel", "tcg", "-machine", "q35", "-cpu", "qemu64", "-m", "256",
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .arg("-append")
        .arg(&image.append)
        .arg("-chardev")
        .arg(format!(
            "socket,id=qmp,path={},server=on,wait=off",
            dir.join("qmp.sock").display()
        ))
        .args(["-mon", "chardev=qmp,mode=control"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn qemu-system-x86_64");
    Qemu(child)
}

/// A minimal QMP connection: one JSON object per line.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        // The guest printed on the console, so QEMU is up; still, a socket
        // that is not listening yet is "not yet", not a failure.
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("connect to the QMP socket: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        stream
            .set_read_timeout(Some(POWERDOWN_TIMEOUT))
            .expect("set QMP read timeout");
        let writer = stream.try_clone().expect("clone QMP stream");
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.next().expect("QMP greeting");
        assert!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        qmp.send(r#"{"execute":"qmp_capabilities"}"#);
        qmp.until_return();
        qmp
    }

    /// The next message, or `None` at end of stream.
    fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("QMP sent invalid JSON")),
            Err(e) => panic!("reading QMP: {e}"),
        }
    }

    fn send(&mut self, command: &str) {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .expect("write QMP command");
    }

    /// Skips events until the command's reply; panics on an error reply.
    fn until_return(&mut self) {
        loop {
            let msg = self.next().expect("QMP closed before replying");
            assert!(msg.get("error").is_none(), "QMP error: {msg}");
            if msg.get("return").is_some() {
                return;
            }
        }
    }
}

#[test]
fn guest_powers_off_on_acpi_power_button() {
    const TEST: &str = "guest_powers_off_on_acpi_power_button";
    if !common::is_root() {
        return common::skip(TEST, "not running as root");
    }
    let Some(qemu) = common::qemu_binary() else {
        return common::skip(TEST, "qemu-system-x86_64 is not installed");
    };
    let started = Instant::now();
    let Some(image) = guest::guest_image(TEST) else {
        return;
    };
    let image_time = started.elapsed();
    // A second call must hit the cache, and cheaply.
    let again = Instant::now();
    let cached = guest::guest_image(TEST).expect("cached guest image");
    let cache_hit = again.elapsed();
    assert_eq!(cached.initrd, image.initrd);
    assert!(
        cache_hit < Duration::from_millis(100),
        "guest_image cache hit took {cache_hit:?}"
    );

    let scratch = Scratch::new("guest-boot");
    let dir = scratch.0.clone();
    let boot_start = Instant::now();
    let mut vm = start_qemu(&qemu, &image, &dir);

    // Wait for the guest to arm its power button.
    let console = dir.join("console.log");
    loop {
        let text = read(&console);
        if text.contains(guest::READY_MARKER) {
            break;
        }
        assert!(
            !text.contains(guest::ERROR_MARKER),
            "guest /init failed{}",
            diagnostics(&dir)
        );
        if let Some(status) = vm.0.try_wait().expect("poll qemu") {
            panic!(
                "QEMU exited ({status}) before the guest was ready{}",
                diagnostics(&dir)
            );
        }
        assert!(
            boot_start.elapsed() < BOOT_TIMEOUT,
            "guest not ready after {BOOT_TIMEOUT:?}{}",
            diagnostics(&dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let boot_time = boot_start.elapsed();

    let mut qmp = Qmp::connect(&dir.join("qmp.sock"));
    let pressed = Instant::now();
    qmp.send(r#"{"execute":"system_powerdown"}"#);

    // Read until QEMU closes the socket; collect the events on the way.
    let mut events = Vec::new();
    let mut shutdown: Option<(Value, Duration)> = None;
    while let Some(msg) = qmp.next() {
        assert!(msg.get("error").is_none(), "QMP error: {msg}");
        if let Some(event) = msg.get("event").and_then(Value::as_str) {
            events.push(event.to_string());
            if event == "SHUTDOWN" && shutdown.is_none() {
                shutdown = Some((msg.clone(), pressed.elapsed()));
            }
        }
    }
    let closed = pressed.elapsed();

    // QEMU exits by itself (-no-reboot and a powered-off guest).
    let status = loop {
        if let Some(status) = vm.0.try_wait().expect("poll qemu") {
            break status;
        }
        assert!(
            pressed.elapsed() < POWERDOWN_TIMEOUT,
            "QEMU still running {POWERDOWN_TIMEOUT:?} after system_powerdown; events {events:?}{}",
            diagnostics(&dir)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let exited = pressed.elapsed();

    let (event, to_shutdown) = shutdown.unwrap_or_else(|| {
        panic!(
            "no SHUTDOWN event after system_powerdown; events {events:?}{}",
            diagnostics(&dir)
        )
    });
    assert_eq!(
        event["data"]["guest"],
        Value::Bool(true),
        "SHUTDOWN not caused by the guest: {event}"
    );
    assert_eq!(
        event["data"]["reason"],
        "guest-shutdown",
        "SHUTDOWN for another reason: {event}{}",
        diagnostics(&dir)
    );
    assert!(
        events.iter().any(|e| e == "POWERDOWN"),
        "no POWERDOWN event: {events:?}"
    );
    assert!(
        status.success(),
        "QEMU exited with {status}{}",
        diagnostics(&dir)
    );
    let console_text = read(&console);
    assert!(
        console_text.contains(guest::POWER_BUTTON_MARKER),
        "the guest's power-button handler did not run{}",
        diagnostics(&dir)
    );

    println!(
        "guest image {image_time:?} (cache hit {cache_hit:?}); boot to ready {boot_time:?}; \
         system_powerdown to SHUTDOWN {to_shutdown:?}, to socket close {closed:?}, \
         to QEMU exit {exited:?}"
    );
}
