//! machina's Cockpit page in a real browser: starts `cockpit-ws` on
//! 127.0.0.1 with a local session (no login, no systemd) and the page in a
//! private `$XDG_DATA_HOME`, configured (through Cockpit's manifest override)
//! to run this build's `machina` on a copy of the example configuration, and
//! `gen --root` into a temporary tree; then drives headless Chromium over the
//! DevTools protocol on a pipe (`tests/cockpit/driver.mjs`, run by node) and
//! asserts on the page and the files. Screenshots go to
//! `target/cockpit-screenshots/`, or to `docs/` with
//! `MACHINA_UPDATE_SCREENSHOTS=1`.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A process started in its own process group, ended (the whole group, by
/// its pid) on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = Pid::from_raw(self.0.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (a bridge, a renderer).
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A port free on 127.0.0.1 at the time of asking.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn cockpit_page_in_chromium() {
    browser_test("cockpit_page_in_chromium", false);
}

/// Without administrative access (cockpit-ws and its bridge as `nobody`,
/// who has no superuser channel) the page says it is read-only and offers no
/// change.
#[test]
fn cockpit_page_read_only_without_admin() {
    if !common::is_root() {
        return common::skip(
            "cockpit_page_read_only_without_admin",
            "not running as root (needed to run cockpit-ws as nobody)",
        );
    }
    browser_test("cockpit_page_read_only_without_admin", true);
}

/// Starts cockpit-ws (as `nobody` when READ_ONLY) and runs the driver.
fn browser_test(test: &str, read_only: bool) {
    let Some(ws) = find(&["/usr/lib/cockpit/cockpit-ws", "/usr/libexec/cockpit-ws"]) else {
        return common::skip(
            test,
            "cockpit-ws is not installed (apt-get install cockpit-ws)",
        );
    };
    if on_path("cockpit-bridge").is_none() {
        return common::skip(test, "cockpit-bridge is not installed");
    }
    if find(&["/usr/share/cockpit/shell/index.html"]).is_none() {
        return common::skip(
            test,
            "the Cockpit shell is not installed (apt-get install cockpit-system)",
        );
    }
    let Some(chromium) = find(&["/usr/bin/chromium"]) else {
        return common::skip(test, "chromium is not installed");
    };
    let Some(node) = on_path("node") else {
        return common::skip(test, "node is not installed");
    };

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let machina = PathBuf::from(env!("CARGO_BIN_EXE_machina"));
    let tmp = TempDir::new(if read_only { "cockpit-ro" } else { "cockpit" });
    let data = tmp.0.join("data");
    let xdg_config = tmp.0.join("xdg-config");
    let config = tmp.0.join("etc");
    let gen_root = tmp.0.join("root");
    copy_dir(&repo.join("cockpit/machina"), &data.join("cockpit/machina"));
    copy_dir(&repo.join("examples/config"), &config);
    std::fs::create_dir_all(xdg_config.join("cockpit")).unwrap();
    std::fs::create_dir_all(&gen_root).unwrap();
    let over = serde_json::json!({"config": {
        "machina": machina,
        "config-dir": config,
        "gen-root": gen_root,
        // Live updates show within a second in the test.
        "poll-seconds": 1,
    }});
    std::fs::write(
        xdg_config.join("cockpit/machina.override.json"),
        over.to_string(),
    )
    .unwrap();
    let shots = if std::env::var("MACHINA_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        repo.join("docs")
    } else {
        repo.join("target/cockpit-screenshots")
    };
    std::fs::create_dir_all(&shots).unwrap();

    let port = free_port();
    let log = std::fs::File::create(tmp.0.join("cockpit-ws.log")).unwrap();
    let started = Instant::now();
    let mut ws_cmd = Command::new(&ws);
    if read_only {
        // nobody reads the copies (the temporary tree is world-readable) and
        // this build's machina; it may write nothing.
        ws_cmd.uid(65534).gid(65534);
    }
    let _ws = Group(
        ws_cmd
            .args([
                "--no-tls",
                "--local-session=cockpit-bridge",
                "--address",
                "127.0.0.1",
                "--port",
            ])
            .arg(port.to_string())
            .env("XDG_DATA_HOME", &data)
            .env("XDG_CONFIG_HOME", &xdg_config)
            .env("HOME", &tmp.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start cockpit-ws"),
    );
    // Ready when it accepts a connection (a refused connect means not yet
    // listening); generous for a loaded machine.
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cockpit-ws did not listen on 127.0.0.1:{port}: {}",
            std::fs::read_to_string(tmp.0.join("cockpit-ws.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let driver = Command::new(node)
        .arg(repo.join("tests/cockpit/driver.mjs"))
        .env("MACHINA_BIN", &machina)
        .env("CONFIG_DIR", &config)
        .env("GEN_ROOT", &gen_root)
        .env("COCKPIT_URL", format!("http://127.0.0.1:{port}"))
        .env("CHROMIUM", &chromium)
        .env("PROFILE_DIR", tmp.0.join("chromium-profile"))
        .env("SHOT_DIR", &shots)
        .env("READ_ONLY", if read_only { "1" } else { "" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run node");
    let pid = driver.id();
    // The driver ends itself (it has its own deadline) and Chromium.
    let output = driver.wait_with_output().expect("wait for the driver");
    // Whatever is left of its group (Chromium's helpers), by its pid.
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "browser test failed ({}):\n{stdout}\n{}\ncockpit-ws log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|l| !l.contains("dbus"))
            .collect::<Vec<_>>()
            .join("\n"),
        std::fs::read_to_string(tmp.0.join("cockpit-ws.log")).unwrap_or_default()
    );
    assert!(stdout.contains("all assertions passed"), "{stdout}");
    println!("cockpit browser test: {:?} in all", started.elapsed());
}
