//! QMP round-trip benchmark (issue 4): `cargo bench --bench qmp`.
//!
//! Starts one paused QEMU (root and KVM required; SKIP otherwise) with one
//! QMP socket per client, then times 10,000 `query-status` round trips for
//! each client, alternated in rounds within one run so that machine noise
//! hits every client alike:
//!
//! - machina's client on a current-thread tokio runtime,
//! - machina's client on a multi-thread tokio runtime,
//! - a raw Python socket client sending exactly the same bytes
//!   (benches/qmp/raw.py),
//! - the official `qemu.qmp` Python library (benches/qmp/qemu_qmp.py).
//!
//! Then it measures, over a few fresh QEMUs, the time from QEMU's exit
//! (waitpid returning) to `machina::qmp::shutdown` returning.

#[path = "../tests/common/mod.rs"]
mod common;

use common::qemu;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use machina::qmp::{self, Client, Options, ShutdownOptions, ShutdownOutcome};
use qemu::Qemu;

/// How much to run: the full benchmark under `cargo bench` (which passes
/// `--bench`), a quick machina-only smoke run under `cargo test
/// --all-targets`, so the suite exercises this code without Python or its
/// libraries.
struct Plan {
    full: bool,
    rounds: u64,
    per_round: u64,
    warmup: u64,
    shutdowns: usize,
}

impl Plan {
    fn from_args() -> Plan {
        if std::env::args().any(|a| a == "--bench") {
            Plan {
                full: true,
                rounds: 50,
                per_round: 200,
                warmup: 200,
                shutdowns: 7,
            }
        } else {
            Plan {
                full: false,
                rounds: 1,
                per_round: 100,
                warmup: 10,
                shutdowns: 1,
            }
        }
    }
}

/// A Python client process driven over stdin/stdout.
struct Py {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Py {
    fn start(script: &str, socket: &Path, args: &[String]) -> Result<Py, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/qmp")
            .join(script);
        let mut child = Command::new("python3")
            .arg(&path)
            .arg(socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3 {}: {e}", path.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut ready = String::new();
        stdout.read_line(&mut ready).map_err(|e| e.to_string())?;
        if !ready.starts_with("ready") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{script} did not start (is qemu.qmp installed?)"));
        }
        Ok(Py {
            child,
            stdin,
            stdout,
        })
    }

    fn run(&mut self, n: u64) -> Duration {
        writeln!(self.stdin, "{n}").expect("python client gone");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("python client gone");
        Duration::from_nanos(line.trim().parse().expect("python client printed no time"))
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// machina's client with its own runtime.
struct Machina {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Machina {
    fn start(rt: tokio::runtime::Runtime, socket: &Path) -> Machina {
        let (client, _) = rt
            .block_on(Client::connect(socket, &Options::default()))
            .expect("machina client connect");
        Machina { rt, client }
    }

    fn run(&self, n: u64) -> Duration {
        self.rt.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                self.client
                    .execute("query-status", None)
                    .await
                    .expect("query-status");
            }
            start.elapsed()
        })
    }
}

fn us_per(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn round_trips(binary: &Path, plan: &Plan) -> Result<(), String> {
    let q = Qemu::start(binary, 4)?;
    let ct = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let machina_ct = Machina::start(ct, &q.sockets[0]);
    let machina_mt = Machina::start(mt, &q.sockets[1]);
    // The raw client sends exactly the bytes machina's client sends with
    // its default options (no ids): both requests are passed to it.
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let ours = qmp::encode_command("query-status", None, None);
    let caps = qmp::encode_command("qmp_capabilities", None, None);
    let mut raw = if plan.full {
        Some(Py::start(
            "raw.py",
            &q.sockets[2],
            &[hex(&caps), hex(&ours)],
        )?)
    } else {
        None
    };
    let mut lib = match plan
        .full
        .then(|| Py::start("qemu_qmp.py", &q.sockets[3], &[]))
    {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            common::skip("qmp bench (qemu.qmp)", &e);
            None
        }
        None => None,
    };
    println!(
        "request: {} ({} bytes)",
        String::from_utf8_lossy(&ours).trim_end(),
        ours.len()
    );

    let names = [
        "machina (current-thread)",
        "machina (multi-thread)",
        "raw python",
        "qemu.qmp",
    ];
    let mut run = |i: usize, n: u64| -> Option<Duration> {
        match i {
            0 => Some(machina_ct.run(n)),
            1 => Some(machina_mt.run(n)),
            2 => raw.as_mut().map(|r| r.run(n)),
            _ => lib.as_mut().map(|l| l.run(n)),
        }
    };
    for i in 0..names.len() {
        run(i, plan.warmup);
    }
    let mut total = [Duration::ZERO; 4];
    let mut per_round: [Vec<f64>; 4] = Default::default();
    for round in 0..plan.rounds as usize {
        // Rotate the order each round so no client always goes first.
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            if let Some(d) = run(i, plan.per_round) {
                total[i] += d;
                per_round[i].push(us_per(d, plan.per_round));
            }
        }
    }
    let n = plan.rounds * plan.per_round;
    println!(
        "{n} query-status round trips per client, {} alternated rounds of {}:",
        plan.rounds, plan.per_round
    );
    let mean: Vec<f64> = total.iter().map(|d| us_per(*d, n)).collect();
    // Ratios of rounds run back to back cancel the drift of a shared
    // machine's load; their median is the robust comparison.
    let paired = |a: usize, b: usize| -> Option<f64> {
        if per_round[a].is_empty() || per_round[b].is_empty() {
            return None;
        }
        let mut r: Vec<f64> = per_round[a]
            .iter()
            .zip(&per_round[b])
            .map(|(x, y)| x / y)
            .collect();
        Some(median(&mut r))
    };
    let mut ratios = Vec::new();
    for (i, name) in names.iter().enumerate().take(2) {
        for (j, other) in [(2, "raw python"), (3, "qemu.qmp")] {
            if let Some(p) = paired(i, j) {
                ratios.push(format!(
                    "  {name}: {:.3} x {other} (mean), {p:.3} (median of paired rounds)",
                    mean[i] / mean[j]
                ));
            }
        }
    }
    for i in 0..names.len() {
        if per_round[i].is_empty() {
            continue;
        }
        println!(
            "  {:<26} {:8.1} us/round trip (median round {:.1})",
            names[i],
            mean[i],
            median(&mut per_round[i])
        );
    }
    for line in ratios {
        println!("{line}");
    }
    Ok(())
}

fn exit_to_return(binary: &Path, plan: &Plan) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut deltas = Vec::new();
    for _ in 0..plan.shutdowns {
        let mut q = Qemu::start(binary, 1)?;
        q.watch_exit();
        // A zero timeout sends `quit` right after the first powerdown.
        let outcome = rt
            .block_on(qmp::shutdown(
                "bench",
                &q.sockets,
                &ShutdownOptions {
                    wait: true,
                    timeout: Some(Duration::ZERO),
                    ..ShutdownOptions::default()
                },
                |_| {},
            ))
            .map_err(|e| e.to_string())?;
        let returned = Instant::now();
        assert_eq!(outcome, ShutdownOutcome::Completed { quit_sent: true });
        let (exited, _) = q
            .exit_instant(Duration::from_secs(5))
            .ok_or("QEMU did not exit")?;
        deltas.push(if returned >= exited {
            returned.duration_since(exited).as_secs_f64() * 1e3
        } else {
            -exited.duration_since(returned).as_secs_f64() * 1e3
        });
    }
    let shown: Vec<String> = deltas.iter().map(|d| format!("{d:.2}")).collect();
    println!(
        "QEMU exit (waitpid) -> shutdown() returned: median {:.2} ms, all [{}] ms (negative: returned before waitpid, as the socket closes first)",
        median(&mut deltas),
        shown.join(", ")
    );
    Ok(())
}

fn main() {
    let plan = Plan::from_args();
    let Some(binary) = common::privileged("qmp bench") else {
        return;
    };
    if let Err(e) = round_trips(&binary, &plan).and_then(|()| exit_to_return(&binary, &plan)) {
        eprintln!("qmp bench failed: {e}");
        std::process::exit(1);
    }
}
