//! Mediated devices (vGPUs): created through sysfs under a host-wide lock,
//! then the VM's group is given read-write on `/dev/vfio/<iommu group>`.
//!
//! sysfs is reached only through [`Sysfs`]: every path resolved beneath the
//! sysfs root, bounded reads, writes to existing attributes only. The
//! `/dev` holding the vfio nodes is `<parent of sysfs root>/dev`: `/dev`
//! for `/sys`, and for a test's fake tree `<tmp>/sys` it is `<tmp>/dev`, so
//! a fake host is one directory with `sys/` and `dev/` in it. The vfio node
//! is reached without following symbolic links.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::fs::{fstat, open_nofollow, set_group, set_mode};
use super::lock::FileLock;
use super::sysfs::Sysfs;
use super::{Error, Result};
use crate::plan;

/// How long to wait for another machina holding the mdev lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long to wait for a created or removed device to show in sysfs.
const SETTLE: Duration = Duration::from_secs(2);

/// The directory of the PCI devices, relative to the sysfs root.
const PCI: &str = "bus/pci/devices";

/// The sysfs directory of mediated device `uuid`, relative to the root.
pub fn device_dir(uuid: &Uuid) -> PathBuf {
    Path::new("bus/mdev/devices").join(uuid.hyphenated().to_string())
}

/// The `/dev` that goes with a sysfs root (see the module documentation).
pub fn dev_root(sysfs_root: &Path) -> PathBuf {
    sysfs_root.parent().unwrap_or(Path::new("/")).join("dev")
}

/// A prepared mediated device. Undone when dropped unless committed: the
/// vfio node gets its group and mode back, and a device this launch
/// created is removed.
#[derive(Debug)]
pub struct Prepared {
    created: Option<(Sysfs, PathBuf)>,
    vfio: Option<(OwnedFd, PathBuf, u32, u32)>,
}

impl Prepared {
    /// Keeps the device and the grant.
    pub fn commit(mut self) {
        self.created = None;
        self.vfio = None;
    }

    /// Undoes the grant and removes a device this launch created.
    pub fn undo(mut self) {
        self.revert();
    }

    fn revert(&mut self) {
        if let Some((fd, path, gid, mode)) = self.vfio.take() {
            let _ = set_group_mode(&fd, &path, gid, mode);
        }
        if let Some((sys, dir)) = self.created.take() {
            let _ = remove_device(&sys, &dir);
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.revert();
    }
}

/// Creates the mediated device of `m` if it is absent and grants `gid`
/// read-write on its vfio group node, under the host-wide mdev lock.
pub fn prepare(m: &plan::Mdev, gid: u32) -> Result<Prepared> {
    let sys = Sysfs::open(&m.sysfs_root)?;
    if !sys.is_dir(Path::new(PCI)) {
        return Err(Error::Mdev(format!(
            "mediated devices are not supported on this host ({} is missing)",
            sys.show(Path::new(PCI)).display()
        )));
    }
    super::runtime_dir::open_lock_dir()?;
    let lock_path = plan::Lock::Mdev.path();
    let lock = FileLock::acquire_dir(&lock_path, LOCK_WAIT, || {
        format!(
            "{} is held by another machina for more than {} s",
            lock_path.display(),
            LOCK_WAIT.as_secs()
        )
    })?;
    let dev = device_dir(&m.uuid);
    let existed = sys.is_dir(&dev);
    let made = if existed {
        Ok(())
    } else if sys.exists(&dev) {
        Err(Error::Mdev(format!(
            "{} exists and is not a directory",
            sys.show(&dev).display()
        )))
    } else {
        create(&sys, m, &dev)
    };
    drop(lock);
    made?;
    let vfio = grant_vfio(&sys, &dev, gid);
    let mut out = Prepared {
        created: (!existed).then_some((sys, dev)),
        vfio: None,
    };
    out.vfio = Some(vfio?);
    Ok(out)
}

/// Tries each parent in order until one creates the device.
fn create(sys: &Sysfs, m: &plan::Mdev, dev: &Path) -> Result<()> {
    let mut tried = Vec::new();
    for p in &m.parents {
        if !crate::names::is_pci_address(&p.address) {
            return Err(Error::Mdev(format!(
                "parent address {:?} is not a PCI address like 0000:c1:00.0",
                p.address
            )));
        }
        let parent = Path::new(PCI).join(&p.address);
        if !sys.is_dir(&parent) {
            tried.push(format!("{}: not present", p.address));
            continue;
        }
        let types = parent.join("mdev_supported_types");
        let Some(ty) = find_type(sys, &types, &p.type_name) else {
            tried.push(format!("{}: no type named {:?}", p.address, p.type_name));
            continue;
        };
        let existing = existing_devices(sys, &types);
        if p.heterogeneous && existing.is_empty() {
            set_heterogeneous(&p.address)?;
        }
        let placement = choose_placement(sys, &p.placements, &existing);
        sys.write(
            &ty.join("create"),
            m.uuid.hyphenated().to_string().as_bytes(),
        )?;
        if !wait_for(|| sys.is_dir(dev)) {
            return Err(Error::Mdev(format!(
                "mediated device {} should have been created by {} but did not appear in {}",
                m.uuid,
                p.address,
                sys.show(dev).display()
            )));
        }
        if let Some(want) = placement {
            let file = dev.join("nvidia/placement_id");
            if read_placement(sys, &file) != Some(want) {
                if let Err(e) = sys.write(&file, want.to_string().as_bytes()) {
                    let _ = remove_device(sys, dev);
                    return Err(e);
                }
            }
        }
        return Ok(());
    }
    Err(Error::Mdev(format!(
        "no listed parent device can create it ({})",
        if tried.is_empty() {
            "the plan lists no parent".to_owned()
        } else {
            tried.join("; ")
        }
    )))
}

/// The type directory whose `name` file equals `name`.
fn find_type(sys: &Sysfs, types: &Path, name: &str) -> Option<PathBuf> {
    sys.list(types)
        .into_iter()
        .map(|t| types.join(t))
        .find(|d| sys.read(&d.join("name")).is_ok_and(|n| n.trim() == name))
}

/// Every mediated device already created on a parent, over all its types.
fn existing_devices(sys: &Sysfs, types: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for t in sys.list(types) {
        let devs = types.join(t).join("devices");
        out.extend(sys.list(&devs).into_iter().map(|d| devs.join(d)));
    }
    out
}

/// `nvidia/placement_id` of a device, when it has a numeric one.
fn read_placement(sys: &Sysfs, file: &Path) -> Option<u32> {
    let s = sys.read(file).ok()?;
    let s = s.strip_suffix('\n').unwrap_or(&s);
    if s.trim().eq_ignore_ascii_case("not applicable") {
        return None;
    }
    s.trim().parse().ok()
}

/// The first wanted placement no existing device occupies.
fn choose_placement(sys: &Sysfs, wanted: &[u32], existing: &[PathBuf]) -> Option<u32> {
    if wanted.is_empty() {
        return None;
    }
    let active: Vec<u32> = existing
        .iter()
        .filter_map(|d| read_placement(sys, &d.join("nvidia/placement_id")))
        .collect();
    wanted.iter().copied().find(|p| !active.contains(p))
}

fn set_heterogeneous(address: &str) -> Result<()> {
    let status = std::process::Command::new("/usr/bin/nvidia-smi")
        .args(["vgpu", "--id", address, "-shm", "1"])
        .env_clear()
        .status()
        .map_err(|e| {
            Error::Mdev(format!(
                "set heterogeneous mode on {address}: /usr/bin/nvidia-smi: {e}"
            ))
        })?;
    if !status.success() {
        return Err(Error::Mdev(format!(
            "set heterogeneous mode on {address}: nvidia-smi {status}"
        )));
    }
    Ok(())
}

fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + SETTLE;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes a mediated device through its `remove` attribute and waits for
/// it to go.
pub fn remove_device(sys: &Sysfs, dev: &Path) -> Result<()> {
    if !sys.exists(dev) {
        return Ok(());
    }
    sys.write(&dev.join("remove"), b"1")?;
    if !wait_for(|| !sys.exists(dev)) {
        return Err(Error::Mdev(format!(
            "mediated device {} is still present after remove",
            sys.show(dev).display()
        )));
    }
    Ok(())
}

/// The vfio node of a device's IOMMU group.
pub fn vfio_node(sys: &Sysfs, dev: &Path) -> Result<PathBuf> {
    let link = dev.join("iommu_group");
    let target = sys.read_link(&link)?;
    let group: u32 = target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Error::Mdev(format!(
                "{} points to {}, which is not an IOMMU group",
                sys.show(&link).display(),
                target.display()
            ))
        })?;
    Ok(dev_root(sys.path()).join("vfio").join(group.to_string()))
}

fn open_vfio(node: &Path) -> Result<(OwnedFd, libc::stat)> {
    let fd = open_nofollow(node, libc::O_PATH)?;
    let st = fstat(&fd, node)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err(Error::WrongType {
            path: node.to_owned(),
            found: super::fs::kind(st.st_mode),
            expected: "a character device",
        });
    }
    Ok((fd, st))
}

/// Group and mode of the vfio node through an `O_PATH` fd (the node is
/// never opened: opening a vfio group claims it).
fn set_group_mode(fd: &OwnedFd, path: &Path, gid: u32, mode: u32) -> Result<()> {
    set_group(fd, gid, path)?;
    set_mode(fd, mode, path)
}

fn grant_vfio(sys: &Sysfs, dev: &Path, gid: u32) -> Result<(OwnedFd, PathBuf, u32, u32)> {
    let node = vfio_node(sys, dev)?;
    let (fd, st) = open_vfio(&node)?;
    let before = (st.st_gid, st.st_mode & 0o7777);
    set_group_mode(&fd, &node, gid, before.1 | 0o060)?;
    Ok((fd, node, before.0, before.1))
}

/// Teardown of one mediated device: takes the vfio grant back from `gid`
/// (group root, no group access) and removes the device. Returns whether
/// the device existed.
pub fn teardown(m: &plan::Mdev, gid: u32) -> Result<bool> {
    let sys = Sysfs::open(&m.sysfs_root)?;
    let dev = device_dir(&m.uuid);
    if !sys.exists(&dev) {
        return Ok(false);
    }
    if let Ok(node) = vfio_node(&sys, &dev) {
        if let Ok((fd, st)) = open_vfio(&node) {
            if st.st_gid == gid {
                set_group_mode(&fd, &node, 0, st.st_mode & 0o7707)?;
            }
        }
    }
    remove_device(&sys, &dev)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_skips_active_and_not_applicable() {
        let dir = std::env::temp_dir().join(format!("machina-placement-{}", std::process::id()));
        let mk = |name: &str, content: &str| {
            let d = dir.join(name);
            std::fs::create_dir_all(d.join("nvidia")).unwrap();
            std::fs::write(d.join("nvidia/placement_id"), content).unwrap();
            PathBuf::from(name)
        };
        let devs = vec![mk("a", "0\n"), mk("b", "Not Applicable\n"), mk("c", "2\n")];
        let sys = Sysfs::open(&dir).unwrap();
        assert_eq!(choose_placement(&sys, &[0, 2, 4, 6], &devs), Some(4));
        assert_eq!(choose_placement(&sys, &[0, 2], &devs), None);
        assert_eq!(choose_placement(&sys, &[], &devs), None);
        assert_eq!(
            read_placement(&sys, &devs[1].join("nvidia/placement_id")),
            None
        );
        // Nothing outside the root is reachable, through links or `..`.
        std::os::unix::fs::symlink("/etc/hostname", dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../etc", dir.join("up")).unwrap();
        for bad in ["abs", "up/hostname", "../x"] {
            assert!(sys.read(Path::new(bad)).is_err(), "{bad}");
            assert!(sys.write(Path::new(bad), b"1").is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pci_addresses() {
        assert!(crate::names::is_pci_address("0000:c1:00.0"));
        for bad in [
            "",
            "0000:c1:00.8",
            "../../../etc",
            "0000:C1:00.0",
            "0000:c1:00.0/..",
            "0000:c1:0.0",
        ] {
            assert!(!crate::names::is_pci_address(bad), "{bad:?}");
        }
    }
}
