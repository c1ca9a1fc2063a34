//! TAP devices: opened through `/dev/net/tun`, non-persistent (they vanish
//! when the last fd closes, even if QEMU is killed), enslaved to their
//! bridge and brought up; plus `/dev/vhost-net` fds.
//!
//! The undo of a TAP is closing its fds, which the kernel turns into the
//! removal of the interface (and of its bridge port).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{Error, Result};
use crate::plan;

const TUN_PATH: &str = "/dev/net/tun\0";
const VHOST_PATH: &str = "/dev/vhost-net\0";
/// `SIOCBRADDIF` from `<linux/sockios.h>`.
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// `struct ifreq` with the members used here.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    /// The union: `ifr_flags` (short) or `ifr_ifindex` (int) at its start.
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        // Interface names are validated to at most 15 bytes.
        let n = name.len().min(libc::IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }
    fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }
    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }
    fn set_int(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
    fn name(&self) -> &[u8] {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        &self.name[..end]
    }
}

/// The index of interface `name` in the current network namespace.
pub fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// `SIOCETHTOOL` and `ETHTOOL_GDRVINFO` from the kernel headers.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x3;

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    rest: [u8; 160],
}

/// Whether interface `name` is a bridge: its ethtool driver is `bridge`
/// (what `ethtool -i` shows). Asked before anything is created.
pub fn is_bridge(name: &str) -> Result<bool> {
    let sock = ioctl_sock()?;
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq::new(name);
    let ptr = (&mut info as *mut DrvInfo as usize).to_ne_bytes();
    req.data[..ptr.len()].copy_from_slice(&ptr);
    // SAFETY: SIOCETHTOOL reads the ifreq and writes the DrvInfo it points
    // to, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) } != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            // No ethtool driver info (e.g. loopback): not a bridge.
            Some(libc::EOPNOTSUPP) => Ok(false),
            Some(libc::ENODEV) => Err(Error::BridgeNotFound(name.to_owned())),
            _ => Err(Error::Refused(format!("query interface {name:?}: {err}"))),
        };
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(&info.driver[..end] == b"bridge")
}

/// The fds of one prepared TAP, paired with the numbers QEMU expects them
/// at. Dropping it closes them, which removes the TAP.
#[derive(Debug)]
pub struct Tap {
    /// The interface name.
    pub ifname: String,
    /// `(fd, number in QEMU)` for every TAP queue, then every vhost fd.
    pub fds: Vec<(OwnedFd, i32)>,
}

fn open_dev(path: &str) -> io::Result<OwnedFd> {
    // SAFETY: NUL-terminated constant path.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_sock() -> Result<OwnedFd> {
    // SAFETY: plain socket call.
    // AF_UNIX: interface ioctls fall through to the device layer from any
    // socket family, and the unit allows only AF_UNIX and AF_NETLINK.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::last_sys("open control socket"));
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates the TAP of `tap`, attaches it to its bridge and brings it up.
pub fn prepare(tap: &plan::Tap) -> Result<Tap> {
    let ifname = tap.ifname.as_str();
    let bridge = tap.bridge.as_str();
    if if_index(bridge).is_none() {
        return Err(Error::BridgeNotFound(bridge.to_owned()));
    }
    if !is_bridge(bridge)? {
        return Err(Error::NotABridge(bridge.to_owned()));
    }
    if if_index(ifname).is_some() {
        return Err(Error::InterfaceExists(ifname.to_owned()));
    }
    let mut out = Tap {
        ifname: ifname.to_owned(),
        fds: Vec::with_capacity(tap.fds.len() + tap.vhost_fds.len()),
    };
    // vhost first: its absence is a configuration error to report before
    // anything is created.
    let mut vhost = Vec::with_capacity(tap.vhost_fds.len());
    for &n in &tap.vhost_fds {
        match open_dev(VHOST_PATH) {
            Ok(fd) => vhost.push((fd, n)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(Error::NoVhostNet),
            Err(e) => return Err(Error::io("open", Path::new("/dev/vhost-net"), e)),
        }
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if tap.fds.len() > 1 {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    for &n in &tap.fds {
        let fd = open_dev(TUN_PATH).map_err(|e| Error::io("open", Path::new("/dev/net/tun"), e))?;
        let mut req = IfReq::new(ifname);
        req.set_short(flags as i16);
        // SAFETY: TUNSETIFF reads and writes a struct ifreq.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) } != 0 {
            let err = io::Error::last_os_error();
            return Err(Error::Refused(format!("create TAP {ifname:?}: {err}")));
        }
        if req.name() != ifname.as_bytes() {
            return Err(Error::Refused(format!(
                "create TAP {ifname:?}: the kernel named it {:?}",
                String::from_utf8_lossy(req.name())
            )));
        }
        out.fds.push((fd, n));
    }
    let Some(tap_index) = if_index(ifname) else {
        return Err(Error::Refused(format!(
            "TAP {ifname:?} vanished after creation"
        )));
    };
    let sock = ioctl_sock()?;
    let mut req = IfReq::new(bridge);
    req.set_int(tap_index as i32);
    // SAFETY: SIOCBRADDIF reads a struct ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDIF as _, &mut req) } != 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Error::NotABridge(bridge.to_owned()),
            Some(libc::ENODEV) => Error::BridgeNotFound(bridge.to_owned()),
            _ => Error::Refused(format!("attach {ifname:?} to bridge {bridge:?}: {err}")),
        });
    }
    let mut req = IfReq::new(ifname);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write a struct ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        return Err(Error::Refused(format!(
            "read flags of {ifname:?}: {}",
            io::Error::last_os_error()
        )));
    }
    req.set_short(req.short() | libc::IFF_UP as i16);
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req) } != 0 {
        return Err(Error::Refused(format!(
            "bring {ifname:?} up: {}",
            io::Error::last_os_error()
        )));
    }
    out.fds.extend(vhost);
    Ok(out)
}

/// Removes a leftover TAP named `ifname` (a persistent one, or one no
/// process holds). Returns whether there was one. An interface of that name
/// that is not a TAP, or that a live process still holds, is an error.
pub fn remove_leftover(ifname: &str) -> Result<bool> {
    if if_index(ifname).is_none() {
        return Ok(false);
    }
    let base = libc::IFF_TAP | libc::IFF_NO_PI;
    let mut last = None;
    for flags in [
        base,
        base | libc::IFF_MULTI_QUEUE,
        base | libc::IFF_VNET_HDR,
    ] {
        let fd = open_dev(TUN_PATH).map_err(|e| Error::io("open", Path::new("/dev/net/tun"), e))?;
        let mut req = IfReq::new(ifname);
        req.set_short(flags as i16);
        // SAFETY: as in prepare.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) } == 0 {
            // SAFETY: TUNSETPERSIST takes an int argument by value.
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST as _, 0 as libc::c_ulong) };
            drop(fd);
            if if_index(ifname).is_none() {
                return Ok(true);
            }
        }
        last = Some(io::Error::last_os_error());
        if let Some(e) = &last {
            if e.raw_os_error() == Some(libc::EBUSY) {
                break;
            }
        }
    }
    Err(Error::Refused(format!(
        "interface {ifname:?} remains ({}); it is held by a process or is not a TAP",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}
