//! A machine after tag merge, population of derived identities and
//! resolution against the host file: everything the QEMU model and the
//! launch plan need, already validated.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::Origin;
use super::schema::{Accelerator, Attributes, StorageType};
use crate::identity::{IdRange, Wwn};
use crate::names::{
    ClassName, ConnectionName, DeviceName, InterfaceName, MachineName, NetworkName, PoolName,
    TagName, VolumeName,
};

/// A fully built machine.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The machine's name.
    pub name: MachineName,
    /// Free text.
    pub description: String,
    /// The machine UUID (never nil: a file without one is refused).
    pub id: Uuid,
    /// Tags, in order.
    pub tags: Vec<TagName>,
    /// Merged variables.
    pub vars: BTreeMap<String, String>,
    /// The file-system group: configured name and id, if any.
    pub group: FsGroup,
    /// The merged attributes as configured (for `cat`).
    pub attrs: Attributes,
    /// Host-level QEMU settings.
    pub qemu: QemuHost,
    /// UEFI firmware.
    pub firmware: Option<FirmwareSpec>,
    /// CPU.
    pub cpu: CpuSpec,
    /// RAM in MiB.
    pub ram_mib: u64,
    /// Hyper-V enlightenments.
    pub enlightenments: bool,
    /// TPM.
    pub tpm: Option<TpmSpec>,
    /// QMP socket paths in order (empty when QMP is off).
    pub qmp_sockets: Vec<PathBuf>,
    /// Guest agent TCP port.
    pub agent_port: Option<u16>,
    /// Spice.
    pub spice: Option<SpiceSpec>,
    /// Resource limits of the unit.
    pub limits: ResourceLimits,
    /// Serial console (`attrs.console`).
    pub console: Option<ConsoleSpec>,
    /// Volumes in merged order.
    pub volumes: Vec<ResolvedVolume>,
    /// Connections in merged order.
    pub connections: Vec<ResolvedConnection>,
    /// Mediated devices in merged order.
    pub devices: Vec<ResolvedDevice>,
    /// Where the machine file is.
    pub origin: Origin,
}

/// The VM's file-system group as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsGroup {
    /// Group name (`machina-<vm>` unless configured).
    pub name: String,
    /// Explicit id from the config.
    pub id: Option<u32>,
    /// The range derived ids come from.
    pub range: IdRange,
    /// Why the configured id cannot be used (a system id): `gen` and the
    /// launch refuse with this message, `args`, `cat` and `check` report it.
    pub refused: Option<(Origin, String)>,
}

/// QEMU settings from the host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuHost {
    /// Absolute QEMU binary path.
    pub binary: PathBuf,
    /// Accelerator.
    pub accelerator: Accelerator,
    /// `-cpu` model.
    pub cpu_model: String,
    /// vhost-net for TAPs.
    pub vhost: bool,
    /// NIC option ROMs.
    pub nic_option_rom: bool,
}

/// Firmware volumes.
#[derive(Debug, Clone)]
pub struct FirmwareSpec {
    /// Code (pflash0).
    pub code: ResolvedVolume,
    /// Variables (pflash1).
    pub vars: Option<ResolvedVolume>,
}

/// CPU brand, for brand-specific flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    /// AMD.
    Amd,
    /// Intel.
    Intel,
    /// Anything else or unset.
    Other,
}

/// Resolved CPU topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSpec {
    /// Brand of the processor used.
    pub brand: Brand,
    /// Sockets (0 = unset).
    pub sockets: u32,
    /// Cores (0 = unset).
    pub cores: u32,
    /// Threads (0 = unset).
    pub threads: u32,
}

/// TPM emulator settings.
#[derive(Debug, Clone)]
pub struct TpmSpec {
    /// swtpm control socket.
    pub socket: PathBuf,
    /// swtpm state directory (`attrs.tpm.data` resolved against its pool);
    /// `None` when `attrs.tpm.data` is not set (`gen` refuses that).
    pub data: Option<PathBuf>,
}

/// Optional cgroup limits of a VM's unit, resolved from `attrs.limits`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ResourceLimits {
    /// `MemoryHigh=` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_high: Option<u64>,
    /// `MemoryMax=` in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// `CPUWeight=`, 1–10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// `AllowedCPUs=`, a checked CPU list ([`crate::names::is_cpu_list`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_cpus: Option<String>,
}

impl ResourceLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == ResourceLimits::default()
    }
}

/// Spice settings.
#[derive(Debug, Clone, Copy)]
pub struct SpiceSpec {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// QXL heads, 1–4.
    pub heads: u32,
}

/// The serial console: a UNIX socket QEMU serves and the log of what the
/// guest wrote, both in the VM's runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSpec {
    /// `/run/machina/<vm>/console.sock`.
    pub socket: PathBuf,
    /// `/run/machina/<vm>/console.log`.
    pub log: PathBuf,
}

impl ConsoleSpec {
    /// Socket file name inside the runtime directory.
    pub const SOCKET: &'static str = "console.sock";
    /// Log file name inside the runtime directory.
    pub const LOG: &'static str = "console.log";

    /// The console of VM `name`: fixed names in its runtime directory.
    pub fn for_machine(name: &MachineName) -> ConsoleSpec {
        let dir = std::path::Path::new(crate::plan::RUNTIME_ROOT).join(name.as_str());
        ConsoleSpec {
            socket: dir.join(Self::SOCKET),
            log: dir.join(Self::LOG),
        }
    }
}

/// A volume resolved against its pool.
#[derive(Debug, Clone)]
pub struct ResolvedVolume {
    /// Volume name.
    pub name: VolumeName,
    /// Pool name.
    pub pool: PoolName,
    /// Pool type.
    pub kind: StorageType,
    /// Pool is read-only.
    pub readonly: bool,
    /// Absolute, cleaned path inside the pool.
    pub path: PathBuf,
    /// WWN (explicit or derived).
    pub wwn: Option<Wwn>,
    /// Serial (explicit or derived).
    pub serial: String,
    /// Gets a boot index.
    pub bootable: bool,
    /// Where it was defined.
    pub origin: Origin,
}

/// A network connection resolved against its network.
#[derive(Debug, Clone)]
pub struct ResolvedConnection {
    /// Connection name.
    pub name: ConnectionName,
    /// Network name.
    pub network: NetworkName,
    /// The bridge.
    pub bridge: InterfaceName,
    /// Informational IP.
    pub ip: String,
    /// MAC (explicit or derived).
    pub mac: String,
    /// Queue pairs (≥ 1).
    pub queues: u32,
    /// TAP interface name.
    pub ifname: InterfaceName,
    /// Where it was defined.
    pub origin: Origin,
}

/// A mediated device resolved against the host's devices.
#[derive(Debug, Clone)]
pub struct ResolvedDevice {
    /// Device name.
    pub name: DeviceName,
    /// Class.
    pub class: ClassName,
    /// mdev UUID (explicit or derived).
    pub uuid: Uuid,
    /// Parents that supply the class, sorted by address.
    pub parents: Vec<MdevParent>,
    /// Where it was defined.
    pub origin: Origin,
}

/// One physical device able to create a mediated device of the wanted type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MdevParent {
    /// PCI address, e.g. `0000:c1:00.0`.
    pub address: String,
    /// The wanted type's display name (the type's `name` file).
    pub type_name: String,
    /// Preferred NVIDIA placement ids, in order.
    #[serde(default)]
    pub placements: Vec<u32>,
    /// Whether the parent supports heterogeneous vGPU types.
    #[serde(default)]
    pub heterogeneous: bool,
}
