//! A real systemd booted in `systemd-nspawn`, for tests that need units
//! started, stopped and inspected by systemd itself (TESTING.md, "Real
//! systemd inside systemd-nspawn").
//!
//! The container boots the host's own `/usr` on a volatile root, with the
//! host's `/dev/kvm` and `/dev/net/tun` bound in and a directory of test
//! binaries bound read-only at `/opt/machina`. Commands run inside with
//! `nsenter -t PID -a`. Dropping the [`Container`] stops it and removes what
//! nspawn leaves behind.
//!
//! ```ignore
//! let Some(c) = nspawn::Container::boot("my_test", &bin_dir) else { return };
//! c.write_unit("machina-qemu-vm.service", &text);
//! c.daemon_reload();
//! c.exec_ok(&["systemctl", "start", "machina-qemu-vm.service"]);
//! ```

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use machina::systemd::control::Systemctl;

/// Where the bound binary directory appears inside the container.
pub const BIN_MOUNT: &str = "/opt/machina";

const NSPAWN: &str = "/usr/bin/systemd-nspawn";
const NSENTER: &str = "/usr/bin/nsenter";
/// Generous: several containers boot at once in the suite, and other work
/// loads the host (a boot took over 60 s with both cores busy).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How often a start-up still under way is checked for a failed D-Bus.
const DBUS_CHECK: Duration = Duration::from_secs(5);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running container with systemd as PID 1.
pub struct Container {
    name: String,
    nspawn: Child,
    pid: u32,
    log: PathBuf,
    preset: PathBuf,
    notify: PathBuf,
}

/// What is missing for [`Container::boot`], or `None` if nothing is.
pub fn missing_prerequisite() -> Option<String> {
    if !super::is_root() {
        return Some("not running as root".into());
    }
    for p in [NSPAWN, NSENTER, "/usr/lib/systemd/systemd"] {
        if !Path::new(p).exists() {
            return Some(format!(
                "{p} is missing (apt-get install systemd-container)"
            ));
        }
    }
    for p in ["/dev/kvm", "/dev/net/tun"] {
        if !Path::new(p).exists() {
            return Some(format!("{p} is missing"));
        }
    }
    None
}

impl Container {
    /// Boots a container with `bin_dir` bound at [`BIN_MOUNT`], or reports
    /// a SKIP for `test` and returns `None` when a prerequisite is missing.
    /// Panics (failing the test) when the prerequisites are there but the
    /// boot fails.
    pub fn boot(test: &str, bin_dir: &Path) -> Option<Container> {
        Container::boot_with(test, bin_dir, &[])
    }

    /// [`Container::boot`] with more host paths (device nodes) bound in at
    /// the same place.
    pub fn boot_with(test: &str, bin_dir: &Path, binds: &[&Path]) -> Option<Container> {
        if let Some(why) = missing_prerequisite() {
            super::skip(test, &why);
            return None;
        }
        match Container::try_boot_with(bin_dir, binds) {
            Ok(c) => Some(c),
            Err(e) => panic!("{test}: cannot boot systemd in nspawn: {e}"),
        }
    }

    /// Boots a container; the error says what went wrong, with the tail of
    /// nspawn's console log.
    pub fn try_boot(bin_dir: &Path) -> Result<Container, String> {
        Container::try_boot_with(bin_dir, &[])
    }

    /// [`Container::try_boot`] with more host paths bound in.
    pub fn try_boot_with(bin_dir: &Path, binds: &[&Path]) -> Result<Container, String> {
        Container::try_boot_image(None, bin_dir, binds)
    }

    /// Boots the root file system `root` (a [`debian_root`]) instead of the
    /// host's, with a throw-away overlay on top (packages installed inside
    /// vanish with the container), `bin_dir` bound at [`BIN_MOUNT`].
    pub fn boot_root(test: &str, root: &Path, bin_dir: &Path) -> Option<Container> {
        if let Some(why) = missing_prerequisite() {
            super::skip(test, &why);
            return None;
        }
        match Container::try_boot_image(Some(root), bin_dir, &[]) {
            Ok(c) => Some(c),
            Err(e) => panic!("{test}: cannot boot systemd in nspawn: {e}"),
        }
    }

    /// Boots, and boots a fresh container once more when the first one's
    /// start-up fails. That start-up is the host's own OS (or the cached
    /// Debian root), not machina: D-Bus in it failed to start on a CI host
    /// once (stop 16) and held the boot for the whole timeout. The first
    /// failure, with the container's own account of it, is printed.
    fn try_boot_image(
        root: Option<&Path>,
        bin_dir: &Path,
        binds: &[&Path],
    ) -> Result<Container, String> {
        match Container::boot_once(root, bin_dir, binds) {
            Ok(c) => Ok(c),
            Err(e) => {
                eprintln!("nspawn: a container's start-up failed, booting another: {e}");
                Container::boot_once(root, bin_dir, binds)
            }
        }
    }

    fn boot_once(
        root: Option<&Path>,
        bin_dir: &Path,
        binds: &[&Path],
    ) -> Result<Container, String> {
        let name = format!(
            "mt-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let log = std::env::temp_dir().join(format!("machina-{name}.log"));
        let logf = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let logf2 = logf.try_clone().map_err(|e| e.to_string())?;
        // A first boot enables, by preset, every service installed on the
        // host (databases, web consoles, wait-online units): under load they
        // hold the start-up (READY=1) for minutes. The tests need systemd and
        // D-Bus only, so everything else stays disabled.
        let preset = std::env::temp_dir().join(format!("machina-{name}.preset"));
        std::fs::write(
            &preset,
            "enable dbus.socket\nenable dbus.service\nenable dbus-broker.service\ndisable *\n",
        )
        .map_err(|e| format!("{}: {e}", preset.display()))?;
        let mut preset_bind = OsString::from("--bind-ro=");
        preset_bind.push(&preset);
        preset_bind.push(":/etc/systemd/system-preset/00-machina-test.preset");
        let mut bind = OsString::from("--bind-ro=");
        bind.push(bin_dir.as_os_str());
        bind.push(":");
        bind.push(BIN_MOUNT);
        // nspawn reports on this socket (sd_notify): the leader's pid, then
        // READY=1 once the container's systemd finished starting up
        // (`--notify-ready=yes`) — the event `is-system-running --wait`
        // polls for.
        let notify_path = std::env::temp_dir().join(format!("machina-{name}.notify"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .map_err(|e| format!("{}: {e}", notify_path.display()))?;
        let nspawn = Command::new(NSPAWN)
            .env("NOTIFY_SOCKET", &notify_path)
            // Only the unified hierarchy together with the BPF syscall filter
            // makes DeviceAllow= enforced inside the container.
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .args(match root {
                None => vec![OsString::from("-D"), "/".into(), "--volatile=yes".into()],
                Some(r) => vec!["-D".into(), r.into(), "--volatile=overlay".into()],
            })
            .arg("-b")
            // No D-Bus on the host: neither registration nor a scope unit.
            .args(["--register=no", "--keep-unit", "--private-network"])
            .args(["--console=read-only", "--notify-ready=yes", "-M", &name])
            .args(["--bind=/dev/kvm", "--bind=/dev/net/tun"])
            .arg("--system-call-filter=bpf")
            .arg(&bind)
            .arg(&preset_bind)
            .args(binds.iter().map(|p| {
                let mut a = OsString::from("--bind=");
                a.push(p.as_os_str());
                a
            }))
            // The container has no network (--private-network), so nothing
            // can wait for it: masked from the start, network-online.target
            // (wanted by machina's units, and by cockpit-motd.service when
            // Cockpit is installed on the host) is reached at once instead
            // of holding the start-up for wait-online's 2 min.
            .args([
                "--",
                "systemd.firstboot=off",
                "systemd.mask=systemd-networkd-wait-online.service",
                "systemd.mask=NetworkManager-wait-online.service",
            ])
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            .spawn()
            .map_err(|e| format!("cannot run {NSPAWN}: {e}"))?;
        let mut c = Container {
            name,
            nspawn,
            pid: 0,
            log,
            preset,
            notify: notify_path,
        };
        let t0 = Instant::now();
        c.pid = c.wait_ready(&notify)?;
        // "degraded" (some unrelated unit failed in the minimal boot) is
        // still a working systemd.
        let out = c.exec(&["systemctl", "is-system-running"]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if state != "running" && state != "degraded" {
            return Err(format!(
                "system state is {state:?} after start-up, not running; {}{}",
                c.log_tail(),
                c.boot_diagnostics()
            ));
        }
        eprintln!("nspawn {}: running after {:?}", c.name, t0.elapsed());
        Ok(c)
    }

    /// Waits for nspawn's READY=1 (the container's systemd finished
    /// starting up) and returns the container's PID 1 as nspawn reported
    /// it. Fails when nspawn exits first, when D-Bus (which the tests need)
    /// has failed in it, or after [`BOOT_TIMEOUT`].
    fn wait_ready(&mut self, notify: &UnixDatagram) -> Result<u32, String> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut next_check = Instant::now() + DBUS_CHECK;
        let mut pid = None;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "systemd still starting after {BOOT_TIMEOUT:?}; {}{}",
                    self.log_tail(),
                    self.boot_diagnostics()
                ));
            }
            // Short reads so that nspawn dying is noticed (it sends nothing
            // then).
            let _ = notify.set_read_timeout(Some(left.min(Duration::from_secs(1))));
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    for line in msg.lines() {
                        if let Some(p) = line.strip_prefix("X_NSPAWN_LEADER_PID=") {
                            pid = p.parse().ok();
                            self.pid = pid.unwrap_or(0);
                        }
                        if line == "READY=1" {
                            return pid.ok_or_else(|| {
                                format!(
                                    "nspawn said READY=1 but not its leader's pid; {}",
                                    self.log_tail()
                                )
                            });
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if let Ok(Some(status)) = self.nspawn.try_wait() {
                        return Err(format!("nspawn exited ({status}); {}", self.log_tail()));
                    }
                }
                Err(e) => return Err(format!("nspawn notify socket: {e}")),
            }
            // A failed D-Bus does not end the start-up: logind and others
            // keep waiting for it until the timeout. Checked whether or not
            // nspawn spoke: it sends a STATUS= line every half second while
            // a job waits.
            if self.pid != 0 && Instant::now() >= next_check {
                next_check = Instant::now() + DBUS_CHECK;
                let failed = self.exec(&["systemctl", "is-failed", "--quiet", "dbus.service"]);
                if failed.status.success() {
                    return Err(format!(
                        "dbus.service failed during start-up; {}{}",
                        self.log_tail(),
                        self.boot_diagnostics()
                    ));
                }
            }
        }
    }

    /// What the container's own systemd says about a start-up that does
    /// not finish: the jobs still queued, the failed units and the journal
    /// of D-Bus (the one service these tests need). Empty before nspawn
    /// reported its leader.
    fn boot_diagnostics(&self) -> String {
        if self.pid == 0 {
            return String::new();
        }
        let mut s = String::new();
        for cmd in [
            &["systemctl", "list-jobs", "--no-pager"][..],
            &["systemctl", "--failed", "--no-pager"],
            &[
                "systemctl",
                "status",
                "--no-pager",
                "dbus.service",
                "dbus.socket",
            ],
            &[
                "journalctl",
                "-b",
                "--no-pager",
                "-n",
                "60",
                "-u",
                "dbus.service",
                "-u",
                "dbus.socket",
            ],
            &[
                "journalctl",
                "-b",
                "--no-pager",
                "-n",
                "40",
                "-p",
                "warning",
            ],
        ] {
            // Bounded: a wedged container must not hang the report.
            let mut all = vec!["timeout", "20"];
            all.extend_from_slice(cmd);
            let out = self.exec(&all);
            s.push_str(&format!(
                "\n--- {} ({}):\n{}{}",
                cmd.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        s
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("nspawn log ({}):\n{tail}", self.log.display())
    }

    /// The machine name (unique per test process and container).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host PID of the container's systemd (its PID 1).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The container's root as seen from the host (`/proc/PID/root`).
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    /// A host path for `path` inside the container.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }

    /// Runs a command inside every namespace of the container.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new(NSENTER)
            .args(["-t", &self.pid.to_string(), "-a"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {NSENTER}: {e}"))
    }

    /// Runs a command inside and returns its stdout; panics with its stderr
    /// when it fails.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the bound `machina` inside with `args`; its stdout (panics
    /// when it fails).
    pub fn machina(&self, args: &[&str]) -> String {
        let bin = format!("{BIN_MOUNT}/machina");
        let mut all = vec![bin.as_str()];
        all.extend_from_slice(args);
        self.exec_ok(&all)
    }

    /// Writes a unit file to `/etc/systemd/system/<name>` inside.
    pub fn write_unit(&self, name: &str, text: &str) {
        let dir = self.path("/etc/systemd/system");
        // A first boot that enables nothing leaves the directory uncreated.
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Writes a file inside with the given mode, creating its parents.
    pub fn write_file(&self, path: &str, text: &str, mode: u32) {
        let p = self.path(path);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    /// `systemctl daemon-reload` inside.
    pub fn daemon_reload(&self) {
        self.exec_ok(&["systemctl", "daemon-reload"]);
    }

    /// machina's `systemctl` driver, aimed at this container's systemd (PIDs
    /// it reports are read from the container's `/proc`).
    pub fn systemctl(&self) -> Systemctl {
        Systemctl::wrapped(
            NSENTER,
            ["-t", &self.pid.to_string(), "-a", "/usr/bin/systemctl"]
                .iter()
                .map(OsString::from)
                .collect(),
            self.path("/proc"),
        )
    }

    /// The unit's journal (for assertion messages).
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            match self.nspawn.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if start.elapsed() > Duration::from_secs(10) => {
                    let _ = self.nspawn.kill();
                    let _ = self.nspawn.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!("nspawn {}: stopped in {:?}", self.name, start.elapsed());
        // nspawn leaves this behind (/run is not a tmpfs on these hosts).
        let _ = std::fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.name));
        // Failures already carry the log's tail or the unit's journal.
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.preset);
        let _ = std::fs::remove_file(&self.notify);
    }
}

/// Where [`debian_root`] keeps its cached root.
fn debian_root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/machina-debian")
}

/// Packages the cached root holds in its apt cache (downloaded, not
/// installed), so that a container without network can install them.
pub const DEBIAN_ROOT_DOWNLOADS: &[&str] = &["qemu-system-x86"];

/// Packages installed in the root on top of debootstrap's `--include`:
/// what Ansible needs on a managed host (its `apt` module needs
/// python3-apt). A root cached before one was added here gets it added.
pub const DEBIAN_ROOT_INSTALLS: &[&str] = &["python3", "python3-apt"];

/// A clean Debian 12 root made by `debootstrap` from the mirror in the
/// host's apt sources, with systemd, bash-completion, sudo and
/// [`DEBIAN_ROOT_INSTALLS`] installed and [`DEBIAN_ROOT_DOWNLOADS`] in its
/// apt cache. Cached under `target/machina-debian/` (about a minute to
/// make, once); boot it with [`Container::boot_root`]. Reports a SKIP and
/// returns `None` without root or debootstrap; panics when making it fails.
pub fn debian_root(test: &str) -> Option<PathBuf> {
    if let Some(why) = missing_prerequisite() {
        super::skip(test, &why);
        return None;
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        super::skip(test, "debootstrap is missing (apt-get install debootstrap)");
        return None;
    }
    let dir = debian_root_dir();
    let root = dir.join("bookworm");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    // One maker at a time (test processes run in parallel).
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {}: {e}", dir.display()));
    if root.join(".machina-ready").exists() {
        let missing = missing_installs(&root);
        if missing.is_empty() {
            return Some(root);
        }
        // Extended in place (test binaries run one after the other, so no
        // container runs on it now): keeps the cached root and its downloads.
        let t = Instant::now();
        if let Err(e) = install_in_root(&root, &missing) {
            panic!("{test}: cannot add {missing:?} to the Debian root: {e}");
        }
        eprintln!("Debian root: {missing:?} added in {:?}", t.elapsed());
        return Some(root);
    }
    let t = Instant::now();
    if let Err(e) = make_debian_root(&dir, &root) {
        let _ = std::fs::remove_dir_all(dir.join(format!("bookworm.tmp-{}", std::process::id())));
        panic!("{test}: cannot make the Debian root: {e}");
    }
    eprintln!("debootstrap root made in {:?}", t.elapsed());
    Some(root)
}

/// Runs a command on the host; the error names it, with its stderr's tail.
fn run_quiet(c: &mut Command) -> Result<(), String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(10).collect();
        Err(format!(
            "{c:?} failed ({}): {}",
            out.status,
            tail.join(" | ")
        ))
    }
}

/// `apt-get install -y -qq --no-install-recommends ARGS…` chrooted in `root`.
fn apt_in_root(root: &Path, args: &[&str], packages: &[&str]) -> Result<(), String> {
    run_quiet(
        Command::new("/usr/sbin/chroot")
            .arg(root)
            .args(["apt-get", "install", "-y", "-qq", "--no-install-recommends"])
            .args(args)
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Refreshes the root's package lists, installs `packages` and downloads
/// [`DEBIAN_ROOT_DOWNLOADS`] again (fresh lists may name newer versions
/// than those in the cache, which a container without network could not
/// fetch).
fn install_in_root(root: &Path, packages: &[&str]) -> Result<(), String> {
    run_quiet(
        Command::new("/usr/sbin/chroot")
            .arg(root)
            .args(["apt-get", "update", "-qq"]),
    )?;
    if !packages.is_empty() {
        apt_in_root(root, &[], packages)?;
    }
    apt_in_root(root, &["--download-only"], DEBIAN_ROOT_DOWNLOADS)
}

/// The [`DEBIAN_ROOT_INSTALLS`] that dpkg's status in `root` does not
/// list as installed.
fn missing_installs(root: &Path) -> Vec<&'static str> {
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap_or_default();
    let installed: Vec<&str> = status
        .split("\n\n")
        .filter(|stanza| stanza.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|stanza| stanza.lines().find_map(|l| l.strip_prefix("Package: ")))
        .collect();
    DEBIAN_ROOT_INSTALLS
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect()
}

fn make_debian_root(dir: &Path, root: &Path) -> Result<(), String> {
    let mirror = debian_mirror();
    let tmp = dir.join(format!("bookworm.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(root);
    run_quiet(
        Command::new("/usr/sbin/debootstrap")
            .args(["--variant=minbase"])
            .arg("--include=systemd,systemd-sysv,dbus,iproute2,procps,bash-completion,sudo")
            .args(["bookworm"])
            .arg(&tmp)
            .arg(&mirror),
    )?;
    std::fs::write(
        tmp.join("etc/apt/sources.list"),
        format!("deb {mirror} bookworm main\n"),
    )
    .map_err(|e| e.to_string())?;
    install_in_root(&tmp, DEBIAN_ROOT_INSTALLS)?;
    // A fresh machine identity per boot, and the container's own name.
    let _ = std::fs::remove_file(tmp.join("etc/hostname"));
    std::fs::write(tmp.join("etc/machine-id"), "").map_err(|e| e.to_string())?;
    std::fs::write(tmp.join(".machina-ready"), "").map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, root).map_err(|e| e.to_string())
}

/// The Debian mirror of the host's apt sources (deb822 `URIs:` or a
/// one-line `deb` entry), else deb.debian.org.
fn debian_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                texts.push(t);
            }
        }
    }
    for t in &texts {
        for line in t.lines() {
            let uri = if let Some(rest) = line.trim().strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.trim().strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(u) = uri.filter(|u| u.trim_end_matches('/').ends_with("/debian")) {
                return u.to_owned();
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}
