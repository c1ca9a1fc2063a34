//! `machina cat`: the Go program's summary format (reference §2.12), and a
//! JSON form for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::model::{Machine, ResolvedVolume};
use crate::config::schema::{HostFile, Volume};
use crate::config::Origin;
use crate::identity;

/// Two-space indented lines, starting at level 1, no trailing newline.
struct Summary {
    out: String,
}

impl Summary {
    fn line(&mut self, level: usize, text: impl AsRef<str>) {
        if !self.out.is_empty() {
            self.out.push('\n');
        }
        for _ in 0..level {
            self.out.push_str("  ");
        }
        self.out.push_str(text.as_ref());
    }
}

fn volume_string(v: &Volume) -> String {
    let name = v.name.as_ref().map(|n| n.as_str()).unwrap_or("");
    let storage = v.storage.as_ref().map(|n| n.as_str()).unwrap_or("");
    format!("{name}: {storage}")
}

/// The tag a volume, connection or device came from (`None`: the machine
/// file). Its origin path is `tag.<tag>.<list>[i]` in the host file.
pub fn from_tag(origin: &Origin) -> Option<&str> {
    let rest = origin.path.strip_prefix("tag.")?;
    rest.rfind('.').map(|i| &rest[..i])
}

/// `, from tag <tag>` for an entry that came from a tag (not in the Go
/// program's summary, which did not say).
fn from_tag_note(origin: &Origin) -> String {
    from_tag(origin)
        .map(|t| format!(", from tag {t}"))
        .unwrap_or_default()
}

/// The text summary of a built machine, with its VM id.
pub fn machine_text(m: &Machine, vm_id: Option<u32>) -> String {
    let mut s = Summary { out: String::new() };
    let a = &m.attrs;
    s.line(1, format!("Name: {}", m.name));
    if !m.description.is_empty() {
        s.line(1, format!("Description: {}", m.description));
    }
    if !m.id.is_nil() {
        s.line(1, format!("ID: {}", m.id));
    }
    if !m.tags.is_empty() {
        let tags: Vec<&str> = m.tags.iter().map(|t| t.as_str()).collect();
        s.line(1, format!("Tags: {}", tags.join(",")));
    }
    if !m.vars.is_empty() {
        s.line(1, "Vars:");
        for (k, v) in &m.vars {
            s.line(2, format!("{k}: {v}"));
        }
    }
    match (m.group.id.or(vm_id), m.group.name.is_empty()) {
        (Some(id), false) => s.line(
            1,
            format!("File System Access Group: {}:{id}", m.group.name),
        ),
        (None, false) => s.line(1, format!("File System Access Group: {}", m.group.name)),
        (Some(id), true) => s.line(1, format!("File System Access Group: {id}")),
        (None, true) => {}
    }
    if !a.firmware.code.is_empty() {
        s.line(
            1,
            format!(
                "Firmware Code (read-only): {}",
                volume_string(&a.firmware.code)
            ),
        );
    }
    if !a.firmware.vars.is_empty() {
        s.line(
            1,
            format!(
                "Firmware Variables (read/write): {}",
                volume_string(&a.firmware.vars)
            ),
        );
    }
    if !a.cpu.processor.is_empty() {
        s.line(1, format!("Processor: {}", a.cpu.processor));
    }
    if a.cpu.sockets > 0 {
        s.line(1, format!("Sockets: {}", a.cpu.sockets));
    }
    if a.cpu.cores > 0 {
        s.line(1, format!("Cores: {}", a.cpu.cores));
    }
    if a.cpu.threads > 0 {
        s.line(1, format!("Threads Per Core: {}", a.cpu.threads));
    }
    s.line(1, format!("RAM: {}M", m.ram_mib));
    if m.enlightenments {
        s.line(1, "Hyper-V Enlightenments: Enabled");
    }
    if let Some(tpm) = &m.tpm {
        s.line(1, "Trusted Platform Module: Enabled");
        if !a.tpm.data.is_empty() {
            s.line(
                1,
                format!("TPM Data Directory: {}", volume_string(&a.tpm.data)),
            );
        }
        s.line(1, format!("TPM Socket Path: {}", tpm.socket.display()));
    }
    if !m.qmp_sockets.is_empty() {
        s.line(1, "QMP: Enabled");
        for p in &m.qmp_sockets {
            s.line(1, format!("QMP Socket Path: {}", p.display()));
        }
    }
    if let Some(port) = m.agent_port {
        s.line(1, "QEMU Guest Agent: Enabled");
        s.line(1, format!("QEMU Guest Agent Port: {port}"));
    }
    if let Some(spice) = m.spice {
        s.line(1, "Spice Display: Enabled");
        s.line(1, format!("Spice Port: {}", spice.port));
        if a.spice.displays > 0 {
            s.line(1, format!("Spice Display Count: {}", a.spice.displays));
        }
    }
    if !m.volumes.is_empty() {
        s.line(1, "Volumes:");
        for v in &m.volumes {
            s.line(2, volume_line(m, v));
        }
    }
    if !m.connections.is_empty() {
        s.line(1, "Connections:");
        for c in &m.connections {
            s.line(
                2,
                format!(
                    "{}: {} (ip: {}, mac: {}{})",
                    c.name,
                    c.network,
                    c.ip,
                    c.mac,
                    from_tag_note(&c.origin)
                ),
            );
        }
    }
    if !m.devices.is_empty() {
        s.line(1, "Devices:");
        for d in &m.devices {
            s.line(
                2,
                format!(
                    "{}: {} ({}{})",
                    d.name,
                    d.class,
                    d.uuid,
                    from_tag_note(&d.origin)
                ),
            );
        }
    }
    s.out
}

/// A volume's WWN and serial as the Go program shows them: configured, or
/// derived for every named volume (generation derives them only where a
/// device carries them).
fn shown_ids(m: &Machine, v: &ResolvedVolume) -> (String, String) {
    let wwn = v
        .wwn
        .unwrap_or_else(|| identity::volume_wwn(&m.id, m.name.as_str(), v.name.as_str()));
    let serial = if v.serial.is_empty() {
        identity::volume_serial(&m.id, m.name.as_str(), v.name.as_str())
    } else {
        v.serial.clone()
    };
    (wwn.to_string(), serial)
}

fn volume_line(m: &Machine, v: &ResolvedVolume) -> String {
    let (wwn, serial) = shown_ids(m, v);
    let mut extra = vec![format!("wwn: {wwn}"), format!("serial: {serial}")];
    if v.bootable {
        extra.push("bootable".to_owned());
    }
    if let Some(tag) = from_tag(&v.origin) {
        extra.push(format!("from tag {tag}"));
    }
    let mut line = format!("{}: {}", v.name, v.pool);
    if !extra.is_empty() {
        let _ = write!(line, " ({})", extra.join(", "));
    }
    line
}

/// The text summary of the host file (`machina cat system`), sorted.
pub fn host_text(h: &HostFile) -> String {
    let mut s = Summary { out: String::new() };
    if !h.storage.is_empty() {
        s.line(1, "Storage:");
        for (name, p) in &h.storage {
            s.line(2, format!("{name}: {} ({})", p.path, p.kind.as_str()));
        }
    }
    if !h.network.is_empty() {
        s.line(1, "Networks:");
        for (name, n) in &h.network {
            s.line(2, format!("{name}: {}", n.device));
        }
    }
    if !h.mediated_device.is_empty() || !h.mdev.is_empty() {
        s.line(1, "Mediated Devices:");
        for (name, d) in &h.mediated_device {
            s.line(2, format!("{name}: {}", d.address));
            s.line(3, "Supplied Device Classes:");
            for (class, c) in &d.classes {
                s.line(4, format!("{class}:"));
                s.line(5, format!("Type Name: {}", c.name));
                if !c.placements.is_empty() {
                    let p: Vec<String> = c.placements.iter().map(u32::to_string).collect();
                    s.line(5, format!("Placement IDs: {}", p.join(", ")));
                }
            }
        }
        for (name, d) in &h.mdev {
            s.line(2, format!("{name}: {}", d.address));
            s.line(3, "Supplied Device Classes:");
            for (class, t) in &d.types {
                s.line(4, format!("{class}:"));
                s.line(5, format!("Type Name: {t}"));
            }
        }
    }
    if !h.tag.is_empty() {
        s.line(1, "Tags:");
        for name in h.tag.keys() {
            s.line(2, name.as_str());
        }
    }
    s.out
}

/// `machina cat --json`: a machine as scripts see it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MachineJson<'a> {
    name: &'a str,
    description: &'a str,
    id: String,
    tags: Vec<&'a str>,
    vars: &'a std::collections::BTreeMap<String, String>,
    group: GroupJson<'a>,
    ram_mib: u64,
    cpu: CpuJson,
    enlightenments: bool,
    qmp_sockets: Vec<String>,
    agent_port: Option<u16>,
    spice_port: Option<u16>,
    volumes: Vec<VolumeJson<'a>>,
    connections: Vec<ConnectionJson<'a>>,
    devices: Vec<DeviceJson<'a>>,
}

#[derive(Debug, Serialize)]
struct GroupJson<'a> {
    name: &'a str,
    id: Option<u32>,
}

#[derive(Debug, Serialize)]
struct CpuJson {
    sockets: u32,
    cores: u32,
    threads: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct VolumeJson<'a> {
    /// The tag it came from; absent when from the machine file.
    #[serde(rename = "from-tag", skip_serializing_if = "Option::is_none")]
    from_tag: Option<&'a str>,
    name: &'a str,
    storage: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
    wwn: String,
    serial: String,
    bootable: bool,
}

#[derive(Debug, Serialize)]
struct ConnectionJson<'a> {
    /// The tag it came from; absent when from the machine file.
    #[serde(rename = "from-tag", skip_serializing_if = "Option::is_none")]
    from_tag: Option<&'a str>,
    name: &'a str,
    network: &'a str,
    bridge: &'a str,
    interface: &'a str,
    ip: &'a str,
    mac: &'a str,
    queues: u32,
}

#[derive(Debug, Serialize)]
struct DeviceJson<'a> {
    /// The tag it came from; absent when from the machine file.
    #[serde(rename = "from-tag", skip_serializing_if = "Option::is_none")]
    from_tag: Option<&'a str>,
    name: &'a str,
    class: &'a str,
    id: String,
}

/// The JSON form of a built machine.
pub fn machine_json(m: &Machine, vm_id: Option<u32>) -> MachineJson<'_> {
    MachineJson {
        name: m.name.as_str(),
        description: &m.description,
        id: m.id.to_string(),
        tags: m.tags.iter().map(|t| t.as_str()).collect(),
        vars: &m.vars,
        group: GroupJson {
            name: &m.group.name,
            id: m.group.id.or(vm_id),
        },
        ram_mib: m.ram_mib,
        cpu: CpuJson {
            sockets: m.cpu.sockets,
            cores: m.cpu.cores,
            threads: m.cpu.threads,
        },
        enlightenments: m.enlightenments,
        qmp_sockets: m
            .qmp_sockets
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        agent_port: m.agent_port,
        spice_port: m.spice.map(|s| s.port),
        volumes: m
            .volumes
            .iter()
            .map(|v| {
                let (wwn, serial) = shown_ids(m, v);
                VolumeJson {
                    name: v.name.as_str(),
                    storage: v.pool.as_str(),
                    kind: v.kind.as_str(),
                    path: v.path.display().to_string(),
                    wwn,
                    serial,
                    bootable: v.bootable,
                    from_tag: from_tag(&v.origin),
                }
            })
            .collect(),
        connections: m
            .connections
            .iter()
            .map(|c| ConnectionJson {
                name: c.name.as_str(),
                network: c.network.as_str(),
                bridge: c.bridge.as_str(),
                interface: c.ifname.as_str(),
                ip: &c.ip,
                mac: &c.mac,
                queues: c.queues,
                from_tag: from_tag(&c.origin),
            })
            .collect(),
        devices: m
            .devices
            .iter()
            .map(|d| DeviceJson {
                name: d.name.as_str(),
                class: d.class.as_str(),
                id: d.uuid.to_string(),
                from_tag: from_tag(&d.origin),
            })
            .collect(),
    }
}
