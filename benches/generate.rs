//! Benchmark (issues 2 and 12): `machina args` and `machina gen --preview`
//! over 1, 100 and 10,000 VM files made from the README example, side by
//! side with the Go program's `args` and `generate --preview` in the same
//! run when it is present, each process pinned to CPU 0 and the two
//! programs alternated (A B B A A B …) so that machine load hits both alike
//! and each runs as often after the other as after itself.
//! Reports the median wall time of each, the ratios Go / machina of wall
//! and of CPU time (user + sys; medians of the pairwise ratios; on a loaded
//! machine the CPU ratio is the steadier one) and each one's peak RSS.
//!
//! The Go program is `$MACHINA_GO`, else `shared/reference/go-machina`
//! beside this checkout (or beside a parent directory of it); without it
//! only machina's figures are printed, with a line saying so.
//!
//! Run: `cargo bench --bench generate` (`-- --quick` for fewer runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const SIZES: [usize; 3] = [1, 100, 10_000];

/// Writes a configuration directory with `n` machine files like the
/// README's example VM (tags, a per-VM employee id), returning the names.
fn write_tree(dir: &Path, n: usize) -> Vec<String> {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    std::fs::create_dir_all(dir.join("machine.conf.d")).unwrap();
    std::fs::copy(
        examples.join("machina.conf.json"),
        dir.join("machina.conf.json"),
    )
    .unwrap();
    (0..n)
        .map(|i| {
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
            name
        })
        .collect()
}

/// One finished run: wall seconds, CPU seconds, peak RSS in KiB.
#[derive(Clone, Copy)]
struct Run {
    wall: f64,
    cpu: f64,
    rss_kib: i64,
}

/// Runs `cmd` (stdout to /dev/null, stderr to a file read on failure).
fn run(mut cmd: Command, label: &str) -> Run {
    let err_path =
        std::env::temp_dir().join(format!("machina-bench-gen-{}.err", std::process::id()));
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let t = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{label}: {e}"));
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter for wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers (the Child
    // handle is only dropped afterwards, which does not wait).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = t.elapsed().as_secs_f64();
    assert_eq!(r, pid);
    drop(child);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{label} failed: {stderr}"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run {
        wall,
        cpu: secs(ru.ru_utime) + secs(ru.ru_stime),
        rss_kib: ru.ru_maxrss,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pinned(program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0"]).arg(program);
    c
}

/// `$MACHINA_GO`, else `shared/reference/go-machina` beside this checkout
/// or beside one of its parents (a git worktree sits deeper).
fn go_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MACHINA_GO") {
        let p = PathBuf::from(p);
        return p.is_file().then(|| std::fs::canonicalize(p).unwrap());
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .skip(1)
        .map(|d| d.join("shared/reference/go-machina"))
        .find(|p| p.is_file())
        .map(|p| std::fs::canonicalize(p).unwrap())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--bin", "machina"])
        .status()
        .unwrap();
    assert!(status.success());
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/machina");
    if Command::new("taskset")
        .args(["-c", "0", "true"])
        .status()
        .map_or(true, |s| !s.success())
    {
        println!("taskset (util-linux) is needed to pin both programs to CPU 0");
        return;
    }
    let go = go_binary();
    match &go {
        Some(g) => println!("Go program: {}", g.display()),
        None => println!(
            "Go program not found (set MACHINA_GO or put it at ../shared/reference/go-machina): machina's figures only"
        ),
    }
    println!("both pinned to CPU 0 (taskset -c 0), alternated A B B A …; medians; ratios = median of Go/machina per pair\n");
    println!(
        "{:>6}  {:<14} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "VMs", "command", "machina s", "Go s", "wall ratio", "CPU ratio", "machina RSS", "Go RSS"
    );
    for n in SIZES {
        let dir =
            std::env::temp_dir().join(format!("machina-bench-gen-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = write_tree(&dir, n);
        let plans = dir.join("no-plans");
        if let Some(g) = &go {
            // The Go program names itself after argv[0] and reads
            // ./machina.conf.json: a `machina` symlink in the tree.
            std::os::unix::fs::symlink(g, dir.join("machina")).unwrap();
        }
        let runs = match (n, quick) {
            (10_000, true) => 3,
            (10_000, false) => 5,
            (_, true) => 5,
            _ => 15,
        };
        for (label, ours, theirs) in [
            ("args", vec!["args"], vec!["args"]),
            (
                "gen --preview",
                vec!["gen", "--preview"],
                vec!["generate", "--preview"],
            ),
        ] {
            let mut a = Vec::new();
            let mut b = Vec::new();
            // A B B A A B …: each program runs as often right after the
            // other as after itself. On this machine (a VM) a process that
            // has just freed a few hundred MiB slows the page faults and
            // file reads of the next one; in a fixed A B order machina
            // always ran after the Go program, which never ran after a
            // large process.
            for i in 0..runs {
                let ours_run = || {
                    let mut c = pinned(&bin);
                    c.arg("--config-dir")
                        .arg(&dir)
                        .arg("--plan-dir")
                        .arg(&plans)
                        .args(&ours)
                        .args(&names);
                    run(c, &format!("machina {label}"))
                };
                let go_run = || {
                    let mut c = pinned(&dir.join("machina"));
                    c.current_dir(&dir).args(&theirs).args(&names);
                    run(c, &format!("Go {label}"))
                };
                if go.is_none() {
                    a.push(ours_run());
                } else if i % 2 == 1 {
                    b.push(go_run());
                    a.push(ours_run());
                } else {
                    a.push(ours_run());
                    b.push(go_run());
                }
            }
            let ours_s = median(a.iter().map(|r| r.wall).collect());
            let ours_rss = a.iter().map(|r| r.rss_kib).max().unwrap();
            if b.is_empty() {
                println!(
                    "{n:>6}  {label:<14} {ours_s:>10.4} {:>10} {:>10} {:>10} {:>8.1} MiB {:>12}",
                    "-",
                    "-",
                    "-",
                    ours_rss as f64 / 1024.0,
                    "-"
                );
            } else {
                let go_s = median(b.iter().map(|r| r.wall).collect());
                let ratio = median(a.iter().zip(&b).map(|(x, y)| y.wall / x.wall).collect());
                let cpu_ratio = median(a.iter().zip(&b).map(|(x, y)| y.cpu / x.cpu).collect());
                let go_rss = b.iter().map(|r| r.rss_kib).max().unwrap();
                println!(
                    "{n:>6}  {label:<14} {ours_s:>10.4} {go_s:>10.4} {ratio:>9.1}x {cpu_ratio:>9.1}x {:>8.1} MiB {:>8.1} MiB",
                    ours_rss as f64 / 1024.0,
                    go_rss as f64 / 1024.0
                );
            }
            let cpu = median(a.iter().map(|r| r.cpu).collect());
            if n == 10_000 {
                println!(
                    "{:>6}  {:<14} machina CPU {cpu:.3} s = {:.1} µs per VM",
                    "",
                    "",
                    cpu * 1e6 / n as f64
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
