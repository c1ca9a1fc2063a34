//! The root preparation step of a VM's software TPM (`machina-launch
//! --swtpm`): the state directory, swtpm_setup's per-VM configuration and
//! the listening control socket, all made without following a symbolic
//! link.
//!
//! - The state directory (`attrs.tpm.data`) is owned by the VM's uid:gid,
//!   mode 0700, with `state/` (the TPM) and `authority/` (the VM's own local
//!   CA, since Debian's shared one is `tss`-only). It is taken back (root,
//!   0700) while root works in it, so the VM's uid cannot race root, and
//!   handed over last. When it was root-owned (new, or left by the Go
//!   program), the root-owned files in it are handed to the VM: only
//!   directories and single-link regular files, each reached with
//!   `O_NOFOLLOW`.
//! - The configuration lives in `/run/machina/<vm>/swtpm/`, a root-owned
//!   0755 directory: swtpm reads it, the VM's uid cannot change it.
//! - Root binds and listens on the control socket itself (owned by the VM's
//!   uid, mode 0600) and hands the listening fd to swtpm (`--ctrl
//!   type=unixio,fd=3`): QEMU can connect as soon as this step is done, with
//!   no wait for swtpm to come up, and no other uid can connect.

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
use nix::unistd::{fchownat, FchownatFlags, Gid, Uid};

use super::fs::{
    cstr, fstat, kind, mkdir_at, only_root_writes, openat_nofollow, set_mode, set_owner, stat_at,
    unlink_at, walk_checked,
};
use super::{Error, Result};
use crate::plan::{Plan, Swtpm};

/// The file whose presence says the TPM was manufactured.
const PERMALL: &CStr = c"tpm2-00.permall";
/// How deep the hand-over of a Go-era state directory descends.
const MAX_DEPTH: u32 = 4;
/// How many entries the hand-over looks at in all.
const MAX_ENTRIES: usize = 10_000;

/// What the step produced.
#[derive(Debug)]
pub struct Prepared {
    /// The listening control socket, for swtpm's `--ctrl ...,fd=`.
    pub listener: OwnedFd,
    /// Whether the TPM was already manufactured (`swtpm_setup` is skipped).
    pub manufactured: bool,
    /// `swtpm_setup.conf`.
    pub setup_config: PathBuf,
    /// The TPM's state directory (`<data>/state`).
    pub state_dir: PathBuf,
}

/// The directory of the VM's swtpm configuration (and default socket).
pub fn config_dir(plan: &Plan) -> PathBuf {
    plan.runtime_dir().join("swtpm")
}

/// Runs the whole step for `plan`'s TPM `t`.
pub fn prepare(plan: &Plan, t: &Swtpm) -> Result<Prepared> {
    let manufactured = prepare_state(&t.data_dir, plan.uid, plan.gid)?;
    let cfg = prepare_config(plan, t)?;
    let listener = bind_socket(plan, t, &cfg)?;
    Ok(Prepared {
        listener,
        manufactured,
        setup_config: config_dir(plan).join("swtpm_setup.conf"),
        state_dir: t.data_dir.join("state"),
    })
}

/// Opens directory `name` in `parent` (`O_PATH`), refusing a link or a
/// non-directory.
fn open_dir_path(parent: impl AsFd, name: &Path, shown: &Path) -> Result<OwnedFd> {
    match openat_nofollow(parent.as_fd(), name, libc::O_PATH | libc::O_DIRECTORY, 0) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            // A link is refused as such, whatever error the open gave.
            match stat_at(parent.as_fd(), &cstr(name)?) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                    Err(Error::Symlink(shown.to_owned()))
                }
                Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => Err(Error::WrongType {
                    path: shown.to_owned(),
                    found: kind(st.st_mode),
                    expected: "a directory",
                }),
                _ => Err(e),
            }
        }
    }
}

/// Creates or takes over the state directory; returns whether the TPM was
/// already manufactured.
fn prepare_state(data: &Path, uid: u32, gid: u32) -> Result<bool> {
    let parent_path = data
        .parent()
        .ok_or_else(|| Error::Refused(format!("{}: no parent directory", data.display())))?;
    let name = Path::new(
        data.file_name()
            .ok_or_else(|| Error::Refused(format!("{}: no directory name", data.display())))?,
    );
    // The pool directory and everything above it must be root's alone:
    // root creates the VM's directory there.
    let root_only = |st: &libc::stat, dir: &Path, _: bool| {
        if only_root_writes(st) {
            Ok(())
        } else {
            Err(Error::UnsafeDir(dir.to_owned()))
        }
    };
    let w = walk_checked(parent_path, &root_only)?;
    if w.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::WrongType {
            path: parent_path.to_owned(),
            found: kind(w.st.st_mode),
            expected: "the TPM storage pool's directory",
        });
    }
    root_only(&w.st, parent_path, true)?;
    let parent = openat_nofollow(
        w.fd.as_fd(),
        Path::new("."),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    mkdir_at(&parent, &cstr(name)?, 0o700, data)?;
    let top = open_dir_path(&parent, name, data)?;
    let st = fstat(&top, data)?;
    if st.st_uid != 0 && st.st_uid != uid {
        return Err(Error::Refused(format!(
            "{}: is owned by uid {}, neither root nor the VM's uid {uid}; is it another VM's TPM state? (attrs.tpm.data)",
            data.display(),
            st.st_uid
        )));
    }
    let first = st.st_uid == 0;
    // Take it back: the VM's uid cannot change it while root works in it.
    set_owner(&top, Some(0), Some(0), data)?;
    set_mode(&top, 0o700, data)?;
    let dir = openat_nofollow(parent.as_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    if (fstat(&dir, data)?.st_ino, fstat(&dir, data)?.st_dev) != (st.st_ino, st.st_dev) {
        return Err(Error::Refused(format!(
            "{}: changed while being prepared",
            data.display()
        )));
    }
    let result = (|| -> Result<bool> {
        if first {
            // New, or left root-owned by the Go program: hand its files over.
            let mut seen = 0usize;
            hand_over(&dir, data, uid, gid, 0, &mut seen)?;
        }
        let mut manufactured = false;
        for sub in ["state", "authority"] {
            let shown = data.join(sub);
            let csub = CString::new(sub).expect("no NUL");
            mkdir_at(&dir, &csub, 0o700, &shown)?;
            let fd = open_dir_path(&dir, Path::new(sub), &shown)?;
            let sst = fstat(&fd, &shown)?;
            if sst.st_uid != 0 && sst.st_uid != uid {
                return Err(Error::Refused(format!(
                    "{}: is owned by uid {}, not the VM's uid {uid}",
                    shown.display(),
                    sst.st_uid
                )));
            }
            if sub == "state" {
                // Take it back too, to look inside without
                // CAP_DAC_READ_SEARCH.
                set_owner(&fd, Some(0), Some(0), &shown)?;
                let rd = openat_nofollow(
                    dir.as_fd(),
                    Path::new(sub),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )?;
                manufactured =
                    stat_at(&rd, PERMALL).is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFREG);
            }
            set_owner(&fd, Some(uid), Some(gid), &shown)?;
            set_mode(&fd, 0o700, &shown)?;
        }
        Ok(manufactured)
    })();
    // Hand the directory to the VM last (also after a failure: it is the
    // VM's data).
    let back =
        set_owner(&top, Some(uid), Some(gid), data).and_then(|_| set_mode(&top, 0o700, data));
    let manufactured = result?;
    back?;
    Ok(manufactured)
}

/// Gives the root-owned entries of `dir` (recursively) to `uid:gid`:
/// directories and regular files with a single link; anything else is
/// left as it is.
fn hand_over(
    dir: &OwnedFd,
    shown: &Path,
    uid: u32,
    gid: u32,
    depth: u32,
    seen: &mut usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for name in super::fs::read_dir(dir, shown)? {
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return Err(Error::Refused(format!(
                "{}: more than {MAX_ENTRIES} entries; not a TPM state directory",
                shown.display()
            )));
        }
        let path = shown.join(os(&name));
        let st = stat_at(dir, &name).map_err(|e| Error::io("stat", &path, e))?;
        if st.st_uid != 0 {
            continue;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let sub = openat_nofollow(
                    dir.as_fd(),
                    Path::new(os(&name)),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )?;
                hand_over(&sub, &path, uid, gid, depth + 1, seen)?;
                set_owner(&sub, Some(uid), Some(gid), &path)?;
            }
            libc::S_IFREG if st.st_nlink == 1 => {
                fchownat(
                    dir,
                    name.as_c_str(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    FchownatFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| Error::io("chown", &path, e.into()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A file name as `OsStr`.
fn os(b: &CStr) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b.to_bytes())
}

/// `/run/machina/<vm>/swtpm/` with swtpm_setup's configuration; returns
/// the open directory.
fn prepare_config(plan: &Plan, t: &Swtpm) -> Result<OwnedFd> {
    let root = super::runtime_dir::open_root()?;
    let vm_path = plan.runtime_dir();
    let vm = Path::new(plan.machine.as_str());
    let created = mkdir_at(&root, &cstr(vm)?, 0o755, &vm_path)?;
    let vm_fd = open_dir_path(&root, vm, &vm_path)?;
    if created {
        set_mode(&vm_fd, 0o755, &vm_path)?;
    } else {
        let st = fstat(&vm_fd, &vm_path)?;
        if st.st_uid != 0 && st.st_uid != plan.uid {
            return Err(Error::Refused(format!(
                "{}: is owned by uid {}, not the VM's uid {}",
                vm_path.display(),
                st.st_uid,
                plan.uid
            )));
        }
        // Left by a run of the VM (the launcher hands it over); root needs
        // to work in it.
        set_owner(&vm_fd, Some(0), Some(0), &vm_path)?;
        set_mode(&vm_fd, 0o755, &vm_path)?;
    }
    let vm_dir = openat_nofollow(root.as_fd(), vm, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let path = config_dir(plan);
    mkdir_at(&vm_dir, c"swtpm", 0o755, &path)?;
    let fd = open_dir_path(&vm_dir, Path::new("swtpm"), &path)?;
    set_owner(&fd, Some(0), Some(0), &path)?;
    set_mode(&fd, 0o755, &path)?;
    let dir = openat_nofollow(
        vm_dir.as_fd(),
        Path::new("swtpm"),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    let d = t.data_dir.display();
    let c = path.display();
    let files: [(&str, String); 3] = [
        (
            "swtpm_setup.conf",
            format!(
                "create_certs_tool = {}\ncreate_certs_tool_config = {c}/swtpm-localca.conf\ncreate_certs_tool_options = {c}/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                t.swtpm_localca.display()
            ),
        ),
        (
            "swtpm-localca.conf",
            format!(
                "statedir = {d}/authority/state\nsigningkey = {d}/authority/signkey.pem\nissuercert = {d}/authority/issuercert.pem\ncertserial = {d}/authority/certserial\n"
            ),
        ),
        (
            "swtpm-localca.options",
            "--platform-manufacturer machina\n--platform-version 0.1\n--platform-model QEMU\n".to_owned(),
        ),
    ];
    for (name, text) in files {
        let shown = path.join(name);
        let cname = CString::new(name).expect("no NUL");
        match unlink_at(&dir, &cname, false) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(Error::io("remove", &shown, e)),
        }
        let f = openat_nofollow(
            dir.as_fd(),
            Path::new(name),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o644,
        )?;
        super::fs::fchmod(&f, 0o644, &shown)?;
        std::fs::File::from(f)
            .write_all(text.as_bytes())
            .map_err(|e| Error::io("write", &shown, e))?;
    }
    Ok(dir)
}

/// Binds and listens on the control socket, owned by the VM, mode 0600.
fn bind_socket(plan: &Plan, t: &Swtpm, cfg: &OwnedFd) -> Result<OwnedFd> {
    let name = t
        .socket
        .file_name()
        .ok_or_else(|| Error::Refused(format!("{}: no socket name", t.socket.display())))?;
    let parent_path = t.socket.parent().unwrap_or(Path::new("/"));
    let parent: OwnedFd = if parent_path == config_dir(plan) {
        cfg.try_clone()
            .map_err(|e| Error::io("dup", parent_path, e))?
    } else {
        // A custom path: its directory must be root's alone, so nothing
        // can be swapped under the bind.
        let w = walk_checked(parent_path, &|st, dir, _| {
            if only_root_writes(st) {
                Ok(())
            } else {
                Err(Error::UnsafeDir(dir.to_owned()))
            }
        })?;
        if !only_root_writes(&w.st) || w.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Error::UnsafeDir(parent_path.to_owned()));
        }
        openat_nofollow(
            w.fd.as_fd(),
            Path::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?
    };
    let cname = cstr(Path::new(name))?;
    match stat_at(&parent, &cname) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFSOCK => {
            unlink_at(&parent, &cname, false).map_err(|e| Error::io("remove", &t.socket, e))?
        }
        Ok(st) => {
            return Err(Error::WrongType {
                path: t.socket.clone(),
                found: kind(st.st_mode),
                expected: "a socket (or nothing)",
            })
        }
        Err(_) => {}
    }
    // Through the directory's fd: no path walk that could be redirected.
    let via = format!(
        "/proc/self/fd/{}/{}",
        parent.as_raw_fd(),
        name.to_string_lossy()
    );
    let listener = UnixListener::bind(&via).map_err(|e| Error::io("bind", &t.socket, e))?;
    fchmodat(
        parent.as_fd(),
        cname.as_c_str(),
        Mode::from_bits_truncate(0o600),
        FchmodatFlags::NoFollowSymlink,
    )
    .or_else(|e| {
        // Linux has no lchmod: fall back to the (root-only) directory path.
        if e == nix::errno::Errno::EOPNOTSUPP || e == nix::errno::Errno::ENOTSUP {
            fchmodat(
                parent.as_fd(),
                cname.as_c_str(),
                Mode::from_bits_truncate(0o600),
                FchmodatFlags::FollowSymlink,
            )
        } else {
            Err(e)
        }
    })
    .map_err(|e| Error::io("chmod", &t.socket, e.into()))?;
    fchownat(
        &parent,
        cname.as_c_str(),
        Some(Uid::from_raw(plan.uid)),
        Some(Gid::from_raw(plan.gid)),
        FchownatFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| Error::io("chown", &t.socket, e.into()))?;
    Ok(OwnedFd::from(listener))
}
