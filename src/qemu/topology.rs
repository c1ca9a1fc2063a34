//! The PCIe topology: one list of items on the root complex, each at index
//! `i` = slot `i/8 + 1`, function `i%8`, with controllers created lazily
//! behind their own root ports. Addresses, ids and walk order are the Go
//! program's (reference §3.4), so a migrated guest sees the same hardware.
//!
//! Two Go bugs are fixed, both in configurations whose devices the guest
//! could not use: a non-PCI item (TPM CRB, SATA CD) no longer takes
//! function 0 of a slot, which left the slot's other functions invisible to
//! the guest; and the list stops at slot 31 instead of emitting slot 32.

use super::options::{numbered, numbered_parts, Opt, ParamValue};

/// Items on the root complex: slots 1–31, 8 functions each.
pub const MAX_ITEMS: usize = 31 * 8;
/// virtio-serial ports (port 0 is reserved).
pub const MAX_SERIAL_PORTS: usize = 30;
/// virtio-scsi children.
pub const MAX_SCSI: usize = 28;
/// xHCI ports.
pub const MAX_USB: usize = 15;
/// AHCI ports on the q35 ICH9 controller (`ide.0`–`ide.5`).
pub const MAX_SATA: usize = 6;

/// A capacity problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// No more PCIe slots.
    #[error("the PCI Express root complex is full ({MAX_ITEMS} devices, slots 1–31) and cannot accommodate more devices")]
    RootFull,
    /// A controller is full.
    #[error("the {0} controller is full ({1} devices) and cannot accommodate more devices")]
    ControllerFull(&'static str, usize),
}

/// Lazily created controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// virtio-serial.
    Serial,
    /// virtio-scsi.
    Scsi,
    /// xHCI USB.
    Usb,
}

impl Controller {
    fn prefix(self) -> &'static str {
        match self {
            Controller::Serial => "serial",
            Controller::Scsi => "scsi",
            Controller::Usb => "usb",
        }
    }

    fn capacity(self) -> usize {
        match self {
            Controller::Serial => MAX_SERIAL_PORTS,
            Controller::Scsi => MAX_SCSI,
            Controller::Usb => MAX_USB,
        }
    }
}

#[derive(Debug)]
enum Item {
    /// A device directly on pcie.0 at this index.
    Direct(Opt),
    /// A root port at this index with one downstream device.
    Root { port: Opt, child: Opt },
    /// A root port with a controller and its children.
    Controller {
        port: Opt,
        kind: Controller,
        controller: Opt,
        children: Vec<Opt>,
    },
    /// A device that is not on the PCIe bus (TPM CRB, SATA CD).
    Other(Opt),
}

/// The topology under construction.
#[derive(Debug, Default)]
pub struct Topology {
    items: Vec<Item>,
    /// Indices consumed (non-PCI items at function 0 consume none).
    next_index: usize,
    /// Per id prefix, the next number (a handful of prefixes: a list).
    counters: Vec<(&'static str, u64)>,
    iothread: bool,
}

/// A PCIe address on the root complex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Slot 1–31.
    pub slot: usize,
    /// Function 0–7.
    pub function: usize,
}

impl Address {
    fn of(index: usize) -> Address {
        Address {
            slot: index / 8 + 1,
            function: index % 8,
        }
    }
}

impl ParamValue for Address {
    /// `S.F` (digits and a dot: nothing to escape), without a string of
    /// its own.
    fn push_to(self, out: &mut String) {
        out.push_str(itoa::Buffer::new().format(self.slot));
        out.push('.');
        out.push(char::from(b'0' + self.function as u8));
    }
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Topology {
        Topology::default()
    }

    /// Next id for a prefix: `<prefix>.<n>`.
    pub fn next_id(&mut self, prefix: &'static str) -> String {
        let n = match self.counters.iter_mut().find(|(p, _)| *p == prefix) {
            Some((_, n)) => n,
            None => {
                self.counters.push((prefix, 0));
                &mut self.counters.last_mut().expect("just pushed").1
            }
        };
        let id = numbered_parts(&[prefix, "."], *n);
        *n += 1;
        id
    }

    fn take_index(&mut self) -> Result<Address, TopologyError> {
        if self.next_index >= MAX_ITEMS {
            return Err(TopologyError::RootFull);
        }
        let a = Address::of(self.next_index);
        self.next_index += 1;
        Ok(a)
    }

    /// Adds a device directly on `pcie.0`; `make` receives its address and
    /// returns the option (`bus=pcie.0,addr=…` are the caller's to set via
    /// [`Topology::direct_params`]).
    pub fn add_direct(&mut self, make: impl FnOnce(Address) -> Opt) -> Result<(), TopologyError> {
        let a = self.take_index()?;
        self.items.push(Item::Direct(make(a)));
        Ok(())
    }

    /// `bus=pcie.0,addr=S.F[,multifunction=on]` for a direct device.
    pub fn direct_params(o: Opt, a: Address) -> Opt {
        let o = o.named("bus", "pcie.0").named("addr", a);
        if a.function == 0 {
            o.named("multifunction", "on")
        } else {
            o
        }
    }

    fn root_port(a: Address, index: usize) -> (Opt, String) {
        let mut id = String::with_capacity(16);
        id.push_str("pcie.");
        a.push_to(&mut id);
        let port = Topology::direct_params(
            Opt::new("device")
                .word("ioh3420")
                .named("id", &id)
                .named("chassis", index),
            a,
        );
        (port, id)
    }

    /// Adds a root port with one device; `make` receives the root port id.
    pub fn add_root(&mut self, make: impl FnOnce(String) -> Opt) -> Result<(), TopologyError> {
        let index = self.next_index;
        let a = self.take_index()?;
        let (port, id) = Topology::root_port(a, index);
        let child = make(id);
        self.items.push(Item::Root { port, child });
        Ok(())
    }

    /// Adds a non-PCI device. It takes a topology index as in the Go
    /// program, except function 0 of a slot, which stays for a PCI device.
    pub fn add_other(&mut self, opt: Opt) -> Result<(), TopologyError> {
        if !self.next_index.is_multiple_of(8) {
            self.take_index()?;
        }
        self.items.push(Item::Other(opt));
        Ok(())
    }

    /// The iothread id, creating it on first use; returns whether it was new.
    pub fn iothread(&mut self) -> (&'static str, bool) {
        let new = !self.iothread;
        self.iothread = true;
        ("iothread.0", new)
    }

    /// Adds a child to a controller (creating the controller and its root
    /// port first if needed). `make` receives the child's id and its
    /// position on the controller (0-based).
    pub fn add_child(
        &mut self,
        kind: Controller,
        make: impl FnOnce(String, usize) -> Opt,
    ) -> Result<(), TopologyError> {
        let pos = self
            .items
            .iter()
            .position(|it| matches!(it, Item::Controller { kind: k, .. } if *k == kind));
        let pos = match pos {
            Some(p) => p,
            None => {
                let index = self.next_index;
                let a = self.take_index()?;
                let (port, root) = Topology::root_port(a, index);
                self.next_id(kind.prefix());
                let mut controller = Opt::new("device")
                    .word(match kind {
                        Controller::Serial => "virtio-serial-pci",
                        Controller::Scsi => "virtio-scsi-pci",
                        Controller::Usb => "qemu-xhci",
                    })
                    .named("id", kind.prefix())
                    .named("bus", root);
                if kind == Controller::Scsi {
                    let (io, _) = self.iothread();
                    controller = controller.named("iothread", io).named("num_queues", 4);
                }
                self.items.push(Item::Controller {
                    port,
                    kind,
                    controller,
                    children: Vec::new(),
                });
                self.items.len() - 1
            }
        };
        let Item::Controller { children, .. } = &mut self.items[pos] else {
            unreachable!("position found a controller");
        };
        if children.len() >= kind.capacity() {
            let name = match kind {
                Controller::Serial => "serial",
                Controller::Scsi => "SCSI",
                Controller::Usb => "USB",
            };
            return Err(TopologyError::ControllerFull(name, kind.capacity()));
        }
        let n = children.len();
        let id = match kind {
            // USB ports are 1-based.
            Controller::Usb => numbered("usb.0.", n as u64 + 1),
            _ => numbered_parts(&[kind.prefix(), ".0."], n as u64),
        };
        children.push(make(id, n));
        Ok(())
    }

    /// Whether an iothread is in use.
    pub fn has_iothread(&self) -> bool {
        self.iothread
    }

    /// The `-device` options in walk order.
    pub fn into_devices(self) -> Vec<Opt> {
        let mut out = Vec::with_capacity(self.items.len() * 2);
        for item in self.items {
            match item {
                Item::Direct(o) | Item::Other(o) => out.push(o),
                Item::Root { port, child } => {
                    out.push(port);
                    out.push(child);
                }
                Item::Controller {
                    port,
                    kind,
                    controller,
                    children,
                } => {
                    out.push(port);
                    let mut c = controller;
                    if kind == Controller::Usb {
                        let p = children.len().max(4);
                        c = c.named("p2", p).named("p3", p);
                    }
                    out.push(c);
                    out.extend(children);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: Topology) -> Vec<String> {
        t.into_devices()
            .iter()
            .map(|o| o.param_string().unwrap())
            .collect()
    }

    #[test]
    fn addresses_past_slot_one() {
        let mut t = Topology::new();
        for _ in 0..10 {
            t.add_root(|root| Opt::new("device").word("virtio-net-pci").named("bus", root))
                .unwrap();
        }
        let d = ids(t);
        assert_eq!(
            d[0],
            "ioh3420,id=pcie.1.0,chassis=0,bus=pcie.0,addr=1.0,multifunction=on"
        );
        assert_eq!(d[14], "ioh3420,id=pcie.1.7,chassis=7,bus=pcie.0,addr=1.7");
        assert_eq!(
            d[16],
            "ioh3420,id=pcie.2.0,chassis=8,bus=pcie.0,addr=2.0,multifunction=on"
        );
        assert_eq!(d[18], "ioh3420,id=pcie.2.1,chassis=9,bus=pcie.0,addr=2.1");
    }

    #[test]
    fn root_complex_fills_at_slot_31() {
        let mut t = Topology::new();
        for _ in 0..MAX_ITEMS {
            t.add_root(|r| Opt::new("device").named("bus", r)).unwrap();
        }
        assert_eq!(
            t.add_root(|r| Opt::new("device").named("bus", r)),
            Err(TopologyError::RootFull)
        );
        assert!(ids(t).iter().all(|d| !d.contains("addr=32.")));
    }

    #[test]
    fn non_pci_items_never_take_function_zero() {
        let mut t = Topology::new();
        for _ in 0..8 {
            t.add_root(|r| Opt::new("device").named("bus", r)).unwrap();
        }
        t.add_other(Opt::new("device").word("ide-cd")).unwrap();
        t.add_root(|r| Opt::new("device").named("bus", r)).unwrap();
        assert!(ids(t)
            .iter()
            .any(|d| d.contains("id=pcie.2.0,") && d.contains("multifunction=on")));
    }

    #[test]
    fn controller_capacity() {
        let mut t = Topology::new();
        for _ in 0..MAX_USB {
            t.add_child(Controller::Usb, |id, _| Opt::new("device").named("id", id))
                .unwrap();
        }
        assert_eq!(
            t.add_child(Controller::Usb, |id, _| Opt::new("device").named("id", id)),
            Err(TopologyError::ControllerFull("USB", MAX_USB))
        );
        assert!(ids(t)[1].ends_with("p2=15,p3=15"));
    }
}
