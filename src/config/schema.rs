//! The JSON schema of the host file and the machine files, as the Go machina
//! reads them, with unknown keys refused.
//!
//! Names are validated types, so a bad name fails while the file is read,
//! with the JSON path of the offending value. Everything else (pool types,
//! ports, paths) is checked in [`super::build`] where the context is known.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::{
    ClassName, ConnectionName, DeviceName, NetworkName, PoolName, TagName, VolumeName,
};

/// `machina.conf.json`: the host's pools, networks, devices and tags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostFile {
    /// Host CPU definitions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub processor: BTreeMap<String, Processor>,
    /// Storage pools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage: BTreeMap<PoolName, Pool>,
    /// Bridged networks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network: BTreeMap<NetworkName, Network>,
    /// Physical devices able to create mediated devices.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mediated_device: BTreeMap<String, MediatedDevice>,
    /// The README's legacy form of `mediated-device`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mdev: BTreeMap<String, LegacyMdev>,
    /// Reusable definitions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tag: BTreeMap<TagName, Definition>,
    /// machina's own QEMU settings (not in the Go program).
    #[serde(default)]
    pub qemu: QemuSettings,
    /// The uid/gid range for VM identities (not in the Go program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_range: Option<IdRangeConfig>,
}

/// `qemu` in the host file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QemuSettings {
    /// Absolute path of the QEMU binary.
    #[serde(default = "default_qemu_binary")]
    pub binary: String,
    /// `kvm` or `tcg`.
    #[serde(default)]
    pub accelerator: Accelerator,
    /// The `-cpu` model; `host` in production.
    #[serde(default = "default_cpu_model")]
    pub cpu_model: String,
    /// Whether TAPs get vhost-net acceleration (needs `/dev/vhost-net`).
    #[serde(default = "default_true")]
    pub vhost: bool,
    /// Whether NICs load their option ROM (PXE). Off gives `romfile=`.
    #[serde(default = "default_true")]
    pub nic_option_rom: bool,
}

impl Default for QemuSettings {
    fn default() -> Self {
        QemuSettings {
            binary: default_qemu_binary(),
            accelerator: Accelerator::default(),
            cpu_model: default_cpu_model(),
            vhost: true,
            nic_option_rom: true,
        }
    }
}

fn default_qemu_binary() -> String {
    "/usr/bin/qemu-system-x86_64".into()
}
fn default_cpu_model() -> String {
    "host".into()
}
fn default_true() -> bool {
    true
}

/// The QEMU accelerator.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Accelerator {
    /// Hardware virtualization.
    #[default]
    Kvm,
    /// Software emulation.
    Tcg,
}

/// `id-range` in the host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IdRangeConfig {
    /// First uid/gid.
    pub first: u32,
    /// Last uid/gid (inclusive).
    pub last: u32,
}

/// A host processor definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Processor {
    /// `AMD` or `Intel` (case-insensitive) enable brand-specific flags.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub brand: String,
    /// Informational.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Threads per core.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub threads: u32,
    /// The default processor.
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
}

/// A storage pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Pool {
    /// Base directory.
    #[serde(default)]
    pub path: String,
    /// File name pattern.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pattern: String,
    /// Storage type.
    #[serde(rename = "type")]
    pub kind: StorageType,
    /// Opened read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
}

/// Storage types and the device model each selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StorageType {
    /// Raw image on virtio-scsi.
    Raw,
    /// Raw image on virtio-scsi.
    RawScsi,
    /// Raw image on virtio-blk.
    RawBlock,
    /// A host directory as a read-only FAT disk on virtio-blk.
    VvfatBlock,
    /// ISO on SATA (AHCI).
    IsoAhci,
    /// ISO on virtio-scsi.
    IsoScsi,
    /// ISO on USB storage.
    IsoUsb,
    /// Firmware code or variables (pflash).
    Firmware,
    /// swtpm state directory.
    TpmData,
}

impl StorageType {
    /// The type's name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageType::Raw => "raw",
            StorageType::RawScsi => "raw-scsi",
            StorageType::RawBlock => "raw-block",
            StorageType::VvfatBlock => "vvfat-block",
            StorageType::IsoAhci => "iso-ahci",
            StorageType::IsoScsi => "iso-scsi",
            StorageType::IsoUsb => "iso-usb",
            StorageType::Firmware => "firmware",
            StorageType::TpmData => "tpm-data",
        }
    }
}

/// A bridged network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Network {
    /// The bridge interface.
    #[serde(default)]
    pub device: String,
    /// Go's ifup script. Accepted for compatibility and unused: machina-launch
    /// attaches TAPs itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub up: String,
    /// Go's ifdown script (unused, as `up`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub down: String,
}

/// A physical device that can create mediated devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MediatedDevice {
    /// PCI address (`0000:c1:00.0`).
    #[serde(default)]
    pub address: String,
    /// Supports mixed vGPU types (NVIDIA).
    #[serde(default, skip_serializing_if = "is_false")]
    pub heterogeneous: bool,
    /// Device classes it supplies.
    #[serde(default)]
    pub classes: BTreeMap<ClassName, MdevClass>,
}

/// A device class a physical device supplies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MdevClass {
    /// The mdev type's display name.
    #[serde(default)]
    pub name: String,
    /// Preferred placement ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<u32>,
}

/// The README's legacy `mdev` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LegacyMdev {
    /// PCI address.
    #[serde(default)]
    pub address: String,
    /// Class → type name.
    #[serde(default)]
    pub types: BTreeMap<ClassName, String>,
}

/// A machine file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MachineFile {
    /// Overrides the file-derived name; must equal it (see `build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The machine UUID (required: `machina gen-id` prints a new one). An
    /// absent one is reported by the build with every other problem, so it
    /// stays optional for parsing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Tags, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TagName>,
    /// Variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Privileges.
    #[serde(default, skip_serializing_if = "Privileges::is_empty")]
    pub privileges: Privileges,
    /// Attributes.
    #[serde(default)]
    pub attrs: Attributes,
    /// Volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<Connection>,
    /// Mediated devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
}

impl MachineFile {
    /// The machine's own definition (the part a tag can also hold).
    pub fn definition(&self) -> Definition {
        Definition {
            vars: self.vars.clone(),
            privileges: self.privileges.clone(),
            attrs: self.attrs.clone(),
            volumes: self.volumes.clone(),
            connections: self.connections.clone(),
            devices: self.devices.clone(),
        }
    }
}

/// A definition: a machine's body or a tag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Definition {
    /// Variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Privileges.
    #[serde(default, skip_serializing_if = "Privileges::is_empty")]
    pub privileges: Privileges,
    /// Attributes.
    #[serde(default)]
    pub attrs: Attributes,
    /// Volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<Connection>,
    /// Mediated devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
}

/// `privileges`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Privileges {
    /// File-system access.
    #[serde(default)]
    pub filesystem: FilesystemPrivileges,
}

impl Privileges {
    fn is_empty(&self) -> bool {
        self.filesystem.group.name.is_empty() && self.filesystem.group.id == 0
    }
}

/// `privileges.filesystem`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FilesystemPrivileges {
    /// The group granted access to the VM's files.
    #[serde(default)]
    pub group: Group,
}

/// A group name and id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Group {
    /// Group name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Group id.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u32,
}

/// `attrs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Attributes {
    /// UEFI firmware.
    #[serde(default)]
    pub firmware: Firmware,
    /// CPU topology.
    #[serde(default)]
    pub cpu: Cpu,
    /// Memory.
    #[serde(default)]
    pub memory: Memory,
    /// Hyper-V enlightenments.
    #[serde(default)]
    pub enlightenments: Toggle,
    /// TPM.
    #[serde(default)]
    pub tpm: Tpm,
    /// QMP.
    #[serde(default)]
    pub qmp: Qmp,
    /// Guest agents.
    #[serde(default)]
    pub agent: Agent,
    /// Spice display.
    #[serde(default)]
    pub spice: Spice,
    /// Serial console on a UNIX socket in the runtime directory (machina's
    /// own key: omitted when off, so the Go program's view is unchanged).
    #[serde(default, skip_serializing_if = "Toggle::is_off")]
    pub console: Toggle,
    /// Resource limits of the VM's unit (cgroup), usually set in a tag.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limits: Limits,
}

/// `attrs.limits`: resource limits systemd puts on the VM's unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Memory limits, sized from the guest's RAM plus a margin.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory: MemoryLimits,
    /// CPU limits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpu: CpuLimits,
}

/// `attrs.limits.memory`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MemoryLimits {
    /// `MemoryHigh=` at RAM plus margin: above it the kernel reclaims
    /// QEMU's memory (swaps, slows the guest) but kills nothing.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub high: bool,
    /// `MemoryMax=` at RAM plus margin: a hard limit; beyond it the kernel
    /// OOM-kills QEMU, i.e. the guest dies. Off unless set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: bool,
    /// MiB above the guest's RAM for QEMU itself (default 512).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub margin: u64,
}

/// `attrs.limits.cpu`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CpuLimits {
    /// `CPUWeight=`, 1–10000 (systemd's default is 100).
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = 1, max = 10000))]
    pub weight: u64,
    /// `AllowedCPUs=`: host CPUs QEMU may run on, e.g. `"0-3,8"`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub allowed: String,
}

/// `attrs.firmware`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Firmware {
    /// Firmware code (read-only).
    #[serde(default)]
    pub code: Volume,
    /// Firmware variables (read-write).
    #[serde(default)]
    pub vars: Volume,
}

/// `attrs.cpu`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cpu {
    /// A host processor name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub processor: String,
    /// Sockets (1 or more; leave the key out for the default).
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "positive_count"
    )]
    #[schemars(range(min = 1))]
    pub sockets: u32,
    /// Cores per socket (1 or more; leave the key out for the default).
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "positive_count"
    )]
    #[schemars(range(min = 1))]
    pub cores: u32,
    /// Threads per core (1 or more; leave the key out for the default).
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "positive_count"
    )]
    #[schemars(range(min = 1))]
    pub threads: u32,
}

/// A CPU count written in a file: 0 is refused, because the Go program (and
/// QEMU's `-smp`) silently dropped it instead of saying so.
fn positive_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom(
            "0 is not a count; give 1 or more, or leave the key out for the default",
        ));
    }
    Ok(n)
}

/// `attrs.memory`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Memory {
    /// RAM in MiB.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ram: u64,
}

/// An `{"enabled": bool}` switch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Toggle {
    /// On or off.
    #[serde(default)]
    pub enabled: bool,
}

impl Toggle {
    /// Whether the switch is off (for `skip_serializing_if`).
    pub fn is_off(&self) -> bool {
        !self.enabled
    }
}

/// `attrs.tpm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Tpm {
    /// On or off.
    #[serde(default)]
    pub enabled: bool,
    /// The swtpm state directory's pool and volume.
    #[serde(default)]
    pub data: Volume,
    /// The swtpm control socket.
    #[serde(default)]
    pub socket: TpmSocket,
}

/// `attrs.tpm.socket`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TpmSocket {
    /// Socket path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// `attrs.qmp`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Qmp {
    /// On or off.
    #[serde(default)]
    pub enabled: bool,
    /// Extra sockets.
    #[serde(default)]
    pub sockets: QmpSockets,
}

/// `attrs.qmp.sockets`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QmpSockets {
    /// Names under `/run/machina/<vm>/qmp/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Absolute paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// `attrs.agent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Agent {
    /// The QEMU guest agent.
    #[serde(default)]
    pub qemu: Port,
}

/// A service with a TCP port on 127.0.0.1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Port {
    /// On or off.
    #[serde(default)]
    pub enabled: bool,
    /// Fixed port.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u32,
    /// Port pattern, used when `port` is 0.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port_pattern: String,
}

/// `attrs.spice`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Spice {
    /// On or off.
    #[serde(default)]
    pub enabled: bool,
    /// Fixed port.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u32,
    /// Port pattern, used when `port` is 0.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port_pattern: String,
    /// QXL heads (1–4).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub displays: u32,
}

/// A volume (disk, ISO, firmware file, TPM state directory).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Volume {
    /// The volume name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<VolumeName>,
    /// The pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<PoolName>,
    /// World Wide Name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wwn: String,
    /// Serial number.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    /// Gets the next boot index.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bootable: bool,
}

impl Volume {
    /// Whether neither name nor storage is set.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.storage.is_none()
    }
}

/// A network connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Connection {
    /// The connection name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<ConnectionName>,
    /// The host network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkName>,
    /// Informational address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// MAC address; derived when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// virtio-net queue pairs (machina; default 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queues: u32,
}

/// A mediated device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Device {
    /// The device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<DeviceName>,
    /// The device class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<ClassName>,
    /// The mdev UUID; derived when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_false(b: &bool) -> bool {
    !*b
}
