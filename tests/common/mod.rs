//! Support shared by the integration tests: prerequisites and SKIP reporting.
//!
//! A test whose prerequisite is missing calls [`skip`], which prints
//! `SKIP <test>: <reason>` and records it in `$MACHINA_SKIP_LOG` (set by
//! `scripts/test`), so the summary counts it. It never passes silently: under
//! `MACHINA_REQUIRE_PRIVILEGED=1` (set in CI) a skip is a failure.
#![allow(dead_code)]

pub mod bootdisk;
pub mod guest;
pub mod nspawn;
pub mod qemu;

use std::io::Write;
use std::path::PathBuf;

/// Reports a skipped test. Returns `()` so callers can `return skip(..)`.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIP {test}: {reason}");
    println!("{line}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var("MACHINA_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    if std::env::var("MACHINA_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{line} (prerequisites are required here)");
    }
}

/// A temporary directory `machina-<tag>-<pid>` under the system temp dir,
/// emptied first and removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates it.
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("machina-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The QEMU binary, if installed.
pub fn qemu_binary() -> Option<PathBuf> {
    [
        "/usr/bin/qemu-system-x86_64",
        "/usr/local/bin/qemu-system-x86_64",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Checks root, `/dev/kvm` (group-accessible), `/dev/net/tun` and QEMU.
/// Returns the QEMU binary, or reports a SKIP and returns `None`.
pub fn privileged(test: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        skip(test, "not running as root");
        return None;
    }
    let Some(qemu) = qemu_binary() else {
        skip(test, "qemu-system-x86_64 is not installed");
        return None;
    };
    match std::fs::metadata("/dev/kvm") {
        Err(_) => {
            skip(test, "/dev/kvm is missing");
            return None;
        }
        Ok(m) if m.gid() == 0 || m.mode() & 0o060 != 0o060 => {
            skip(
                test,
                "/dev/kvm is not group read-write for a kvm group (scripts/test sets root:kvm 0660)",
            );
            return None;
        }
        Ok(_) => {}
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        skip(test, "/dev/net/tun is missing");
        return None;
    }
    Some(qemu)
}

/// As [`privileged`], and swtpm is installed (for TPM tests).
pub fn privileged_with_swtpm(test: &str) -> Option<PathBuf> {
    let qemu = privileged(test)?;
    if !std::path::Path::new("/usr/bin/swtpm").exists() {
        skip(
            test,
            "swtpm is not installed (apt-get install swtpm swtpm-tools)",
        );
        return None;
    }
    Some(qemu)
}

/// Asserts that `v` (the output of `machina inspect --json`) is valid
/// against the shipped `docs/inspect.schema.json`.
pub fn assert_valid_inspection(v: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/inspect.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{v:#}");
}

/// The path of a binary built by this package (`machina`, `machina-launch`).
pub fn bin(name: &str) -> PathBuf {
    match name {
        "machina" => PathBuf::from(env!("CARGO_BIN_EXE_machina")),
        "machina-launch" => PathBuf::from(env!("CARGO_BIN_EXE_machina-launch")),
        other => panic!("unknown binary {other}"),
    }
}

/// The `/proc/<pid>/status` text of every process whose parent is `parent`.
pub fn procs_with_parent(parent: i32) -> Vec<String> {
    let want = format!("PPid:\t{parent}\n");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| s.contains(&want))
        .collect()
}

/// Directory of the recorded outputs of the Go program (`tests/data/go`).
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/go")
}

pub mod launch;
pub mod netns;
pub mod vm;
