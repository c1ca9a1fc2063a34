//! The `machina` command line.
//!
//! Exit codes: 0 success; 1 a command failed (bad configuration, a VM that
//! could not be reached, …; one line per problem on stderr); 2 usage error
//! (unknown command or flag, missing argument).

mod check;
mod complete;
mod console;
mod generate;
mod host;
mod inspect;
mod link;
mod logs;
mod manual;
mod qmp;
mod run;
mod summary;
mod tpm;
mod units;

use crate::systemd::control::Verb;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigDir, ConfigError, Machine, Problems};
use crate::names::MachineName;
use crate::plan::{TakenIds, DEFAULT_PLAN_DIR};

/// Where generated units go.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
use crate::qemu;

pub use complete::command;
pub use manual::{man_pages, write_package_files};

/// Exit code for a failed command.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for a usage error.
pub const EXIT_USAGE: i32 = 2;

const EXIT_CODES: &str =
    "Exit codes: 0 success; 1 a command failed (one line per problem on stderr); 2 usage error.";

/// Runs QEMU/KVM virtual machines as systemd units; QEMU never holds root.
#[derive(Debug, Parser)]
#[command(name = "machina", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Configuration directory holding machina.conf.json and machine.conf.d/.
    #[arg(long, global = true, value_name = "DIR", default_value = config::DEFAULT_CONFIG_DIR, env = "MACHINA_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Directory of launch plans.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_PLAN_DIR)]
    pub plan_dir: PathBuf,
    /// Directory of the generated systemd units.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_UNIT_DIR)]
    pub unit_dir: PathBuf,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); without
    /// it, the level in MACHINA_LOG (default warn).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Displays the machina configuration for virtual machines ("system" for the host file).
    Cat {
        /// Print JSON instead of the summary.
        #[arg(long)]
        json: bool,
        /// Machines to show.
        machines: Vec<String>,
    },
    /// Checks the host file and machine files (all, or the given ones) without root or changes; exit 0 only when every machine would generate.
    Check {
        /// Print a JSON array of problems (machine, file, line, column, path, message).
        #[arg(long)]
        json: bool,
        /// Machines to check (default: every machine file).
        machines: Vec<String>,
    },
    /// Lists all of the virtual machines present.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Displays the QEMU arguments for virtual machines.
    Args {
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Generates the launch plan and systemd unit of virtual machines.
    #[command(visible_alias = "gen")]
    Generate {
        /// Print the plans and units instead of writing them (as they build:
        /// a broken VM is reported at the end, after the others' files).
        #[arg(long, conflicts_with_all = ["check", "json"])]
        preview: bool,
        /// Write nothing; list the files that would change and exit 1 if there are any.
        #[arg(long)]
        check: bool,
        /// Print {"changed": [paths], "unchanged": [paths]} instead of one line per file written.
        #[arg(long)]
        json: bool,
        /// Write under this directory instead of / (for another host).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Where machina and machina-launch are installed on the target host.
        #[arg(long, value_name = "DIR", default_value = "/usr/bin")]
        bin_dir: PathBuf,
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Starts the systemd units of virtual machines.
    Start {
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Stops the systemd units of virtual machines (an orderly shutdown over QMP).
    Stop {
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Restarts the systemd units of virtual machines.
    Restart {
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Enables the systemd units of virtual machines (start at boot).
    Enable {
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Disables the systemd units of virtual machines.
    Disable {
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Displays the unit state of virtual machines and whether QMP answers.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Displays everything about virtual machines: state, unit, plan, QMP,
    /// spice and agent ports, TAPs, volumes, serial console, TPM.
    Inspect {
        /// Print JSON (see `machina schema inspect`).
        #[arg(long)]
        json: bool,
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Shows a virtual machine's journal: launcher steps, QEMU, shutdown,
    /// teardown.
    Logs {
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Show only the last N lines.
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<u32>,
        /// Machine.
        machine: String,
    },
    /// Removes the unit and launch plan of stopped virtual machines.
    Dissolve {
        /// Also delete the TPM state directory (attrs.tpm.data) named in each plan: the guest's TPM, and with it e.g. its BitLocker keys, is gone for good. Needs --yes-delete-tpm-state.
        #[arg(long)]
        purge_tpm: bool,
        /// Confirms --purge-tpm.
        #[arg(long)]
        yes_delete_tpm_state: bool,
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Runs a virtual machine in the foreground through the launcher, without systemd.
    Run {
        /// After Ctrl-C or SIGTERM, send QUIT if the machine has not stopped after this long (default 1m25s, as the unit's ExecStop).
        #[arg(long, value_name = "DURATION", value_parser = qmp::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// The machine.
        machine: String,
    },
    /// Connects running virtual machines (or single connections, <vm>.<conn>) to their networks again.
    Connect {
        /// Machines or connections (<vm>.<conn>).
        #[arg(required = true, value_name = "VM[.CONN]")]
        machines: Vec<String>,
    },
    /// Disconnects running virtual machines (or single connections, <vm>.<conn>) from their networks; the guest sees the link go down.
    Disconnect {
        /// Machines or connections (<vm>.<conn>).
        #[arg(required = true, value_name = "VM[.CONN]")]
        machines: Vec<String>,
    },
    /// Attaches to the serial console of a running virtual machine (attrs.console); Ctrl-] detaches.
    Console {
        /// Print what the guest wrote to the console so far instead of attaching.
        #[arg(long)]
        log: bool,
        /// The machine.
        machine: String,
    },
    /// Removes host resources left by a virtual machine (run by the unit's ExecStopPost).
    /// Refuses while the VM's QEMU runs, unless --force.
    Teardown {
        /// End the VM's QEMU first if it still runs (SIGTERM, then SIGKILL).
        #[arg(long)]
        force: bool,
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Registers running virtual machines with systemd-machined (`machinectl list`); run by
    /// the unit machina-machined-<vm>.service when the VM starts.
    Register {
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Sends a shutdown command (ACPI power button) to virtual machines.
    Shutdown {
        /// Use the QMP socket reserved for systemd.
        #[arg(long)]
        system: bool,
        /// Wait for the virtual machines to stop before returning.
        #[arg(long)]
        wait: bool,
        /// Send QUIT if a machine has not stopped after this long (e.g. 1m25s). Implies --wait.
        #[arg(long, value_name = "DURATION", value_parser = qmp::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Reports QMP events for virtual machines until their sockets close or Ctrl-C.
    Observe {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Queries running virtual machines over QMP.
    Query {
        /// What to describe.
        #[arg(value_enum)]
        what: QueryKind,
        /// One compact JSON object per machine.
        #[arg(long)]
        json: bool,
        /// Machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Generates a random machine identifier.
    GenId,
    /// Generates a random MAC hardware address.
    GenMac,
    /// Prints a JSON Schema of the host file, the machine files or the
    /// output of `inspect --json`.
    Schema {
        /// Which file kind.
        #[arg(value_enum, default_value = "machine")]
        kind: SchemaKind,
    },
    /// Displays machina version information.
    Version,
    /// Writes the man pages and shell completions the packages ship.
    #[command(hide = true)]
    PackageFiles {
        /// Output directory.
        out: PathBuf,
        /// Where the packages install `machina` (for the completion scripts).
        #[arg(long, value_name = "DIR", default_value = "/usr/bin")]
        bin_dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum QueryKind {
    /// The PCI bus (query-pci).
    Pci,
    /// The virtual CPUs (query-cpus-fast).
    Cpu,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SchemaKind {
    /// machina.conf.json
    Host,
    /// machine.conf.d/<name>.conf.json
    Machine,
    /// The output of `inspect --json`
    Inspect,
}

/// An error a command reports: one line, already formatted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

/// At most this many problems are printed for one run; the rest are counted.
pub const MAX_PROBLEMS: usize = 50;

impl CliError {
    /// The problems of several errors as one error: one line each, at most
    /// [`MAX_PROBLEMS`], then a count of the rest.
    pub fn join(errors: Vec<CliError>) -> CliError {
        let all: Vec<String> = errors
            .iter()
            .flat_map(|e| e.0.split('\n').map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| !l.starts_with("… and "))
            .collect();
        let mut lines: Vec<String> = all.iter().take(MAX_PROBLEMS).cloned().collect();
        if all.len() > MAX_PROBLEMS {
            lines.push(format!(
                "… and {} more problems (`machina check --json` lists them all)",
                all.len() - MAX_PROBLEMS
            ));
        }
        CliError(lines.join("\n"))
    }
}

impl From<ConfigError> for CliError {
    /// One line per problem (each escaped on its own, so a quoted newline
    /// cannot split a line), at most [`MAX_PROBLEMS`].
    fn from(e: ConfigError) -> Self {
        let problems = e.problems();
        let mut lines: Vec<String> = problems
            .iter()
            .take(MAX_PROBLEMS)
            .map(|p| one_line(&p.report().text))
            .collect();
        if problems.len() > MAX_PROBLEMS {
            lines.push(format!(
                "… and {} more problems (`machina check --json` lists them all)",
                problems.len() - MAX_PROBLEMS
            ));
        }
        CliError(lines.join("\n"))
    }
}

/// `s` with control characters escaped, so it prints as one line.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

/// Entry point of the `machina` binary; returns the exit code.
pub fn main() -> i32 {
    // Die quietly on a closed pipe (`machina args vm | head`), as Unix
    // tools do, instead of reporting EPIPE as a failure.
    // SAFETY: setting a signal disposition to the default at startup.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    complete::complete_if_asked();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    logs::init(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line per problem, whatever a message quoted: a CliError
            // holds several problems separated by '\n' (see
            // `From<ConfigError>`), each already escaped.
            for line in e.to_string().split('\n') {
                eprintln!("machina: {}", one_line(line));
            }
            EXIT_FAILURE
        }
    }
}

pub(crate) fn machine_names(names: &[String]) -> Result<Vec<MachineName>, CliError> {
    names
        .iter()
        .map(|n| MachineName::new(n.as_str()).map_err(|e| CliError(e.to_string())))
        .collect()
}

/// Prints what `args` and `cat` accept but `gen` refuses (a system group
/// id), one `warning:` line each.
pub(crate) fn warn_refusals(machines: &[&Machine]) {
    for m in machines {
        if let Some((origin, why)) = &m.group.refused {
            let e = ConfigError::invalid(origin, why.clone());
            eprintln!(
                "machina: warning: {} (gen refuses this machine)",
                one_line(&e.report().text)
            );
        }
    }
}

fn run(cli: Cli) -> Result<i32, CliError> {
    let dir = ConfigDir::new(&cli.config_dir);
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Cat { json, machines } => cat(&dir, &machines, json, &mut out)?,
        Command::Check { json, machines } => {
            return check::check(&dir, &cli.plan_dir, &machines, json, &mut out)
        }
        Command::List { json } => return units::list(&dir, &cli.plan_dir, json),
        Command::Args { machines } => {
            // Streamed a block at a time, in order: a run over thousands of
            // VMs holds one block of lines, not all of them. A broken VM's
            // problems are reported at the end (every one of them, exit 1);
            // the lines of the VMs that built are printed.
            let host = dir.load_host()?;
            let names = machine_names(&machines)?;
            let mut problems = Problems::default();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
            let many = names.len() > 1;
            let mut first = true;
            for block in names.chunks(STREAM_BLOCK) {
                let lines = parallel_map(block, |name| -> Result<String, ConfigError> {
                    let m = config::load_machine(&dir, &host, name)?;
                    warn_refusals(&[&m]);
                    let hw = qemu::build(&m)?;
                    Ok(qemu::options_line(&hw.options))
                });
                for (line, name) in lines.into_iter().zip(block) {
                    let Some(line) = problems.take(line) else {
                        continue;
                    };
                    if !std::mem::take(&mut first) {
                        writeln!(out)?;
                    }
                    if many {
                        writeln!(out, "----{name}----")?;
                    }
                    writeln!(out, "{line}")?;
                }
            }
            out.flush()?;
            if let Some(e) = problems.into_error() {
                return Err(e.into());
            }
        }
        Command::Generate {
            preview,
            check,
            json,
            root,
            bin_dir,
            machines,
        } => {
            let target = generate::Target {
                root: root.as_deref(),
                plan_dir: &cli.plan_dir,
                unit_dir: &cli.unit_dir,
                bin_dir: &bin_dir,
            };
            let mode = match (preview, check) {
                (true, _) => generate::Mode::Preview,
                (false, true) => generate::Mode::Check,
                (false, false) => generate::Mode::Write,
            };
            let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
            let code = generate::generate(&dir, &machines, mode, json, &target, &mut out)?;
            out.flush()?;
            return Ok(code);
        }
        Command::Start { machines } => return units::control(Verb::Start, &machines),
        Command::Stop { machines } => return units::control(Verb::Stop, &machines),
        Command::Restart { machines } => return units::control(Verb::Restart, &machines),
        Command::Enable { machines } => return units::control(Verb::Enable, &machines),
        Command::Disable { machines } => return units::control(Verb::Disable, &machines),
        Command::Status { json, machines } => {
            return units::status(&dir, &cli.plan_dir, &machines, json)
        }
        Command::Logs {
            follow,
            lines,
            machine,
        } => return logs::logs(&machine, follow, lines),
        Command::Inspect { json, machines } => {
            return inspect::inspect(&dir, &cli.plan_dir, &machines, json)
        }
        Command::Dissolve {
            machines,
            purge_tpm,
            yes_delete_tpm_state,
        } => {
            return units::dissolve(
                &cli.plan_dir,
                &cli.unit_dir,
                &machines,
                units::Purge {
                    tpm: purge_tpm,
                    confirmed: yes_delete_tpm_state,
                },
            )
        }
        Command::Run { machine, timeout } => {
            return run::run(&dir, &cli.plan_dir, &machine, timeout)
        }
        Command::Connect { machines } => {
            return link::run(&cli.plan_dir, &machines, link::Direction::Connect)
        }
        Command::Disconnect { machines } => {
            return link::run(&cli.plan_dir, &machines, link::Direction::Disconnect)
        }
        Command::Console { log, machine } => return console::console(&cli.plan_dir, &machine, log),
        Command::Teardown { force, machines } => {
            return host::teardown(&cli.plan_dir, &machines, force)
        }
        Command::Register { machines } => return host::register(&cli.plan_dir, &machines),
        Command::Shutdown {
            system,
            wait,
            timeout,
            machines,
        } => return qmp::shutdown(&cli.plan_dir, &machines, system, wait, timeout),
        Command::Observe { json, machines } => return qmp::observe(&cli.plan_dir, &machines, json),
        Command::Query {
            what,
            json,
            machines,
        } => {
            let what = match what {
                QueryKind::Pci => crate::qmp::Query::Pci,
                QueryKind::Cpu => crate::qmp::Query::Cpus,
            };
            return qmp::query(&cli.plan_dir, &machines, what, json);
        }
        Command::GenId => writeln!(out, "{}", uuid::Uuid::new_v4())?,
        Command::GenMac => writeln!(out, "{}", crate::identity::random_mac())?,
        Command::Schema { kind } => {
            let schema = match kind {
                SchemaKind::Host => schemars::schema_for!(config::schema::HostFile),
                SchemaKind::Machine => schemars::schema_for!(config::schema::MachineFile),
                SchemaKind::Inspect => inspect::schema(),
            };
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&schema).expect("schema serializes")
            )?;
        }
        Command::PackageFiles { out, bin_dir } => write_package_files(&out, &bin_dir)?,
        Command::Version => {
            writeln!(out, "machina {}", env!("CARGO_PKG_VERSION"))?;
            writeln!(out, "  launch plan version: {}", crate::plan::PLAN_VERSION)?;
        }
    }
    Ok(0)
}

fn cat(
    dir: &ConfigDir,
    names: &[String],
    json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let host = dir.load_host()?;
    let taken = TakenIds::scan(Path::new("/etc"), Path::new(DEFAULT_PLAN_DIR));
    let mut texts = Vec::new();
    let mut values = Vec::new();
    let mut problems = Problems::default();
    for name in names {
        if name == "system" {
            texts.push((name.clone(), summary::host_text(&host)));
            if json {
                values.push(serde_json::to_value(&host).expect("host serializes"));
            }
            continue;
        }
        let n = MachineName::new(name.as_str()).map_err(|e| CliError(e.to_string()))?;
        let Some(m) = problems.take(config::load_machine(dir, &host, &n)) else {
            continue;
        };
        warn_refusals(&[&m]);
        let id = taken.id_for(&m).ok();
        if json {
            values.push(
                serde_json::to_value(summary::machine_json(&m, id)).expect("summary serializes"),
            );
        } else {
            texts.push((name.clone(), summary::machine_text(&m, id)));
        }
    }
    if let Some(e) = problems.into_error() {
        return Err(e.into());
    }
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&values).expect("json")
        )?;
    } else if texts.len() == 1 {
        writeln!(out, "{}", texts[0].1)?;
    } else {
        for (name, text) in texts {
            writeln!(out, "----{name}----")?;
            writeln!(out, "{text}")?;
        }
    }
    Ok(())
}

/// The text `write` appends to an empty buffer, in an allocation of its own
/// size. The buffer is kept per thread: generating thousands of VMs then
/// neither regrows a buffer per text nor keeps the slack of a grown one
/// (`gen` holds every VM's texts until all have built).
fn exact_text(write: impl FnOnce(&mut Vec<u8>)) -> String {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        write(buf);
        // The writers append only `str`s, so the text is valid UTF-8; the
        // plain check (a fast ASCII path) is several times cheaper than
        // `from_utf8_lossy`'s chunking, which is kept only as the fallback.
        match std::str::from_utf8(buf) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(buf).into_owned(),
        }
    })
}

/// How many VMs a streamed command (`args`, `gen --preview`) builds before
/// it writes their output: what it holds at once (10,000 VMs' texts would
/// be about 100 MiB, and the page faults to hold them cost more time than
/// building them).
const STREAM_BLOCK: usize = 256;

/// Maps `f` over `items` on every available core, keeping the order (a
/// host with hundreds of VMs regenerates them all at once). Small inputs
/// stay on this thread.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < 64 || threads < 2 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("generation threads do not panic"))
            .collect()
    })
}
