//! A tiny real Linux guest for tests that need an operating system to react
//! to QEMU: Debian's kernel plus a busybox initramfs whose `/init` powers the
//! machine off when the ACPI power button is pressed.
//!
//! Everything comes from Debian packages, downloaded with `apt-get download`
//! and unpacked with `dpkg-deb -x` (nothing is installed on the host). The
//! result is cached under `<CARGO_TARGET_DIR or target>/machina-guest/`, one
//! directory per (kernel version, busybox version, recipe), built in a
//! temporary directory and renamed into place under an exclusive `flock`, so
//! parallel tests neither race nor see a half-built image.
//!
//! Host tools used on a cache miss: `apt-cache`, `apt-get`, `dpkg-deb`,
//! `cpio`, `gzip`, and `xz`/`zstd` only if the kernel ships compressed modules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha3::{Digest, Sha3_256};

/// Printed on the guest's serial console once the power button is armed.
pub const READY_MARKER: &str = "MACHINA-GUEST-READY";

/// Printed by the guest's power-button handler just before `poweroff -f`.
pub const POWER_BUTTON_MARKER: &str = "MACHINA-GUEST-POWER-BUTTON";

/// Printed by `/init` with the guest's TPM major version (`none` without).
pub const TPM_MARKER: &str = "MACHINA-GUEST-TPM";

/// The TPM major version the guest reported on its console `log`
/// (`"none"` without a TPM); panics with the log when it did not report.
pub fn tpm_version(log: &str) -> &str {
    log.lines()
        .find_map(|l| l.split_once(TPM_MARKER))
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("the guest reported no TPM version:\n{log}"))
}

/// Printed by `/init` when it cannot arm the power button.
pub const ERROR_MARKER: &str = "MACHINA-GUEST-ERROR";

/// A bootable guest: pass `-kernel`, `-initrd` and `-append` to QEMU.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The Debian kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The gzip-compressed `newc` cpio initramfs.
    pub initrd: PathBuf,
    /// The kernel command line (serial console on ttyS0).
    pub append: String,
}

/// Kernel command line: console on the first serial port; a panic (e.g. a
/// dying `/init`) resets at once, which `-no-reboot` turns into an exit whose
/// `SHUTDOWN` reason is `guest-reset`, not `guest-shutdown`.
const APPEND: &str = "console=ttyS0 quiet panic=-1";

/// Bumped by hand when the build below changes in a way the templates'
/// hash would not show.
const RECIPE_VERSION: &str = "1";

/// Kernel features `/init` needs, as (module name, config symbol).
const FEATURES: &[(&str, &str)] = &[
    ("button", "CONFIG_ACPI_BUTTON"),
    ("evdev", "CONFIG_INPUT_EVDEV"),
    ("tpm_crb", "CONFIG_TCG_CRB"),
    // A NIC for the network tests (carrier, guest-to-guest traffic).
    ("virtio_pci", "CONFIG_VIRTIO_PCI"),
    ("virtio_net", "CONFIG_VIRTIO_NET"),
];

/// Busybox applets `/init` and the handler call by name.
const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "acpid", "poweroff", "sleep", "usleep", "cat", "readlink", "ifconfig",
    "ping",
];

/// `/init`. It ends in a shell on the serial console. `@INSMOD@` becomes one `insmod` line per module, dependencies
/// first. Busybox `acpid` reads the input event devices and maps the power
/// button's key to the `PWRF/00000080` action, a script under `/etc/acpi`.
/// The ready marker is printed only once `acpid` holds the power button's
/// event device open, so a press after the marker cannot be missed.
const INIT: &str = r#"#!/bin/sh
# machina test guest: power off when the ACPI power button is pressed.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "@ERROR@: $*"; while :; do sleep 3600; done; }
@INSMOD@
echo "MACHINA-GUEST-TPM $(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null || echo none)"
ev=
n=0
while [ -z "$ev" ]; do
  for d in /sys/class/input/event*; do
    if [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ]; then
      ev=/dev/input/${d##*/}
    fi
  done
  if [ -z "$ev" ] || [ ! -c "$ev" ]; then
    ev=
    n=$((n + 1))
    [ "$n" -gt 500 ] && fail "no input device for the ACPI power button"
    usleep 20000
  fi
done
acpid -f -d -c /etc/acpi &
pid=$!
n=0
while :; do
  for f in /proc/$pid/fd/*; do
    [ "$(readlink "$f")" = "$ev" ] && break 2
  done
  n=$((n + 1))
  [ "$n" -gt 500 ] && fail "acpid did not open $ev"
  usleep 20000
done
echo "@READY@ power button $ev"
# A shell on the serial console, for the console tests (with a file or
# unconnected serial backend it just waits for input).
while :; do sh </dev/ttyS0 >/dev/ttyS0 2>&1; sleep 1; done
"#;

/// The action busybox `acpid` runs for the power button (`PWRF/00000080`).
const HANDLER: &str = r#"#!/bin/sh
echo "@BUTTON@" > /dev/console
exec poweroff -f
"#;

/// Why the image could not be provided.
enum GuestError {
    /// A prerequisite is missing (no Debian, no network, no tool): SKIP.
    Missing(String),
    /// The build itself went wrong: a test failure.
    Build(String),
}

type Result<T> = std::result::Result<T, GuestError>;

fn build_err(msg: impl Into<String>) -> GuestError {
    GuestError::Build(msg.into())
}

/// Returns the guest image, building and caching it on first use. When a
/// prerequisite is missing (not Debian, no network for `apt-get download`,
/// no `cpio`), reports `SKIP <test>: …` through [`super::skip`] and returns
/// `None`. Panics when a build step fails for another reason, so the test
/// fails with the step named.
pub fn guest_image(test: &str) -> Option<GuestImage> {
    match find_or_build() {
        Ok(image) => Some(image),
        Err(GuestError::Missing(why)) => {
            super::skip(test, &format!("cannot build the test guest: {why}"));
            None
        }
        Err(GuestError::Build(why)) => panic!("{test}: building the test guest failed: {why}"),
    }
}

fn cache_root() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("machina-guest")
}

fn image_in(dir: &Path) -> Option<GuestImage> {
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.gz"),
        append: APPEND.to_string(),
    };
    (image.kernel.is_file() && image.initrd.is_file()).then_some(image)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn recipe_hash() -> String {
    let mut h = Sha3_256::new();
    for part in [RECIPE_VERSION, APPEND, INIT, HANDLER] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (m, c) in FEATURES {
        h.update(format!("{m}={c}\0").as_bytes());
    }
    h.update(APPLETS.join(" ").as_bytes());
    hex(&h.finalize())[..16].to_string()
}

/// A cheap stand-in for "which package versions would apt pick": the names,
/// sizes and modification times of apt's package lists. Resolving versions
/// with `apt-cache` costs over a second; this costs a directory read.
fn lists_fingerprint() -> Option<String> {
    let mut lines: Vec<String> = fs::read_dir("/var/lib/apt/lists")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(format!(
                "{} {} {}.{}",
                e.file_name().to_string_lossy(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            ))
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    lines.sort();
    let mut h = Sha3_256::new();
    h.update(lines.join("\n").as_bytes());
    h.update(recipe_hash().as_bytes());
    Some(hex(&h.finalize())[..24].to_string())
}

/// The fast path reads `index/<fingerprint>`, which names a finished entry.
fn from_index(root: &Path, fingerprint: &str) -> Option<GuestImage> {
    let entry = fs::read_to_string(root.join("index").join(fingerprint)).ok()?;
    let entry = entry.trim();
    if entry.is_empty() || entry.contains('/') {
        return None;
    }
    image_in(&root.join(entry))
}

fn find_or_build() -> Result<GuestImage> {
    let root = cache_root();
    let fingerprint = lists_fingerprint();
    if let Some(image) = fingerprint.as_deref().and_then(|f| from_index(&root, f)) {
        return Ok(image);
    }

    fs::create_dir_all(root.join("index"))
        .map_err(|e| build_err(format!("creating {}: {e}", root.display())))?;
    let lock_path = root.join("lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| build_err(format!("opening {}: {e}", lock_path.display())))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| build_err(format!("locking {}: {e}", lock_path.display())))?;

    // Another test may have built it while this one waited for the lock.
    if let Some(image) = fingerprint.as_deref().and_then(|f| from_index(&root, f)) {
        return Ok(image);
    }
    // Leftovers of builds that were killed; nobody else builds while we hold the lock.
    if let Ok(dir) = fs::read_dir(&root) {
        for e in dir.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with("tmp-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    let packages = resolve_packages()?;
    let entry_name = format!(
        "{}_{}+{}_{}+{}",
        packages.kernel.0,
        packages.kernel.1,
        packages.busybox.0,
        packages.busybox.1,
        recipe_hash()
    )
    .replace([':', '/', '~'], "_");
    let entry = root.join(&entry_name);
    let image = match image_in(&entry) {
        Some(image) => image,
        None => {
            let tmp = TempDir(root.join(format!("tmp-{}", std::process::id())));
            let _ = fs::remove_dir_all(&tmp.0);
            fs::create_dir_all(&tmp.0)
                .map_err(|e| build_err(format!("creating {}: {e}", tmp.0.display())))?;
            build(&packages, &tmp.0)?;
            let _ = fs::remove_dir_all(&entry);
            fs::rename(tmp.0.join("out"), &entry)
                .map_err(|e| build_err(format!("renaming into {}: {e}", entry.display())))?;
            image_in(&entry)
                .ok_or_else(|| build_err(format!("{} is incomplete", entry.display())))?
        }
    };
    if let Some(f) = fingerprint {
        let index = root.join("index").join(&f);
        let staged = root
            .join("index")
            .join(format!(".{f}.{}", std::process::id()));
        if fs::write(&staged, &entry_name).is_ok() && fs::rename(&staged, &index).is_err() {
            let _ = fs::remove_file(&staged);
        }
    }
    Ok(image)
}

/// Removes a build directory on every exit path.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Package names and candidate versions, as apt would download them.
struct Packages {
    kernel: (String, String),
    busybox: (String, String),
}

fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| GuestError::Missing(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(build_err(format!("{what} failed ({}): {last}", out.status)));
    }
    Ok(out.stdout)
}

/// As [`run`], but a failure means a missing prerequisite (network, Debian).
fn run_prereq(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    run(cmd, what).map_err(|e| match e {
        GuestError::Build(m) => GuestError::Missing(m),
        other => other,
    })
}

/// The candidate version of each package, from one `apt-cache show` (each
/// call reads all of apt's lists, over a second here).
fn candidate_versions(pkgs: &[&str]) -> Result<Vec<String>> {
    let out = run_prereq(
        Command::new("apt-cache")
            .args(["show", "--no-all-versions"])
            .args(pkgs),
        &format!("apt-cache show {}", pkgs.join(" ")),
    )?;
    let text = String::from_utf8_lossy(&out);
    let mut found: BTreeMap<&str, &str> = BTreeMap::new();
    let mut package = "";
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("Package: ") {
            package = p.trim();
        } else if let Some(v) = line.strip_prefix("Version: ") {
            found.entry(package).or_insert(v.trim());
        }
    }
    pkgs.iter()
        .map(|p| {
            found
                .get(p)
                .map(|v| v.to_string())
                .ok_or_else(|| GuestError::Missing(format!("apt knows no version of {p}")))
        })
        .collect()
}

fn resolve_packages() -> Result<Packages> {
    let out = run_prereq(
        Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
        "apt-cache depends linux-image-amd64",
    )?;
    let kernel = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .ok_or_else(|| {
            GuestError::Missing("linux-image-amd64 depends on no linux-image-*-amd64".into())
        })?;
    let busybox = "busybox-static".to_string();
    let versions = candidate_versions(&[&kernel, &busybox])?;
    Ok(Packages {
        kernel: (kernel, versions[0].clone()),
        busybox: (busybox, versions[1].clone()),
    })
}

/// Builds `<tmp>/out/{vmlinuz,initrd.gz,packages}`.
fn build(p: &Packages, tmp: &Path) -> Result<()> {
    let io = |what: &str, path: &Path| {
        let msg = format!("{what} {}", path.display());
        move |e: std::io::Error| build_err(format!("{msg}: {e}"))
    };
    let debs = tmp.join("debs");
    fs::create_dir_all(&debs).map_err(io("creating", &debs))?;
    let specs = [
        format!("{}={}", p.kernel.0, p.kernel.1),
        format!("{}={}", p.busybox.0, p.busybox.1),
    ];
    // The sandbox user `_apt` could not write into this directory.
    run_prereq(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .args(&specs)
            .current_dir(&debs),
        &format!("apt-get download {} (no network?)", specs.join(" ")),
    )?;

    let kx = tmp.join("kernel");
    let bx = tmp.join("busybox");
    for (pkg, dir) in [(&p.kernel.0, &kx), (&p.busybox.0, &bx)] {
        let deb = find_deb(&debs, pkg)?;
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir),
            &format!("dpkg-deb -x {}", deb.display()),
        )?;
    }

    let vmlinuz = single_match(&kx.join("boot"), "vmlinuz-")?;
    let config_path = single_match(&kx.join("boot"), "config-")?;
    let config = fs::read_to_string(&config_path).map_err(io("reading", &config_path))?;
    let modules = index_modules(&kx)?;

    // Which modules to load, dependencies first.
    let mut order: Vec<String> = Vec::new();
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (module, symbol) in FEATURES {
        let setting = config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{symbol}=")))
            .unwrap_or("n");
        match setting {
            "y" => {}
            "m" => add_module(module, &modules, &mut order, &mut blobs, 0)?,
            _ => {
                return Err(build_err(format!(
                    "{} lacks {symbol} (needed by the test guest's /init)",
                    config_path.display()
                )))
            }
        }
    }

    // The initramfs tree.
    let rd = tmp.join("initramfs");
    for d in ["bin", "dev", "proc", "sys", "lib/modules", "etc/acpi/PWRF"] {
        fs::create_dir_all(rd.join(d)).map_err(io("creating", &rd.join(d)))?;
    }
    let busybox_src = bx.join("bin/busybox");
    fs::copy(&busybox_src, rd.join("bin/busybox")).map_err(io("copying", &busybox_src))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rd.join("bin").join(applet))
            .map_err(io("linking applet", &rd.join("bin").join(applet)))?;
    }
    let mut insmod = String::new();
    for name in &order {
        let file = format!("lib/modules/{name}.ko");
        fs::write(rd.join(&file), &blobs[name]).map_err(io("writing", &rd.join(&file)))?;
        let _ = writeln!(insmod, "insmod /{file} || fail \"insmod {name}\"");
    }
    let init = INIT
        .replace("@INSMOD@", insmod.trim_end())
        .replace("@READY@", READY_MARKER)
        .replace("@ERROR@", ERROR_MARKER);
    let handler = HANDLER.replace("@BUTTON@", POWER_BUTTON_MARKER);
    for (path, text) in [("init", init), ("etc/acpi/PWRF/00000080", handler)] {
        let path = rd.join(path);
        fs::write(&path, text).map_err(io("writing", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &path))?;
    }

    let out = tmp.join("out");
    fs::create_dir_all(&out).map_err(io("creating", &out))?;
    fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(io("copying", &vmlinuz))?;
    write_cpio(&rd, &out.join("initrd.gz"))?;
    let manifest = format!(
        "{} {}\n{} {}\nmodules: {}\n",
        p.kernel.0,
        p.kernel.1,
        p.busybox.0,
        p.busybox.1,
        order.join(" ")
    );
    fs::write(out.join("packages"), manifest).map_err(io("writing", &out))?;
    Ok(())
}

fn find_deb(dir: &Path, pkg: &str) -> Result<PathBuf> {
    let prefix = format!("{pkg}_");
    fs::read_dir(dir)
        .map_err(|e| build_err(format!("reading {}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .ok_or_else(|| {
            build_err(format!(
                "apt-get download left no {pkg}_*.deb in {}",
                dir.display()
            ))
        })
}

fn single_match(dir: &Path, prefix: &str) -> Result<PathBuf> {
    fs::read_dir(dir)
        .map_err(|e| build_err(format!("reading {}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .starts_with(prefix)
        })
        .ok_or_else(|| build_err(format!("no {prefix}* in {}", dir.display())))
}

/// Module name (with `-` as `_`, as the kernel spells it) to file, found
/// under `lib/modules` or `usr/lib/modules` of the unpacked kernel package.
fn index_modules(kx: &Path) -> Result<BTreeMap<String, PathBuf>> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&path, out);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if let Some((stem, _)) = name.split_once(".ko") {
                    out.insert(stem.replace('-', "_"), path.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&kx.join("lib/modules"), &mut out);
    walk(&kx.join("usr/lib/modules"), &mut out);
    if out.is_empty() {
        return Err(build_err(format!(
            "no kernel modules under {}",
            kx.display()
        )));
    }
    Ok(out)
}

/// Adds `name` and, first, the modules its `depends=` names. Modules are
/// stored uncompressed: busybox `insmod` may not read compressed ones.
fn add_module(
    name: &str,
    modules: &BTreeMap<String, PathBuf>,
    order: &mut Vec<String>,
    blobs: &mut BTreeMap<String, Vec<u8>>,
    depth: usize,
) -> Result<()> {
    let name = name.replace('-', "_");
    if blobs.contains_key(&name) {
        return Ok(());
    }
    if depth > 16 {
        return Err(build_err(format!("module dependencies too deep at {name}")));
    }
    let path = modules
        .get(&name)
        .ok_or_else(|| build_err(format!("kernel package has no module {name}")))?;
    let file = path.to_string_lossy().to_string();
    let data = if file.ends_with(".ko") {
        fs::read(path).map_err(|e| build_err(format!("reading {file}: {e}")))?
    } else {
        let tool = if file.ends_with(".xz") {
            "xz"
        } else if file.ends_with(".zst") {
            "zstd"
        } else if file.ends_with(".gz") {
            "gzip"
        } else {
            return Err(build_err(format!("unknown module compression: {file}")));
        };
        run(
            Command::new(tool).arg("-dc").arg(path),
            &format!("{tool} -dc {file}"),
        )?
    };
    blobs.insert(name.clone(), Vec::new());
    for dep in module_depends(&data) {
        add_module(&dep, modules, order, blobs, depth + 1)?;
    }
    blobs.insert(name.clone(), data);
    order.push(name);
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` section.
fn module_depends(data: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(start) = data.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &data[start + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// `cpio -o -H newc` of `dir` (owner root, sorted names), gzip-compressed.
fn write_cpio(dir: &Path, dest: &Path) -> Result<()> {
    fn list(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().to_string();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            out.push(rel.clone());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                list(&e.path(), &rel, out);
            }
        }
    }
    let mut names = Vec::new();
    list(dir, "", &mut names);

    let out_file = fs::File::create(dest)
        .map_err(|e| build_err(format!("creating {}: {e}", dest.display())))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "-R", "0:0", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GuestError::Missing(format!("cannot run cpio (apt-get install cpio): {e}")))?;
    let cpio_out = cpio.stdout.take().expect("piped stdout");
    let gzip = Command::new("gzip")
        .args(["-n", "-6"])
        .stdin(cpio_out)
        .stdout(out_file)
        .spawn();
    let mut gzip = match gzip {
        Ok(g) => g,
        Err(e) => {
            let _ = cpio.kill();
            let _ = cpio.wait();
            return Err(GuestError::Missing(format!("cannot run gzip: {e}")));
        }
    };
    let mut stdin = cpio.stdin.take().expect("piped stdin");
    let write_res = stdin.write_all((names.join("\n") + "\n").as_bytes());
    drop(stdin);
    let mut cpio_err = String::new();
    if let Some(mut e) = cpio.stderr.take() {
        let _ = e.read_to_string(&mut cpio_err);
    }
    let cpio_status = cpio
        .wait()
        .map_err(|e| build_err(format!("waiting for cpio: {e}")))?;
    let gzip_status = gzip
        .wait()
        .map_err(|e| build_err(format!("waiting for gzip: {e}")))?;
    write_res.map_err(|e| build_err(format!("feeding cpio: {e}")))?;
    if !cpio_status.success() {
        return Err(build_err(format!(
            "cpio failed ({cpio_status}): {}",
            cpio_err.trim()
        )));
    }
    if !gzip_status.success() {
        return Err(build_err(format!("gzip failed ({gzip_status})")));
    }
    Ok(())
}
