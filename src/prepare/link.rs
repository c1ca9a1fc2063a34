//! Taking a running VM's TAP off its bridge and putting it back
//! (`machina disconnect` / `connect`). Both are idempotent: a TAP already
//! in the wanted state is left alone, and the caller is told whether
//! anything changed.

use std::path::Path;

use super::sys::{self, IfReq, IfReqIoctl};
use super::tap::{if_index, ioctl_sock, is_bridge};
use super::{Error, Result};
use crate::plan;

/// The bridge `ifname` is enslaved to, if any (`/sys/class/net/<if>/master`).
pub fn master_of(ifname: &str) -> Option<String> {
    let link = std::fs::read_link(Path::new("/sys/class/net").join(ifname).join("master")).ok()?;
    link.file_name().and_then(|n| n.to_str()).map(str::to_owned)
}

fn tap_index(ifname: &str) -> Result<u32> {
    if_index(ifname).ok_or_else(|| {
        Error::Refused(format!(
            "interface {ifname:?} does not exist (is the VM running?)"
        ))
    })
}

/// Sets or clears `IFF_UP`; returns whether it changed.
fn set_up(sock: &std::os::fd::OwnedFd, ifname: &str, up: bool) -> Result<bool> {
    let mut req = IfReq::new(ifname);
    sys::ifreq_ioctl(sock, IfReqIoctl::GetFlags, &mut req)
        .map_err(|e| Error::Refused(format!("read flags of {ifname:?}: {e}")))?;
    let flag = libc::IFF_UP as i16;
    let was = req.short() & flag != 0;
    if was == up {
        return Ok(false);
    }
    req.set_short(if up {
        req.short() | flag
    } else {
        req.short() & !flag
    });
    sys::ifreq_ioctl(sock, IfReqIoctl::SetFlags, &mut req).map_err(|e| {
        Error::Refused(format!(
            "set {ifname:?} {}: {e}",
            if up { "up" } else { "down" }
        ))
    })?;
    Ok(true)
}

/// Puts the TAP back on its bridge and up; returns whether anything changed.
pub fn attach(tap: &plan::Tap) -> Result<bool> {
    let (ifname, bridge) = (tap.ifname.as_str(), tap.bridge.as_str());
    let index = tap_index(ifname)?;
    let sock = ioctl_sock()?;
    let mut changed = false;
    match master_of(ifname) {
        Some(m) if m == bridge => {}
        Some(other) => {
            return Err(Error::Refused(format!(
                "{ifname:?} is on bridge {other:?}, not its own {bridge:?}; left alone"
            )))
        }
        None => {
            if if_index(bridge).is_none() {
                return Err(Error::BridgeNotFound(bridge.to_owned()));
            }
            if !is_bridge(bridge)? {
                return Err(Error::NotABridge(bridge.to_owned()));
            }
            let mut req = IfReq::new(bridge);
            req.set_int(index as i32);
            sys::ifreq_ioctl(&sock, IfReqIoctl::BridgeAddIf, &mut req).map_err(|e| {
                Error::Refused(format!("attach {ifname:?} to bridge {bridge:?}: {e}"))
            })?;
            changed = true;
        }
    }
    changed |= set_up(&sock, ifname, true)?;
    Ok(changed)
}

/// Takes the TAP off its bridge and down; returns whether anything changed.
pub fn detach(tap: &plan::Tap) -> Result<bool> {
    let ifname = tap.ifname.as_str();
    let index = tap_index(ifname)?;
    let sock = ioctl_sock()?;
    let mut changed = false;
    if let Some(master) = master_of(ifname) {
        let mut req = IfReq::new(&master);
        req.set_int(index as i32);
        sys::ifreq_ioctl(&sock, IfReqIoctl::BridgeDelIf, &mut req).map_err(|e| {
            Error::Refused(format!("release {ifname:?} from bridge {master:?}: {e}"))
        })?;
        changed = true;
    }
    changed |= set_up(&sock, ifname, false)?;
    Ok(changed)
}
