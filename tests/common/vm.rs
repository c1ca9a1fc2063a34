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
