//! Commands that talk to running VMs over QMP: `shutdown`, `observe` and
//! `query`. VMs are handled in parallel; every command is bounded in time
//! and the exit code says whether each VM did what was asked (the Go
//! program always exited 0).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{machine_names, CliError, EXIT_FAILURE};
use crate::launcher;
use crate::names::MachineName;
use crate::plan::RUNTIME_ROOT;
use crate::qmp::{self, Options, PeerIdentity, QmpError, Query, ShutdownOptions, ShutdownOutcome};

/// The sockets a command uses: the one reserved for systemd, or the two
/// command sockets (QEMU serves one client per socket, so the second is a
/// spare while something else holds the first). Their paths follow from the
/// name alone, so stopping a VM never depends on its configuration still
/// being valid.
pub fn sockets(vm: &MachineName, system: bool) -> Vec<PathBuf> {
    let dir = PathBuf::from(format!("{RUNTIME_ROOT}/{vm}/qmp"));
    let names: &[&str] = if system {
        &["systemd.0"]
    } else {
        &["command.0", "command.1"]
    };
    names
        .iter()
        .map(|n| dir.join(format!("{n}.qmp.socket")))
        .collect()
}

/// A VM as a QMP command reaches it: its sockets and who must serve them.
#[derive(Debug, Clone)]
pub struct Target {
    /// The VM.
    pub name: MachineName,
    /// Its sockets, in the order to try them ([`sockets`]).
    pub sockets: Vec<PathBuf>,
    /// The listener's required identity: the installed plan's uid and gid
    /// (for root; see [`target`]).
    pub peer: Option<PeerIdentity>,
}

/// Why a VM cannot be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReachError {
    /// Its runtime directory has no `qmp/`: QEMU is not running (the
    /// launcher makes it before QEMU starts; teardown removes it).
    #[error("{0} is not running")]
    NotRunning(MachineName),
    /// The installed plan, which says whose sockets they are, is unusable.
    #[error("{name}: cannot check who serves its QMP sockets: {reason}")]
    NoPlan {
        /// The VM.
        name: MachineName,
        /// What is wrong with the plan.
        reason: String,
    },
}

/// The sockets of `vm` and the identity their listener must have.
///
/// As root, every connection checks its peer (`SO_PEERCRED`) against the uid
/// and gid of the VM's installed plan (`<plan_dir>/<vm>.json`, read with the
/// launcher's checks): the VM owns its `qmp/` directory, so whatever is
/// found there is only trusted if the VM's own QEMU serves it. Without root,
/// nothing is gained by tricking the caller, so no plan is needed.
pub fn target(plan_dir: &Path, vm: &MachineName, system: bool) -> Result<Target, ReachError> {
    let qmp_dir = PathBuf::from(format!("{RUNTIME_ROOT}/{vm}/qmp"));
    if std::fs::symlink_metadata(&qmp_dir).is_err() {
        return Err(ReachError::NotRunning(vm.clone()));
    }
    let peer = if nix::unistd::geteuid().is_root() {
        let path = plan_dir.join(format!("{vm}.json"));
        let plan = launcher::read_plan(&path, Some(vm)).map_err(|f| ReachError::NoPlan {
            name: vm.clone(),
            reason: f.to_string(),
        })?;
        Some(PeerIdentity {
            uid: plan.uid,
            gid: plan.gid,
        })
    } else {
        None
    };
    Ok(Target {
        name: vm.clone(),
        sockets: sockets(vm, system),
        peer,
    })
}

/// The one line for a QMP failure of `vm`: "<vm> is not running" when no
/// QEMU listens, else the error.
fn failure(vm: &MachineName, what: &str, e: &QmpError) -> String {
    if e.is_not_running() {
        format!("{vm} is not running")
    } else {
        format!("{what} {vm}: {e}")
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))
}

/// Parses a Go duration (`1m25s`, `7s`, `1.5h`, `300ms`); a bare number is
/// refused, as by the Go program.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err =
        || format!("invalid duration {s:?} (use a number with a unit, e.g. 90s, 1m25s, 500ms)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if n == 0 {
            return Err(err());
        }
        let value: f64 = rest[..n].parse().map_err(|_| err())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    if !total.is_finite() || total > 1e9 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

/// `machina shutdown`. A VM that is not running is already shut down:
/// one line says so and it counts as success.
pub fn shutdown(
    plan_dir: &Path,
    names: &[String],
    system: bool,
    wait: bool,
    timeout: Option<Duration>,
) -> Result<i32, CliError> {
    let machines = machine_names(names)?;
    let rt = runtime()?;
    let mut opts = ShutdownOptions {
        wait,
        timeout,
        ..ShutdownOptions::default()
    };
    if system {
        // One socket, reserved for this: nothing to fall back to, so a
        // slow greeting on a loaded host is waited for rather than failing
        // ExecStop (systemd would then kill QEMU without a guest shutdown).
        opts.client.connect_timeout = Duration::from_secs(5);
        opts.client.greeting_timeout = Duration::from_secs(5);
    }
    let results = rt.block_on(async {
        let tasks = machines.iter().map(|m| {
            let opts = opts.clone();
            async move {
                let t = match target(plan_dir, m, system) {
                    Ok(t) => t,
                    Err(ReachError::NotRunning(_)) => {
                        println!("{m} is not running");
                        return Ok(ShutdownOutcome::Completed { quit_sent: false });
                    }
                    Err(e) => return Err(e.to_string()),
                };
                shutdown_target(&t, opts, |line| println!("{line}")).await
            }
        });
        tokio::select! {
            r = futures_join_all(tasks) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(results) = results else {
        eprintln!("machina: shutdown interrupted");
        return Ok(EXIT_FAILURE);
    };
    let mut code = 0;
    for r in results {
        match r {
            Ok(ShutdownOutcome::Issued) | Ok(ShutdownOutcome::Completed { .. }) => {}
            Err(e) => {
                eprintln!("machina: {e}");
                code = EXIT_FAILURE;
            }
        }
    }
    Ok(code)
}

/// Shuts `t` down over QMP (see [`qmp::shutdown`]) with its peer checked;
/// a VM found not running counts as shut down. The error is one line.
pub async fn shutdown_target(
    t: &Target,
    mut opts: ShutdownOptions,
    report: impl FnMut(&str),
) -> Result<ShutdownOutcome, String> {
    opts.client.peer = t.peer;
    let name = t.name.as_str();
    match qmp::shutdown(name, &t.sockets, &opts, report).await {
        Err(e) if e.is_not_running() => {
            println!("{name} is not running");
            Ok(ShutdownOutcome::Completed { quit_sent: false })
        }
        r => r.map_err(|e| format!("{name}: Failed to shut down: {e}")),
    }
}

/// `machina observe`: streams events until every socket closes or Ctrl-C.
pub fn observe(plan_dir: &Path, names: &[String], json: bool) -> Result<i32, CliError> {
    let machines = machine_names(names)?;
    let rt = runtime()?;
    let results = rt.block_on(async {
        let tasks = machines.iter().map(|m| async move {
            let t = target(plan_dir, m, false).map_err(|e| e.to_string())?;
            let opts = Options {
                peer: t.peer,
                ..Options::default()
            };
            qmp::observe(m.as_str(), &t.sockets, json, &opts, |line| {
                println!("{line}")
            })
            .await
            .map_err(|e| failure(m, "Failed to observe", &e))
        });
        tokio::select! {
            r = futures_join_all(tasks) => r,
            _ = tokio::signal::ctrl_c() => Vec::new(),
        }
    });
    let mut code = 0;
    for r in results {
        if let Err(e) = r {
            eprintln!("machina: {e}");
            code = EXIT_FAILURE;
        }
    }
    Ok(code)
}

/// `machina query pci|cpu`.
pub fn query(plan_dir: &Path, names: &[String], what: Query, json: bool) -> Result<i32, CliError> {
    let machines = machine_names(names)?;
    let rt = runtime()?;
    let results = rt.block_on(futures_join_all(machines.iter().map(|m| async move {
        let t = target(plan_dir, m, false).map_err(|e| e.to_string())?;
        let opts = Options {
            peer: t.peer,
            ..Options::default()
        };
        qmp::query(&t.sockets, what, &opts)
            .await
            .map_err(|e| failure(m, "Failed to query", &e))
    })));
    let mut code = 0;
    for (m, r) in machines.iter().zip(results) {
        match r {
            Ok(v) if json => println!("{}", serde_json::json!({"vm": m.as_str(), "return": v})),
            Ok(v) => {
                println!("----{m}----");
                println!("{}", qmp::pretty_tabs(&v));
            }
            Err(e) => {
                eprintln!("machina: {e}");
                code = EXIT_FAILURE;
            }
        }
    }
    Ok(code)
}

/// Runs futures concurrently on the current task and collects their
/// outputs in order (a few lines instead of a dependency on `futures`).
pub async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1m25s"), Ok(Duration::from_secs(85)));
        assert_eq!(parse_duration("7s"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["5", "", "s", "1x", "-1s", "1m25"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
