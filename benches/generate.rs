//! Benchmark (issue 2): generate QEMU args for 10,000 machines from one host
//! file and 10,000 machine files, end to end through the release `machina`
//! binary (`machina args vm00000 … vm09999`), and in-process through the
//! library. Reports machines per second, µs per machine, the ratio against
//! the Go program's `generate --preview` (0.38 ms per machine measured on
//! this kind of machine) and the peak RSS of the binary.
//!
//! Run: `cargo bench --bench generate`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The same allocator as the `machina` binary, so the in-process figure
/// is comparable.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MACHINES: usize = 10_000;
const GO_MS_PER_MACHINE: f64 = 0.38;

fn write_tree(dir: &Path) -> Vec<String> {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/go/readme-example");
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let host = if golden.exists() {
        golden.join("machina.conf.json")
    } else {
        examples.join("machina.conf.json")
    };
    std::fs::create_dir_all(dir.join("machine.conf.d")).unwrap();
    std::fs::copy(host, dir.join("machina.conf.json")).unwrap();
    let mut names = Vec::with_capacity(MACHINES);
    for i in 0..MACHINES {
        let name = format!("vm{i:05}");
        let text = format!(
            "{{\n\t\"id\": \"{}\",\n\t\"description\": \"Desk {i}\",\n\t\"tags\": [\"vdi-employee\", \"vdi-cad\", \"windows\", \"windows-10-media\", \"firmware-202302\"],\n\t\"vars\": {{\"employee-id\": \"{}\"}}\n}}\n",
            uuid::Uuid::from_u128(0x8b18191a_234f_45ce_b43c_b46e28cd0000 + i as u128),
            1000 + i % 9000
        );
        std::fs::write(
            dir.join("machine.conf.d").join(format!("{name}.conf.json")),
            text,
        )
        .unwrap();
        names.push(name);
    }
    names
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("machina-bench-gen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let names = write_tree(&dir);
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/machina");
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "machina"])
        .status()
        .unwrap();
    assert!(status.success());

    // End to end: one process generates all 10,000 argv lines.
    let mut runs = Vec::new();
    let mut cpu = Vec::new();
    let mut peak_kib = 0;
    for _ in 0..7 {
        let t = Instant::now();
        #[allow(clippy::zombie_processes)] // reaped by wait4 in wait_rusage
        let child = Command::new(&bin)
            .arg("--config-dir")
            .arg(&dir)
            .arg("args")
            .args(&names)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (status, rss, user) = wait_rusage(child.id() as i32);
        assert!(status == 0, "machina args failed");
        runs.push(t.elapsed().as_secs_f64());
        cpu.push(user);
        peak_kib = peak_kib.max(rss);
    }
    let secs = median(&mut runs);
    let us = secs * 1e6 / MACHINES as f64;
    println!("machina args, {MACHINES} machines, one process: median {:.3} s = {:.1} µs/machine, {:.0} machines/s, peak RSS {} KiB", secs, us, MACHINES as f64 / secs, peak_kib);
    println!(
        "  ratio vs Go generate --preview ({GO_MS_PER_MACHINE} ms/machine): {:.1}x faster",
        GO_MS_PER_MACHINE * 1000.0 / us
    );
    let cpu_us = median(&mut cpu) * 1e6 / MACHINES as f64;
    println!(
        "  CPU time (user+sys, all cores): {cpu_us:.1} µs/machine ({:.1}x less than Go's wall time)",
        GO_MS_PER_MACHINE * 1000.0 / cpu_us
    );

    // In process: load + merge + hardware + argv, no output.
    let cdir = machina::config::ConfigDir::new(&dir);
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let host = cdir.load_host().unwrap();
        let mut bytes = 0;
        for n in &names {
            let m = machina::config::load_machine(&cdir, &host, &n.parse().unwrap()).unwrap();
            let hw = machina::qemu::build(&m).unwrap();
            bytes += machina::qemu::options_line(&hw.options).len();
        }
        assert!(bytes > 0);
        runs.push(t.elapsed().as_secs_f64());
    }
    let secs = median(&mut runs);
    println!(
        "library, one thread, {MACHINES} machines: median {:.3} s = {:.1} µs/machine, {:.0} machines/s",
        secs,
        secs * 1e6 / MACHINES as f64,
        MACHINES as f64 / secs
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits for `pid`, returning its exit code, peak RSS in KiB and CPU seconds.
fn wait_rusage(pid: i32) -> (i32, i64, f64) {
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        libc::WEXITSTATUS(status),
        ru.ru_maxrss,
        secs(ru.ru_utime) + secs(ru.ru_stime),
    )
}
