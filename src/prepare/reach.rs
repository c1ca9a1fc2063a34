//! Reachability preflight: before dropping root, check that the VM's uid
//! and groups can search every directory above each file QEMU must open
//! (volumes, firmware, its runtime directory with the QMP sockets), and
//! name the first directory that blocks it, instead of letting QEMU fail
//! later with a bare "Permission denied".

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Error, Result};
use crate::plan::Plan;

/// Whether a directory lets `uid` with groups `gids` search it, by its
/// mode; `None` when a POSIX ACL decides (not judged here).
fn searchable(dir: &Path, uid: u32, gids: &[u32]) -> Option<bool> {
    let md = std::fs::symlink_metadata(dir).ok()?;
    if xattr_present(dir) {
        return None;
    }
    let m = md.mode();
    Some(if md.uid() == uid {
        m & 0o100 != 0
    } else if gids.contains(&md.gid()) {
        m & 0o010 != 0
    } else {
        m & 0o001 != 0
    })
}

fn xattr_present(dir: &Path) -> bool {
    let Ok(c) = super::fs::cstr(dir) else {
        return false;
    };
    matches!(
        super::sys::getxattr(&c, c"system.posix_acl_access", false),
        Ok(Some(_))
    )
}

/// Checks every directory above `file`.
fn check_path(file: &Path, what: &str, uid: u32, gids: &[u32]) -> Result<()> {
    for dir in file.ancestors().skip(1) {
        if searchable(dir, uid, gids) == Some(false) {
            return Err(Error::Refused(format!(
                "{what} {}: the VM (uid {uid}) cannot reach it: directory {} is not searchable by it; give its group or others `x` on that directory (or move the file)",
                file.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// The preflight for `plan`, whose QEMU runs as `plan.uid` with `gids`.
pub fn check(plan: &Plan, gids: &[u32]) -> Result<()> {
    check_path(
        &plan.runtime_dir().join("qmp"),
        "socket directory",
        plan.uid,
        gids,
    )?;
    for g in &plan.grants {
        check_path(&g.path, "volume", plan.uid, gids)?;
    }
    Ok(())
}
