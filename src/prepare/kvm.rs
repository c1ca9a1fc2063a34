//! `/dev/kvm`: QEMU reaches it through the group that owns it (udev's
//! default is `kvm`, mode 0660); the launcher only finds that group.

use std::path::Path;

use super::fs::{fstat, open_nofollow};
use super::{Error, Result};

/// The device path.
pub const KVM_PATH: &str = "/dev/kvm";

/// The gid through which `/dev/kvm` is read-write, or a clear error.
pub fn kvm_group() -> Result<u32> {
    group_of(Path::new(KVM_PATH))
}

/// The group through which the character device `path` is read-write.
pub fn group_of(path: &Path) -> Result<u32> {
    let fd = open_nofollow(path, libc::O_PATH).map_err(|e| match e {
        Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => {
            Error::Kvm(format!(
                "{} is missing: load the kvm module and enable virtualization in the firmware",
                path.display()
            ))
        }
        other => other,
    })?;
    let st = fstat(&fd, path)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err(Error::Kvm(format!(
            "{} is not a character device",
            path.display()
        )));
    }
    if st.st_gid == 0 || st.st_mode & 0o060 != 0o060 {
        return Err(Error::Kvm(format!(
            "{} is not accessible through a group (it is group {} mode {:04o}); make it group read-write for a kvm group as udev does: `groupadd -r kvm && chown root:kvm {0} && chmod 0660 {0}` (Debian's and Fedora's udev rules give /dev/kvm to group kvm 0660)",
            path.display(),
            st.st_gid,
            st.st_mode & 0o7777
        )));
    }
    Ok(st.st_gid)
}
