//! TAP devices: opened through `/dev/net/tun`, non-persistent (they vanish
//! when the last fd closes, even if QEMU is killed), enslaved to their
//! bridge and brought up; plus `/dev/vhost-net` fds.
//!
//! The undo of a TAP is closing its fds, which the kernel turns into the
//! removal of the interface (and of its bridge port).

use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::sys::{self, IfReq, IfReqIoctl};
use super::{Error, Result};
use crate::plan;

const TUN_PATH: &CStr = c"/dev/net/tun";
const VHOST_PATH: &CStr = c"/dev/vhost-net";

/// The index of interface `name` in the current network namespace.
pub fn if_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok().filter(|&i| i != 0)
}

/// Whether interface `name` is a bridge: its ethtool driver is `bridge`
/// (what `ethtool -i` shows). Asked before anything is created.
pub fn is_bridge(name: &str) -> Result<bool> {
    let sock = ioctl_sock()?;
    let driver = match sys::ethtool_driver(&sock, name) {
        Ok(d) => d,
        Err(err) => {
            return match err.raw_os_error() {
                // No ethtool driver info (e.g. loopback): not a bridge.
                Some(libc::EOPNOTSUPP) => Ok(false),
                Some(libc::ENODEV) => Err(Error::BridgeNotFound(name.to_owned())),
                _ => Err(Error::Refused(format!("query interface {name:?}: {err}"))),
            };
        }
    };
    let end = driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(&driver[..end] == b"bridge")
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

fn open_dev(path: &CStr) -> io::Result<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    open(
        path,
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)
}

pub(crate) fn ioctl_sock() -> Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    // AF_UNIX: interface ioctls fall through to the device layer from any
    // socket family, and the unit allows only AF_UNIX and AF_NETLINK.
    socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::Sys {
        op: "open control socket",
        source: e.into(),
    })
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
        if let Err(err) = sys::ifreq_ioctl(&fd, IfReqIoctl::TunSetIff, &mut req) {
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
    if let Err(err) = sys::ifreq_ioctl(&sock, IfReqIoctl::BridgeAddIf, &mut req) {
        return Err(match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Error::NotABridge(bridge.to_owned()),
            Some(libc::ENODEV) => Error::BridgeNotFound(bridge.to_owned()),
            _ => Error::Refused(format!("attach {ifname:?} to bridge {bridge:?}: {err}")),
        });
    }
    let mut req = IfReq::new(ifname);
    if let Err(err) = sys::ifreq_ioctl(&sock, IfReqIoctl::GetFlags, &mut req) {
        return Err(Error::Refused(format!("read flags of {ifname:?}: {err}")));
    }
    req.set_short(req.short() | libc::IFF_UP as i16);
    if let Err(err) = sys::ifreq_ioctl(&sock, IfReqIoctl::SetFlags, &mut req) {
        return Err(Error::Refused(format!("bring {ifname:?} up: {err}")));
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
        match sys::ifreq_ioctl(&fd, IfReqIoctl::TunSetIff, &mut req) {
            Ok(()) => {
                let _ = sys::tun_set_persist(&fd, false);
                drop(fd);
                if if_index(ifname).is_none() {
                    return Ok(true);
                }
                last = Some(io::Error::from(io::ErrorKind::ResourceBusy));
            }
            Err(e) => last = Some(e),
        }
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
