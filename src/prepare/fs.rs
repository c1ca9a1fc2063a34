//! File-system primitives that never follow a symbolic link.
//!
//! Paths from the plan are resolved by the kernel with `openat2` and
//! `RESOLVE_NO_SYMLINKS`, so no component of the path may be a symbolic link;
//! directories are created and removed relative to directory fds. Where
//! `openat2` is unavailable (kernels before 5.6, or a seccomp filter that
//! does not know it, as systemd-nspawn's and some service filters answer
//! ENOSYS or EPERM), the path is walked one component at a time with
//! `openat(O_NOFOLLOW)` instead, which refuses the same links. All system
//! calls go through `nix` (and [`super::sys`] for xattrs).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::{FchmodatFlags, Mode};
use nix::unistd::{FchownatFlags, Gid, Uid, UnlinkatFlags};

use super::{sys, Error, Result};

/// A path as a C string; a path with a NUL byte is refused.
pub fn cstr(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Refused(format!("{}: path contains a NUL byte", path.display())))
}

fn oflag(flags: i32) -> OFlag {
    OFlag::from_bits_retain(flags)
}

fn mode(m: u32) -> Mode {
    Mode::from_bits_truncate(m as libc::mode_t)
}

/// Opens an absolute `path` without following a symbolic link in any
/// component (`openat2` with `RESOLVE_NO_SYMLINKS`). `flags` are `open(2)`
/// flags; `O_CLOEXEC` and `O_NOFOLLOW` are always added.
pub fn open_nofollow(path: &Path, flags: i32) -> Result<OwnedFd> {
    openat_nofollow(AT_FDCWD, path, flags, 0)
}

/// `openat2(dirfd, path, flags, mode)` without following symbolic links.
pub fn openat_nofollow(dirfd: BorrowedFd<'_>, path: &Path, flags: i32, m: u32) -> Result<OwnedFd> {
    let c = cstr(path)?;
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let m = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        m
    } else {
        0
    };
    let how = OpenHow::new()
        .flags(oflag(flags))
        .mode(mode(m))
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    loop {
        match nix::fcntl::openat2(dirfd, c.as_c_str(), how) {
            Ok(fd) => {
                // O_PATH|O_NOFOLLOW opens a trailing symlink itself: refuse
                // it here as any other open would.
                if flags & libc::O_PATH != 0
                    && fstat(&fd, path)?.st_mode & libc::S_IFMT == libc::S_IFLNK
                {
                    return Err(Error::Symlink(path.to_owned()));
                }
                return Ok(fd);
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(Errno::ELOOP) => return Err(Error::Symlink(path.to_owned())),
            Err(Errno::ENOSYS) | Err(Errno::EPERM) => return openat_walk(dirfd, path, flags, m),
            Err(e) => return Err(Error::io("open", path, e.into())),
        }
    }
}

/// [`openat_nofollow`] without `openat2`: every directory on the way is
/// opened with `O_PATH|O_DIRECTORY|O_NOFOLLOW` relative to the previous one
/// and the last component with `O_NOFOLLOW`, so no symbolic link is
/// followed. `..` components are refused rather than resolved.
fn openat_walk(dirfd: BorrowedFd<'_>, path: &Path, flags: i32, m: u32) -> Result<OwnedFd> {
    let comps: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::ParentDir => Some(Err(())),
            _ => None,
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Refused(format!("{}: path contains '..'", path.display())))?;
    let Some((last, dirs)) = comps.split_last() else {
        // "/" itself (or "."): open it directly.
        let start = if path.is_absolute() { c"/" } else { c"." };
        return raw_openat(dirfd, start, flags | libc::O_CLOEXEC, m, path);
    };
    let mut cur: Option<OwnedFd> = None;
    if path.is_absolute() {
        cur = Some(raw_openat(
            AT_FDCWD,
            c"/",
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
            path,
        )?);
    }
    for d in dirs {
        let c = cstr(Path::new(d))?;
        let base = cur.as_ref().map_or(dirfd, |f| f.as_fd());
        let next = raw_openat(
            base,
            &c,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
            path,
        )?;
        cur = Some(next);
    }
    let c = cstr(Path::new(last))?;
    let base = cur.as_ref().map_or(dirfd, |f| f.as_fd());
    let fd = raw_openat(
        base,
        &c,
        flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        m,
        path,
    )?;
    if flags & libc::O_PATH != 0 && fstat(&fd, path)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(Error::Symlink(path.to_owned()));
    }
    Ok(fd)
}

/// One `openat`, mapping ELOOP/ENOTDIR-on-a-link to [`Error::Symlink`].
fn raw_openat(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    flags: i32,
    m: u32,
    path: &Path,
) -> Result<OwnedFd> {
    loop {
        match nix::fcntl::openat(dirfd, name, oflag(flags), mode(m)) {
            Ok(fd) => return Ok(fd),
            Err(Errno::EINTR) => continue,
            Err(Errno::ELOOP) => return Err(Error::Symlink(path.to_owned())),
            // O_DIRECTORY|O_NOFOLLOW on a symlink to a directory.
            Err(Errno::ENOTDIR) if is_symlink_at(dirfd, name) => {
                return Err(Error::Symlink(path.to_owned()))
            }
            Err(e) => return Err(Error::io("open", path, e.into())),
        }
    }
}

fn is_symlink_at(dirfd: BorrowedFd<'_>, name: &CStr) -> bool {
    nix::sys::stat::fstatat(dirfd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: impl AsFd, name: &CStr) -> io::Result<libc::stat> {
    nix::sys::stat::fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(io::Error::from)
}

/// `fstat` of an fd.
pub fn fstat(fd: &OwnedFd, path: &Path) -> Result<libc::stat> {
    nix::sys::stat::fstat(fd).map_err(|e| Error::io("stat", path, e.into()))
}

/// A readable name for the type in a `st_mode`.
pub fn kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFBLK => "block device",
        libc::S_IFCHR => "character device",
        libc::S_IFLNK => "symbolic link",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "special file",
    }
}

/// The `/proc/self/fd/<n>` path of an fd: the kernel's way to reach an
/// `O_PATH` fd's inode with calls that have no fd form (`chmod`, xattrs),
/// without another path walk.
fn proc_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

/// Sets owner and group of the file behind `fd` (an `O_PATH` fd will do);
/// `None` leaves one as it is.
pub fn set_owner(fd: &OwnedFd, uid: Option<u32>, gid: Option<u32>, path: &Path) -> Result<()> {
    nix::unistd::fchownat(
        fd,
        c"",
        uid.map(Uid::from_raw),
        gid.map(Gid::from_raw),
        FchownatFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| Error::io("chown", path, e.into()))
}

/// Sets the group of the file behind `fd` (an `O_PATH` fd will do).
pub fn set_group(fd: &OwnedFd, gid: u32, path: &Path) -> Result<()> {
    set_owner(fd, None, Some(gid), path)
}

/// Sets the mode of the file behind `fd` (an `O_PATH` fd will do).
pub fn set_mode(fd: &OwnedFd, m: u32, path: &Path) -> Result<()> {
    nix::sys::stat::fchmodat(
        AT_FDCWD,
        proc_path(fd).as_c_str(),
        mode(m),
        FchmodatFlags::FollowSymlink,
    )
    .map_err(|e| Error::io("chmod", path, e.into()))
}

/// Reads extended attribute `name` of the file behind `fd`; `None` when
/// it is not set.
pub fn get_xattr(fd: &OwnedFd, name: &CStr, path: &Path) -> Result<Option<Vec<u8>>> {
    sys::getxattr(&proc_path(fd), name, true)
        .map_err(|e| Error::io("read extended attribute of", path, e))
}

/// Sets (`Some`) or removes (`None`) extended attribute `name` of the file
/// behind `fd`. Removing an absent attribute is success.
pub fn set_xattr(fd: &OwnedFd, name: &CStr, value: Option<&[u8]>, path: &Path) -> Result<()> {
    match sys::setxattr(&proc_path(fd), name, value) {
        Ok(()) => Ok(()),
        Err(e) if value.is_none() && e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        Err(e) => Err(Error::io("set extended attribute of", path, e)),
    }
}

/// Whether a directory is safe to create things in as root: owned by root
/// and not writable by group or others unless sticky (like `/tmp`).
fn dir_is_safe(st: &libc::stat) -> bool {
    st.st_uid == 0 && (st.st_mode & 0o022 == 0 || st.st_mode & libc::S_ISVTX != 0)
}

/// `fchmod` of an fd opened for reading (not `O_PATH`).
pub fn fchmod(fd: &OwnedFd, m: u32, path: &Path) -> Result<()> {
    nix::sys::stat::fchmod(fd, mode(m)).map_err(|e| Error::io("chmod", path, e.into()))
}

/// `mkdirat(dir, name, mode)`; whether it was created (false: it existed).
pub fn mkdir_at(dir: impl AsFd, name: &CStr, m: u32, shown: &Path) -> Result<bool> {
    match nix::sys::stat::mkdirat(dir.as_fd(), name, mode(m)) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(Error::io("mkdir", shown, e.into())),
    }
}

/// `unlinkat(dir, name)` of a file or (`dir_entry`) an empty directory.
pub fn unlink_at(dir: impl AsFd, name: &CStr, dir_entry: bool) -> io::Result<()> {
    let flag = if dir_entry {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(dir.as_fd(), name, flag).map_err(io::Error::from)
}

/// Opens the directory `path`, creating missing components (root-owned,
/// `mode` whatever the umask) with `mkdirat` relative to the parent's fd.
/// Every component must be a real directory (no symbolic link) that is safe
/// for root to use; see [`Error::UnsafeDir`].
pub fn ensure_dir(path: &Path, mode: u32) -> Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(Error::Refused(format!(
            "{}: path is not absolute",
            path.display()
        )));
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let mut dir = open_nofollow(Path::new("/"), flags)?;
    let mut sofar = std::path::PathBuf::from("/");
    for comp in path.components() {
        let name = match comp {
            Component::RootDir => continue,
            Component::Normal(n) => n,
            _ => {
                return Err(Error::Refused(format!(
                    "{}: path has a '.' or '..' component",
                    path.display()
                )))
            }
        };
        sofar.push(name);
        let cname = cstr(Path::new(name))?;
        let created = mkdir_at(&dir, &cname, 0o700, &sofar)?;
        let next =
            openat_nofollow(dir.as_fd(), Path::new(name), flags, 0).map_err(|e| match e {
                Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOTDIR) => {
                    Error::Symlink(sofar.clone())
                }
                Error::Symlink(_) => Error::Symlink(sofar.clone()),
                other => other,
            })?;
        if created {
            fchmod(&next, mode, &sofar)?;
        }
        let st = fstat(&next, &sofar)?;
        if !dir_is_safe(&st) {
            return Err(Error::UnsafeDir(sofar));
        }
        dir = next;
    }
    Ok(dir)
}

/// What a checked walk found: the directory holding the last component, the
/// last component as an `O_PATH` fd, and its `stat`.
#[derive(Debug)]
pub struct Walked {
    /// The parent directory (opened `O_PATH`).
    pub parent: OwnedFd,
    /// The file itself (opened `O_PATH`, never through a link).
    pub fd: OwnedFd,
    /// Its status.
    pub st: libc::stat,
}

/// Walks the absolute `path` one component at a time, following no
/// symbolic link and refusing `.`/`..`, and calls `dir_ok(stat, dir path,
/// is_parent)` on every directory on the way (`is_parent` for the one that
/// holds the last component), so a check on the ancestors and the file
/// holds for the very inodes used afterwards.
pub fn walk_checked(
    path: &Path,
    dir_ok: &dyn Fn(&libc::stat, &Path, bool) -> Result<()>,
) -> Result<Walked> {
    if !path.is_absolute() {
        return Err(Error::Refused(format!(
            "{}: path is not absolute",
            path.display()
        )));
    }
    let mut names = Vec::new();
    for comp in path.components() {
        match comp {
            Component::RootDir => {}
            Component::Normal(n) => names.push(n),
            _ => {
                return Err(Error::Refused(format!(
                    "{}: path has a '.' or '..' component",
                    path.display()
                )))
            }
        }
    }
    let Some((last, dirs)) = names.split_last() else {
        return Err(Error::Refused(format!("{}: not a file", path.display())));
    };
    let mut sofar = std::path::PathBuf::from("/");
    let mut dir = raw_openat(
        AT_FDCWD,
        c"/",
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
        path,
    )?;
    dir_ok(&fstat(&dir, &sofar)?, &sofar, dirs.is_empty())?;
    for (i, d) in dirs.iter().enumerate() {
        sofar.push(d);
        let c = cstr(Path::new(d))?;
        dir = raw_openat(
            dir.as_fd(),
            &c,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
            &sofar,
        )?;
        dir_ok(&fstat(&dir, &sofar)?, &sofar, i + 1 == dirs.len())?;
    }
    let c = cstr(Path::new(last))?;
    let fd = raw_openat(
        dir.as_fd(),
        &c,
        libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
        path,
    )?;
    let st = fstat(&fd, path)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(Error::Symlink(path.to_owned()));
    }
    Ok(Walked {
        parent: dir,
        fd,
        st,
    })
}

/// Whether only root can change the entries of the directory `st`: owned by
/// root and writable by nobody else, or sticky (like `/tmp`), where others
/// cannot rename or remove what root owns.
pub fn only_root_writes(st: &libc::stat) -> bool {
    dir_is_safe(st)
}

/// Removes `name` inside `dir` (a file, or a directory with everything in
/// it), never following a symbolic link. Missing is success. Depth is
/// bounded so a hostile tree cannot exhaust fds.
pub fn remove_at(dir: &OwnedFd, name: &CStr, shown: &Path) -> Result<()> {
    remove_at_depth(dir, name, shown, 0)
}

fn remove_at_depth(dir: &OwnedFd, name: &CStr, shown: &Path, depth: u32) -> Result<()> {
    match unlink_at(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) => return Ok(()),
            Some(libc::EISDIR) | Some(libc::EPERM) => {}
            _ => return Err(Error::io("remove", shown, e)),
        },
    }
    if depth > 32 {
        return Err(Error::Refused(format!(
            "{}: directory tree is too deep to remove",
            shown.display()
        )));
    }
    let rel = Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
    // Take the directory back first (root, 0700): a VM-owned 0750 (or
    // 0000) directory is closed to a root without CAP_DAC_OVERRIDE, which
    // the unit does not grant. Through an O_PATH fd, so no link is followed.
    let p = openat_nofollow(dir.as_fd(), rel, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    set_owner(&p, Some(0), Some(0), shown)?;
    set_mode(&p, 0o700, shown)?;
    drop(p);
    let sub = openat_nofollow(dir.as_fd(), rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for entry in read_dir(&sub, shown)? {
        let child = shown.join(std::ffi::OsStr::from_bytes(entry.to_bytes()));
        remove_at_depth(&sub, &entry, &child, depth + 1)?;
    }
    drop(sub);
    match unlink_at(dir, name, true) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(Error::io("rmdir", shown, e)),
        _ => Ok(()),
    }
}

/// The entry names of a directory fd, without `.` and `..`.
pub fn read_dir(dir: &OwnedFd, shown: &Path) -> Result<Vec<CString>> {
    // Dir takes ownership of its fd (and reads from its offset): give it a
    // fresh open of the same directory.
    let fd = nix::fcntl::openat(
        dir,
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("read directory", shown, e.into()))?;
    let mut d =
        nix::dir::Dir::from_fd(fd).map_err(|e| Error::io("read directory", shown, e.into()))?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = ent.map_err(|e| Error::io("read directory", shown, e.into()))?;
        let name = ent.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback walk refuses the links openat2 refuses.
    #[test]
    fn walk_without_openat2_refuses_symlinks() {
        let dir = std::env::temp_dir().join(format!("machina-fs-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/file"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(dir.join("real/file"), dir.join("real/linkfile")).unwrap();

        let fd = openat_walk(AT_FDCWD, &dir.join("real/file"), libc::O_RDONLY, 0).unwrap();
        assert_eq!(fstat(&fd, &dir).unwrap().st_size, 1);
        for bad in ["linkdir/file", "real/linkfile"] {
            for flags in [libc::O_RDONLY, libc::O_PATH] {
                let r = openat_walk(AT_FDCWD, &dir.join(bad), flags, 0);
                assert!(matches!(r, Err(Error::Symlink(_))), "{bad} {flags}: {r:?}");
            }
        }
        assert!(matches!(
            openat_walk(AT_FDCWD, &dir.join("real/../real/file"), libc::O_RDONLY, 0),
            Err(Error::Refused(_))
        ));
        // Both routes agree on a good path.
        let a = openat_nofollow(AT_FDCWD, &dir.join("real/file"), libc::O_RDONLY, 0).unwrap();
        assert_eq!(
            fstat(&a, &dir).unwrap().st_ino,
            fstat(&fd, &dir).unwrap().st_ino
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
