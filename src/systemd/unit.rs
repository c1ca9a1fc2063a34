//! Rendering of `machina-qemu-<vm>.service` from a launch plan.
//!
//! The unit runs `machina-launch` as root, but inside a sandbox that keeps
//! only what the launcher needs to prepare the host for this one VM (see
//! DESIGN.md, "The unit"). Everything the launcher execs (QEMU, after it has
//! dropped to the VM's uid) inherits the same sandbox, and so do `ExecStop=`
//! (`machina shutdown`) and `ExecStopPost=` (`machina teardown`).
//!
//! # Stopping through QMP without `CAP_DAC_OVERRIDE`
//!
//! QEMU runs as the VM's uid with umask 0077, so its QMP sockets in
//! `/run/machina/<vm>/qmp` are mode 0700, owned by that uid, and root without
//! `CAP_DAC_OVERRIDE` (which this unit never has) could not connect to them.
//! It does not need to: the runtime directory is a `RuntimeDirectory=`, and
//! before running each `Exec*=` line systemd hands it, recursively, back to
//! the unit's user (root), as systemd.exec(5) documents ("their file
//! ownership recursively changed to match what is configured"). So when
//! `ExecStop=` runs, the sockets belong to root and `machina shutdown`
//! connects as their owner; QEMU keeps its already-listening sockets. This
//! avoids both a `+` prefix (which would run the QMP client, a parser of
//! untrusted input, with every privilege and no sandbox) and any group
//! trick that would need a setgid directory (refused by
//! `RestrictSUIDSGID=`). The nspawn tests check it with a real systemd.
//!
//! # What the launcher must do inside this sandbox
//!
//! - Create `qmp/` (and anything else) in the runtime directory *before*
//!   chowning the directory to the VM: afterwards root, lacking
//!   `CAP_DAC_OVERRIDE`, can no longer create entries in it.
//! - Write only to the runtime directory, the plan's grants, `/dev` nodes
//!   bound in and the mdev parents' sysfs directories: the rest of the
//!   file system is read-only. Locks: the per-VM lock directory
//!   `/run/machina/.lock/vm.<vm>` is a second `RuntimeDirectory=`; the
//!   host-wide mdev lock is `flock(2)` on the directory `/run/machina/.lock`
//!   opened read-only, which needs no write access.
//! - Raise nothing above the unit's limits: `RLIMIT_MEMLOCK` is already set
//!   to the plan's `memlock` by `LimitMEMLOCK=` (setting the same value
//!   again is allowed; raising the hard limit is not, there is no
//!   `CAP_SYS_RESOURCE`).
//! - Use `AF_UNIX` and `AF_NETLINK` sockets only (also for interface
//!   ioctls): `AF_INET` is refused unless QEMU listens on TCP.
//! - Set no setuid/setgid bit (`RestrictSUIDSGID=`).
//! - `ExecStopPost=` (`machina teardown`) runs in the same sandbox after
//!   systemd has killed every process left in the unit's cgroup; it cannot
//!   see or signal other uids' processes (`ProtectProc=invisible`, no
//!   `CAP_KILL`), and has no need to.
//!
//! Every value is escaped for systemd (`%` → `%%`, `$` → `$$` on command
//! lines, quoting per systemd.syntax(7)), and a value that cannot be written
//! safely (a control character, a newline, a path that is not UTF-8 or not
//! absolute) is an error: the renderer never emits a line systemd would read
//! differently from what the plan says.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::names::MachineName;
use crate::plan::{Access, DeviceNode, Plan, DEFAULT_PLAN_DIR};

/// Default path of the launcher binary.
pub const DEFAULT_LAUNCHER: &str = "/usr/bin/machina-launch";
/// Default path of the `machina` binary.
pub const DEFAULT_MACHINA: &str = "/usr/bin/machina";

/// The unit name of a VM: `machina-qemu-<vm>.service`.
pub fn unit_name(vm: &MachineName) -> String {
    format!("machina-qemu-{vm}.service")
}

/// The default plan path of a VM: `/etc/machina/launch/<vm>.json`.
pub fn default_plan_path(vm: &MachineName) -> PathBuf {
    Path::new(DEFAULT_PLAN_DIR).join(format!("{vm}.json"))
}

/// What the unit needs besides the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOptions {
    /// Absolute path of `machina-launch` on the target host.
    pub launcher: PathBuf,
    /// Absolute path of `machina` on the target host.
    pub machina: PathBuf,
    /// Where the plan lives on the target host. When it is not the default
    /// path, `ExecStart=` passes it with `--plan`.
    pub plan_path: PathBuf,
    /// `Description=`.
    pub description: String,
    /// `TimeoutStopSec=`: how long systemd waits for the whole stop.
    pub timeout_stop: Duration,
    /// `machina shutdown --timeout`: how long the orderly shutdown may take
    /// before `quit`. Keep it below `timeout_stop` so `quit` comes first.
    pub shutdown_timeout: Duration,
}

impl UnitOptions {
    /// The Go program's defaults for `plan`'s VM: binaries in `/usr/bin`,
    /// the plan at its default path, `machina qemu/kvm <vm>`, stop timeout
    /// 1m30s with an orderly shutdown of 1m25s.
    pub fn new(plan: &Plan) -> UnitOptions {
        UnitOptions {
            launcher: PathBuf::from(DEFAULT_LAUNCHER),
            machina: PathBuf::from(DEFAULT_MACHINA),
            plan_path: default_plan_path(&plan.machine),
            description: format!("machina qemu/kvm {}", plan.machine),
            timeout_stop: Duration::from_secs(90),
            shutdown_timeout: Duration::from_secs(85),
        }
    }
}

/// Why a unit could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// A path cannot be written into a unit file.
    #[error("unit for {vm}: {what} {path:?} {why}")]
    BadPath {
        /// The VM.
        vm: String,
        /// Which path (e.g. "grant path").
        what: &'static str,
        /// The path, lossily printed.
        path: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// A free-text value cannot be written into a unit file.
    #[error("unit for {vm}: {what} {value:?} contains a control character")]
    BadText {
        /// The VM.
        vm: String,
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The orderly shutdown would outlast systemd's stop timeout.
    #[error("unit for {vm}: shutdown timeout {shutdown:?} must be shorter than the stop timeout {stop:?}")]
    Timeouts {
        /// The VM.
        vm: String,
        /// `machina shutdown --timeout`.
        shutdown: Duration,
        /// `TimeoutStopSec=`.
        stop: Duration,
    },
}

/// Formats a duration as Go's `time.Duration` does (`1m30s`, `10s`,
/// `1h0m0s`, `1.5s`), which systemd also parses. Sub-millisecond parts are
/// dropped.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    if frac == 0 {
        let _ = write!(out, "{s}s");
    } else {
        let f = format!("{frac:03}");
        let _ = write!(out, "{s}.{}s", f.trim_end_matches('0'));
    }
    out
}

/// Characters that never need quoting in a unit value.
fn is_plain(c: char) -> bool {
    c.is_ascii() && PLAIN[c as usize]
}

/// [`is_plain`] as a table of the ASCII bytes.
const PLAIN: [bool; 128] = {
    let mut t = [false; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'_' | b'@' | b'+' | b'=' | b':' | b',' | b'.' | b'/' | b'-'
            );
        b += 1;
    }
    t
};

/// Escapes one word for a unit file. `exec` adds `$` → `$$`, which only
/// command lines (`Exec*=`) expand. Words with anything but plain characters
/// are double-quoted with `\` and `"` backslash-escaped (systemd.syntax(7)).
/// Control characters are refused by the callers before this.
pub(crate) fn escape_word(s: &str, exec: bool) -> std::borrow::Cow<'_, str> {
    // The common case: nothing to escape or quote.
    if !s.is_empty() && s.bytes().all(|b| b < 128 && PLAIN[usize::from(b)]) {
        return s.into();
    }
    let mut body = String::with_capacity(s.len() + 2);
    let mut plain = !s.is_empty();
    for c in s.chars() {
        match c {
            '%' => body.push_str("%%"),
            '$' if exec => {
                body.push_str("$$");
                plain = false;
            }
            '\\' => {
                body.push_str("\\\\");
                plain = false;
            }
            '"' => {
                body.push_str("\\\"");
                plain = false;
            }
            c => {
                if !is_plain(c) {
                    plain = false;
                }
                body.push(c);
            }
        }
    }
    if plain {
        body.into()
    } else {
        format!("\"{body}\"").into()
    }
}

/// Free text (`Description=`): only `%` is special; no quoting.
fn escape_text(s: &str) -> String {
    s.replace('%', "%%")
}

struct Renderer<'a> {
    vm: &'a str,
}

impl Renderer<'_> {
    /// Checks a path and returns it as an absolute, control-free string.
    fn path<'p>(&self, what: &'static str, p: &'p Path) -> Result<&'p str, UnitError> {
        let bad = |why| UnitError::BadPath {
            vm: self.vm.to_owned(),
            what,
            path: p.to_string_lossy().into_owned(),
            why,
        };
        let s = p.to_str().ok_or_else(|| bad("is not valid UTF-8"))?;
        if !s.starts_with('/') {
            return Err(bad("is not absolute"));
        }
        if has_control(s) {
            return Err(bad("contains a control character"));
        }
        Ok(s)
    }

    fn text(&self, what: &'static str, s: &str) -> Result<(), UnitError> {
        if has_control(s) {
            return Err(UnitError::BadText {
                vm: self.vm.to_owned(),
                what,
                value: s.to_owned(),
            });
        }
        Ok(())
    }
}

/// Whether `s` has a control character (C0, DEL or C1). Printable ASCII,
/// the common case, is checked without decoding (a fold that vectorizes).
fn has_control(s: &str) -> bool {
    let printable_ascii =
        crate::bytes::all_in_class(s.as_bytes(), b' ', |b| (0x20..0x7f).contains(&b));
    !printable_ascii && s.chars().any(char::is_control)
}

/// `TasksMax=` of every VM unit.
pub const TASKS_MAX: u32 = 4096;
/// `LimitNOFILE=` of every VM unit.
pub const NOFILE: u32 = 16384;

/// Whether a grant path is a device node under `/dev` (a block device).
fn is_dev(p: &Path) -> bool {
    under(p, "/dev")
}

/// Whether a path is hidden by `ProtectHome=yes`.
fn under_home(p: &Path) -> bool {
    under(p, "/home") || under(p, "/root") || under(p, "/run/user")
}

/// `p.starts_with(dir)` for an absolute `dir` of plain components,
/// compared as text unless `p` begins with something `Path` would take
/// apart (`//`, `/.`): this runs for every file of every unit.
fn under(p: &Path, dir: &str) -> bool {
    let b = p.as_os_str().as_encoded_bytes();
    if let Some(rest) = b.strip_prefix(dir.as_bytes()) {
        if rest.is_empty() || rest[0] == b'/' {
            return true;
        }
    }
    let head = &b[..b.len().min(dir.len() + 2)];
    if head
        .windows(2)
        .any(|w| w[0] == b'/' && matches!(w[1], b'/' | b'.'))
    {
        return p.starts_with(dir);
    }
    false
}

/// Renders `machina-qemu-<vm>.service` for `plan`.
///
/// The sandbox is derived from the plan: capabilities for vfio only when the
/// plan has mediated devices, the memlock limit set by systemd, device nodes only for what
/// the plan uses, writable paths only for the VM's own files,
/// `MemoryDenyWriteExecute=` only when QEMU runs KVM-only, IP sockets only
/// when QEMU listens on TCP.
pub fn render(plan: &Plan, opts: &UnitOptions) -> Result<String, UnitError> {
    let vm = plan.machine.as_str();
    let r = Renderer { vm };
    let launcher = r.path("launcher path", &opts.launcher)?;
    let machina = r.path("machina path", &opts.machina)?;
    let plan_path = r.path("plan path", &opts.plan_path)?;
    r.text("description", &opts.description)?;
    if opts.shutdown_timeout >= opts.timeout_stop {
        return Err(UnitError::Timeouts {
            vm: vm.to_owned(),
            shutdown: opts.shutdown_timeout,
            stop: opts.timeout_stop,
        });
    }
    let exec = |words: &[&str]| -> String {
        let mut line = String::with_capacity(words.iter().map(|w| w.len() + 1).sum());
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            line.push_str(&escape_word(w, true));
        }
        line
    };

    let needs = &plan.needs;
    let vfio = needs.devices.contains(&DeviceNode::Vfio);

    // A unit is 2–4 KiB: one allocation rather than a series of regrowths.
    let mut u = String::with_capacity(4096);
    // Each line written in place (no `format!` string per line).
    macro_rules! line {
        ($($arg:tt)*) => {{
            let _ = writeln!(u, $($arg)*);
        }};
    }

    line!("# Generated by machina for VM {vm} from its launch plan; do not edit.");
    line!("# Run `machina gen` to regenerate it after changing the configuration.");
    line!("");
    line!("[Unit]");
    line!("Description={}", escape_text(&opts.description));
    line!("Wants=network-online.target");
    line!("After=network-online.target");
    if plan.tpm.is_some() {
        // swtpm serves the TPM; QEMU cannot run without it.
        let swtpm = super::swtpm_unit::swtpm_unit_name(&plan.machine);
        line!("BindsTo={swtpm}");
        line!("After={swtpm}");
    }
    // Registers the VM with systemd-machined once the launcher runs
    // (super::machined says why not in an ExecStartPost=).
    line!(
        "Wants={}",
        super::machined::machined_unit_name(&plan.machine)
    );
    line!("StartLimitIntervalSec=1m0s");
    line!("StartLimitBurst=2");
    line!("");
    line!("[Service]");
    // exec: a launcher that cannot be executed fails the start instead of
    // looking started.
    line!("Type=exec");
    if opts.plan_path == default_plan_path(&plan.machine) {
        line!("ExecStart={}", exec(&[launcher, vm]));
    } else {
        line!("ExecStart={}", exec(&[launcher, "--plan", plan_path]));
    }
    let shutdown_timeout = go_duration(opts.shutdown_timeout);
    line!(
        "ExecStop={}",
        exec(&[
            machina,
            "shutdown",
            "--system",
            "--timeout",
            &shutdown_timeout,
            vm
        ])
    );
    line!("ExecStopPost={}", exec(&[machina, "teardown", vm]));
    line!("RestartSec=10s");
    line!("TimeoutStopSec={}", go_duration(opts.timeout_stop));
    line!("Restart=on-failure");
    // After ExecStop every process left in the cgroup gets SIGTERM (QEMU
    // quits on it), then SIGKILL; ExecStopPost (teardown) runs only when none
    // is left, so no process of the VM can outlive the unit.
    line!("KillMode=control-group");
    // systemd creates /run/machina/<vm> (writable under ProtectSystem=strict)
    // and removes it when the unit stops. It re-chowns it to root before
    // every Exec line, so the launcher sets the VM's ownership itself.
    // The VM's lock (a root-only directory under /run/machina/.lock, where
    // no VM name reaches) is one too: /run is read-only here.
    line!(
        "RuntimeDirectory=machina/{vm} {}",
        crate::plan::Lock::Vm(&plan.machine)
            .path()
            .strip_prefix("/run")
            .expect("locks live in /run")
            .display()
    );
    line!("RuntimeDirectoryMode=0750");
    line!("RuntimeDirectoryPreserve=no");
    line!("UMask=0077");
    // QEMU's threads: one per vCPU, its I/O worker pool (up to 64 per
    // AioContext), iothreads, vhost workers: 4096 leaves room for the
    // largest guests and still stops a runaway.
    line!("TasksMax={TASKS_MAX}");
    // Every virtqueue of a multiqueue NIC or disk takes eventfds and irqfds:
    // the default soft limit of 1024 is reachable. Not higher: above the
    // hard limit systemd runs under (a container's may be 20000), the start
    // fails.
    line!("LimitNOFILE={NOFILE}");
    let limits = &plan.limits;
    if let Some(b) = limits.memory_high {
        line!("MemoryHigh={b}");
    }
    if let Some(b) = limits.memory_max {
        line!("MemoryMax={b}");
    }
    if let Some(w) = limits.cpu_weight {
        line!("CPUWeight={w}");
    }
    if let Some(cpus) = &limits.allowed_cpus {
        // Checked by Plan::check (digits, ',' and '-' only).
        r.text("allowed CPUs", cpus)?;
        line!("AllowedCPUs={cpus}");
    }
    if let Some(bytes) = needs.memlock {
        // vfio pins all guest memory.
        line!("LimitMEMLOCK={bytes}");
    }

    // Privileges: root, but only the capabilities the launcher uses, none
    // ambient, and no way to gain more.
    // CAP_SYS_RESOURCE and CAP_IPC_LOCK are not needed even with vfio:
    // systemd sets RLIMIT_MEMLOCK (soft = hard) before the launcher runs,
    // QEMU inherits it, and QEMU holds no capability anyway. The launcher
    // may still set the same limit (no capability needed for that).
    if plan.network_isolation {
        // CAP_SYS_ADMIN only to unshare(CLONE_NEWNET) for QEMU (see
        // prepare::netns); the launcher drops every capability at exec.
        line!("CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER CAP_SETUID CAP_SETGID CAP_SETPCAP CAP_SYS_ADMIN");
    } else {
        line!("CapabilityBoundingSet=CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER CAP_SETUID CAP_SETGID CAP_SETPCAP");
    }
    line!("AmbientCapabilities=");
    line!("NoNewPrivileges=yes");

    // Devices: a private /dev with only pseudo devices, the nodes this VM
    // uses bound in, and a device cgroup that allows exactly those. The
    // binds are optional ("-") so a missing node is reported by the
    // launcher, which names it, rather than as a namespace failure.
    line!("PrivateDevices=yes");
    line!("DevicePolicy=closed");
    let mut nodes = needs.devices.clone();
    nodes.sort_unstable();
    nodes.dedup();
    let mut devices: Vec<(String, &str)> = nodes
        .iter()
        .map(|d| (d.path_str().to_owned(), "rw"))
        .collect();
    for g in &plan.grants {
        if is_dev(&g.path) {
            let p = r.path("grant path", &g.path)?;
            let mode = match g.access {
                Access::ReadOnly => "r",
                Access::ReadWrite => "rw",
            };
            devices.push((p.to_owned(), mode));
        }
    }
    for (p, mode) in &devices {
        // /dev/vfio/vfio comes with the /dev/vfio directory bound below.
        if !under(Path::new(p), "/dev/vfio") {
            line!("BindPaths=-{}", escape_word(p, false));
        }
        line!("DeviceAllow={} {mode}", escape_word(p, false));
    }
    if vfio {
        // IOMMU group nodes (/dev/vfio/<n>) appear when the mediated device
        // is created, after the namespace is set up: bind the directory, so
        // new nodes show through, and allow the vfio group major.
        line!("BindPaths=-/dev/vfio");
        line!("DeviceAllow=char-vfio rw");
    }

    // Files: the whole system read-only; the VM's own files writable, each
    // one alone (not its directory, so no file can be created or replaced
    // next to it). Read-only grants are writable at the mount level too: the
    // launcher changes their group and mode (or adds an ACL entry), which a
    // read-only mount refuses; file permissions still keep QEMU from writing
    // them.
    line!("ProtectSystem=strict");
    let home = plan.grants.iter().any(|g| under_home(&g.path));
    line!(
        "{}",
        if home {
            // A grant lives under /home: "yes" would hide it, "read-only"
            // still protects everything else there.
            "ProtectHome=read-only"
        } else {
            "ProtectHome=yes"
        }
    );
    let mut rw: Vec<String> = Vec::new();
    for g in &plan.grants {
        if !is_dev(&g.path) {
            rw.push(r.path("grant path", &g.path)?.to_owned());
        }
    }
    // Mediated devices are created by writing the parent's
    // mdev_supported_types/<type>/create and removed through the new device
    // directory, which appears below the parent's directory: that directory
    // must be writable although ProtectKernelTunables= makes /sys read-only.
    for m in &plan.mdevs {
        for p in &m.parents {
            let dir = m.sysfs_root.join("bus/pci/devices").join(&p.address);
            rw.push(r.path("mdev parent", &dir)?.to_owned());
        }
    }
    rw.sort();
    rw.dedup();
    for p in &rw {
        line!("ReadWritePaths=-{}", escape_word(p, false));
    }
    if plan
        .grants
        .iter()
        .any(|g| under(&g.path, "/tmp") || under(&g.path, "/var/tmp"))
    {
        // A grant in /tmp would be hidden by a private /tmp; the shared one
        // stays, read-only like the rest of the system (ProtectSystem=strict).
        line!("PrivateTmp=no");
    } else {
        line!("PrivateTmp=yes");
    }
    line!("PrivateIPC=yes");
    line!("PrivateMounts=yes");
    line!("ProtectKernelTunables=yes");
    line!("ProtectKernelModules=yes");
    line!("ProtectKernelLogs=yes");
    line!("ProtectControlGroups=yes");
    line!("ProtectClock=yes");
    line!("ProtectHostname=yes");
    line!("ProtectProc=invisible");
    line!("ProcSubset=pid");
    // A VM without TCP listener runs QEMU in a network namespace of its own.
    line!(
        "{}",
        if plan.network_isolation {
            "RestrictNamespaces=net"
        } else {
            "RestrictNamespaces=yes"
        }
    );
    line!("RestrictRealtime=yes");
    line!("RestrictSUIDSGID=yes");
    line!("LockPersonality=yes");
    if needs.kvm_only() {
        // TCG writes and then executes its generated code; KVM does not.
        line!("MemoryDenyWriteExecute=yes");
    }
    line!("SystemCallArchitectures=native");
    if needs.inet() {
        line!("RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6");
        if needs.loopback_only() {
            line!("IPAddressDeny=any");
            line!("IPAddressAllow=localhost");
        }
    } else {
        line!("RestrictAddressFamilies=AF_UNIX AF_NETLINK");
        line!("IPAddressDeny=any");
    }
    line!("SystemCallFilter=@system-service");
    // seccomp(2) is in no group: QEMU probes it at startup and silently
    // drops its own `-sandbox` option when the probe fails.
    line!("SystemCallFilter=seccomp");
    // setrlimit(2) is in @resources, but glibc's setrlimit() uses
    // prlimit64(2), which @system-service keeps.
    line!("SystemCallFilter=~@resources");
    line!("SystemCallErrorNumber=EPERM");
    line!("");
    line!("[Install]");
    line!("WantedBy=multi-user.target");
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::Accelerator;
    use crate::names::InterfaceName;
    use crate::plan::{Grant, HostNeeds, Mdev, MdevParent, QemuExec, Tap, PLAN_VERSION};

    fn plan(args: &[&str]) -> Plan {
        Plan {
            version: PLAN_VERSION,
            machine: MachineName::new("vm1").unwrap(),
            uuid: uuid::Uuid::nil(),
            uid: 70001,
            gid: 70001,
            taps: vec![],
            mdevs: vec![],
            grants: vec![],
            needs: HostNeeds::new(Accelerator::Kvm),
            limits: Default::default(),
            network_isolation: false,
            console_log: false,
            qemu: QemuExec {
                binary: "/usr/bin/qemu-system-x86_64".into(),
                args: args.iter().map(|s| s.to_string()).collect(),
            },
            tpm: None,
        }
    }

    fn lines(u: &str, key: &str) -> Vec<String> {
        u.lines()
            .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn under_agrees_with_path_starts_with() {
        for p in [
            "/dev",
            "/dev/",
            "/devx",
            "/dev/kvm",
            "//dev/kvm",
            "/./dev/kvm",
            "/dev/../tmp",
            "/tmp",
            "/tmp/a",
            "/tmpa/b",
            "/var/tmp/x",
            "/home",
            "/homes/a",
            "dev/kvm",
            "",
            "/run/user/1000/x",
            "/run/users",
        ] {
            for dir in [
                "/dev",
                "/tmp",
                "/var/tmp",
                "/home",
                "/run/user",
                "/dev/vfio",
            ] {
                assert_eq!(
                    under(Path::new(p), dir),
                    Path::new(p).starts_with(dir),
                    "{p} under {dir}"
                );
            }
        }
        for w in [
            "a",
            "",
            "a b",
            "%",
            "a$b",
            "é",
            "x\\y",
            "a\"b",
            "/usr/bin/machina-launch",
        ] {
            let slow = {
                let plain = !w.is_empty() && w.chars().all(is_plain);
                plain.then(|| w.to_owned())
            };
            if let Some(s) = slow {
                assert_eq!(escape_word(w, true), s);
            }
        }
    }

    #[test]
    fn minimal_unit() {
        let p = plan(&["-enable-kvm", "-S"]);
        let u = render(&p, &UnitOptions::new(&p)).unwrap();
        assert!(u.starts_with("# Generated by machina"));
        assert_eq!(lines(&u, "Description"), ["machina qemu/kvm vm1"]);
        assert_eq!(lines(&u, "ExecStart"), ["/usr/bin/machina-launch vm1"]);
        assert_eq!(
            lines(&u, "ExecStop"),
            ["/usr/bin/machina shutdown --system --timeout 1m25s vm1"]
        );
        assert_eq!(lines(&u, "ExecStopPost"), ["/usr/bin/machina teardown vm1"]);
        // No ExecStartPost: systemd would hand the runtime directory back
        // to root while QEMU creates its sockets in it.
        assert!(lines(&u, "ExecStartPost").is_empty());
        assert_eq!(lines(&u, "TasksMax"), ["4096"]);
        assert_eq!(lines(&u, "LimitNOFILE"), ["16384"]);
        assert!(lines(&u, "MemoryMax").is_empty() && lines(&u, "CPUWeight").is_empty());
        assert_eq!(lines(&u, "TimeoutStopSec"), ["1m30s"]);
        assert_eq!(
            lines(&u, "RuntimeDirectory"),
            ["machina/vm1 machina/.lock/vm.vm1"]
        );
        assert_eq!(
            lines(&u, "CapabilityBoundingSet"),
            ["CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER CAP_SETUID CAP_SETGID CAP_SETPCAP"]
        );
        assert_eq!(lines(&u, "MemoryDenyWriteExecute"), ["yes"]);
        assert_eq!(lines(&u, "RestrictAddressFamilies"), ["AF_UNIX AF_NETLINK"]);
        assert_eq!(lines(&u, "IPAddressDeny"), ["any"]);
        assert_eq!(
            lines(&u, "SystemCallFilter"),
            ["@system-service", "seccomp", "~@resources"]
        );
        assert_eq!(lines(&u, "DeviceAllow"), ["/dev/kvm rw"]);
        assert!(lines(&u, "ReadWritePaths").is_empty());
        assert_eq!(lines(&u, "WantedBy"), ["multi-user.target"]);
    }

    #[test]
    fn vfio_vhost_tcp_and_grants_widen_the_sandbox_only_as_needed() {
        let mut p = plan(&[
            "-accel",
            "tcg",
            "-spice",
            "port=59000,addr=127.0.0.1,disable-ticketing=on",
        ]);
        p.taps.push(Tap {
            ifname: InterfaceName::new("vm1.0").unwrap(),
            bridge: InterfaceName::new("br0").unwrap(),
            mac: "00:16:3e:00:00:01".into(),
            fds: vec![3],
            vhost_fds: vec![4],
        });
        p.mdevs.push(Mdev {
            uuid: uuid::Uuid::nil(),
            sysfs_root: "/sys".into(),
            parents: vec![MdevParent {
                address: "0000:c1:00.0".into(),
                type_name: "GRID RTX8000-6Q".into(),
                placements: vec![],
                heterogeneous: false,
            }],
        });
        p.needs = HostNeeds::new(Accelerator::Tcg);
        p.needs.listeners.push(crate::plan::Listener {
            service: crate::plan::Service::Spice,
            address: "127.0.0.1".parse().unwrap(),
            port: 59000,
        });
        for d in [
            DeviceNode::Kvm,
            DeviceNode::Tun,
            DeviceNode::VhostNet,
            DeviceNode::Vfio,
        ] {
            p.needs.add_device(d);
        }
        p.needs.memlock = Some(1 << 30);
        p.grants.push(Grant {
            path: "/dev/zvol/tank/vm1".into(),
            access: Access::ReadWrite,
            shared: false,
        });
        p.grants.push(Grant {
            path: "/srv/vm1/os.raw".into(),
            access: Access::ReadWrite,
            shared: false,
        });
        p.grants.push(Grant {
            path: "/srv/iso/win.iso".into(),
            access: Access::ReadOnly,
            shared: true,
        });
        let u = render(&p, &UnitOptions::new(&p)).unwrap();
        assert_eq!(
            lines(&u, "CapabilityBoundingSet"),
            ["CAP_NET_ADMIN CAP_CHOWN CAP_FOWNER CAP_SETUID CAP_SETGID CAP_SETPCAP"]
        );
        assert_eq!(lines(&u, "LimitMEMLOCK"), ["1073741824"]);
        assert!(
            lines(&u, "MemoryDenyWriteExecute").is_empty(),
            "TCG needs W+X"
        );
        assert_eq!(
            lines(&u, "RestrictAddressFamilies"),
            ["AF_UNIX AF_NETLINK AF_INET AF_INET6"]
        );
        assert_eq!(lines(&u, "IPAddressAllow"), ["localhost"]);
        assert_eq!(
            lines(&u, "SystemCallFilter"),
            ["@system-service", "seccomp", "~@resources"]
        );
        let dev = lines(&u, "DeviceAllow");
        for want in [
            "/dev/vhost-net rw",
            "/dev/vfio/vfio rw",
            "char-vfio rw",
            "/dev/zvol/tank/vm1 rw",
        ] {
            assert!(dev.iter().any(|d| d == want), "{want} in {dev:?}");
        }
        assert_eq!(
            lines(&u, "ReadWritePaths"),
            [
                "-/srv/iso/win.iso",
                "-/srv/vm1/os.raw",
                "-/sys/bus/pci/devices/0000:c1:00.0"
            ]
        );
        assert_eq!(lines(&u, "ProtectHome"), ["yes"]);
        assert_eq!(
            lines(&u, "BindPaths"),
            [
                "-/dev/kvm",
                "-/dev/net/tun",
                "-/dev/vhost-net",
                "-/dev/zvol/tank/vm1",
                "-/dev/vfio"
            ]
        );
    }

    #[test]
    fn paths_are_escaped() {
        let mut p = plan(&["-enable-kvm"]);
        p.grants.push(Grant {
            path: "/srv/my vms/100%/$HOME\\\"x\".raw".into(),
            access: Access::ReadWrite,
            shared: false,
        });
        let mut o = UnitOptions::new(&p);
        o.plan_path = "/etc/machina plans/50%/$vm1.json".into();
        o.description = "VM at 100% ${x}".into();
        let u = render(&p, &o).unwrap();
        assert_eq!(
            lines(&u, "ReadWritePaths"),
            [r#"-"/srv/my vms/100%%/$HOME\\\"x\".raw""#]
        );
        assert_eq!(
            lines(&u, "ExecStart"),
            [r#"/usr/bin/machina-launch --plan "/etc/machina plans/50%%/$$vm1.json""#]
        );
        assert_eq!(lines(&u, "Description"), ["VM at 100%% ${x}"]);
    }

    #[test]
    fn no_raw_newline_or_control_character_can_be_written() {
        for bad in [
            "/srv/a\nExecStartPre=/bin/sh",
            "/srv/a\rb",
            "/srv/a\u{1b}b",
            "/srv/\u{85}",
        ] {
            let mut p = plan(&["-enable-kvm"]);
            p.grants.push(Grant {
                path: bad.into(),
                access: Access::ReadOnly,
                shared: false,
            });
            let e = render(&p, &UnitOptions::new(&p)).unwrap_err();
            assert!(e.to_string().contains("control character"), "{e}");
        }
        let p = plan(&["-enable-kvm"]);
        let mut o = UnitOptions::new(&p);
        o.description = "two\nlines".into();
        assert!(render(&p, &o).is_err());
        let mut o = UnitOptions::new(&p);
        o.launcher = "machina-launch".into();
        assert!(render(&p, &o)
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
        let mut o = UnitOptions::new(&p);
        o.shutdown_timeout = o.timeout_stop;
        assert!(render(&p, &o).is_err());
    }

    #[test]
    fn home_grants_keep_home_readable() {
        let mut p = plan(&["-enable-kvm"]);
        p.grants.push(Grant {
            path: "/home/ann/vm.raw".into(),
            access: Access::ReadWrite,
            shared: false,
        });
        let u = render(&p, &UnitOptions::new(&p)).unwrap();
        assert_eq!(lines(&u, "ProtectHome"), ["read-only"]);
    }

    #[test]
    fn tmp_grants_keep_the_shared_tmp() {
        let mut p = plan(&["-enable-kvm"]);
        let u = render(&p, &UnitOptions::new(&p)).unwrap();
        assert_eq!(lines(&u, "PrivateTmp"), ["yes"]);
        p.grants.push(Grant {
            path: "/var/tmp/vm1/os.qcow2".into(),
            access: Access::ReadWrite,
            shared: false,
        });
        let u = render(&p, &UnitOptions::new(&p)).unwrap();
        assert_eq!(lines(&u, "PrivateTmp"), ["no"]);
        assert_eq!(lines(&u, "ReadWritePaths"), ["-/var/tmp/vm1/os.qcow2"]);
    }

    #[test]
    fn needs_size_the_sandbox() {
        use crate::plan::{Listener, Service};
        let mut p = plan(&[]);
        p.needs = HostNeeds::new(Accelerator::Tcg);
        let u = render(&p, &UnitOptions::new(&p)).unwrap();
        assert!(lines(&u, "MemoryDenyWriteExecute").is_empty());
        assert!(lines(&u, "DeviceAllow").is_empty(), "TCG needs no /dev/kvm");
        p.needs.listeners.push(Listener {
            service: Service::Spice,
            address: "0.0.0.0".parse().unwrap(),
            port: 59000,
        });
        let u = render(&p, &UnitOptions::new(&p)).unwrap();
        assert_eq!(
            lines(&u, "RestrictAddressFamilies"),
            ["AF_UNIX AF_NETLINK AF_INET AF_INET6"]
        );
        assert!(lines(&u, "IPAddressDeny").is_empty(), "{u}");
    }

    #[test]
    fn durations_like_go() {
        let d = |s| go_duration(Duration::from_secs(s));
        assert_eq!(d(60), "1m0s");
        assert_eq!(d(10), "10s");
        assert_eq!(d(90), "1m30s");
        assert_eq!(d(85), "1m25s");
        assert_eq!(d(3600), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
