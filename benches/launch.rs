//! Start-to-QMP-greeting of the same paused VM, launched bare (QEMU as
//! root, handed a TAP at fd 3) and through `machina-launch` (which creates
//! the TAP, grants the disk, drops privileges and execs QEMU), alternated.
//! Prints both medians and their ratio (target ≤ 1.05).
//!
//! Needs root, QEMU and a group-accessible `/dev/kvm`; prints `SKIP` and
//! exits 0 otherwise. Run with `cargo bench --bench launch`.

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use machina::config::schema::Accelerator;
use machina::names::{InterfaceName, MachineName};
use machina::plan::{Access, DeviceNode, Grant, HostNeeds, Plan, QemuExec, Tap, PLAN_VERSION};
use machina::prepare::{tap, teardown};

const RUNS: usize = 30;
const WARMUP: usize = 2;

fn skip(reason: &str) {
    println!("SKIP bench launch: {reason}");
}

fn main() {
    // `cargo test --all-targets` runs harness-less benches too, without
    // `--bench`: measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("bench launch: not measured under `cargo test`; run `cargo bench --bench launch`");
        return;
    }
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not running as root");
    }
    let qemu = PathBuf::from("/usr/bin/qemu-system-x86_64");
    if !qemu.exists() {
        return skip("qemu-system-x86_64 is not installed");
    }
    match std::fs::metadata("/dev/kvm") {
        Ok(m) if m.gid() != 0 && m.mode() & 0o060 == 0o060 => {}
        _ => {
            return skip(
                "/dev/kvm is missing or not group read-write (scripts/test sets root:kvm 0660)",
            )
        }
    }
    let env = Env::new(&qemu);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| env.run()));
    drop(env);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

struct Env {
    ns: String,
    dir: PathBuf,
    plan: Plan,
    plan_file: PathBuf,
    bare_tap: Option<tap::Tap>,
}

impl Env {
    fn new(qemu: &Path) -> Env {
        let tag = std::process::id();
        let ns = format!("machina-b-{tag}");
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("ip").args(["netns", "add", &ns]));
        ok(Command::new("ip").args(["-n", &ns, "link", "add", "br0", "type", "bridge"]));
        // Join it on this (main, only) thread: children inherit it.
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: setns of this thread.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);

        let dir = PathBuf::from(format!("/tmp/machina-b-{tag}"));
        for sub in ["", "run", "plans"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let disk = dir.join("disk.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let vm = format!("bench-{tag}");
        let runtime_dir = PathBuf::from(machina::plan::RUNTIME_ROOT).join(&vm);
        let sock = runtime_dir.join("qmp/command.0.qmp.socket");
        let args: Vec<String> = common::qemu::PAUSED_VM
            .iter()
            .copied()
            .chain([
                "-chardev",
                &format!("socket,id=qmp.0,path={},server=on,wait=off", sock.display()),
                "-mon",
                "chardev=qmp.0,mode=control",
                "-netdev",
                "tap,id=net.0,fd=3",
                "-device",
                "virtio-net-pci,netdev=net.0,romfile=",
                "-blockdev",
                &format!("driver=file,node-name=f0,filename={}", disk.display()),
                "-blockdev",
                "driver=raw,node-name=d0,file=f0",
                "-device",
                "virtio-blk-pci,drive=d0",
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            ])
            .map(|s| s.to_string())
            .collect();
        let id = 200_000 + (tag % 100_000) as u32;
        let plan = Plan {
            version: PLAN_VERSION,
            machine: MachineName::new(vm).unwrap(),
            uuid: uuid::Uuid::new_v4(),
            uid: id,
            gid: id,
            taps: vec![Tap {
                ifname: InterfaceName::new("bench.0").unwrap(),
                bridge: InterfaceName::new("br0").unwrap(),
                mac: "52:54:00:00:00:01".into(),
                fds: vec![3],
                vhost_fds: vec![],
            }],
            mdevs: vec![],
            grants: vec![Grant {
                path: disk,
                access: Access::ReadWrite,
                shared: false,
            }],
            needs: {
                let mut n = HostNeeds::new(Accelerator::Kvm);
                n.add_device(DeviceNode::Tun);
                n
            },
            limits: Default::default(),
            // As `machina gen` plans it: no TCP listener, so QEMU gets its own
            // network namespace (the cost is part of the launch);
            // BENCH_NO_ISOLATION=1 measures without it.
            network_isolation: std::env::var_os("BENCH_NO_ISOLATION").is_none(),
            console_log: false,
            qemu: QemuExec {
                binary: qemu.to_owned(),
                args,
            },
            tpm: None,
        };
        let plan_file = dir.join("plans/bench.json");
        std::fs::write(&plan_file, plan.to_json()).unwrap();
        std::fs::set_permissions(&plan_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The bare QEMU gets a TAP of its own, made once, at fd 3.
        let mut bare = plan.taps[0].clone();
        bare.ifname = InterfaceName::new("bench-bare").unwrap();
        let bare_tap = Some(tap::prepare(&bare).unwrap());
        Env {
            ns,
            dir,
            plan,
            plan_file,
            bare_tap,
        }
    }

    fn sock(&self) -> PathBuf {
        self.plan.runtime_dir().join("qmp/command.0.qmp.socket")
    }

    /// Spawns, times until the QMP greeting, kills and reaps.
    fn time(&self, mut cmd: Command) -> Duration {
        let start = Instant::now();
        let mut child: Child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let elapsed = loop {
            if let Ok(s) = UnixStream::connect(self.sock()) {
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line).unwrap();
                assert!(line.contains("QMP"), "greeting: {line:?}");
                break start.elapsed();
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("QEMU exited early: {st}");
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no QMP greeting");
            std::thread::sleep(Duration::from_micros(100));
        };
        let _ = child.kill();
        let _ = child.wait();
        elapsed
    }

    fn bare(&self) -> Duration {
        // Same directories as the launcher makes, root-owned; no stale socket.
        std::fs::create_dir_all(self.plan.runtime_dir().join("qmp")).unwrap();
        let _ = std::fs::remove_file(self.sock());
        let mut cmd = Command::new(&self.plan.qemu.binary);
        cmd.args(&self.plan.qemu.args);
        let fd = self.bare_tap.as_ref().unwrap().fds[0].0.as_raw_fd();
        // SAFETY: dup2 between fork and exec; dup2 clears FD_CLOEXEC on 3.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let t = self.time(cmd);
        let _ = std::fs::remove_dir_all(self.plan.runtime_dir());
        t
    }

    fn launcher(&self) -> Duration {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_machina-launch"));
        cmd.arg("--plan").arg(&self.plan_file);
        let t = self.time(cmd);
        let r = teardown::teardown(&self.plan, &teardown::Options::default());
        assert!(r.ok(), "teardown: {r}");
        t
    }

    fn run(&self) {
        for _ in 0..WARMUP {
            self.bare();
            self.launcher();
        }
        let (mut bare, mut launch) = (Vec::new(), Vec::new());
        for i in 0..RUNS {
            // Alternate which goes first in each pair.
            if i % 2 == 0 {
                bare.push(self.bare());
                launch.push(self.launcher());
            } else {
                launch.push(self.launcher());
                bare.push(self.bare());
            }
        }
        let (mb, ml) = (median(&mut bare), median(&mut launch));
        println!(
            "start to QMP greeting, {} runs each, alternated:",
            bare.len()
        );
        println!(
            "  bare QEMU as root:     median {:.2} ms (min {:.2}, max {:.2})",
            ms(mb),
            ms(bare[0]),
            ms(*bare.last().unwrap())
        );
        println!(
            "  through machina-launch: median {:.2} ms (min {:.2}, max {:.2})",
            ms(ml),
            ms(launch[0]),
            ms(*launch.last().unwrap())
        );
        println!(
            "  ratio launcher/bare: {:.3} (target <= 1.05)",
            ml.as_secs_f64() / mb.as_secs_f64()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.bare_tap = None;
        let _ = teardown::teardown(&self.plan, &teardown::Options::default());
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
