//! `machina connect|disconnect <vm>[.<conn>]…`: puts a running VM's TAPs
//! back on their bridges (and up), or takes them off (and down), and tells
//! the guest over QMP (`set_link`), so it sees the carrier come and go.
//!
//! The links come from the VM's installed plan (what runs), not from the
//! configuration: `<vm>.<conn>` names the TAP `machina gen` derived for the
//! connection (`config::link_name`). Every argument is checked before
//! anything changes; VMs are handled in parallel; one line per link.

use std::path::Path;

use serde_json::json;

use super::qmp::{futures_join_all, target};
use super::{CliError, EXIT_FAILURE};
use crate::launcher;
use crate::names::MachineName;
use crate::plan::Plan;
use crate::prepare::link;
use crate::qmp::{Client, Options};

/// Which way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `connect`: on the bridge, up, carrier on.
    Connect,
    /// `disconnect`: off the bridge, down, carrier off.
    Disconnect,
}

/// One VM and the indexes of its plan's TAPs to act on.
struct Selection {
    plan: Plan,
    taps: Vec<usize>,
}

/// Runs `machina connect` or `machina disconnect`.
pub fn run(plan_dir: &Path, args: &[String], dir: Direction) -> Result<i32, CliError> {
    let verb = match dir {
        Direction::Connect => "connect",
        Direction::Disconnect => "disconnect",
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError(format!("{verb}: must run as root")));
    }
    // Resolve everything first: a bad argument changes nothing.
    let mut selections: Vec<Selection> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for arg in args {
        let (vm, conn) = match arg.split_once('.') {
            Some((vm, conn)) => (vm, Some(conn)),
            None => (arg.as_str(), None),
        };
        let vm = match MachineName::new(vm) {
            Ok(v) => v,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let i = match selections.iter().position(|s| s.plan.machine == vm) {
            Some(i) => i,
            None => {
                match launcher::read_plan(&plan_dir.join(format!("{vm}.json")), Some(&vm)) {
                    Ok(plan) => selections.push(Selection {
                        plan,
                        taps: Vec::new(),
                    }),
                    Err(f) => {
                        problems.push(format!("{verb} {vm}: {f}"));
                        continue;
                    }
                }
                selections.len() - 1
            }
        };
        let sel = &mut selections[i];
        let wanted: Vec<usize> = match conn {
            None => (0..sel.plan.taps.len()).collect(),
            Some(conn) => {
                let ifname = crate::config::link_name(vm.as_str(), conn);
                match sel.plan.taps.iter().position(|t| t.ifname == ifname) {
                    Some(t) => vec![t],
                    None => {
                        problems.push(format!(
                            "failed to locate connection {conn:?} within {:?}",
                            vm.as_str()
                        ));
                        continue;
                    }
                }
            }
        };
        for t in wanted {
            if !sel.taps.contains(&t) {
                sel.taps.push(t);
            }
        }
    }
    if !problems.is_empty() {
        return Err(CliError(problems.join("\n")));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    let results = rt.block_on(futures_join_all(
        selections.iter().map(|s| act(plan_dir, s, dir, verb)),
    ));
    let mut code = 0;
    for lines in results {
        for (line, ok) in lines {
            if ok {
                println!("{line}");
            } else {
                eprintln!("machina: {line}");
                code = EXIT_FAILURE;
            }
        }
    }
    Ok(code)
}

/// Acts on one VM's links; returns one (line, success) per link.
async fn act(plan_dir: &Path, s: &Selection, dir: Direction, verb: &str) -> Vec<(String, bool)> {
    let vm = &s.plan.machine;
    let fail_all = |why: String| {
        s.taps
            .iter()
            .map(|&i| (format!("{}: failed: {why}", s.plan.taps[i].ifname), false))
            .collect::<Vec<_>>()
    };
    let t = match target(plan_dir, vm, false) {
        Ok(t) => t,
        Err(e) => return fail_all(e.to_string()),
    };
    let opts = Options {
        peer: t.peer,
        ..Options::default()
    };
    let client = match Client::connect_any(&t.sockets, &opts).await {
        Ok((c, _)) => c,
        Err(e) if e.is_not_running() => return fail_all(format!("{vm} is not running")),
        Err(e) => return fail_all(format!("{verb} {vm}: {e}")),
    };
    let mut out = Vec::new();
    for &i in &s.taps {
        let tap = &s.plan.taps[i];
        let netdev = crate::qemu::netdev_id(i);
        let set_link = |up: bool| {
            let c = &client;
            let netdev = netdev.clone();
            async move {
                c.execute("set_link", Some(json!({"name": netdev, "up": up})))
                    .await
                    .map(drop)
                    .map_err(|e| format!("set_link {netdev}: {e}"))
            }
        };
        // Disconnect: the guest loses carrier first, then the host side
        // goes; connect: the host side first, then the carrier.
        let result = match dir {
            Direction::Disconnect => match set_link(false).await {
                Ok(()) => link::detach(tap).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            },
            Direction::Connect => match link::attach(tap) {
                Ok(changed) => set_link(true).await.map(|()| changed),
                Err(e) => Err(e.to_string()),
            },
        };
        out.push(match result {
            Ok(changed) => {
                let state = match dir {
                    Direction::Connect => "enabled",
                    Direction::Disconnect => "disabled",
                };
                let note = if changed { "" } else { " (already)" };
                (format!("{}: {state}{note}", tap.ifname), true)
            }
            Err(e) => (format!("{}: failed: {e}", tap.ifname), false),
        });
    }
    out
}
