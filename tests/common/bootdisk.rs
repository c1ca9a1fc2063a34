//! The test guest ([`super::guest`]) as a bootable raw disk, so that a VM
//! boots it from an ordinary machina volume (no `-kernel` in the plan):
//! a FAT "superfloppy" (no partition table) holding the kernel, the
//! initramfs and a `syslinux.cfg`, made bootable with `syslinux --install`.
//! SeaBIOS loads its boot sector from the VM's bootable disk; SYSLINUX
//! loads the kernel with the guest's command line.
//!
//! Built without mounts or loop devices: `mkfs.vfat -C` creates the image
//! file, `mcopy` (mtools) writes into it, `syslinux` (its mtools variant)
//! installs the boot loader. Debian packages: `dosfstools`, `mtools`,
//! `syslinux`, `syslinux-common`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::guest::GuestImage;

/// The packages the builder needs, for SKIP messages.
const PACKAGES: &str = "dosfstools mtools syslinux syslinux-common";

/// `tool` on `PATH` or in the sbin directories (`mkfs.vfat` lives in
/// `/usr/sbin`, which a test's `PATH` may lack).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs one step; its stderr on failure.
fn run(step: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{step}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{step}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes a bootable disk of `image` to `dest` (replacing it, mode 0600;
/// the VM gets access through machina's grants like any volume). When a
/// tool is missing, reports `SKIP <test>: …` and returns `false`; panics
/// when a build step fails otherwise.
pub fn write_boot_disk(test: &str, image: &GuestImage, dest: &Path) -> bool {
    let mut tools = Vec::new();
    for tool in ["mkfs.vfat", "mcopy", "syslinux"] {
        match find_tool(tool) {
            Some(p) => tools.push(p),
            None => {
                super::skip(
                    test,
                    &format!("{tool} is missing to build a boot disk (apt-get install {PACKAGES})"),
                );
                return false;
            }
        }
    }
    let [mkfs, mcopy, syslinux] = <[PathBuf; 3]>::try_from(tools).unwrap();
    if let Err(e) = build(image, dest, &mkfs, &mcopy, &syslinux) {
        panic!("{test}: building the boot disk {}: {e}", dest.display());
    }
    true
}

fn build(
    image: &GuestImage,
    dest: &Path,
    mkfs: &Path,
    mcopy: &Path,
    syslinux: &Path,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    // Room for both files, the FATs and SYSLINUX, in KiB (mkfs's blocks).
    let kib = (size(&image.kernel)? + size(&image.initrd)?) / 1024 * 11 / 10 + 4096;
    let dir = dest
        .parent()
        .ok_or_else(|| "no parent directory".to_owned())?;
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.boot-{}", std::process::id()));
    let cfg = dir.join(format!(".{name}.cfg-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        // The kernel command line is the guest's own (serial console).
        std::fs::write(
            &cfg,
            format!(
                "SERIAL 0 115200\nDEFAULT guest\nPROMPT 0\nTIMEOUT 0\nLABEL guest\n  KERNEL vmlinuz\n  INITRD initrd.gz\n  APPEND {}\n",
                image.append
            ),
        )
        .map_err(|e| format!("{}: {e}", cfg.display()))?;
        run(
            "mkfs.vfat",
            Command::new(mkfs)
                .args(["-C", "-n", "MACHINA"])
                .arg(&tmp)
                .arg(kib.to_string()),
        )?;
        let image_arg = tmp.as_os_str();
        for (from, to) in [
            (&image.kernel, "::/vmlinuz"),
            (&image.initrd, "::/initrd.gz"),
            (&cfg, "::/syslinux.cfg"),
        ] {
            run(
                "mcopy",
                Command::new(mcopy)
                    .arg("-i")
                    .arg(image_arg)
                    .arg(from)
                    .arg(to),
            )?;
        }
        run(
            "syslinux --install",
            Command::new(syslinux).arg("--install").arg(&tmp),
        )?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, dest).map_err(|e| format!("rename {}: {e}", tmp.display()))
    })();
    let _ = std::fs::remove_file(&cfg);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
