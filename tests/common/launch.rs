//! Launcher test support: a root-owned sandbox directory, hand-written
//! plans, launching `machina-launch` inside a network namespace, QEMU
//! guards that kill and reap on drop, a few lines of QMP, and host-state
//! snapshots to prove a failed launch left nothing behind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use machina::config::schema::Accelerator;
use machina::names::{InterfaceName, MachineName};
use machina::plan::{Access, DeviceNode, Grant, HostNeeds, Plan, QemuExec, Tap, PLAN_VERSION};

use super::netns::{unique, NetNs};

/// A root-owned temporary directory (mode 0755) with `plans/` and
/// `disks/`, removed on drop, and the VMs made in it: their runtime
/// directories are the real `/run/machina/<vm>` (the launcher derives them),
/// so each VM name carries a per-sandbox tag, and drop removes what is left
/// of them there.
pub struct Sandbox {
    /// Its path.
    pub dir: PathBuf,
    tag: String,
    vms: std::sync::Mutex<Vec<String>>,
}

impl Sandbox {
    /// Creates the sandbox.
    pub fn new() -> Sandbox {
        let tag = unique();
        let dir = PathBuf::from(format!("/tmp/machina-t-{tag}"));
        for sub in ["", "plans", "disks"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Sandbox {
            dir,
            tag,
            vms: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The unique VM name for `base` in this sandbox (`<base>-t<tag>`).
    pub fn vm_name(&self, base: &str) -> String {
        let name = format!("{base}-t{}", self.tag);
        let mut vms = self.vms.lock().unwrap();
        if !vms.contains(&name) {
            vms.push(name.clone());
        }
        name
    }

    /// What exists of this sandbox's VMs under `/run/machina`: their
    /// runtime directories (with contents) and lock directories.
    pub fn leftovers(&self) -> Vec<(PathBuf, u32, u32, u32)> {
        let mut out = Vec::new();
        for vm in self.vms.lock().unwrap().iter() {
            let name = MachineName::new(vm.as_str()).unwrap();
            for p in [
                Path::new(machina::plan::RUNTIME_ROOT).join(vm),
                machina::plan::Lock::Vm(&name).path(),
            ] {
                if let Ok(md) = std::fs::symlink_metadata(&p) {
                    out.push((p.clone(), md.uid(), md.gid(), md.mode()));
                    out.extend(tree(&p));
                }
            }
        }
        out
    }

    /// A raw disk image of `size` bytes, root:root 0600.
    pub fn disk(&self, name: &str, size: u64) -> PathBuf {
        let p = self.dir.join("disks").join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// Writes `plan` as `plans/<vm>.json`, root-owned, mode 0644.
    pub fn write_plan(&self, plan: &Plan) -> PathBuf {
        let p = self
            .dir
            .join("plans")
            .join(format!("{}.json", plan.machine));
        std::fs::write(&p, plan.to_json()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        for vm in self.vms.lock().unwrap().iter() {
            let name = MachineName::new(vm.as_str()).unwrap();
            let _ = std::fs::remove_dir_all(Path::new(machina::plan::RUNTIME_ROOT).join(vm));
            let _ = std::fs::remove_dir(machina::plan::Lock::Vm(&name).path());
        }
    }
}

/// A uid:gid for a test VM, unique per process and call, inside the VM id
/// range (65536–524287) the launcher accepts, and named by no account.
pub fn test_id() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let id = 300_000
            + (std::process::id() % 2_000) * 100
            + N.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 100;
        if machina::identity::check_vm_id(id, "-").is_ok() {
            return id;
        }
    }
}

/// A one-queue TAP on `br0` at fd 3 (`vhost` adds a vhost fd at 4).
pub fn tap(ifname: &str, vhost: bool) -> Tap {
    Tap {
        ifname: InterfaceName::new(ifname).unwrap(),
        bridge: InterfaceName::new("br0").unwrap(),
        mac: "52:54:00:12:34:56".into(),
        fds: vec![3],
        vhost_fds: if vhost { vec![4] } else { vec![] },
    }
}

/// A read-write grant of `path`.
pub fn rw(path: &Path) -> Grant {
    Grant {
        path: path.to_owned(),
        access: Access::ReadWrite,
        shared: false,
    }
}

/// The QMP socket of a plan.
pub fn qmp_socket(plan: &Plan) -> PathBuf {
    plan.runtime_dir().join("qmp/command.0.qmp.socket")
}

/// The VM's lock directory.
pub fn lock_path(plan: &Plan) -> PathBuf {
    machina::plan::Lock::Vm(&plan.machine).path()
}

/// A paused q35 VM with QMP, one NIC per TAP (fds from the plan) and a
/// virtio disk per read-write grant. The VM is named `sb.vm_name(name)`.
pub fn plan(sb: &Sandbox, qemu: &Path, name: &str, taps: Vec<Tap>, grants: Vec<Grant>) -> Plan {
    let id = test_id();
    let name = sb.vm_name(name);
    let runtime_dir = Path::new(machina::plan::RUNTIME_ROOT).join(&name);
    let mut args: Vec<String> = super::qemu::PAUSED_VM
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push("-chardev".into());
    args.push(format!(
        "socket,id=qmp.0,path={},server=on,wait=off",
        runtime_dir.join("qmp/command.0.qmp.socket").display()
    ));
    args.extend(["-mon".into(), "chardev=qmp.0,mode=control".into()]);
    for (i, t) in taps.iter().enumerate() {
        let fds: Vec<String> = t.fds.iter().map(|f| f.to_string()).collect();
        let mut netdev = format!("tap,id=net.{i},fds={}", fds.join(":"));
        if t.fds.len() == 1 {
            netdev = format!("tap,id=net.{i},fd={}", fds[0]);
        }
        if !t.vhost_fds.is_empty() {
            let v: Vec<String> = t.vhost_fds.iter().map(|f| f.to_string()).collect();
            netdev.push_str(&format!(",vhost=on,vhostfds={}", v.join(":")));
        }
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            format!("virtio-net-pci,netdev=net.{i},romfile="),
        ]);
    }
    for (i, g) in grants.iter().filter(|g| !g.shared).enumerate() {
        let ro = if g.access == Access::ReadOnly {
            ",read-only=on"
        } else {
            ""
        };
        args.extend([
            "-blockdev".into(),
            format!(
                "driver=file,node-name=f{i},filename={}{ro}",
                g.path.display()
            ),
            "-blockdev".into(),
            format!("driver=raw,node-name=d{i},file=f{i}{ro}"),
            "-device".into(),
            format!("virtio-blk-pci,drive=d{i}"),
        ]);
    }
    args.extend([
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
    ]);
    let mut needs = HostNeeds::new(Accelerator::Kvm);
    if !taps.is_empty() {
        needs.add_device(DeviceNode::Tun);
    }
    if taps.iter().any(|t| !t.vhost_fds.is_empty()) {
        needs.add_device(DeviceNode::VhostNet);
    }
    Plan {
        version: PLAN_VERSION,
        machine: MachineName::new(name).unwrap(),
        uuid: uuid::Uuid::new_v4(),
        uid: id,
        gid: id,
        taps,
        mdevs: vec![],
        grants,
        needs,
        limits: Default::default(),
        network_isolation: false,
        console_log: false,
        qemu: QemuExec {
            binary: qemu.to_owned(),
            args,
        },
        tpm: None,
    }
}

/// A QEMU started through the launcher (the child is QEMU itself once the
/// launcher has exec'd). Killed and reaped on drop.
pub struct Qemu {
    /// The process.
    pub child: Child,
    /// Where its stderr goes.
    pub stderr: PathBuf,
}

impl Qemu {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The capabilities the unit gives `machina-launch` (DESIGN.md) without
/// vfio; tests run the launcher with only these, as systemd would.
pub const UNIT_CAPS: &str = "-all,+net_admin,+chown,+fowner,+setuid,+setgid,+setpcap";

/// `machina-launch` inside `ns`, limited to [`UNIT_CAPS`] (`setpriv`
/// execs, so the child's pid is still the launcher's, then QEMU's).
fn launcher(ns: &NetNs) -> Command {
    let mut c = ns.command("setpriv");
    c.args(["--bounding-set", UNIT_CAPS, "--"]);
    c.arg(super::bin("machina-launch"));
    c
}

/// Runs `f` on a new thread whose effective and permitted capabilities are
/// cut to [`UNIT_CAPS`] (capabilities are per thread), in `ns`.
pub fn with_unit_caps<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    ns.run_in(move || {
        use caps::{CapSet, Capability as C};
        let keep: caps::CapsHashSet = [
            C::CAP_NET_ADMIN,
            C::CAP_CHOWN,
            C::CAP_FOWNER,
            C::CAP_SETUID,
            C::CAP_SETGID,
            C::CAP_SETPCAP,
            C::CAP_KILL,
        ]
        .into_iter()
        .collect();
        caps::set(None, CapSet::Effective, &keep).unwrap();
        caps::set(None, CapSet::Permitted, &keep).unwrap();
        f()
    })
}

/// Starts `machina-launch --plan <file>` inside `ns`.
pub fn launch(ns: &NetNs, sb: &Sandbox, plan_file: &Path) -> Qemu {
    let stderr = sb.dir.join(format!("stderr-{}", unique()));
    let f = std::fs::File::create(&stderr).unwrap();
    let child = launcher(ns)
        .arg("--plan")
        .arg(plan_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f)
        .spawn()
        .unwrap();
    Qemu { child, stderr }
}

/// Runs the launcher expecting failure; returns (exit code, stderr).
pub fn launch_fails(ns: &NetNs, plan_file: &Path) -> (i32, String) {
    let out = launcher(ns)
        .arg("--plan")
        .arg(plan_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connects to QMP (waiting for the socket), reads the greeting and
/// negotiates capabilities.
pub fn qmp_connect(q: &mut Qemu, socket: &Path) -> BufReader<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(st)) = q.child.try_wait() {
            panic!(
                "QEMU exited ({st}): {}",
                std::fs::read_to_string(&q.stderr).unwrap_or_default()
            );
        }
        if let Ok(s) = UnixStream::connect(socket) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s);
            let mut greeting = String::new();
            r.read_line(&mut greeting).unwrap();
            assert!(greeting.contains("\"QMP\""), "greeting {greeting:?}");
            qmp(&mut r, r#"{"execute":"qmp_capabilities"}"#);
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no QMP socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one QMP command and returns its reply line (events skipped).
pub fn qmp(r: &mut BufReader<UnixStream>, cmd: &str) -> String {
    r.get_mut().write_all(cmd.as_bytes()).unwrap();
    r.get_mut().write_all(b"\n").unwrap();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if !line.contains("\"event\"") {
            return line;
        }
    }
}

/// `/proc/<pid>/status` as key → value.
pub fn proc_status(pid: i32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// Owner, group, mode and ACL (`getfacl` output).
pub type FileState = (u32, u32, u32, Option<String>);

/// Owner, group, mode and ACL of a path (not following a final symlink),
/// or `None` if absent.
pub fn file_state(p: &Path) -> Option<FileState> {
    let m = std::fs::symlink_metadata(p).ok()?;
    let acl = Command::new("getfacl")
        .args(["-cpn", "--"])
        .arg(p)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    Some((m.uid(), m.gid(), m.mode(), acl))
}

/// Every path under `dir` with its owner and mode (sorted), to compare a
/// tree before and after.
pub fn tree(dir: &Path) -> Vec<(PathBuf, u32, u32, u32)> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<(PathBuf, u32, u32, u32)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                out.push((p.clone(), m.uid(), m.gid(), m.mode()));
                if m.is_dir() {
                    walk(&p, out);
                }
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

/// Runs `f` in a child process with uid:gid `id` (no supplementary groups)
/// and returns its exit status code; used to try access as another VM.
pub fn as_uid(id: u32, f: impl FnOnce() -> bool) -> bool {
    // SAFETY: fork in a test; the child only makes syscalls and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ok = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(id, id, id) == 0
                && libc::setresuid(id, id, id) == 0
        };
        let r = ok && f();
        unsafe { libc::_exit(if r { 0 } else { 1 }) };
    }
    let mut st = 0;
    unsafe { libc::waitpid(pid, &mut st, 0) };
    libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0
}

/// A fake host tree `<dir>/sys` + `<dir>/dev` whose
/// `mdev_supported_types/<type>/create` and `<mdev>/remove` behave like the
/// kernel's: each is a FIFO served by a thread. Writing a UUID to `create`
/// makes the device directory (with `remove`, an `iommu_group` link and a
/// character node `dev/vfio/<group>`), then links it from the type's
/// `devices/` and from `bus/mdev/devices/` (last, as the kernel's
/// registration is what makes it visible). Writing `1` to `remove` undoes
/// all that. Unlike the kernel, the device appears just after the write
/// returns rather than before, which the launcher's brief poll absorbs.
pub struct FakeSysfs {
    /// The fake root (holds `sys/` and `dev/`).
    pub dir: PathBuf,
    served: Served,
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo of a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {p:?}"
    );
}

type Served = std::sync::Arc<std::sync::Mutex<Vec<(PathBuf, std::thread::JoinHandle<()>)>>>;

/// Serves FIFO `fifo`: calls `f` with each message until `f` returns false
/// or `stop` arrives.
fn serve(served: &Served, fifo: PathBuf, mut f: impl FnMut(&str) -> bool + Send + 'static) {
    let p = fifo.clone();
    let h = std::thread::spawn(move || loop {
        let mut s = String::new();
        let Ok(mut file) = std::fs::File::open(&p) else {
            return;
        };
        let _ = std::io::Read::read_to_string(&mut file, &mut s);
        let msg = s.trim();
        if msg == "stop" || !f(msg) {
            return;
        }
    });
    served.lock().unwrap().push((fifo, h));
}

impl FakeSysfs {
    /// An empty fake host under `sb` (no PCI devices yet).
    pub fn new(sb: &Sandbox) -> FakeSysfs {
        let dir = sb.dir.join("host");
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/mdev/devices",
            "sys/devices/virtual/mdev",
            "dev/vfio",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        FakeSysfs {
            dir,
            served: Default::default(),
        }
    }

    /// The sysfs root to put in a plan.
    pub fn sysfs_root(&self) -> PathBuf {
        self.dir.join("sys")
    }

    /// Mediated devices present, by UUID.
    pub fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("sys/bus/mdev/devices"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The vfio node of a present device.
    pub fn vfio_node(&self, uuid: &str) -> PathBuf {
        let link = self
            .dir
            .join("sys/bus/mdev/devices")
            .join(uuid)
            .join("iommu_group");
        let group = std::fs::read_link(link).unwrap();
        self.dir.join("dev/vfio").join(group.file_name().unwrap())
    }

    /// Adds PCI device `addr` offering mdev types `(dir name, display name)`.
    pub fn add_parent(&self, addr: &str, types: &[(&str, &str)]) {
        static GROUP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(40);
        for (tdir, name) in types {
            let t = self
                .dir
                .join("sys/bus/pci/devices")
                .join(addr)
                .join("mdev_supported_types")
                .join(tdir);
            std::fs::create_dir_all(t.join("devices")).unwrap();
            std::fs::write(t.join("name"), format!("{name}\n")).unwrap();
            mkfifo(&t.join("create"));
            let root = self.dir.clone();
            let served = self.served.clone();
            serve(&self.served, t.join("create"), move |uuid| {
                if uuid::Uuid::parse_str(uuid).is_err() {
                    return true;
                }
                let group = GROUP.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let dev = root.join("sys/devices/virtual/mdev").join(uuid);
                std::fs::create_dir_all(&dev).unwrap();
                mkfifo(&dev.join("remove"));
                std::os::unix::fs::symlink(
                    format!("../../../../kernel/iommu_groups/{group}"),
                    dev.join("iommu_group"),
                )
                .unwrap();
                let node = root.join("dev/vfio").join(group.to_string());
                let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: mknod of a NUL-terminated path (a /dev/null-like node
                // that is never opened).
                unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
                let in_type = t.join("devices").join(uuid);
                let in_bus = root.join("sys/bus/mdev/devices").join(uuid);
                // Relative links, as the kernel's: the launcher resolves
                // sysfs paths beneath the root and refuses absolute links.
                std::os::unix::fs::symlink(
                    format!("../../../../../../../devices/virtual/mdev/{uuid}"),
                    &in_type,
                )
                .unwrap();
                std::os::unix::fs::symlink(
                    format!("../../../devices/virtual/mdev/{uuid}"),
                    &in_bus,
                )
                .unwrap();
                let dev2 = dev.clone();
                serve(&served, dev.join("remove"), move |msg| {
                    if msg != "1" {
                        return true;
                    }
                    // The vfio node first, the bus link last (the
                    // reverse of creation): a device no longer listed
                    // has no node left, as the tests then assert.
                    let _ = std::fs::remove_file(&node);
                    let _ = std::fs::remove_file(&in_type);
                    let _ = std::fs::remove_dir_all(&dev2);
                    let _ = std::fs::remove_file(&in_bus);
                    false
                });
                true
            });
        }
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let all: Vec<_> = std::mem::take(&mut *self.served.lock().unwrap());
        for (fifo, h) in all {
            let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
            while !h.is_finished() {
                // SAFETY: non-blocking open/write/close of a FIFO: fails with
                // ENXIO until the thread waits on it.
                unsafe {
                    let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK);
                    if fd >= 0 {
                        libc::write(fd, b"stop".as_ptr().cast(), 4);
                        libc::close(fd);
                    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = h.join();
        }
    }
}

/// Everything a failed launch could have changed, to compare before and
/// after: interfaces in the namespace, the runtime root, the given files
/// (owner, group, mode, ACL) and the fake host's mdevs and vfio nodes.
#[derive(Debug, PartialEq)]
pub struct HostState {
    links: Vec<String>,
    run: Vec<(PathBuf, u32, u32, u32)>,
    files: Vec<Option<FileState>>,
    host: Vec<(PathBuf, u32, u32, u32)>,
}

impl HostState {
    /// Takes a snapshot.
    pub fn take(ns: &NetNs, sb: &Sandbox, files: &[&Path]) -> HostState {
        HostState {
            links: ns.links(),
            run: sb.leftovers(),
            files: files.iter().map(|f| file_state(f)).collect(),
            host: tree(&sb.dir.join("host")),
        }
    }
}
