//! A bare, paused QEMU for QMP tests and benchmarks: q35, KVM, `qemu64`,
//! 128 MiB, `-S`, no devices, and `n` QMP sockets in a private temporary
//! directory. Started directly as root (the launcher is not involved).
//!
//! [`Qemu`] kills and reaps the process and removes the directory on drop,
//! even when the test fails. It waits on QEMU as its parent (this machine's
//! PID 1 reaps orphans only every ~2 s), optionally on a thread that records
//! the exact exit instant.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A private temporary directory, removed on drop.
/// A paused q35 VM with 128 MiB under KVM and no default devices: what
/// the QMP and launcher tests start (`-cpu host` aborts QEMU on these
/// nested-KVM machines, so `qemu64`).
pub const PAUSED_VM: &[&str] = &[
    "-S",
    "-machine",
    "q35",
    "-accel",
    "kvm",
    "-cpu",
    "qemu64",
    "-m",
    "128",
    "-nodefaults",
    "-display",
    "none",
];

pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/machina-<tag>-<pid>-<n>` (mode 0700).
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "machina-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(TempDir(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Connects to `sock` and reads QMP's greeting (then hangs up, which frees
/// the socket for the next client). Fails while QEMU does not listen yet.
pub fn greeting(sock: &Path, deadline: Instant) -> Result<(), String> {
    use std::io::BufRead;
    let s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| e.to_string())?;
    let left = deadline.saturating_duration_since(Instant::now());
    s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.contains("\"QMP\"") {
        Ok(())
    } else {
        Err(format!("not a QMP greeting: {line:?}"))
    }
}

/// A running paused QEMU.
pub struct Qemu {
    child: Option<Child>,
    pid: i32,
    waiter: Option<JoinHandle<(Instant, Option<ExitStatus>)>>,
    /// The QMP sockets, `qmp0.sock`, `qmp1.sock`, …
    pub sockets: Vec<PathBuf>,
    dir: TempDir,
}

impl Qemu {
    /// Starts QEMU with `sockets` QMP monitors and waits until every one
    /// greets. Fails with QEMU's stderr if it exits first.
    pub fn start(binary: &Path, sockets: usize) -> Result<Qemu, String> {
        Qemu::start_with(binary, sockets, &[])
    }

    /// Like [`Qemu::start`], with extra arguments (e.g. `-device …`).
    pub fn start_with(binary: &Path, sockets: usize, extra: &[&str]) -> Result<Qemu, String> {
        let dir = TempDir::new("qmp").map_err(|e| format!("temp dir: {e}"))?;
        let paths: Vec<PathBuf> = (0..sockets)
            .map(|i| dir.path().join(format!("qmp{i}.sock")))
            .collect();
        let mut cmd = Command::new(binary);
        cmd.args(PAUSED_VM);
        for (i, p) in paths.iter().enumerate() {
            cmd.arg("-chardev").arg(format!(
                "socket,id=qmp{i},path={},server=on,wait=off",
                p.display()
            ));
            cmd.arg("-mon").arg(format!("chardev=qmp{i},mode=control"));
        }
        cmd.args(extra);
        let stderr_path = dir.path().join("stderr");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        let mut q = Qemu {
            pid: child.id() as i32,
            child: Some(child),
            waiter: None,
            sockets: paths,
            dir,
        };
        // Ready means every monitor greets: QEMU creates the socket file
        // at bind() and listens later, so the file alone proves nothing.
        let deadline = Instant::now() + Duration::from_secs(30);
        for sock in q.sockets.clone() {
            loop {
                if let Some(child) = q.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                        return Err(format!("QEMU exited early ({status}): {err}"));
                    }
                }
                match greeting(&sock, deadline) {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!(
                            "no QMP greeting on {} within 30 s: {e}",
                            sock.display()
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }
        Ok(q)
    }

    /// QEMU's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The temporary directory holding the sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Hands the child to a thread that waits for it and records the
    /// instant `waitpid` returned: the exit time, measured from outside.
    pub fn watch_exit(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.waiter = Some(std::thread::spawn(move || {
                let status = child.wait().ok();
                (Instant::now(), status)
            }));
        }
    }

    /// Waits up to `limit` for the exit recorded by [`Qemu::watch_exit`].
    pub fn exit_instant(&mut self, limit: Duration) -> Option<(Instant, Option<ExitStatus>)> {
        let deadline = Instant::now() + limit;
        while self.waiter.as_ref().is_some_and(|w| !w.is_finished()) {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.waiter.take().and_then(|w| w.join().ok())
    }

    /// Whether the process still exists (not exited, or not yet reaped).
    pub fn is_running(&mut self) -> bool {
        match (&mut self.child, &self.waiter) {
            (Some(child), _) => matches!(child.try_wait(), Ok(None)),
            (None, Some(w)) => !w.is_finished(),
            (None, None) => false,
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(w) = self.waiter.take() {
            if !w.is_finished() {
                // The waiter thread holds the child; signal by pid. The pid
                // cannot have been reused: it is not reaped until `wait`
                // returns in that thread.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = w.join();
        }
    }
}
