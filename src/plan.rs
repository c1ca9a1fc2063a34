//! The launch plan: the contract between `machina gen` and `machina-launch`.
//!
//! A plan holds exactly what the privileged launcher needs to prepare the
//! host for one VM and exec QEMU, and nothing of the configuration language.
//! It is written by `machina gen` (root-owned, mode 0644) and read by
//! `machina-launch`, which refuses a plan whose `version` it does not know or
//! that carries a key it does not understand.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::{InterfaceName, MachineName};

mod generate;
mod json;
pub use generate::{plan_for, IdError, IdRequest, TakenIds};

/// The plan format this build writes and understands.
/// Version 2 dropped the `runtime-dir` field: the runtime directory is
/// derived from the VM's name ([`Plan::runtime_dir`]), never read.
/// Version 3 carries the hardware's host needs ([`HostNeeds`]; the
/// `memlock` field moved into them); `network-isolation` is derived from
/// them (no TCP listener), and `tpm` names the VM's swtpm.
pub const PLAN_VERSION: u32 = 3;

/// Default directory of plan files.
pub const DEFAULT_PLAN_DIR: &str = "/etc/machina/launch";

pub use crate::config::model::{MdevParent, ResourceLimits};
pub use crate::paths::{LOCK_DIR, RUNTIME_ROOT};
pub use crate::qemu::needs::{DeviceNode, HostNeeds, Listener, Service};

/// A lock machina takes: one per VM, and one host-wide for mediated
/// devices. [`Lock::path`] is the only place that says where each is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock<'a> {
    /// Held by the launcher while it prepares the VM and then by QEMU for
    /// as long as it lives; taken by teardown.
    Vm(&'a MachineName),
    /// Held while a mediated device is created: the lock directory itself.
    Mdev,
    /// Held by the VM's swtpm for as long as it lives (`swtpm.<vm>`), so a
    /// second swtpm for the same TPM state is refused.
    Swtpm(&'a MachineName),
    /// Held by `machina console` while it is attached to the VM's console
    /// (QEMU serves one client; a second session is told who holds it).
    Console(&'a MachineName),
}

impl Lock<'_> {
    /// The lock's name inside [`LOCK_DIR`]: `vm.<vm>`, or `.` for the mdev
    /// lock (the lock directory itself).
    pub fn file_name(&self) -> String {
        match self {
            Lock::Vm(vm) => format!("vm.{vm}"),
            Lock::Mdev => ".".to_owned(),
            Lock::Swtpm(vm) => format!("swtpm.{vm}"),
            Lock::Console(vm) => format!("console.{vm}"),
        }
    }

    /// The lock's full path: `/run/machina/.lock/vm.<vm>` (a directory) or
    /// `/run/machina/.lock`.
    pub fn path(&self) -> PathBuf {
        match self {
            Lock::Vm(_) | Lock::Swtpm(_) | Lock::Console(_) => {
                Path::new(LOCK_DIR).join(self.file_name())
            }
            Lock::Mdev => PathBuf::from(LOCK_DIR),
        }
    }
}

/// Everything `machina-launch` needs to start one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Plan {
    /// Must equal [`PLAN_VERSION`].
    pub version: u32,
    /// The VM's name.
    pub machine: MachineName,
    /// The VM's UUID.
    pub uuid: Uuid,
    /// The uid QEMU runs as. Equal to `gid` by construction.
    pub uid: u32,
    /// The gid QEMU runs as; also the group granted access to the VM's files.
    pub gid: u32,
    /// TAP devices to create, in the order of their fds.
    #[serde(default)]
    pub taps: Vec<Tap>,
    /// Mediated devices to create and grant.
    #[serde(default)]
    pub mdevs: Vec<Mdev>,
    /// Files the VM's group must be able to open.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// What QEMU needs from the host (accelerator, TCP listeners, device
    /// nodes, locked memory), as the hardware model states it.
    pub needs: HostNeeds,
    /// Optional cgroup limits for the unit (the launcher does not use
    /// them; they are here so that `gen` sees them change).
    #[serde(default, skip_serializing_if = "ResourceLimits::is_empty")]
    pub limits: ResourceLimits,
    /// QEMU listens on no TCP address (`needs.listeners` is empty), so
    /// the launcher runs it in a network namespace of its own, entered after
    /// its TAPs are open: it keeps its TAPs and UNIX sockets and cannot
    /// reach the host's network. Derived from `needs` by `gen`; absent
    /// (false) in older plans.
    #[serde(default)]
    pub network_isolation: bool,
    /// QEMU writes the serial console's output to `console.log` in the
    /// runtime directory (`attrs.console`), so the launcher starts its
    /// keeper, which bounds the file (see [`crate::launcher::console_log`]).
    /// Absent (false) in older plans and for VMs without a console.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub console_log: bool,
    /// What to exec.
    pub qemu: QemuExec,
    /// The VM's TPM emulator, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Swtpm>,
}

/// The VM's software TPM: swtpm, run as the VM's uid by
/// `machina-launch --swtpm` (see [`crate::launcher::swtpm`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Swtpm {
    /// The state directory (`attrs.tpm.data`): owned by the VM's uid, mode
    /// 0700; the TPM in `state/`, the per-VM local CA in `authority/`.
    pub data_dir: PathBuf,
    /// The control socket QEMU connects to.
    pub socket: PathBuf,
    /// Absolute path of `swtpm`.
    pub swtpm: PathBuf,
    /// Absolute path of `swtpm_setup`.
    pub swtpm_setup: PathBuf,
    /// Absolute path of `swtpm_localca`.
    pub swtpm_localca: PathBuf,
}

/// One TAP device and the fds QEMU receives for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Tap {
    /// Interface name (`<vm>.<conn>`, hashed past 15 bytes).
    pub ifname: InterfaceName,
    /// Bridge to enslave the TAP to.
    pub bridge: InterfaceName,
    /// The guest NIC's MAC, for the record (QEMU sets it on the device).
    pub mac: String,
    /// fd numbers QEMU finds the TAP queues at; one per queue.
    pub fds: Vec<i32>,
    /// fd numbers of `/dev/vhost-net` opens, one per queue; empty when vhost
    /// is off.
    #[serde(default)]
    pub vhost_fds: Vec<i32>,
}

/// A mediated device (e.g. a vGPU) the VM uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Mdev {
    /// The mdev UUID (`/sys/bus/mdev/devices/<uuid>`).
    pub uuid: Uuid,
    /// Root of sysfs (`/sys` in production; a fake tree in tests).
    pub sysfs_root: PathBuf,
    /// Parent devices that can supply it, in the order to try them.
    pub parents: Vec<MdevParent>,
}

/// A file the VM's group is given access to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Grant {
    /// Absolute path of a regular file, block device or (vvfat) directory.
    pub path: PathBuf,
    /// Read-only or read-write.
    pub access: Access,
    /// Shared media (ISOs, firmware code) used by many VMs: never re-group;
    /// rely on world-read or add a per-VM ACL entry.
    #[serde(default)]
    pub shared: bool,
}

/// Access a VM needs to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// The QEMU process to exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QemuExec {
    /// Absolute path of the QEMU binary.
    pub binary: PathBuf,
    /// Arguments after `argv[0]`, with fd numbers in place.
    pub args: Vec<String>,
}

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Not valid JSON for this format.
    #[error("plan is not valid: {0}")]
    Decode(#[from] serde_json::Error),
    /// A version this build does not understand.
    #[error("plan version {found} is not supported (this machina-launch understands version {PLAN_VERSION}); run `machina gen` with the matching machina")]
    Version {
        /// The version found in the file.
        found: u32,
    },
    /// A field is inconsistent.
    #[error("plan is not valid: {0}")]
    Invalid(String),
}

impl Plan {
    /// The VM's runtime directory, `/run/machina/<vm>`: owned by `uid`, mode
    /// 0750, QMP sockets in its `qmp/` subdirectory. Derived from the name,
    /// so no plan can point root at another directory.
    pub fn runtime_dir(&self) -> PathBuf {
        Path::new(RUNTIME_ROOT).join(self.machine.as_str())
    }

    /// Parses and checks a plan document.
    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        // Read the version alone first, so a future format gets a version
        // error rather than an unknown-field error.
        #[derive(Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly = serde_json::from_str(text)?;
        if v.version != PLAN_VERSION {
            return Err(PlanError::Version { found: v.version });
        }
        let plan: Plan = serde_json::from_str(text)?;
        plan.check()?;
        Ok(plan)
    }

    /// Serializes the plan as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut buf = Vec::with_capacity(8192);
        self.write_json(&mut buf);
        String::from_utf8(buf).expect("serde_json writes UTF-8")
    }

    /// Appends [`Plan::to_json`]'s text to `buf` (a buffer reused across
    /// thousands of plans by `gen`).
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        json::write_pretty(buf, self).expect("plan serializes");
        buf.push(b'\n');
    }

    /// Checks the invariants the launcher relies on.
    pub fn check(&self) -> Result<(), PlanError> {
        let bad = |m: String| Err(PlanError::Invalid(m));
        if self.uid == 0 || self.gid == 0 {
            return bad("uid and gid must not be 0".into());
        }
        if self.uid != self.gid {
            return bad(format!("uid {} differs from gid {}", self.uid, self.gid));
        }
        if let Err(e) = crate::identity::check_vm_id_range(self.uid) {
            return bad(e.to_string());
        }
        if !self.qemu.binary.is_absolute() {
            return bad(format!(
                "qemu binary {} is not absolute",
                self.qemu.binary.display()
            ));
        }
        let needs = |d: DeviceNode, why: &str| {
            if self.needs.devices.contains(&d) {
                Ok(())
            } else {
                bad(format!("{why} but the needs lack {}", d.path().display()))
            }
        };
        if !self.taps.is_empty() {
            needs(DeviceNode::Tun, "the plan has taps")?;
        }
        if self.taps.iter().any(|t| !t.vhost_fds.is_empty()) {
            needs(DeviceNode::VhostNet, "a tap has vhost fds")?;
        }
        if !self.mdevs.is_empty() {
            needs(DeviceNode::Vfio, "the plan has mediated devices")?;
        }
        if self.network_isolation && self.needs.inet() {
            return bad("network isolation but the needs name TCP listeners".into());
        }
        let mut fds: Vec<i32> = Vec::new();
        for tap in &self.taps {
            if tap.fds.is_empty() {
                return bad(format!("tap {} has no fds", tap.ifname));
            }
            if !tap.vhost_fds.is_empty() && tap.vhost_fds.len() != tap.fds.len() {
                return bad(format!(
                    "tap {} has {} fds but {} vhost fds",
                    tap.ifname,
                    tap.fds.len(),
                    tap.vhost_fds.len()
                ));
            }
            fds.extend(&tap.fds);
            fds.extend(&tap.vhost_fds);
        }
        let mut sorted = fds.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != fds.len() {
            return bad("an fd number is used twice".into());
        }
        if sorted.first().is_some_and(|&fd| fd < 3) {
            return bad("fd numbers below 3 are reserved for stdio".into());
        }
        if let Some(cpus) = &self.limits.allowed_cpus {
            if !crate::names::is_cpu_list(cpus) {
                return bad(format!("allowed CPUs {cpus:?} is not a CPU list"));
            }
        }
        if self
            .limits
            .cpu_weight
            .is_some_and(|w| !(1..=10000).contains(&w))
        {
            return bad("CPU weight is outside 1–10000".into());
        }
        for g in &self.grants {
            if !g.path.is_absolute() {
                return bad(format!("grant path {} is not absolute", g.path.display()));
            }
        }
        if let Some(t) = &self.tpm {
            for (what, p) in [
                ("tpm data-dir", &t.data_dir),
                ("tpm socket", &t.socket),
                ("swtpm", &t.swtpm),
                ("swtpm-setup", &t.swtpm_setup),
                ("swtpm-localca", &t.swtpm_localca),
            ] {
                if !p.is_absolute() || p.parent().is_none_or(|d| d == Path::new("/")) {
                    return bad(format!(
                        "{what} {} is not an absolute path below a directory",
                        p.display()
                    ));
                }
            }
        }
        for m in &self.mdevs {
            if !m.sysfs_root.is_absolute() {
                return bad(format!(
                    "sysfs root {} is not absolute",
                    m.sysfs_root.display()
                ));
            }
        }
        Ok(())
    }
}
