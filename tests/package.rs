//! The distribution packages as an administrator gets them: `scripts/package`
//! builds the .deb and .rpm; the .deb is installed with `apt-get` into a
//! clean Debian 12 root booted with systemd in systemd-nspawn (QEMU comes
//! from Debian as its dependency), runs a VM, is upgraded under the running
//! VM, removed and purged. Also: lintian, the .rpm's file list against the
//! .deb's, man pages rendered by `man`, and bash completion through `sudo`
//! in a real interactive bash with Debian's bash-completion (tmux).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::nspawn::{self, Container, BIN_MOUNT};
use common::TempDir;
use machina::plan::{Access, Grant, Plan};
use machina::systemd::unit::{self, UnitOptions};
use serde_json::json;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const POOL: &str = "/var/lib/machina-pkgtest/disks";
const GUEST: &str = "/var/lib/machina-pkgtest/guest";

/// The packages `scripts/package` built, and an upgrade of the .deb.
struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
    /// The same .deb with a higher version (`<version>-2`).
    upgrade: PathBuf,
}

/// Builds the packages once per test process (a release build, then
/// `cargo deb` and `cargo generate-rpm`); panics with the build's output
/// when that fails.
fn packages() -> &'static Packages {
    static BUILT: OnceLock<Packages> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    let _g = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    BUILT.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let t = Instant::now();
        let out = Command::new(repo.join("scripts/package"))
            .current_dir(repo)
            .output()
            .expect("run scripts/package");
        assert!(
            out.status.success(),
            "scripts/package failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("scripts/package: {:?}", t.elapsed());
        let dir = repo.join("target/packages");
        let deb = dir.join(format!("machina_{VERSION}-1_amd64.deb"));
        let rpm = dir.join(format!("machina-{VERSION}-1.x86_64.rpm"));
        for p in [&deb, &rpm] {
            assert!(p.exists(), "{} not built", p.display());
            eprintln!(
                "{}: {} bytes",
                p.display(),
                std::fs::metadata(p).unwrap().len()
            );
        }
        // The upgrade: the same contents under a higher version, as the
        // next build would be.
        let upgrade = dir.join(format!("machina_{VERSION}-2_amd64.deb"));
        let unpacked = repo.join(format!("target/packaging/upgrade-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&unpacked);
        run_ok(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&unpacked));
        let control = unpacked.join("DEBIAN/control");
        let text = std::fs::read_to_string(&control).unwrap();
        let bumped = text.replace(
            &format!("\nVersion: {VERSION}-1\n"),
            &format!("\nVersion: {VERSION}-2\n"),
        );
        assert_ne!(text, bumped, "no Version line in\n{text}");
        std::fs::write(&control, bumped).unwrap();
        run_ok(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "-Zxz", "-b"])
                .arg(&unpacked)
                .arg(&upgrade),
        );
        let _ = std::fs::remove_dir_all(&unpacked);
        Packages { deb, rpm, upgrade }
    })
}

fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false)
}

/// The files (not directories) a .deb installs, as absolute paths.
fn deb_files(deb: &Path) -> BTreeSet<String> {
    let out = run_ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

#[test]
fn lintian_reports_no_errors() {
    const TEST: &str = "lintian_reports_no_errors";
    if !have("lintian") {
        return common::skip(TEST, "lintian is not installed (apt-get install lintian)");
    }
    let p = packages();
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--allow-root"])
        .arg(&p.deb)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("lintian:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(
        out.status.success(),
        "lintian failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fields of a package's control file (`dpkg-deb -f`).
fn deb_field(deb: &Path, field: &str) -> String {
    let out = run_ok(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn cockpit_package_ships_the_page() {
    const TEST: &str = "cockpit_package_ships_the_page";
    if !have("lintian") || !have("rpm") {
        return common::skip(TEST, "lintian or rpm is not installed");
    }
    packages();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/packages");
    let deb = dir.join(format!("machina-cockpit_{VERSION}-1_all.deb"));
    let rpm = dir.join(format!("machina-cockpit-{VERSION}-1.noarch.rpm"));
    assert_eq!(deb_field(&deb, "Architecture"), "all");
    let depends = deb_field(&deb, "Depends");
    assert!(
        depends.contains(&format!("machina (>= {VERSION})")) && depends.contains("cockpit-bridge"),
        "{depends}"
    );
    // Every file of cockpit/machina/, and nothing else but Debian's doc files.
    let page: BTreeSet<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("cockpit/machina"))
            .unwrap()
            .map(|e| {
                format!(
                    "/usr/share/cockpit/machina/{}",
                    e.unwrap().file_name().to_string_lossy()
                )
            })
            .collect();
    let mut files = deb_files(&deb);
    assert!(files.remove("/usr/share/doc/machina-cockpit/copyright"));
    assert!(files.remove("/usr/share/doc/machina-cockpit/changelog.Debian.gz"));
    assert_eq!(files, page);
    let lint = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--allow-root"])
        .arg(&deb)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&lint.stdout);
    assert!(
        !text.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{text}"
    );
    let q = run_ok(
        Command::new("rpm")
            .args([
                "-qp",
                "--nosignature",
                "--queryformat",
                "%{ARCH}\\n",
                "-l",
                "--requires",
            ])
            .arg(&rpm),
    );
    let q = String::from_utf8_lossy(&q.stdout);
    let lines: BTreeSet<&str> = q.lines().collect();
    for want in ["noarch", "machina", "cockpit-bridge"] {
        assert!(
            lines.contains(want),
            "{want} missing in the .rpm's query:\n{q}"
        );
    }
    for f in &page {
        assert!(lines.contains(f.as_str()), "{f} missing in the .rpm:\n{q}");
    }
}

#[test]
fn rpm_installs_the_same_files_as_the_deb() {
    const TEST: &str = "rpm_installs_the_same_files_as_the_deb";
    if !common::is_root() {
        return common::skip(TEST, "not running as root");
    }
    if !have("rpm") {
        return common::skip(TEST, "rpm is not installed (apt-get install rpm)");
    }
    let p = packages();
    let scratch = TempDir::new("rpm-root");
    // No scriptlets: the scratch root has no shell.
    run_ok(
        Command::new("rpm")
            .arg("--root")
            .arg(&scratch.0)
            .args(["-i", "--nodeps", "--noscripts", "--nosignature"])
            .arg(&p.rpm),
    );
    let listed = run_ok(
        Command::new("rpm")
            .arg("--root")
            .arg(&scratch.0)
            .args(["-ql", "machina"]),
    );
    let mut rpm: BTreeSet<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| scratch.0.join(l.trim_start_matches('/')).is_file())
        .map(str::to_owned)
        .collect();
    // Where the two distributions differ by convention.
    let zsh_fedora = "/usr/share/zsh/site-functions/_machina";
    assert!(rpm.remove(zsh_fedora), "{zsh_fedora} missing");
    rpm.insert("/usr/share/zsh/vendor-completions/_machina".into());
    let mut deb = deb_files(&p.deb);
    // Debian policy files cargo-deb adds.
    deb.remove("/usr/share/doc/machina/copyright");
    deb.remove("/usr/share/doc/machina/changelog.Debian.gz");
    assert_eq!(rpm, deb, "the .rpm and the .deb install different files");
    assert!(
        rpm.contains("/usr/bin/machina-launch") && rpm.len() > 20,
        "{rpm:?}"
    );
}

#[test]
fn man_pages_render_without_warnings() {
    const TEST: &str = "man_pages_render_without_warnings";
    if !have("man") {
        return common::skip(TEST, "man is not installed (apt-get install man-db)");
    }
    let p = packages();
    let tmp = TempDir::new("man");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&p.deb).arg(&tmp.0));
    let mut pages = Vec::new();
    for section in ["man1", "man5", "man8"] {
        for e in std::fs::read_dir(tmp.0.join("usr/share/man").join(section)).unwrap() {
            pages.push(e.unwrap().path());
        }
    }
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "machina.1.gz",
        "machina-start.1.gz",
        "machina-launch.8.gz",
        "machina.conf.json.5.gz",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    for page in &pages {
        let out = Command::new("man")
            .env("MANWIDTH", "80")
            .args(["--warnings", "-l"])
            .arg(page)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{}: {err}",
            page.display()
        );
        assert!(out.stdout.len() > 200, "{} renders empty", page.display());
    }
    println!("{} man pages render without warnings", pages.len());
}

fn wait_for(c: &Container, unit: &str, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; journal:\n{}",
            c.journal(unit)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn apt(c: &Container, args: &[&str]) -> String {
    let mut v = vec![
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "-q",
        "--no-install-recommends",
    ];
    v.extend_from_slice(args);
    c.exec_ok(&v)
}

#[test]
fn deb_installs_runs_a_vm_upgrades_under_it_and_purges() {
    const TEST: &str = "deb_installs_runs_a_vm_upgrades_under_it_and_purges";
    if common::privileged(TEST).is_none() {
        return;
    }
    let Some(root) = nspawn::debian_root(TEST) else {
        return;
    };
    let Some(image) = common::guest::guest_image(TEST) else {
        return;
    };
    let p = packages();
    let pkg_dir = p.deb.parent().unwrap();
    let Some(c) = Container::boot_root(TEST, &root, pkg_dir) else {
        return;
    };
    let deb = |p: &Path| format!("{BIN_MOUNT}/{}", p.file_name().unwrap().to_string_lossy());

    // Install: QEMU comes from Debian as the package's dependency.
    let t = Instant::now();
    apt(&c, &["install", &deb(&p.deb)]);
    println!(
        "apt-get install (with QEMU from the cache): {:?}",
        t.elapsed()
    );
    let files: Vec<String> = c
        .exec_ok(&["dpkg-query", "-L", "machina"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        c.path("/usr/bin/qemu-system-x86_64").exists(),
        "QEMU installed as a dependency"
    );
    assert_eq!(
        c.exec_ok(&["stat", "-c", "%a %U", "/run/machina"]).trim(),
        "755 root",
        "tmpfiles.d made /run/machina"
    );
    for d in ["/etc/machina/machine.conf.d", "/etc/machina/launch"] {
        assert!(c.path(d).is_dir(), "{d} made by the package");
        assert!(
            c.exec_ok(&["dpkg", "-S", d]).starts_with("machina:"),
            "dpkg owns {d}"
        );
    }

    // A host file and two VMs (the second only for completion).
    let vm = format!("pkga{}", std::process::id());
    let other = format!("pkgb{}", std::process::id());
    let host = json!({
        "qemu": {"binary": "/usr/bin/qemu-system-x86_64", "accelerator": "tcg", "cpu-model": "qemu64", "vhost": false, "nic-option-rom": false},
        "storage": {"disks": {"path": POOL, "pattern": "${machine-name}-${volume}.raw", "type": "raw"}},
        "network": {"lan": {"device": "br0"}},
    });
    let machine = |n: &str| {
        json!({
            "id": uuid::Uuid::new_v4(),
            "description": format!("package test {n}"),
            "attrs": {"memory": {"ram": 256}, "qmp": {"enabled": true}},
            "volumes": [{"name": "os", "storage": "disks"}],
            "connections": [{"name": "0", "network": "lan"}]
        })
        .to_string()
    };
    c.write_file("/etc/machina/machina.conf.json", &host.to_string(), 0o644);
    for n in [&vm, &other] {
        c.write_file(
            &format!("/etc/machina/machine.conf.d/{n}.conf.json"),
            &machine(n),
            0o644,
        );
    }
    let disk = format!("{POOL}/{vm}-os.raw");
    c.write_file(&disk, "", 0o600);
    c.exec_ok(&["truncate", "-s", "1M", &disk]);
    c.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    c.exec_ok(&["ip", "link", "set", "br0", "up"]);

    // machina gen, as installed: the unit runs /usr/bin/machina-launch.
    c.exec_ok(&["machina", "gen", &vm]);
    let plan_path = format!("/etc/machina/launch/{vm}.json");
    let mut plan = Plan::from_json(&std::fs::read_to_string(c.path(&plan_path)).unwrap()).unwrap();
    let unit_name = unit::unit_name(&plan.machine);
    let unit_path = format!("/etc/systemd/system/{unit_name}");
    let generated = std::fs::read_to_string(c.path(&unit_path)).unwrap();
    assert_eq!(
        generated,
        unit::render(&plan, &UnitOptions::new(&plan)).unwrap()
    );
    assert!(
        generated.contains("ExecStart=/usr/bin/machina-launch "),
        "{generated}"
    );
    // The configuration has no direct kernel boot: add the test guest to
    // the plan (and so to the unit's paths), so that stop is an orderly
    // guest shutdown.
    let console = plan.runtime_dir().join("console.log");
    plan.qemu.args.extend([
        "-kernel".into(),
        format!("{GUEST}/vmlinuz"),
        "-initrd".into(),
        format!("{GUEST}/initrd"),
        "-append".into(),
        image.append.clone(),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-no-reboot".into(),
    ]);
    for f in ["vmlinuz", "initrd"] {
        plan.grants.push(Grant {
            path: format!("{GUEST}/{f}").into(),
            access: Access::ReadOnly,
            shared: true,
        });
    }
    c.write_file(&plan_path, &plan.to_json(), 0o644);
    c.write_unit(
        &unit_name,
        &unit::render(&plan, &UnitOptions::new(&plan)).unwrap(),
    );
    std::fs::create_dir_all(c.path(GUEST)).unwrap();
    std::fs::copy(&image.kernel, c.path(&format!("{GUEST}/vmlinuz"))).unwrap();
    std::fs::copy(&image.initrd, c.path(&format!("{GUEST}/initrd"))).unwrap();
    c.exec_ok(&[
        "chmod",
        "0644",
        &format!("{GUEST}/vmlinuz"),
        &format!("{GUEST}/initrd"),
    ]);
    c.daemon_reload();

    // machina start: QEMU as the VM's uid with no capability at all.
    c.exec_ok(&["machina", "start", &vm]);
    let console_path = c.path(console.to_str().unwrap());
    wait_for(
        &c,
        &unit_name,
        "the guest to boot",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&console_path)
                .unwrap_or_default()
                .contains(common::guest::READY_MARKER)
        },
    );
    let st = c
        .systemctl()
        .status(std::slice::from_ref(&unit_name))
        .unwrap()
        .remove(0);
    assert_eq!(
        (st.active_state.as_str(), st.sub_state.as_str()),
        ("active", "running")
    );
    assert_eq!(st.main_uid, Some(plan.uid));
    let pid = st.main_pid.expect("a main pid");
    let status = c.exec_ok(&["cat", &format!("/proc/{pid}/status")]);
    let caps: Vec<&str> = status.lines().filter(|l| l.starts_with("Cap")).collect();
    assert_eq!(caps.len(), 5, "{status}");
    for l in &caps {
        assert!(l.ends_with("\t0000000000000000"), "{l}");
    }
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![plan.uid.to_string(); 4],
        "{uid_line}"
    );
    assert_eq!(
        c.exec_ok(&["readlink", &format!("/proc/{pid}/exe")]).trim(),
        "/usr/bin/qemu-system-x86_64"
    );

    // Completion, in a real bash with Debian's bash-completion, through sudo.
    completion_through_sudo(TEST, &c, &vm, &other);

    // Upgrade under the running VM: same QEMU, unit still active.
    let t = Instant::now();
    apt(&c, &["install", &deb(&p.upgrade)]);
    println!("apt-get upgrade under a running VM: {:?}", t.elapsed());
    assert_eq!(
        c.exec_ok(&["dpkg-query", "-W", "-f", "${Version}", "machina"]),
        format!("{VERSION}-2")
    );
    let after = c
        .systemctl()
        .status(std::slice::from_ref(&unit_name))
        .unwrap()
        .remove(0);
    assert_eq!(
        (after.active_state.as_str(), after.sub_state.as_str()),
        ("active", "running")
    );
    assert_eq!(after.main_pid, Some(pid), "QEMU was not restarted");
    assert!(
        !c.journal(&unit_name).contains("Stopping"),
        "the upgrade stopped the VM"
    );

    // machina stop: the orderly shutdown over QMP.
    let t = Instant::now();
    c.exec_ok(&["machina", "stop", &vm]);
    let stop = t.elapsed();
    let journal = c.journal(&unit_name);
    let shutdown = journal
        .lines()
        .find(|l| l.contains(": SHUTDOWN: "))
        .unwrap_or_else(|| panic!("no SHUTDOWN in\n{journal}"));
    assert!(shutdown.contains("\"guest\":true"), "{shutdown}");
    assert!(!journal.contains("Timeout expired"), "{journal}");
    let st = c
        .systemctl()
        .status(std::slice::from_ref(&unit_name))
        .unwrap()
        .remove(0);
    assert_eq!(st.active_state, "inactive", "{journal}");
    println!("machina stop (orderly): {stop:?}");
    c.exec_ok(&["machina", "dissolve", &vm]);

    // Remove: configuration and disks stay.
    apt(&c, &["remove", "machina"]);
    assert!(!c.path("/usr/bin/machina").exists() && !c.path("/usr/bin/machina-launch").exists());
    let kept = [
        "/etc/machina/machina.conf.json".to_owned(),
        format!("/etc/machina/machine.conf.d/{vm}.conf.json"),
        format!("/etc/machina/machine.conf.d/{other}.conf.json"),
        disk.clone(),
    ];
    for f in &kept {
        assert!(c.path(f).is_file(), "{f} lost on remove");
    }
    assert!(c
        .exec_ok(&["dpkg", "-l", "machina"])
        .contains("\nrc  machina"));

    // Purge: the package's files and the directories it made go (the
    // emptied launch/), the administrator's files and disks stay.
    apt(&c, &["purge", "machina"]);
    for f in files.iter().filter(|f| !c.path(f).is_dir()) {
        assert!(!c.path(f).exists(), "{f} left by purge");
    }
    assert!(
        !c.path("/etc/machina/launch").exists(),
        "the empty launch/ left by purge"
    );
    assert!(!c.path("/usr/lib/tmpfiles.d/machina.conf").exists());
    for f in &kept {
        assert!(c.path(f).is_file(), "{f} lost on purge");
    }
    assert!(c.exec(&["dpkg", "-s", "machina"]).status.code() != Some(0));
}

/// An interactive shell in a tmux session of its own, driven by keys.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `argv` in a new detached session on a private server.
    fn start(tag: &str, argv: &[&str]) -> Tmux {
        let t = Tmux {
            socket: format!("machina-{tag}-{}", std::process::id()),
        };
        run_ok(
            Command::new("tmux")
                .args(["-L", &t.socket, "-f", "/dev/null"])
                .args(["new-session", "-d", "-x", "160", "-y", "40"])
                .args(argv),
        );
        t
    }

    fn keys(&self, keys: &[&str]) {
        run_ok(
            Command::new("tmux")
                .args(["-L", &self.socket, "send-keys"])
                .args(keys),
        );
    }

    fn pane(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the pane satisfies `f` (the shell answers keys in its
    /// own time); returns it.
    fn wait(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let p = self.pane();
            if f(&p) {
                return p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no {what} in the pane:\n{p}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `setup`, waits for the shell to have run it, then types each
    /// line followed by `tabs` and checks that every wanted word is
    /// offered. Returns the panes.
    fn complete(&self, setup: &str, tabs: &[&str], cases: &[(&str, &[&str])]) -> Vec<String> {
        self.keys(&[&format!("{setup}; echo READY-$((40+2))"), "Enter"]);
        self.wait("prompt", |p| p.contains("READY-42"));
        let mut panes = Vec::new();
        for (line, want) in cases {
            self.keys(&["clear", "Enter"]);
            self.wait("cleared", |p| {
                !p.contains("READY-42") && !p.contains("machina")
            });
            let mut keys = vec![*line];
            keys.extend_from_slice(tabs);
            self.keys(&keys);
            panes.push(self.wait(&format!("{want:?}"), |p| want.iter().all(|w| p.contains(w))));
            // Not C-c: a signal would hit a completion still running (the
            // second Tab) and the keys after it would land on the old
            // line. Editing keys queue behind it and clear the line.
            self.keys(&["C-e", "C-u"]);
        }
        panes
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// Drives `sudo machina …<Tab><Tab>` in an interactive login bash inside
/// the container through tmux, and reads what bash offers.
fn completion_through_sudo(test: &str, c: &Container, vm: &str, other: &str) {
    if !have("tmux") {
        return common::skip(test, "tmux is not installed (apt-get install tmux)");
    }
    let pid = c.pid().to_string();
    let shell = Tmux::start(
        "bash",
        &[
            "/usr/bin/nsenter",
            "-t",
            &pid,
            "-a",
            "/usr/bin/env",
            "-i",
            "TERM=screen",
            "HOME=/root",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "/bin/bash",
            "--login",
            "-i",
        ],
    );
    let panes = shell.complete(
        "true",
        &["Tab", "Tab"],
        &[
            ("sudo machina st", &["start", "status", "stop"]),
            ("sudo machina start ", &[vm, other]),
        ],
    );
    for p in panes {
        println!("bash, sudo:\n{}", p.trim());
    }
}

/// The zsh and fish scripts, in the real shells: subcommands and VM names
/// (zsh interactively through `sudo`, with compinit; fish with `complete
/// -C`), calling this build's `machina`.
#[test]
fn zsh_and_fish_complete_subcommands_and_vm_names() {
    const TEST: &str = "zsh_and_fish_complete_subcommands_and_vm_names";
    for tool in ["zsh", "fish", "tmux", "sudo"] {
        if !have(tool) {
            return common::skip(
                TEST,
                &format!("{tool} is not installed (apt-get install {tool})"),
            );
        }
    }
    let tmp = TempDir::new("completions");
    let bin_dir = common::bin("machina").parent().unwrap().to_owned();
    run_ok(
        Command::new(common::bin("machina"))
            .arg("package-files")
            .arg(&tmp.0)
            .arg("--bin-dir")
            .arg(&bin_dir),
    );
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let env_dir = format!("MACHINA_CONFIG_DIR={}", examples.display());

    let fish = tmp.0.join("completions/fish/machina.fish");
    let out = run_ok(
        Command::new("fish")
            .arg("--no-config")
            .arg("-c")
            .arg(format!(
                "source {}; complete -C'machina st'; complete -C'machina stop w'",
                fish.display()
            ))
            .env("MACHINA_CONFIG_DIR", &examples),
    );
    let words: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(words, ["start", "stop", "status", "web-01"]);

    let home = tmp.0.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home_env = format!("HOME={}", home.display());
    let shell = Tmux::start(
        "zsh",
        &[
            "/usr/bin/env",
            "-i",
            "TERM=screen",
            &home_env,
            &env_dir,
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "/usr/bin/zsh",
            "-f",
            "-i",
        ],
    );
    let setup = format!(
        "fpath=({} $fpath); autoload -Uz compinit; compinit -u",
        tmp.0.join("completions/zsh").display()
    );
    let panes = shell.complete(
        &setup,
        &["Tab"],
        &[
            ("sudo machina st", &["start", "status", "stop"]),
            ("sudo machina start ", &["desk-042", "test-vm", "web-01"]),
        ],
    );
    for p in panes {
        println!("zsh, sudo:\n{}", p.trim());
    }
}

/// The completer behind the scripts: VM names from `--config-dir`, else
/// `$MACHINA_CONFIG_DIR`; subcommands by prefix; `system` only for `cat`.
#[test]
fn completion_offers_vm_names_from_the_configuration_directory() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let complete = |env_dir: Option<&Path>, words: &[&str]| -> Vec<String> {
        let mut c = Command::new(common::bin("machina"));
        c.env("MACHINA_COMPLETE", "bash")
            .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
            .env("_CLAP_COMPLETE_COMP_TYPE", "9")
            .env("_CLAP_IFS", "\u{b}")
            .env_remove("MACHINA_CONFIG_DIR")
            .arg("--")
            .args(words);
        if let Some(d) = env_dir {
            c.env("MACHINA_CONFIG_DIR", d);
        }
        let out = run_ok(&mut c);
        String::from_utf8_lossy(&out.stdout)
            .split('\u{b}')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let names = ["desk-042", "test-vm", "web-01"];
    let dir = examples.to_str().unwrap();
    let got = complete(None, &["machina", "--config-dir", dir, "start", ""]);
    assert!(names.iter().all(|n| got.iter().any(|g| g == n)), "{got:?}");
    assert!(!got.iter().any(|g| g == "system"), "{got:?}");
    let got = complete(Some(&examples), &["machina", "cat", "w"]);
    assert_eq!(got, ["web-01"]);
    let got = complete(Some(&examples), &["machina", "cat", "sy"]);
    assert_eq!(got, ["system"]);
    let got = complete(None, &["machina", "st"]);
    assert_eq!(got, ["start", "stop", "status"]);
    // Another directory, another set; a missing one completes no VM.
    let got = complete(None, &["machina", "stop", "--config-dir=/nonexistent", "t"]);
    assert!(got.is_empty(), "{got:?}");
}
