//! `machina inspect VM… [--json]`: everything about a VM in one document,
//! from its unit, its installed plan (what runs), its configuration (names
//! of volumes, the TPM) and the host (TAP link state).
//!
//! The JSON form is a list of [`Inspection`]; its JSON Schema is printed by
//! `machina schema inspect` and shipped as `docs/inspect.schema.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::Serialize;

use super::{machine_names, CliError, DEFAULT_UNIT_DIR};
use crate::config::schema::{Accelerator, StorageType};
use crate::config::{self, ConfigDir};
use crate::names::MachineName;
use crate::plan::{Plan, Service, TakenIds};
use crate::systemd::control::{self, SimpleState, UnitStatus};
use crate::systemd::unit::unit_name;

/// How long `inspect` waits for a QMP socket to answer.
const PING_LIMIT: Duration = Duration::from_millis(500);

/// One VM, as `inspect --json` prints it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Inspection {
    /// The VM's name.
    pub name: String,
    /// Its UUID (from the installed plan, else the configuration).
    pub uuid: Option<uuid::Uuid>,
    /// The configuration's description.
    pub description: String,
    /// The state in one word.
    pub state: SimpleState,
    /// When the VM entered that state, in seconds since the epoch.
    pub since: Option<u64>,
    /// Whether the unit starts at boot; null when systemd is not reachable.
    pub enabled: Option<bool>,
    /// QEMU's pid (the unit's main process) while it runs.
    pub main_pid: Option<u32>,
    /// The real uid of the main process.
    pub main_uid: Option<u32>,
    /// The real gid of the main process.
    pub main_gid: Option<u32>,
    /// The systemd unit.
    pub unit: UnitInfo,
    /// Path of the installed launch plan, or null when none is installed.
    pub plan: Option<PathBuf>,
    /// The uid and gid QEMU runs as (from the plan).
    pub vm_uid: Option<u32>,
    /// Whether the configuration generates something else than the installed
    /// plan; null when unknown (no plan, broken configuration).
    pub config_changed_since_gen: Option<bool>,
    /// The accelerator of the installed plan.
    pub accelerator: Option<Accelerator>,
    /// QMP.
    pub qmp: QmpInfo,
    /// The spice display's TCP endpoint.
    pub spice: Option<Endpoint>,
    /// The guest agent's TCP endpoint.
    pub agent: Option<Endpoint>,
    /// TAP devices, with their state on the host.
    pub taps: Vec<TapInfo>,
    /// Volumes, from the configuration.
    pub volumes: Vec<VolumeInfo>,
    /// The TPM, from the configuration.
    pub tpm: Option<TpmInfo>,
    /// The serial console (`attrs.console`), when the VM has one.
    pub console: Option<ConsoleInfo>,
    /// Problems found while inspecting (a broken configuration, an
    /// unreadable plan), one line each.
    pub errors: Vec<String>,
}

/// The unit of a VM.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct UnitInfo {
    /// `machina-qemu-<vm>.service`.
    pub name: String,
    /// The unit file systemd loaded (else where `gen` writes it).
    pub path: PathBuf,
    /// systemd's `LoadState`, `ActiveState` and `SubState` (empty when
    /// systemd is not reachable).
    pub load_state: String,
    /// `ActiveState`.
    pub active_state: String,
    /// `SubState`.
    pub sub_state: String,
}

/// QMP of a VM.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct QmpInfo {
    /// The sockets QEMU listens on.
    pub sockets: Vec<PathBuf>,
    /// Whether one answered (as the VM's own QEMU) within half a second.
    pub answers: bool,
}

/// A TCP endpoint.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoint {
    /// The address QEMU binds.
    pub address: String,
    /// The TCP port.
    pub port: u16,
}

/// A TAP device.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TapInfo {
    /// Interface name.
    pub ifname: String,
    /// The bridge the plan attaches it to.
    pub bridge: String,
    /// The guest NIC's MAC.
    pub mac: String,
    /// Whether the interface exists now.
    pub exists: bool,
    /// The bridge it is attached to now, if any.
    pub master: Option<String>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// The kernel's `operstate` (`up`, `down`, …; empty when absent).
    pub operstate: String,
}

/// A volume.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct VolumeInfo {
    /// Volume name.
    pub name: String,
    /// Its pool.
    pub storage: String,
    /// The pool's type.
    #[serde(rename = "type")]
    pub kind: StorageType,
    /// Absolute path.
    pub path: PathBuf,
    /// Whether the VM may only read it.
    pub readonly: bool,
}

/// The TPM.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct TpmInfo {
    /// The swtpm control socket QEMU connects to.
    pub socket: PathBuf,
    /// The swtpm state directory (`attrs.tpm.data`), when set.
    pub data_dir: Option<PathBuf>,
    /// The swtpm unit and process and the state directory, as `status`
    /// shows them (from the installed plan; null without one).
    pub state: Option<super::tpm::TpmState>,
}

/// The serial console.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub struct ConsoleInfo {
    /// The UNIX socket QEMU serves the console on (`machina console`).
    pub socket: PathBuf,
    /// Everything the guest wrote to it.
    pub log: PathBuf,
}

/// The JSON Schema of `inspect --json`'s output.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(Vec<Inspection>)
}

/// The state of one TAP on the host, from sysfs.
fn tap_state(ifname: &str) -> (bool, Option<String>, bool, String) {
    let dir = Path::new("/sys/class/net").join(ifname);
    if std::fs::symlink_metadata(&dir).is_err() {
        return (false, None, false, String::new());
    }
    let master = std::fs::read_link(dir.join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    // IFF_UP is bit 0 of `flags` (hex).
    let up = std::fs::read_to_string(dir.join("flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 == 1);
    let operstate = std::fs::read_to_string(dir.join("operstate"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    (true, master, up, operstate)
}

/// Collects everything about `names`.
pub fn collect(dir: &ConfigDir, plan_dir: &Path, names: &[MachineName]) -> Vec<Inspection> {
    let units: Vec<String> = names.iter().map(unit_name).collect();
    let statuses: Vec<Option<UnitStatus>> = if control::systemd_running() {
        match control::unit_status(&units) {
            Ok(s) => s.into_iter().map(Some).collect(),
            Err(_) => vec![None; names.len()],
        }
    } else {
        vec![None; names.len()]
    };
    let pings: Vec<bool> = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(super::qmp::futures_join_all(names.iter().map(|n| {
            let target = super::qmp::target(plan_dir, n, false);
            async move {
                match target {
                    Ok(t) => {
                        let opts = crate::qmp::Options {
                            peer: t.peer,
                            ..crate::qmp::Options::with_timeout(PING_LIMIT)
                        };
                        crate::qmp::ping_with(&t.sockets, &opts).await
                    }
                    Err(_) => false,
                }
            }
        }))),
        Err(_) => vec![false; names.len()],
    };
    let host = dir.load_host();
    let taken = TakenIds::scan(Path::new("/etc"), plan_dir);
    let mut out = Vec::new();
    for ((name, status), answers) in names.iter().zip(statuses).zip(pings) {
        let mut errors = Vec::new();
        let plan_path = plan_dir.join(format!("{name}.json"));
        let plan: Option<Plan> = match crate::launcher::read_plan(&plan_path, Some(name)) {
            Ok(p) => Some(p),
            Err(e) => {
                if plan_path.exists() {
                    errors.push(e.to_string());
                }
                None
            }
        };
        let machine = match &host {
            Err(e) => {
                errors.push(super::one_line(&e.to_string()));
                None
            }
            Ok(h) => match config::load_machine(dir, h, name) {
                Ok(m) => Some(m),
                Err(e) => {
                    errors.push(super::one_line(&e.to_string()));
                    None
                }
            },
        };
        let stale = match (&machine, &plan) {
            (Some(m), Some(p)) => super::units::config_changed(m, p, &taken),
            _ => None,
        };
        let unit = UnitInfo {
            name: unit_name(name),
            path: status
                .as_ref()
                .map(|s| s.fragment_path.clone())
                .filter(|p| !p.is_empty())
                .map_or_else(
                    || Path::new(DEFAULT_UNIT_DIR).join(unit_name(name)),
                    PathBuf::from,
                ),
            load_state: status
                .as_ref()
                .map(|s| s.load_state.clone())
                .unwrap_or_default(),
            active_state: status
                .as_ref()
                .map(|s| s.active_state.clone())
                .unwrap_or_default(),
            sub_state: status
                .as_ref()
                .map(|s| s.sub_state.clone())
                .unwrap_or_default(),
        };
        // What runs (the plan), else what would run (the configuration).
        let needs = plan.as_ref().map(|p| p.needs.clone()).or_else(|| {
            machine
                .as_ref()
                .and_then(|m| crate::qemu::build(m).ok())
                .map(|hw| hw.needs)
        });
        let endpoint = |svc| {
            needs
                .as_ref()
                .and_then(|n| n.listener(svc))
                .map(|l| Endpoint {
                    address: l.address.to_string(),
                    port: l.port,
                })
        };
        let taps = plan
            .as_ref()
            .map(|p| {
                p.taps
                    .iter()
                    .map(|t| {
                        let (exists, master, up, operstate) = tap_state(t.ifname.as_str());
                        TapInfo {
                            ifname: t.ifname.to_string(),
                            bridge: t.bridge.to_string(),
                            mac: t.mac.clone(),
                            exists,
                            master,
                            up,
                            operstate,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let running = status
            .as_ref()
            .is_some_and(|s| s.simple_state() == SimpleState::Running);
        out.push(Inspection {
            name: name.to_string(),
            uuid: plan
                .as_ref()
                .map(|p| p.uuid)
                .or(machine.as_ref().map(|m| m.id)),
            description: machine
                .as_ref()
                .map(|m| m.description.clone())
                .unwrap_or_default(),
            state: status
                .as_ref()
                .map_or(SimpleState::Stopped, UnitStatus::simple_state),
            since: status
                .as_ref()
                .and_then(UnitStatus::since)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            enabled: status.as_ref().map(UnitStatus::enabled),
            main_pid: status.as_ref().and_then(|s| s.main_pid),
            main_uid: status.as_ref().and_then(|s| s.main_uid),
            main_gid: status.as_ref().and_then(|s| s.main_gid),
            unit,
            plan: plan.as_ref().map(|_| plan_path.clone()),
            vm_uid: plan.as_ref().map(|p| p.uid),
            config_changed_since_gen: stale,
            accelerator: plan.as_ref().map(|p| p.needs.accelerator),
            qmp: QmpInfo {
                sockets: machine
                    .as_ref()
                    .map(|m| m.qmp_sockets.clone())
                    .unwrap_or_default(),
                answers: answers && running,
            },
            spice: endpoint(Service::Spice),
            agent: endpoint(Service::Agent),
            taps,
            volumes: machine
                .as_ref()
                .map(|m| {
                    m.volumes
                        .iter()
                        .map(|v| VolumeInfo {
                            name: v.name.to_string(),
                            storage: v.pool.to_string(),
                            kind: v.kind,
                            path: v.path.clone(),
                            readonly: v.readonly,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            tpm: machine.as_ref().and_then(|m| {
                m.tpm.as_ref().map(|t| TpmInfo {
                    socket: t.socket.clone(),
                    data_dir: t.data.clone(),
                    state: plan.as_ref().and_then(super::tpm::TpmState::of_plan),
                })
            }),
            console: machine.as_ref().and_then(|m| {
                m.console.as_ref().map(|c| ConsoleInfo {
                    socket: c.socket.clone(),
                    log: c.log.clone(),
                })
            }),
            errors,
        });
    }
    out
}

/// `inspect VM… [--json]`.
pub fn inspect(
    dir: &ConfigDir,
    plan_dir: &Path,
    names: &[String],
    json: bool,
) -> Result<i32, CliError> {
    let names = machine_names(names)?;
    let all = collect(dir, plan_dir, &names);
    if json {
        println!("{}", serde_json::to_string_pretty(&all).expect("json"));
        return Ok(0);
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for (i, v) in all.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{}", v.name);
        println!("  uuid: {}", opt(v.uuid.map(|u| u.to_string())));
        if !v.description.is_empty() {
            println!("  description: {}", v.description);
        }
        let state = serde_json::to_value(v.state).expect("json");
        println!(
            "  state: {}{}",
            state.as_str().unwrap_or_default(),
            v.since.map(|s| format!(" since @{s}")).unwrap_or_default()
        );
        if let Some(e) = v.enabled {
            println!("  enabled: {}", if e { "yes" } else { "no" });
        }
        if let Some(pid) = v.main_pid {
            println!(
                "  main process: {pid} (uid {}, gid {})",
                opt(v.main_uid.map(|u| u.to_string())),
                opt(v.main_gid.map(|g| g.to_string()))
            );
        }
        println!("  unit: {} ({})", v.unit.name, v.unit.path.display());
        println!(
            "  plan: {}",
            opt(v.plan.as_ref().map(|p| p.display().to_string()))
        );
        match v.config_changed_since_gen {
            Some(true) => println!("  configuration changed since the last `machina gen`"),
            Some(false) => println!("  configuration unchanged since the last `machina gen`"),
            None => {}
        }
        for s in &v.qmp.sockets {
            println!("  qmp: {}", s.display());
        }
        for (what, e) in [("spice", &v.spice), ("agent", &v.agent)] {
            if let Some(e) = e {
                println!("  {what}: {}:{}", e.address, e.port);
            }
        }
        for t in &v.taps {
            let state = if !t.exists {
                "absent".to_owned()
            } else {
                format!(
                    "{}, {}, on {}",
                    if t.up { "up" } else { "down" },
                    t.operstate,
                    t.master.as_deref().unwrap_or("no bridge")
                )
            };
            println!("  tap: {} → {} mac {} ({state})", t.ifname, t.bridge, t.mac);
        }
        for vol in &v.volumes {
            println!(
                "  volume: {} {}{}",
                vol.name,
                vol.path.display(),
                if vol.readonly { " (read-only)" } else { "" }
            );
        }
        if let Some(c) = &v.console {
            println!(
                "  console: {} (log {})",
                c.socket.display(),
                c.log.display()
            );
        }
        if let Some(t) = &v.tpm {
            println!("  tpm socket: {}", t.socket.display());
            // The status line ends with the state directory; without an
            // installed plan there is only the configured one to show.
            match (&t.state, &t.data_dir) {
                (Some(st), _) => println!("  tpm: {}", st.line()),
                (None, Some(d)) => println!("  tpm state: {}", d.display()),
                (None, None) => {}
            }
        }
        for e in &v.errors {
            println!("  error: {e}");
        }
    }
    Ok(0)
}
