//! File-system primitives that never follow a symbolic link.
//!
//! Paths from the plan are resolved by the kernel with `openat2` and
//! `RESOLVE_NO_SYMLINKS`, so no component of the path may be a symbolic link;
//! directories are created and removed relative to directory fds. Where
//! `openat2` is unavailable (kernels before 5.6, or a seccomp filter that
//! does not know it, as systemd-nspawn's and some service filters answer
//! ENOSYS or EPERM), the path is walked one component at a time with
//! `openat(O_NOFOLLOW)` instead, which refuses the same links.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use super::{Error, Result};

/// A path as a C string; a path with a NUL byte is refused.
pub fn cstr(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Refused(format!("{}: path contains a NUL byte", path.display())))
}

/// Opens an absolute `path` without following a symbolic link in any
/// component (`openat2` with `RESOLVE_NO_SYMLINKS`). `flags` are `open(2)`
/// flags; `O_CLOEXEC` and `O_NOFOLLOW` are always added.
pub fn open_nofollow(path: &Path, flags: i32) -> Result<OwnedFd> {
    openat_nofollow(libc::AT_FDCWD, path, flags, 0)
}

/// `openat2(dirfd, path, flags, mode)` without following symbolic links.
pub fn openat_nofollow(dirfd: RawFd, path: &Path, flags: i32, mode: u32) -> Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: c and how outlive the call; the kernel reads them only.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a new fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            // O_PATH|O_NOFOLLOW opens a trailing symlink itself: refuse it
            // here as any other open would.
            if flags & libc::O_PATH != 0
                && fstat(&fd, path)?.st_mode & libc::S_IFMT == libc::S_IFLNK
            {
                return Err(Error::Symlink(path.to_owned()));
            }
            return Ok(fd);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            Some(libc::ELOOP) => return Err(Error::Symlink(path.to_owned())),
            Some(libc::ENOSYS) | Some(libc::EPERM) => {
                return openat_walk(dirfd, path, flags, how.mode as u32)
            }
            _ => return Err(Error::io("open", path, err)),
        }
    }
}

/// [`openat_nofollow`] without `openat2`: every directory on the way is
/// opened with `O_PATH|O_DIRECTORY|O_NOFOLLOW` relative to the previous one
/// and the last component with `O_NOFOLLOW`, so no symbolic link is
/// followed. `..` components are refused rather than resolved.
fn openat_walk(dirfd: RawFd, path: &Path, flags: i32, mode: u32) -> Result<OwnedFd> {
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
        return raw_openat(dirfd, start, flags | libc::O_CLOEXEC, mode, path);
    };
    let mut cur: Option<OwnedFd> = None;
    if path.is_absolute() {
        cur = Some(raw_openat(
            libc::AT_FDCWD,
            c"/",
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
            path,
        )?);
    }
    let base = |cur: &Option<OwnedFd>| cur.as_ref().map_or(dirfd, |f| f.as_raw_fd());
    for d in dirs {
        let c = CString::new(d.as_bytes())
            .map_err(|_| Error::Refused(format!("{}: path contains a NUL byte", path.display())))?;
        let next = raw_openat(
            base(&cur),
            &c,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
            path,
        )?;
        cur = Some(next);
    }
    let c = CString::new(last.as_bytes())
        .map_err(|_| Error::Refused(format!("{}: path contains a NUL byte", path.display())))?;
    let fd = raw_openat(
        base(&cur),
        &c,
        flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        mode,
        path,
    )?;
    if flags & libc::O_PATH != 0 && fstat(&fd, path)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(Error::Symlink(path.to_owned()));
    }
    Ok(fd)
}

/// One `openat`, mapping ELOOP/ENOTDIR-on-a-link to [`Error::Symlink`].
fn raw_openat(dirfd: RawFd, name: &CStr, flags: i32, mode: u32, path: &Path) -> Result<OwnedFd> {
    loop {
        // SAFETY: name outlives the call.
        let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags, mode as libc::c_uint) };
        if fd >= 0 {
            // SAFETY: a new fd we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ELOOP) => return Err(Error::Symlink(path.to_owned())),
            // O_DIRECTORY|O_NOFOLLOW on a symlink to a directory.
            Some(libc::ENOTDIR) if is_symlink_at(dirfd, name) => {
                return Err(Error::Symlink(path.to_owned()))
            }
            _ => return Err(Error::io("open", path, err)),
        }
    }
}

fn is_symlink_at(dirfd: RawFd, name: &CStr) -> bool {
    // SAFETY: st is written by the kernel; name outlives the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    unsafe {
        libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// `fstat` of an fd.
pub fn fstat(fd: &OwnedFd, path: &Path) -> Result<libc::stat> {
    // SAFETY: st is written by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::last("stat", path));
    }
    Ok(st)
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

/// Sets the group of the file behind `fd` (an `O_PATH` fd will do).
pub fn set_group(fd: &OwnedFd, gid: u32, path: &Path) -> Result<()> {
    // SAFETY: fchownat with AT_EMPTY_PATH acts on the fd itself.
    if unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            u32::MAX,
            gid,
            libc::AT_EMPTY_PATH,
        )
    } != 0
    {
        return Err(Error::last("chgrp", path));
    }
    Ok(())
}

/// Sets the mode of the file behind `fd` (an `O_PATH` fd will do).
pub fn set_mode(fd: &OwnedFd, mode: u32, path: &Path) -> Result<()> {
    // SAFETY: chmod of a NUL-terminated path.
    if unsafe { libc::chmod(proc_path(fd).as_ptr(), mode) } != 0 {
        return Err(Error::last("chmod", path));
    }
    Ok(())
}

/// Reads extended attribute `name` of the file behind `fd`; `None` when
/// it is not set.
pub fn get_xattr(fd: &OwnedFd, name: &CStr, path: &Path) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: the kernel writes at most buf.len() bytes.
    let n = unsafe {
        libc::getxattr(
            proc_path(fd).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(Error::io("read extended attribute of", path, err)),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// Sets (`Some`) or removes (`None`) extended attribute `name` of the file
/// behind `fd`. Removing an absent attribute is success.
pub fn set_xattr(fd: &OwnedFd, name: &CStr, value: Option<&[u8]>, path: &Path) -> Result<()> {
    let p = proc_path(fd);
    // SAFETY: NUL-terminated strings and a buffer we own.
    let rc = unsafe {
        match value {
            Some(v) => libc::setxattr(p.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0),
            None => libc::removexattr(p.as_ptr(), name.as_ptr()),
        }
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if value.is_none() && err.raw_os_error() == Some(libc::ENODATA) {
            return Ok(());
        }
        return Err(Error::io("set extended attribute of", path, err));
    }
    Ok(())
}

/// Whether a directory is safe to create things in as root: owned by root
/// and not writable by group or others unless sticky (like `/tmp`).
fn dir_is_safe(st: &libc::stat) -> bool {
    st.st_uid == 0 && (st.st_mode & 0o022 == 0 || st.st_mode & libc::S_ISVTX != 0)
}

/// `fchmod` of an fd opened for reading (not `O_PATH`).
pub fn fchmod(fd: &OwnedFd, mode: u32, path: &Path) -> Result<()> {
    // SAFETY: fchmod on an fd we hold.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode) } != 0 {
        return Err(Error::last("chmod", path));
    }
    Ok(())
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
        // SAFETY: mkdirat relative to an fd we hold.
        let created = unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o700) } == 0;
        if !created {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                return Err(Error::io("mkdir", &sofar, err));
            }
        }
        let next =
            openat_nofollow(dir.as_raw_fd(), Path::new(name), flags, 0).map_err(|e| match e {
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
        libc::AT_FDCWD,
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
            dir.as_raw_fd(),
            &c,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
            &sofar,
        )?;
        dir_ok(&fstat(&dir, &sofar)?, &sofar, i + 1 == dirs.len())?;
    }
    let c = cstr(Path::new(last))?;
    let fd = raw_openat(
        dir.as_raw_fd(),
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
    // SAFETY: unlinkat relative to an fd we hold; it never follows links.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) => return Ok(()),
        Some(libc::EISDIR) | Some(libc::EPERM) => {}
        _ => return Err(Error::io("remove", shown, err)),
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
    let p = openat_nofollow(dir.as_raw_fd(), rel, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    // SAFETY: fchownat with AT_EMPTY_PATH acts on the fd itself.
    if unsafe { libc::fchownat(p.as_raw_fd(), c"".as_ptr(), 0, 0, libc::AT_EMPTY_PATH) } != 0 {
        return Err(Error::last("chown", shown));
    }
    set_mode(&p, 0o700, shown)?;
    drop(p);
    let sub = openat_nofollow(dir.as_raw_fd(), rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for entry in read_dir(&sub, shown)? {
        let child = shown.join(std::ffi::OsStr::from_bytes(entry.to_bytes()));
        remove_at_depth(&sub, &entry, &child, depth + 1)?;
    }
    drop(sub);
    // SAFETY: as above.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(Error::io("rmdir", shown, err));
        }
    }
    Ok(())
}

/// The entry names of a directory fd, without `.` and `..`.
pub fn read_dir(dir: &OwnedFd, shown: &Path) -> Result<Vec<CString>> {
    // fdopendir takes ownership of its fd, so give it a duplicate.
    // SAFETY: dup of an fd we hold.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(Error::last("read directory", shown));
    }
    // SAFETY: dup is a valid directory fd; closedir closes it.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        unsafe { libc::close(dup) };
        return Err(Error::last("read directory", shown));
    }
    // SAFETY: rewinding a fresh DIR reads from the start even if the fd's
    // offset moved.
    unsafe { libc::rewinddir(d) };
    let mut out = Vec::new();
    loop {
        // SAFETY: d is a valid DIR*; the entry is copied before next call.
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break;
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name.to_owned());
        }
    }
    unsafe { libc::closedir(d) };
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

        let fd = openat_walk(libc::AT_FDCWD, &dir.join("real/file"), libc::O_RDONLY, 0).unwrap();
        assert_eq!(fstat(&fd, &dir).unwrap().st_size, 1);
        for bad in ["linkdir/file", "real/linkfile"] {
            for flags in [libc::O_RDONLY, libc::O_PATH] {
                let r = openat_walk(libc::AT_FDCWD, &dir.join(bad), flags, 0);
                assert!(matches!(r, Err(Error::Symlink(_))), "{bad} {flags}: {r:?}");
            }
        }
        assert!(matches!(
            openat_walk(
                libc::AT_FDCWD,
                &dir.join("real/../real/file"),
                libc::O_RDONLY,
                0
            ),
            Err(Error::Refused(_))
        ));
        // Both routes agree on a good path.
        let a = openat_nofollow(libc::AT_FDCWD, &dir.join("real/file"), libc::O_RDONLY, 0).unwrap();
        assert_eq!(
            fstat(&a, &dir).unwrap().st_ino,
            fstat(&fd, &dir).unwrap().st_ino
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
