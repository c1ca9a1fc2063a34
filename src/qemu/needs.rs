//! What a VM's QEMU needs from the host, stated once by the hardware model.
//!
//! The hardware builder records each need where it emits the option that
//! causes it (the accelerator, a TCP listener, a TAP, a vfio device), and the
//! plan carries the result. The unit renderer sizes the sandbox from it, the
//! launcher prepares exactly it, and `inspect` reports it: nobody parses
//! QEMU's argv back.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::schema::Accelerator;

/// Everything QEMU needs of the host besides the VM's own files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HostNeeds {
    /// The accelerator QEMU runs with. TCG writes and executes generated
    /// code, so only `kvm` allows `MemoryDenyWriteExecute=`.
    pub accelerator: Accelerator,
    /// TCP sockets QEMU listens on.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Device nodes QEMU (or the launcher on its behalf) opens.
    #[serde(default)]
    pub devices: Vec<DeviceNode>,
    /// `RLIMIT_MEMLOCK` in bytes, when vfio devices pin guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memlock: Option<u64>,
}

impl HostNeeds {
    /// The needs of a bare QEMU with `accelerator`: `/dev/kvm` for KVM,
    /// nothing else.
    pub fn new(accelerator: Accelerator) -> HostNeeds {
        let devices = match accelerator {
            Accelerator::Kvm => vec![DeviceNode::Kvm],
            Accelerator::Tcg => Vec::new(),
        };
        HostNeeds {
            accelerator,
            listeners: Vec::new(),
            devices,
            memlock: None,
        }
    }

    /// Adds a device node once.
    pub fn add_device(&mut self, d: DeviceNode) {
        if !self.devices.contains(&d) {
            self.devices.push(d);
        }
    }

    /// Whether QEMU runs with KVM only.
    pub fn kvm_only(&self) -> bool {
        self.accelerator == Accelerator::Kvm
    }

    /// Whether QEMU needs IP sockets at all.
    pub fn inet(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// Whether every listener binds to a loopback address (false when
    /// there is none).
    pub fn loopback_only(&self) -> bool {
        self.inet() && self.listeners.iter().all(|l| l.address.is_loopback())
    }

    /// The listener of `service`, if any.
    pub fn listener(&self, service: Service) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.service == service)
    }
}

/// A TCP socket QEMU listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Listener {
    /// What listens.
    pub service: Service,
    /// The address bound.
    pub address: IpAddr,
    /// The TCP port.
    pub port: u16,
}

/// What a TCP listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    /// The spice display.
    Spice,
    /// The QEMU guest agent's channel.
    Agent,
}

/// A device node. A closed set: a plan cannot name an arbitrary node for
/// the unit to bind in (block devices come as grants, which root checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceNode {
    /// `/dev/kvm`.
    Kvm,
    /// `/dev/net/tun`, to create TAPs.
    Tun,
    /// `/dev/vhost-net`.
    VhostNet,
    /// `/dev/vfio/vfio`, the vfio container (the group nodes come with it).
    Vfio,
}

impl DeviceNode {
    /// The node's path.
    pub fn path(self) -> &'static Path {
        Path::new(self.path_str())
    }

    /// [`DeviceNode::path`] as text (for unit lines).
    pub fn path_str(self) -> &'static str {
        match self {
            DeviceNode::Kvm => "/dev/kvm",
            DeviceNode::Tun => "/dev/net/tun",
            DeviceNode::VhostNet => "/dev/vhost-net",
            DeviceNode::Vfio => "/dev/vfio/vfio",
        }
    }
}
