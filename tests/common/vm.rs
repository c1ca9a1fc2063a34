//! A VM defined by a temporary configuration, for tests that go through
//! `machina gen` and the launcher.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use super::netns::unique;

/// A temporary configuration: a host file whose pool is in a temp dir and
/// whose bridge is `br0` (inside the test's namespace), and one VM.
pub struct Setup {
    /// The temporary directory.
    pub dir: PathBuf,
    /// The VM's name.
    pub vm: String,
}

impl Setup {
    /// A VM with one raw disk and one NIC on `br0`, 128 MiB, QMP on.
    pub fn new(qemu: &Path) -> Setup {
        Setup::with(qemu, |_, _| {})
    }

    /// As [`Setup::new`], with the host and machine JSON adjusted by `f`.
    pub fn with(
        qemu: &Path,
        f: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
    ) -> Setup {
        let tag = unique();
        let dir = PathBuf::from(format!("/tmp/machina-e2e-{tag}"));
        std::fs::create_dir_all(dir.join("config/machine.conf.d")).unwrap();
        std::fs::create_dir_all(dir.join("pool")).unwrap();
        let vm = format!("e2e-{}", tag.replace('-', "x"));
        let mut host = json!({
            "qemu": {"binary": qemu, "cpu-model": "qemu64", "vhost": false, "nic-option-rom": false},
            "storage": {"disks": {"path": dir.join("pool"), "pattern": "${machine-name}-${volume}.raw", "type": "raw"}},
            "network": {"lan": {"device": "br0"}},
            "tag": {"small": {"attrs": {"memory": {"ram": 128}, "qmp": {"enabled": true}}}}
        });
        let mut machine = json!({
            "id": uuid::Uuid::new_v4(),
            "tags": ["small"],
            "volumes": [{"name": "os", "storage": "disks", "bootable": true}],
            "connections": [{"name": "0", "network": "lan"}]
        });
        f(&mut host, &mut machine);
        std::fs::write(dir.join("config/machina.conf.json"), host.to_string()).unwrap();
        std::fs::write(
            dir.join(format!("config/machine.conf.d/{vm}.conf.json")),
            machine.to_string(),
        )
        .unwrap();
        let disk = dir.join(format!("pool/{vm}-os.raw"));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Setup { dir, vm }
    }

    /// Runs machina with this config; plans live under `<dir>/root` (as
    /// `gen --root` writes them).
    pub fn machina(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(super::bin("machina"));
        c.arg("--config-dir").arg(self.dir.join("config"));
        if args[0] != "gen" {
            c.arg("--plan-dir")
                .arg(self.dir.join("root/etc/machina/launch"));
        }
        c.args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// The plan `gen --root` installed.
    pub fn plan(&self) -> machina::plan::Plan {
        machina::plan::Plan::from_json(&std::fs::read_to_string(self.plan_path()).unwrap()).unwrap()
    }

    /// Where `gen --root` put the plan.
    pub fn plan_path(&self) -> PathBuf {
        self.dir
            .join(format!("root/etc/machina/launch/{}.json", self.vm))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.machina(&["teardown", &self.vm]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Setup {
    /// `machina gen` then `machina-launch --plan` inside `ns`; returns the
    /// plan and the QEMU guard once QMP answers on `command.0`.
    pub fn launch(&self, ns: &super::netns::NetNs) -> (machina::plan::Plan, super::launch::Qemu) {
        self.launch_with(ns, |_| {})
    }

    /// As [`Setup::launch`], with the generated plan changed by `edit`
    /// (e.g. to boot the test guest's kernel) and rewritten before launch.
    pub fn launch_with(
        &self,
        ns: &super::netns::NetNs,
        edit: impl FnOnce(&mut machina::plan::Plan),
    ) -> (machina::plan::Plan, super::launch::Qemu) {
        let out = self.machina(&[
            "gen",
            "--root",
            self.dir.join("root").to_str().unwrap(),
            &self.vm,
        ]);
        assert!(
            out.status.success(),
            "gen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan =
            machina::plan::Plan::from_json(&std::fs::read_to_string(self.plan_path()).unwrap())
                .unwrap();
        let mut plan = plan;
        let before = plan.clone();
        edit(&mut plan);
        if plan != before {
            std::fs::write(self.plan_path(), plan.to_json()).unwrap();
        }
        let stderr = self.dir.join(format!("qemu-{}.err", unique()));
        let child = ns
            .command(super::bin("machina-launch").to_str().unwrap())
            .arg("--plan")
            .arg(self.plan_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut q = super::launch::Qemu { child, stderr };
        let sock = plan.runtime_dir().join("qmp/command.0.qmp.socket");
        drop(super::launch::qmp_connect(&mut q, &sock));
        (plan, q)
    }
}

impl Setup {
    /// A plan edit that boots the test guest: its kernel and initramfs
    /// (copied into this setup's directory, readable by the VM) and a
    /// kernel command line without `quiet`, so boot messages show. With
    /// `paused`, QEMU starts stopped (`-S`) until QMP `cont`.
    pub fn boot_guest(
        &self,
        image: &super::guest::GuestImage,
        paused: bool,
    ) -> impl FnOnce(&mut machina::plan::Plan) {
        use std::os::unix::fs::PermissionsExt;
        let boot = self.dir.join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        let kernel = boot.join("vmlinuz");
        let initrd = boot.join("initrd.gz");
        for (from, to) in [(&image.kernel, &kernel), (&image.initrd, &initrd)] {
            std::fs::copy(from, to).unwrap();
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let append = image.append.replace(" quiet", "");
        move |plan| {
            let at = plan
                .qemu
                .args
                .iter()
                .position(|a| a == "-sandbox")
                .expect("plan has -sandbox");
            let mut extra: Vec<String> = vec![
                "-kernel".into(),
                kernel.display().to_string(),
                "-initrd".into(),
                initrd.display().to_string(),
                "-append".into(),
                append,
            ];
            if paused {
                extra.push("-S".into());
            }
            plan.qemu.args.splice(at..at, extra);
            for path in [kernel, initrd] {
                plan.grants.push(machina::plan::Grant {
                    path,
                    access: machina::plan::Access::ReadOnly,
                    shared: true,
                });
            }
        }
    }
}

/// A process on a pseudo-terminal (as an administrator's `machina console`
/// runs), with its output collected by a reader thread.
pub struct PtyProcess {
    /// The process.
    pub child: std::process::Child,
    master: std::fs::File,
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Everything read so far.
    pub seen: Vec<u8>,
}

impl PtyProcess {
    /// Starts `cmd` with the pty's slave as its stdin, stdout and stderr.
    pub fn spawn(mut cmd: Command) -> PtyProcess {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = std::fs::File::from(pty.slave);
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            // EIO once every slave fd is closed: the end.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        PtyProcess {
            child,
            master,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits until the output contains `what`; panics after `limit` with
    /// what was seen.
    pub fn expect(&mut self, what: &str, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        // Searches only what is new (and the overlap), so a long output
        // (a flood) costs linear time.
        let what_bytes = what.as_bytes();
        let mut from = 0;
        loop {
            if self.seen[from..]
                .windows(what_bytes.len().max(1))
                .any(|w| w == what_bytes)
            {
                return;
            }
            from = self.seen.len().saturating_sub(what_bytes.len());
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!(
                    "no {what:?} within {limit:?}; the terminal showed:\n{}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// Types `bytes` on the terminal.
    pub fn type_bytes(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.master.write_all(bytes).unwrap();
    }
}

impl Drop for PtyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
