//! Translates a built [`Machine`] into QEMU options, in the Go program's
//! build order (reference §3.2): defaults, identity, firmware, attributes,
//! volumes, connections, devices.

use std::net::{IpAddr, Ipv4Addr};

use super::needs::{DeviceNode, HostNeeds, Listener, Service};
use super::options::{numbered, to_argv, Opt};
use super::topology::{Controller, Topology, TopologyError, MAX_SATA};
use crate::config::model::{Brand, Machine, ResolvedVolume};
use crate::config::schema::{Accelerator, StorageType};
use crate::config::{ConfigError, Origin};

/// The Hyper-V enlightenments, in the Go program's order.
const HYPERV: &[&str] = &[
    "hv-relaxed",
    "hv-vapic",
    "hv-spinlocks=0x1fff",
    "hv-vpindex",
    "hv-runtime",
    "hv-time",
    "hv-synic",
    "hv-stimer",
    "hv-tlbflush",
    "hv-ipi",
    "hv-frequencies",
    "hv-reenlightenment",
    "hv-stimer-direct",
    "hv-emsr-bitmap",
    "hv-xmm-input",
    "hv-tlbflush-ext",
    "hv-tlbflush-direct",
];

/// The seccomp sandbox every QEMU runs under.
pub const SANDBOX: &[&str] = &[
    "on",
    "obsolete=deny",
    "elevateprivileges=deny",
    "spawn=deny",
    "resourcecontrol=deny",
];

/// The address every TCP listener of QEMU (spice, the guest agent) binds.
pub const LISTEN_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// [`LISTEN_ADDRESS`] as QEMU's options spell it.
const LISTEN_HOST: &str = "127.0.0.1";

/// Extra locked memory for vfio guests beyond their RAM (as libvirt does).
const MEMLOCK_MARGIN: u64 = 1 << 30;

/// First fd number handed to QEMU (after stdio).
pub const FIRST_FD: i32 = 3;

/// The fds one connection's TAP needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapFds {
    /// One TAP fd per queue.
    pub fds: Vec<i32>,
    /// One vhost-net fd per queue (empty without vhost).
    pub vhost_fds: Vec<i32>,
}

/// QEMU hardware for one machine.
#[derive(Debug, Clone)]
pub struct Hardware {
    /// All options in order.
    pub options: Vec<Opt>,
    /// TAP fds per connection, in connection order.
    pub taps: Vec<TapFds>,
    /// What this hardware needs from the host.
    pub needs: HostNeeds,
}

/// The QEMU netdev id of the VM's `i`-th connection (`net.<i>`), which QMP
/// `set_link` names.
pub fn netdev_id(i: usize) -> String {
    numbered("net.", i as u64)
}

impl Hardware {
    /// The argv after `argv[0]`.
    pub fn argv(&self) -> Vec<String> {
        to_argv(&self.options)
    }
}

/// Longest QEMU block node name (`BLOCK_NODE_NAME` is 32 bytes with NUL).
const MAX_NODE_NAME: usize = 31;

/// A node-name QEMU accepts for a natural one (`<machine>-<volume>-file`):
/// the natural name when it starts with a letter, has at most 31 characters
/// and only letters, digits, `-`, `.`, `_`; else `n` and the first 16 hex
/// digits of its SHA3-256 (stable, 17 characters). Node-names are not guest
/// visible: the Go program emitted invalid ones, which QEMU refused.
pub fn valid_node_name(natural: &str) -> String {
    node_name(natural.to_owned())
}

/// [`valid_node_name`] taking the natural name, returned as is (no copy)
/// when QEMU accepts it.
fn node_name(natural: String) -> String {
    let ok = natural.len() <= MAX_NODE_NAME
        && natural.starts_with(|c: char| c.is_ascii_alphabetic())
        && natural
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        return natural;
    }
    use sha3::{Digest, Sha3_256};
    let digest = Sha3_256::digest(natural.as_bytes());
    let mut out = String::from("n");
    for b in &digest[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Builds the hardware for `m`.
pub fn build(m: &Machine) -> Result<Hardware, ConfigError> {
    Builder::new(m).run()
}

struct Builder<'m> {
    m: &'m Machine,
    topo: Topology,
    machine_params: Opt,
    globals: Vec<Opt>,
    mons: Vec<Opt>,
    spice: Option<Opt>,
    blockdevs: Vec<Opt>,
    chardevs: Vec<Opt>,
    tpmdevs: Vec<Opt>,
    netdevs: Vec<Opt>,
    /// Block node names taken (a handful per VM: a list).
    nodes: Vec<String>,
    bootindex: u32,
    sata: usize,
    taps: Vec<TapFds>,
    needs: HostNeeds,
    /// ISA serial ports: outside the PCI topology, so enabling the console
    /// moves no PCI device.
    serials: Vec<Opt>,
}

fn topo_err(origin: &Origin, e: TopologyError) -> ConfigError {
    ConfigError::invalid(origin, e.to_string())
}

impl<'m> Builder<'m> {
    fn new(m: &'m Machine) -> Self {
        Builder {
            m,
            topo: Topology::new(),
            machine_params: Opt::new("machine").named("type", "q35"),
            // Sized for a typical VM (the README's example): no regrowth.
            globals: Vec::with_capacity(4),
            mons: Vec::with_capacity(4),
            spice: None,
            blockdevs: Vec::with_capacity(16),
            chardevs: Vec::with_capacity(4),
            tpmdevs: Vec::new(),
            netdevs: Vec::with_capacity(2),
            nodes: Vec::with_capacity(8),
            bootindex: 0,
            sata: 0,
            taps: Vec::new(),
            needs: HostNeeds::new(m.qemu.accelerator),
            serials: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Hardware, ConfigError> {
        let m = self.m;
        let morigin = m.origin.clone();
        // 1. Defaults: pvpanic at index 0.
        let panic_id = self.topo.next_id("panic");
        self.topo
            .add_direct(|a| {
                Topology::direct_params(
                    Opt::new("device").word("pvpanic-pci").named("id", panic_id),
                    a,
                )
            })
            .map_err(|e| topo_err(&morigin, e))?;
        // 3. Firmware.
        self.firmware()?;
        // 4. Attributes.
        let cpu = self.cpu();
        self.tpm()?;
        self.qmp();
        self.agent()?;
        self.spice_display()?;
        self.console();
        // 5–7.
        for v in &m.volumes {
            self.volume(v)?;
        }
        self.connections()?;
        self.devices()?;
        Ok(self.finish(cpu))
    }

    fn firmware(&mut self) -> Result<(), ConfigError> {
        let Some(fw) = &self.m.firmware else {
            return Ok(());
        };
        let code = self.firmware_node(&fw.code)?;
        self.machine_params = self.machine_params.clone().named("pflash0", &code);
        if let Some(vars) = &fw.vars {
            let node = self.firmware_node(vars)?;
            self.machine_params = self.machine_params.clone().named("pflash1", node);
        }
        self.globals.push(global("cfi.pflash01", "secure", "on"));
        Ok(())
    }

    /// A firmware file node: `<v>` when the pool is read-only (shared by
    /// many VMs), else `<m>-<v>`.
    fn firmware_node(&mut self, v: &ResolvedVolume) -> Result<String, ConfigError> {
        let node = if v.readonly {
            v.name.to_string()
        } else {
            [self.m.name.as_str(), "-", v.name.as_str()].concat()
        };
        let node = self.add_node(v, node)?;
        let o = Opt::new("blockdev")
            .named("driver", "file")
            .named("node-name", &node);
        let o = if v.readonly {
            o.named("read-only", "on")
        } else {
            o
        };
        self.blockdevs.push(o.named("filename", &v.path));
        Ok(node)
    }

    /// Registers a block node and returns its node-name: the natural one
    /// when QEMU accepts it, else [`valid_node_name`] of it.
    fn add_node(&mut self, v: &ResolvedVolume, natural: String) -> Result<String, ConfigError> {
        let node = node_name(natural);
        if self.nodes.contains(&node) {
            return Err(ConfigError::invalid(
                &v.origin.key("name"),
                format!("QEMU block node name {node:?} is already used by another volume"),
            ));
        }
        self.nodes.push(node.clone());
        Ok(node)
    }

    fn cpu(&mut self) -> Opt {
        let m = self.m;
        let mut cpu = Opt::new("cpu").value(&m.qemu.cpu_model);
        if m.cpu.threads > 1 && m.cpu.brand == Brand::Amd {
            cpu = cpu.word("topoext=on");
        }
        if m.enlightenments {
            for hv in HYPERV {
                cpu = cpu.word(hv);
            }
            match m.cpu.brand {
                Brand::Amd => cpu = cpu.word("hv-avic=on"),
                Brand::Intel => cpu = cpu.word("hv-evmcs"),
                Brand::Other => {}
            }
        }
        cpu
    }

    fn tpm(&mut self) -> Result<(), ConfigError> {
        let Some(tpm) = &self.m.tpm else {
            return Ok(());
        };
        self.chardevs.push(
            Opt::new("chardev")
                .word("socket")
                .named("id", "tpm.0.socket")
                .named("path", &tpm.socket),
        );
        self.tpmdevs.push(
            Opt::new("tpmdev")
                .word("emulator")
                .named("id", "tpm.0")
                .named("chardev", "tpm.0.socket"),
        );
        self.topo
            .add_other(Opt::new("device").word("tpm-crb").named("tpmdev", "tpm.0"))
            .map_err(|e| topo_err(&self.m.origin, e))
    }

    fn qmp(&mut self) {
        for (i, path) in self.m.qmp_sockets.iter().enumerate() {
            let id = numbered("qmp.", i as u64);
            self.chardevs.push(
                Opt::new("chardev")
                    .word("socket")
                    .named("id", &id)
                    .named("server", "on")
                    .named("wait", "off")
                    .named("path", path),
            );
            self.mons.push(
                Opt::new("mon")
                    .named("chardev", id)
                    .named("mode", "control"),
            );
        }
    }

    fn serial_port(
        &mut self,
        chardev: &'static str,
        name: &'static str,
    ) -> Result<(), ConfigError> {
        self.topo
            .add_child(Controller::Serial, |id, n| {
                Opt::new("device")
                    .word("virtserialport")
                    .named("id", id)
                    .named("bus", "serial.0")
                    .named("nr", n + 1)
                    .named("chardev", chardev)
                    .named("name", name)
            })
            .map_err(|e| topo_err(&self.m.origin, e))
    }

    fn agent(&mut self) -> Result<(), ConfigError> {
        let Some(port) = self.m.agent_port else {
            return Ok(());
        };
        self.chardevs.push(
            Opt::new("chardev")
                .word("socket")
                .named("id", "guestagent")
                .named("host", LISTEN_HOST)
                .named("port", port)
                .named("server", "on")
                .named("wait", "off")
                .named("nodelay", "on"),
        );
        self.needs.listeners.push(Listener {
            service: Service::Agent,
            address: LISTEN_ADDRESS,
            port,
        });
        self.serial_port("guestagent", "org.qemu.guest_agent.0")
    }

    /// The serial console (`attrs.console`): COM1 on a UNIX socket QEMU
    /// serves, everything the guest writes also appended to the log.
    fn console(&mut self) {
        let Some(console) = &self.m.console else {
            return;
        };
        self.chardevs.push(
            Opt::new("chardev")
                .word("socket")
                .named("id", "console")
                .named("path", &console.socket)
                .named("server", "on")
                .named("wait", "off")
                .named("logfile", &console.log)
                .named("logappend", "on"),
        );
        self.serials.push(
            Opt::new("device")
                .word("isa-serial")
                .named("id", "serial.0")
                .named("chardev", "console"),
        );
    }

    fn spice_display(&mut self) -> Result<(), ConfigError> {
        let Some(spice) = self.m.spice else {
            return Ok(());
        };
        let origin = self.m.origin.clone();
        // vmport comes right after type in the Go output.
        self.machine_params = std::mem::replace(&mut self.machine_params, Opt::flag("machine"))
            .named_second("vmport", "off");
        self.spice = Some(
            Opt::new("spice")
                .named("port", spice.port)
                .named("addr", LISTEN_HOST)
                .named("disable-ticketing", "on"),
        );
        self.needs.listeners.push(Listener {
            service: Service::Spice,
            address: LISTEN_ADDRESS,
            port: spice.port,
        });
        self.globals.push(global("qxl-vga", "ram_size", "67108864"));
        self.globals
            .push(global("qxl-vga", "vram_size", "67108864"));
        for head in 0..spice.heads {
            let id = self.topo.next_id("qxl");
            let drv = if head == 0 { "qxl-vga" } else { "qxl" };
            self.topo
                .add_direct(|a| {
                    Topology::direct_params(Opt::new("device").word(drv).named("id", id), a)
                })
                .map_err(|e| topo_err(&origin, e))?;
        }
        self.chardevs.push(
            Opt::new("chardev")
                .word("spicevmc")
                .named("id", "vdagent")
                .named("debug", 0)
                .named("name", "vdagent"),
        );
        self.serial_port("vdagent", "com.redhat.spice.0")?;
        self.topo
            .add_child(Controller::Usb, |id, n| {
                Opt::new("device")
                    .word("usb-tablet")
                    .named("id", id)
                    .named("bus", "usb.0")
                    .named("port", n + 1)
            })
            .map_err(|e| topo_err(&origin, e))?;
        for i in 0..2 {
            let chardev = numbered("usbredir.", i);
            self.chardevs.push(
                Opt::new("chardev")
                    .word("spicevmc")
                    .named("id", &chardev)
                    .named("debug", 0)
                    .named("name", "usbredir"),
            );
            self.topo
                .add_child(Controller::Usb, |id, n| {
                    Opt::new("device")
                        .word("usb-redir")
                        .named("id", id)
                        .named("bus", "usb.0")
                        .named("port", n + 1)
                        .named("chardev", chardev)
                })
                .map_err(|e| topo_err(&origin, e))?;
        }
        Ok(())
    }

    fn next_bootindex(&mut self, v: &ResolvedVolume) -> Option<u32> {
        v.bootable.then(|| {
            self.bootindex += 1;
            self.bootindex
        })
    }

    /// The two nodes of a raw image: a file node and a raw format node.
    fn raw_nodes(&mut self, v: &ResolvedVolume) -> Result<String, ConfigError> {
        let node = [self.m.name.as_str(), "-", v.name.as_str()].concat();
        let file = [node.as_str(), "-file"].concat();
        let node = self.add_node(v, node)?;
        let file = self.add_node(v, file)?;
        let mut f = Opt::new("blockdev")
            .named("driver", "file")
            .named("node-name", &file);
        if v.readonly {
            f = f.named("read-only", "on");
        }
        self.blockdevs
            .push(f.named("discard", "unmap").named("filename", &v.path));
        let mut r = Opt::new("blockdev")
            .named("driver", "raw")
            .named("node-name", &node);
        if v.readonly {
            // The Go program left the format node writable on a read-only
            // file node, which QEMU refuses.
            r = r.named("read-only", "on");
        }
        self.blockdevs.push(
            r.named("discard", "unmap")
                .named("detect-zeroes", "unmap")
                .named("file", file),
        );
        Ok(node)
    }

    /// A read-only file node for an ISO, named after the volume.
    fn iso_node(&mut self, v: &ResolvedVolume) -> Result<String, ConfigError> {
        let node = self.add_node(v, v.name.to_string())?;
        self.blockdevs.push(
            Opt::new("blockdev")
                .named("driver", "file")
                .named("node-name", &node)
                .named("read-only", "on")
                .named("filename", &v.path),
        );
        Ok(node)
    }

    fn volume(&mut self, v: &ResolvedVolume) -> Result<(), ConfigError> {
        let err = |e| topo_err(&v.origin, e);
        match v.kind {
            StorageType::Raw | StorageType::RawScsi => {
                let node = self.raw_nodes(v)?;
                let boot = self.next_bootindex(v);
                let (wwn, serial) = (v.wwn, nonempty(&v.serial));
                self.topo
                    .add_child(Controller::Scsi, |id, n| {
                        scsi_child("scsi-hd", id, n, &node)
                            .named_opt("wwn", wwn)
                            .named_opt("serial", serial)
                            .named_opt("bootindex", boot)
                    })
                    .map_err(err)?;
            }
            StorageType::RawBlock | StorageType::VvfatBlock => {
                let node = if v.kind == StorageType::RawBlock {
                    self.raw_nodes(v)?
                } else {
                    let node =
                        self.add_node(v, [self.m.name.as_str(), "-", v.name.as_str()].concat())?;
                    self.blockdevs.push(
                        Opt::new("blockdev")
                            .named("driver", "vvfat")
                            .named("node-name", &node)
                            .named("read-only", "on")
                            .named("dir", &v.path),
                    );
                    node
                };
                let (io, _) = self.topo.iothread();
                let id = self.topo.next_id("block");
                let boot = self.next_bootindex(v);
                let serial = nonempty(&v.serial);
                self.topo
                    .add_root(|root| {
                        Opt::new("device")
                            .word("virtio-blk-pci")
                            .named("id", id)
                            .named("bus", root)
                            .named("iothread", io)
                            .named("num-queues", 4)
                            .named("drive", node)
                            .named_opt("serial", serial)
                            .named_opt("bootindex", boot)
                    })
                    .map_err(err)?;
            }
            StorageType::IsoAhci => {
                if self.sata >= MAX_SATA {
                    return Err(err(TopologyError::ControllerFull("SATA", MAX_SATA)));
                }
                let node = self.iso_node(v)?;
                // One unit per AHCI port. The first CD keeps the Go
                // program's ide.1; later ones take ide.2–ide.5, then ide.0
                // (the Go program put every CD on ide.1, which QEMU refuses).
                let port = (self.sata + 1) % MAX_SATA;
                self.sata += 1;
                let id = self.topo.next_id("sata");
                self.topo
                    .add_other(
                        Opt::new("device")
                            .word("ide-cd")
                            .named("id", id)
                            .named("bus", numbered("ide.", port as u64))
                            .named("drive", node),
                    )
                    .map_err(err)?;
            }
            StorageType::IsoScsi => {
                let node = self.iso_node(v)?;
                self.topo
                    .add_child(Controller::Scsi, |id, n| {
                        scsi_child("scsi-cd", id, n, &node)
                    })
                    .map_err(err)?;
            }
            StorageType::IsoUsb => {
                let node = self.iso_node(v)?;
                self.topo
                    .add_child(Controller::Usb, |id, n| {
                        Opt::new("device")
                            .word("usb-storage")
                            .named("id", id)
                            .named("bus", "usb.0")
                            .named("port", n + 1)
                            .named("drive", node)
                    })
                    .map_err(err)?;
            }
            StorageType::Firmware => {
                self.firmware_node(v)?;
            }
            StorageType::TpmData => {}
        }
        Ok(())
    }

    fn connections(&mut self) -> Result<(), ConfigError> {
        let mut fd = FIRST_FD;
        for (i, c) in self.m.connections.iter().enumerate() {
            let mut fds = Vec::new();
            let mut vhost_fds = Vec::new();
            for _ in 0..c.queues {
                fds.push(fd);
                fd += 1;
                if self.m.qemu.vhost {
                    vhost_fds.push(fd);
                    fd += 1;
                }
            }
            let id = netdev_id(i);
            let join = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(":");
            let mut nd = Opt::new("netdev").word("tap").named("id", &id);
            nd = if c.queues == 1 {
                nd.named("fd", fds[0])
            } else {
                nd.named("fds", join(&fds))
            };
            if self.m.qemu.vhost {
                nd = nd.named("vhost", "on");
                nd = if c.queues == 1 {
                    nd.named("vhostfd", vhost_fds[0])
                } else {
                    nd.named("vhostfds", join(&vhost_fds))
                };
            }
            self.netdevs.push(nd);
            let (mac, queues, rom) = (c.mac.clone(), c.queues, self.m.qemu.nic_option_rom);
            self.topo
                .add_root(|root| {
                    let mut d = Opt::new("device")
                        .word("virtio-net-pci")
                        .named("bus", root)
                        .named("mac", mac)
                        .named("netdev", id);
                    if queues > 1 {
                        d = d.named("mq", "on").named("vectors", 2 * queues + 2);
                    }
                    if !rom {
                        d = d.named("romfile", "");
                    }
                    d
                })
                .map_err(|e| topo_err(&c.origin, e))?;
            self.needs.add_device(DeviceNode::Tun);
            if !vhost_fds.is_empty() {
                self.needs.add_device(DeviceNode::VhostNet);
            }
            self.taps.push(TapFds { fds, vhost_fds });
        }
        Ok(())
    }

    fn devices(&mut self) -> Result<(), ConfigError> {
        for d in &self.m.devices {
            let id = self.topo.next_id("vfio");
            let sysfsdev = [
                "/sys/bus/mdev/devices/",
                d.uuid
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ]
            .concat();
            self.topo
                .add_root(|root| {
                    Opt::new("device")
                        .word("vfio-pci")
                        .named("id", id)
                        .named("bus", root)
                        .named("sysfsdev", sysfsdev)
                })
                .map_err(|e| topo_err(&d.origin, e))?;
        }
        Ok(())
    }

    fn finish(self, cpu: Opt) -> Hardware {
        let m = self.m;
        let iothread = self.topo.has_iothread();
        let devices = self.topo.into_devices();
        // The single options (at most 14) and the lists: one allocation.
        let mut o = Vec::with_capacity(
            14 + self.mons.len()
                + self.globals.len()
                + self.blockdevs.len()
                + self.chardevs.len()
                + self.tpmdevs.len()
                + self.netdevs.len()
                + devices.len()
                + self.serials.len(),
        );
        if !m.id.is_nil() {
            o.push(Opt::new("uuid").value(m.id.to_string()));
        }
        o.push(Opt::new("name").value(m.name.to_string()));
        match m.qemu.accelerator {
            Accelerator::Kvm => o.push(Opt::flag("enable-kvm")),
            Accelerator::Tcg => o.push(Opt::new("accel").word("tcg")),
        }
        o.push(Opt::flag("nodefaults"));
        o.push(Opt::flag("nographic"));
        o.push(self.machine_params);
        o.push(cpu);
        let c = &m.cpu;
        if c.sockets > 0 || c.cores > 0 || c.threads > 0 {
            let nz = |v: u32| (v > 0).then_some(v);
            o.push(
                Opt::new("smp")
                    .named_opt("sockets", nz(c.sockets))
                    .named_opt("cores", nz(c.cores))
                    .named_opt("threads", nz(c.threads)),
            );
        }
        let mut size = numbered("", m.ram_mib);
        size.push('M');
        o.push(Opt::new("m").named("size", size));
        o.push(
            Opt::new("rtc")
                .named("base", "utc")
                .named("clock", "host")
                .named("driftfix", "slew"),
        );
        o.extend(self.mons);
        o.extend(self.spice);
        o.extend(self.globals);
        o.push(
            Opt::new("boot")
                .named("menu", "on")
                .named("reboot-timeout", 5000),
        );
        if iothread {
            o.push(
                Opt::new("object")
                    .word("iothread")
                    .named("id", "iothread.0"),
            );
        }
        o.extend(self.blockdevs);
        o.extend(self.chardevs);
        o.extend(self.tpmdevs);
        o.extend(self.netdevs);
        o.extend(devices);
        o.extend(self.serials);
        o.push(SANDBOX.iter().fold(Opt::new("sandbox"), |s, w| s.word(w)));
        let mut needs = self.needs;
        if !m.devices.is_empty() {
            // vfio pins all guest memory.
            needs.add_device(DeviceNode::Vfio);
            needs.memlock = Some(m.ram_mib * (1 << 20) + MEMLOCK_MARGIN);
        }
        Hardware {
            options: o,
            taps: self.taps,
            needs,
        }
    }
}

fn global(driver: &'static str, property: &'static str, value: &'static str) -> Opt {
    Opt::new("global")
        .named("driver", driver)
        .named("property", property)
        .named("value", value)
}

fn scsi_child(driver: &'static str, id: String, n: usize, node: &String) -> Opt {
    Opt::new("device")
        .word(driver)
        .named("id", id)
        .named("bus", "scsi.0")
        .named("channel", 0)
        .named("scsi-id", 0)
        .named("lun", n)
        .named("drive", node)
}

fn nonempty(s: &String) -> Option<&String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::{valid_node_name, LISTEN_ADDRESS, LISTEN_HOST};

    #[test]
    fn listen_host_spells_listen_address() {
        assert_eq!(LISTEN_ADDRESS.to_string(), LISTEN_HOST);
    }

    #[test]
    fn node_names_valid_kept_invalid_derived() {
        assert_eq!(valid_node_name("test-vm-os-file"), "test-vm-os-file");
        assert_eq!(
            valid_node_name("a23456789012345678901234567890b"),
            "a23456789012345678901234567890b"
        );
        // The recipe is in the README's changelog: keep these stable.
        let derived = valid_node_name("2fa-gw-os-file");
        assert_eq!(derived.len(), 17);
        assert!(derived.starts_with('n'));
        assert_eq!(derived, valid_node_name("2fa-gw-os-file"));
        assert_ne!(derived, valid_node_name("2fa-gw-os"));
        let long = valid_node_name("engineering-workstation-904-os-file");
        assert_eq!(long.len(), 17);
        assert_eq!(derived, "n".to_owned() + &sha3_hex("2fa-gw-os-file"));
    }

    fn sha3_hex(s: &str) -> String {
        use sha3::{Digest, Sha3_256};
        Sha3_256::digest(s.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
