//! File grants: give the VM's group access to its volumes and firmware
//! variables, never through a symbolic link and never to a hard-linked file.
//!
//! The path is resolved by the kernel with no symbolic link allowed in any
//! component (`openat2` + `RESOLVE_NO_SYMLINKS`) into an `O_PATH` fd; the
//! type and link count are checked on that fd and every change is made
//! through it, so nothing can be swapped in between. The file itself is
//! never opened (no read permission needed, no side effect of opening a
//! device).
//!
//! Shared read-only media (ISOs, firmware code) are never re-grouped: if
//! they are world-readable they are left alone, otherwise the VM's group
//! gets a POSIX ACL entry of its own.

use std::ffi::CStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::fs::{
    fstat, get_xattr, kind, only_root_writes, set_group, set_mode, set_xattr, walk_checked,
};
use super::{Error, Result};
use crate::plan::{Access, Grant};

const ACL_XATTR: &CStr = c"system.posix_acl_access";
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// What a grant changed, kept to undo it. Undone when dropped unless
/// committed.
#[derive(Debug)]
pub struct Granted {
    fd: OwnedFd,
    path: PathBuf,
    gid: u32,
    mode: u32,
    /// The ACL xattr before, when the grant changed the ACL (`None` inside:
    /// there was none).
    acl: Option<Option<Vec<u8>>>,
    armed: bool,
}

impl Granted {
    /// The granted file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the change.
    pub fn commit(mut self) {
        self.armed = false;
    }

    /// Restores the previous group, mode and ACL.
    pub fn undo(mut self) {
        self.restore();
    }

    fn restore(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        let (fd, path) = (&self.fd, &self.path);
        let _ = match &self.acl {
            Some(old) => set_xattr(fd, ACL_XATTR, old.as_deref(), path),
            None => set_group(fd, self.gid, path),
        };
        // Last: setting or removing an ACL rewrites the group bits.
        let _ = set_mode(fd, self.mode, path);
    }
}

impl Drop for Granted {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Opens a grant's file safely and checks it: a regular file or block
/// device with one link, or (read-only only) a directory, reached through
/// directories that only root can change, except its own directory, which
/// may also be the VM's (`uid`/`gid`). Anyone else able to change entries
/// next to the file could swap in a hard link to a file of theirs' victim
/// between the checks and the change, so such a volume is refused.
fn open_checked(grant: &Grant, uid: u32, gid: u32) -> Result<(OwnedFd, libc::stat)> {
    let path = &grant.path;
    let w = walk_checked(path, &|st, dir, is_parent| {
        let ok = only_root_writes(st)
            || (is_parent
                && (st.st_uid == 0 || st.st_uid == uid)
                && st.st_mode & 0o002 == 0
                && (st.st_mode & 0o020 == 0 || st.st_gid == 0 || st.st_gid == gid));
        if ok {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "{}: refused because directory {} can be changed by someone other than root and the VM (owner uid {}, group {}, mode {:04o}), who could swap in a hard link to another file; keep volumes in directories only root (or the VM) can write",
                path.display(),
                dir.display(),
                st.st_uid,
                st.st_gid,
                st.st_mode & 0o7777
            )))
        }
    })?;
    let st = w.st;
    let fmt = st.st_mode & libc::S_IFMT;
    let is_dir = fmt == libc::S_IFDIR;
    let ok = fmt == libc::S_IFREG
        || fmt == libc::S_IFBLK
        || (is_dir && grant.access == Access::ReadOnly);
    if !ok {
        return Err(Error::WrongType {
            path: path.clone(),
            found: kind(st.st_mode),
            expected: if is_dir {
                "a regular file or block device (a directory only for read-only access)"
            } else {
                "a regular file, block device or read-only directory"
            },
        });
    }
    if !is_dir && st.st_nlink != 1 {
        return Err(Error::HardLink {
            path: path.clone(),
            nlink: st.st_nlink as u64,
        });
    }
    Ok((w.fd, st))
}

/// Gives group `gid` the access `grant` asks for. Returns `None` when
/// nothing had to change. A private grant ends with no access for others.
pub fn prepare(grant: &Grant, uid: u32, gid: u32) -> Result<Option<Granted>> {
    let path = &grant.path;
    let (fd, st) = open_checked(grant, uid, gid)?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let mode = st.st_mode & 0o7777;
    let mut g = Granted {
        fd,
        path: path.clone(),
        gid: st.st_gid,
        mode,
        acl: None,
        armed: false,
    };
    if grant.shared {
        if grant.access == Access::ReadWrite {
            return Err(Error::Refused(format!(
                "{}: shared media must be read-only",
                path.display()
            )));
        }
        let perm: u16 = if is_dir { 5 } else { 4 };
        // World-readable (and searchable, for a directory): nothing to do.
        if mode & (perm as u32) == perm as u32 {
            return Ok(None);
        }
        let old = get_acl(&g.fd, path)?;
        let Some(new) = acl_with_group(old.as_deref(), mode, gid, perm) else {
            return Ok(None);
        };
        g.acl = Some(old);
        g.armed = true;
        set_xattr(&g.fd, ACL_XATTR, Some(&new), path)?;
        return Ok(Some(g));
    }
    let bits = match (grant.access, is_dir) {
        (Access::ReadWrite, _) => 0o060,
        (Access::ReadOnly, false) => 0o040,
        (Access::ReadOnly, true) => 0o050,
    };
    if st.st_gid == gid && mode & bits == bits && mode & 0o007 == 0 {
        return Ok(None);
    }
    g.armed = true;
    set_group(&g.fd, gid, path)?;
    // Re-read the mode: chown clears set-id bits, which must stay cleared.
    // Others lose every access: the file is the VM's (and its owner's).
    let now = fstat(&g.fd, path)?.st_mode & 0o7777;
    set_mode(&g.fd, (now | bits) & !0o007, path)?;
    // Still one link? (Nobody can add one in a directory checked above;
    // this keeps the promise should a check be wrong.)
    let after = fstat(&g.fd, path)?;
    if !is_dir && after.st_nlink != 1 {
        return Err(Error::HardLink {
            path: path.clone(),
            nlink: after.st_nlink as u64,
        });
    }
    Ok(Some(g))
}

/// Removes the per-VM ACL entry of a shared grant (teardown). Returns
/// whether there was one.
pub fn revoke_shared(grant: &Grant, uid: u32, gid: u32) -> Result<bool> {
    let (fd, st) = open_checked(grant, uid, gid)?;
    let Some(old) = get_acl(&fd, &grant.path)? else {
        return Ok(false);
    };
    let Some(mut entries) = parse_acl(&old) else {
        return Err(Error::Refused(format!(
            "{}: cannot parse its ACL",
            grant.path.display()
        )));
    };
    let before = entries.len();
    entries.retain(|e| !(e.0 == ACL_GROUP && e.2 == gid));
    if entries.len() == before {
        return Ok(false);
    }
    let named = entries.iter().any(|e| {
        e.0 != ACL_USER_OBJ && e.0 != ACL_GROUP_OBJ && e.0 != ACL_OTHER && e.0 != ACL_MASK
    });
    if named {
        recompute_mask(&mut entries);
        set_xattr(&fd, ACL_XATTR, Some(&encode_acl(&entries)), &grant.path)?;
    } else {
        // Only the base entries are left: drop the ACL and put the owning
        // group's own bits back into the mode.
        let group_obj = entries
            .iter()
            .find(|e| e.0 == ACL_GROUP_OBJ)
            .map_or(0, |e| e.1 as u32);
        set_xattr(&fd, ACL_XATTR, None, &grant.path)?;
        set_mode(&fd, (st.st_mode & 0o7707) | (group_obj << 3), &grant.path)?;
    }
    Ok(true)
}

fn get_acl(fd: &OwnedFd, path: &Path) -> Result<Option<Vec<u8>>> {
    get_xattr(fd, ACL_XATTR, path)
}

/// An ACL entry: (tag, perm, id).
type Entry = (u16, u16, u32);

fn parse_acl(buf: &[u8]) -> Option<Vec<Entry>> {
    if buf.len() < 4 || !(buf.len() - 4).is_multiple_of(8) {
        return None;
    }
    if u32::from_le_bytes(buf[..4].try_into().ok()?) != ACL_VERSION {
        return None;
    }
    Some(
        buf[4..]
            .chunks_exact(8)
            .map(|c| {
                (
                    u16::from_le_bytes([c[0], c[1]]),
                    u16::from_le_bytes([c[2], c[3]]),
                    u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect(),
    )
}

fn encode_acl(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&ACL_VERSION.to_le_bytes());
    for &(tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The mask is the union of the group class: owning group and named
/// entries (what `setfacl` computes).
fn recompute_mask(entries: &mut Vec<Entry>) {
    let union = entries
        .iter()
        .filter(|e| e.0 != ACL_USER_OBJ && e.0 != ACL_OTHER && e.0 != ACL_MASK)
        .fold(0, |acc, e| acc | e.1);
    entries.retain(|e| e.0 != ACL_MASK);
    entries.push((ACL_MASK, union, ACL_UNDEFINED_ID));
    entries.sort_by_key(|e| (e.0, e.2));
}

/// The ACL with `group:<gid>` holding at least `perm`; `None` when it
/// already does. Starts from the mode when the file has no ACL.
fn acl_with_group(old: Option<&[u8]>, mode: u32, gid: u32, perm: u16) -> Option<Vec<u8>> {
    let mut entries = match old.and_then(parse_acl) {
        Some(e) => e,
        None => vec![
            (ACL_USER_OBJ, ((mode >> 6) & 7) as u16, ACL_UNDEFINED_ID),
            (ACL_GROUP_OBJ, ((mode >> 3) & 7) as u16, ACL_UNDEFINED_ID),
            (ACL_OTHER, (mode & 7) as u16, ACL_UNDEFINED_ID),
        ],
    };
    match entries.iter_mut().find(|e| e.0 == ACL_GROUP && e.2 == gid) {
        Some(e) if e.1 & perm == perm => {
            let mask_ok = entries
                .iter()
                .find(|e| e.0 == ACL_MASK)
                .is_none_or(|m| m.1 & perm == perm);
            if mask_ok {
                return None;
            }
        }
        Some(e) => e.1 |= perm,
        None => entries.push((ACL_GROUP, perm, gid)),
    }
    recompute_mask(&mut entries);
    Some(encode_acl(&entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_from_mode_adds_group_and_mask() {
        let buf = acl_with_group(None, 0o640, 70000, 4).unwrap();
        let e = parse_acl(&buf).unwrap();
        assert_eq!(
            e,
            vec![
                (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
                (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
                (ACL_GROUP, 4, 70000),
                (ACL_MASK, 4, ACL_UNDEFINED_ID),
                (ACL_OTHER, 0, ACL_UNDEFINED_ID),
            ]
        );
        assert!(acl_with_group(Some(&buf), 0o640, 70000, 4).is_none());
        assert!(parse_acl(b"\x02\0\0\0\x01").is_none());
    }
}
