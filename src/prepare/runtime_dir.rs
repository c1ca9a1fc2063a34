//! The VM's runtime directory (`/run/machina/<vm>`) and its `qmp/`
//! subdirectory, owned by the VM's uid:gid with mode 0750.
//!
//! The launcher sets the owner itself: systemd's `RuntimeDirectory=` would
//! re-chown to the unit's user before every Exec line.

use std::ffi::CString;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::fs::{cstr, fstat, mkdir_at, openat_nofollow, remove_at, set_mode, set_owner};
use super::{Error, Result};

/// Mode of the runtime directory and of `qmp/`.
pub const MODE: u32 = 0o750;

/// Opens `/run/machina`, creating it if needed, mode 0755 whatever the
/// umask (QEMU, as the VM's uid, must be able to pass through it to its
/// own sockets; systemd's `UMask=0077` would otherwise make it 0700). A
/// root-owned one that others cannot search is set back to 0755.
pub fn open_root() -> Result<OwnedFd> {
    let path = Path::new(crate::plan::RUNTIME_ROOT);
    let fd = super::fs::ensure_dir(path, 0o755)?;
    let st = fstat(&fd, path)?;
    if st.st_mode & 0o055 != 0o055 {
        super::fs::fchmod(&fd, 0o755, path)?;
    }
    Ok(fd)
}

/// Opens the lock directory `/run/machina/.lock`, creating it (0755).
pub fn open_lock_dir() -> Result<OwnedFd> {
    open_root()?;
    super::fs::ensure_dir(Path::new(crate::plan::LOCK_DIR), 0o755)
}

/// One directory made (or taken over) for the VM.
#[derive(Debug)]
struct Made {
    fd: OwnedFd,
    name: CString,
    path: PathBuf,
    /// Owner and mode before, when the directory already existed.
    before: Option<(u32, u32, u32)>,
}

/// The prepared runtime directory. Undone when dropped unless committed.
#[derive(Debug)]
pub struct RuntimeDir {
    parent: OwnedFd,
    dir: Option<Made>,
    qmp: Option<Made>,
}

impl RuntimeDir {
    /// Creates (or takes over) `path` inside the already opened `parent`
    /// directory, and `path/qmp`, both owned by `uid:gid`, mode 0750.
    ///
    /// Both are made while root-owned 0700 and handed to the VM last: the
    /// launcher has no `CAP_DAC_OVERRIDE`, so it could not work inside a
    /// directory it had already given away.
    pub fn prepare(parent: &OwnedFd, path: &Path, uid: u32, gid: u32) -> Result<RuntimeDir> {
        let parent = parent.try_clone().map_err(|e| Error::io("dup", path, e))?;
        let name = path
            .file_name()
            .ok_or_else(|| Error::Refused(format!("{}: no directory name", path.display())))?;
        let mut rd = RuntimeDir {
            parent,
            dir: None,
            qmp: None,
        };
        let dir = rd
            .dir
            .insert(make(&rd.parent, Path::new(name), path.to_owned())?);
        let qmp = rd
            .qmp
            .insert(make(&dir.fd, Path::new("qmp"), path.join("qmp"))?);
        set_owner_mode(&qmp.fd, &qmp.path, uid, gid, MODE)?;
        set_owner_mode(&dir.fd, &dir.path, uid, gid, MODE)?;
        Ok(rd)
    }

    /// Keeps the directories: nothing is undone on drop.
    pub fn commit(mut self) {
        self.dir = None;
        self.qmp = None;
    }

    /// Undoes what [`RuntimeDir::prepare`] did: removes what it created,
    /// restores owner and mode of what existed.
    pub fn undo(mut self) {
        self.undo_inner();
    }

    fn undo_inner(&mut self) {
        if let Some(dir) = self.dir.take() {
            // Take it back first, to be able to work inside it.
            let _ = set_owner_mode(&dir.fd, &dir.path, 0, 0, 0o700);
            if let Some(qmp) = self.qmp.take() {
                revert(&dir.fd, qmp);
            }
            revert(&self.parent, dir);
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        self.undo_inner();
    }
}

/// Creates `name` in `parent`, or takes an existing directory over; either
/// way it is root-owned 0700 afterwards.
fn make(parent: &OwnedFd, name: &Path, path: PathBuf) -> Result<Made> {
    let cname = cstr(name)?;
    let created = mkdir_at(parent, &cname, 0o700, &path)?;
    // O_PATH: an existing VM-owned 0750 directory cannot be opened for
    // reading before it is taken back.
    let fd = match openat_nofollow(parent.as_fd(), name, libc::O_PATH | libc::O_DIRECTORY, 0) {
        Ok(fd) => fd,
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(Error::WrongType {
                path,
                found: "non-directory",
                expected: "a directory",
            })
        }
        Err(Error::Symlink(_)) => return Err(Error::Symlink(path)),
        Err(e) => return Err(e),
    };
    let before = if created {
        None
    } else {
        let st = fstat(&fd, &path)?;
        Some((st.st_uid, st.st_gid, st.st_mode & 0o7777))
    };
    let made = Made {
        fd,
        name: cname,
        path,
        before,
    };
    if made.before.is_some() {
        if let Err(e) = set_owner_mode(&made.fd, &made.path, 0, 0, 0o700) {
            revert(parent, made);
            return Err(e);
        }
    }
    Ok(made)
}

fn set_owner_mode(fd: &OwnedFd, path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    set_owner(fd, Some(uid), Some(gid), path)?;
    set_mode(fd, mode, path)
}

fn revert(parent: &OwnedFd, made: Made) {
    match made.before {
        Some((uid, gid, mode)) => {
            let _ = set_owner_mode(&made.fd, &made.path, uid, gid, mode);
        }
        None => {
            drop(made.fd);
            let _ = remove_at(parent, &made.name, &made.path);
        }
    }
}
