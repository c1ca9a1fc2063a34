//! `systemctl` control of VM units and their status.
//!
//! machina shells out to `systemctl` by absolute path (never through
//! `PATH`, which `sudo` or a unit may set to anything) instead of linking a
//! D-Bus client: the verbs are few, and `systemctl show` prints exactly the
//! properties `list` and `status` need. Status is read with
//! `--timestamp=unix`, so timestamps parse without locale or time zone.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where `systemctl` is looked for, in order.
pub const SYSTEMCTL_PATHS: [&str; 2] = ["/usr/bin/systemctl", "/bin/systemctl"];

/// The properties [`Systemctl::status`] asks for.
pub const STATUS_PROPERTIES: &str = "Id,Description,LoadState,ActiveState,SubState,Result,MainPID,\
ActiveEnterTimestamp,ActiveExitTimestamp,InactiveEnterTimestamp,InactiveExitTimestamp,\
UnitFileState,FragmentPath,ExecMainStartTimestampMonotonic,NeedDaemonReload";

/// Whether systemd is the running init system (`/run/systemd/system`
/// exists, as sd_booted(3) checks).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Why a `systemctl` call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No `systemctl` binary.
    #[error("systemctl not found in /usr/bin or /bin; is systemd installed?")]
    NotFound,
    /// The binary could not be run.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// What was run.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `systemctl` exited non-zero.
    #[error("systemctl {verb} {units} failed ({status}): {stderr}")]
    Failed {
        /// The verb.
        verb: String,
        /// The units, space separated.
        units: String,
        /// The exit status.
        status: String,
        /// The last line systemctl wrote to stderr.
        stderr: String,
    },
    /// `systemctl show` printed something this parser does not understand.
    #[error("cannot parse `systemctl show` output: {0}")]
    Parse(String),
}

/// A `systemctl` verb machina uses on VM units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `systemctl start`.
    Start,
    /// `systemctl stop`.
    Stop,
    /// `systemctl enable`.
    Enable,
    /// `systemctl disable`.
    Disable,
    /// `systemctl restart`.
    Restart,
}

impl Verb {
    /// The verb as systemctl spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Enable => "enable",
            Verb::Disable => "disable",
            Verb::Restart => "restart",
        }
    }
}

/// How to run `systemctl`: its absolute path, possibly behind a wrapper
/// (e.g. `nsenter -t PID -a` to reach a systemd in a container), and the
/// `/proc` in which its PIDs are meaningful.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Systemctl {
    program: PathBuf,
    pre_args: Vec<OsString>,
    proc_root: PathBuf,
}

impl Systemctl {
    /// The host's `systemctl`, found at an absolute path.
    pub fn find() -> Result<Systemctl, ControlError> {
        let program = SYSTEMCTL_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or(ControlError::NotFound)?;
        Ok(Systemctl {
            program,
            pre_args: Vec::new(),
            proc_root: PathBuf::from("/proc"),
        })
    }

    /// `systemctl` run through a wrapper: `wrapper pre_args… systemctl …`,
    /// where `systemctl` (an absolute path inside the wrapper's view) is the
    /// last of `pre_args`, and `proc_root` is the `/proc` of the PID
    /// namespace that systemctl reports PIDs in.
    pub fn wrapped(
        wrapper: impl Into<PathBuf>,
        pre_args: Vec<OsString>,
        proc_root: impl Into<PathBuf>,
    ) -> Systemctl {
        Systemctl {
            program: wrapper.into(),
            pre_args,
            proc_root: proc_root.into(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.pre_args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs `systemctl <args…>` and returns its stdout, or the error with
    /// systemctl's last stderr line.
    fn run_raw(&self, verb: &str, args: &[&str], units: &[String]) -> Result<String, ControlError> {
        let out = self
            .command()
            .args(args)
            .args(units)
            .output()
            .map_err(|source| ControlError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(ControlError::Failed {
                verb: verb.to_owned(),
                units: units.join(" "),
                status: out.status.to_string(),
                stderr: stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("(no message)")
                    .trim()
                    .to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `systemctl <verb> <units…>`.
    pub fn run(&self, verb: Verb, units: &[String]) -> Result<(), ControlError> {
        self.run_raw(verb.as_str(), &[verb.as_str()], units)
            .map(drop)
    }

    /// `systemctl daemon-reload`.
    pub fn daemon_reload(&self) -> Result<(), ControlError> {
        self.run_raw("daemon-reload", &["daemon-reload"], &[])
            .map(drop)
    }

    /// The status of each unit, in the order given. A unit systemd does not
    /// know is reported with `LoadState=not-found`, not as an error.
    pub fn status(&self, units: &[String]) -> Result<Vec<UnitStatus>, ControlError> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let props = format!("--property={STATUS_PROPERTIES}");
        let text = self.run_raw("show", &["show", "--timestamp=unix", &props], units)?;
        let mut list = parse_show(&text)?;
        if list.len() != units.len() {
            return Err(ControlError::Parse(format!(
                "asked for {} units, got {} blocks",
                units.len(),
                list.len()
            )));
        }
        for s in &mut list {
            if let Some(pid) = s.main_pid {
                s.main_uid = process_uid(&self.proc_root, pid);
                s.main_gid = process_gid(&self.proc_root, pid);
            }
        }
        Ok(list)
    }
}

/// The status of each unit on the host's systemd (see [`Systemctl::status`]).
pub fn unit_status(units: &[String]) -> Result<Vec<UnitStatus>, ControlError> {
    Systemctl::find()?.status(units)
}

/// `systemctl <verb> <units…>` on the host's systemd.
pub fn systemctl(verb: Verb, units: &[String]) -> Result<(), ControlError> {
    Systemctl::find()?.run(verb, units)
}

/// `systemctl daemon-reload` on the host's systemd.
pub fn daemon_reload() -> Result<(), ControlError> {
    Systemctl::find()?.daemon_reload()
}

/// `active/sub` when both are set and differ, otherwise whichever is set
/// (the Go program's `State()`).
pub fn state_text(active: &str, sub: &str) -> String {
    match (active.is_empty(), sub.is_empty()) {
        (false, false) if active != sub => format!("{active}/{sub}"),
        (false, _) => active.to_owned(),
        (true, _) => sub.to_owned(),
    }
}

/// One unit's state as `systemctl show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitStatus {
    /// The unit name (`Id`).
    pub unit: String,
    /// `Description`.
    pub description: String,
    /// `LoadState`: loaded, not-found, bad-setting, error, masked.
    pub load_state: String,
    /// `ActiveState`: active, reloading, inactive, failed, activating,
    /// deactivating.
    pub active_state: String,
    /// `SubState`: running, exited, dead, …
    pub sub_state: String,
    /// `Result`: success, exit-code, signal, timeout, …
    pub result: String,
    /// `MainPID`, when there is one.
    pub main_pid: Option<u32>,
    /// The real uid of the main process, read from `/proc`.
    pub main_uid: Option<u32>,
    /// The real gid of the main process, read from `/proc`.
    pub main_gid: Option<u32>,
    /// `UnitFileState`: enabled, disabled, static, … (empty when unknown).
    pub unit_file_state: String,
    /// `FragmentPath`: the unit file systemd loaded (empty when none).
    pub fragment_path: String,
    /// `ActiveEnterTimestamp`.
    pub active_enter: Option<SystemTime>,
    /// `ActiveExitTimestamp`.
    pub active_exit: Option<SystemTime>,
    /// `InactiveEnterTimestamp`.
    pub inactive_enter: Option<SystemTime>,
    /// `InactiveExitTimestamp`.
    pub inactive_exit: Option<SystemTime>,
    /// `ExecMainStartTimestampMonotonic`: when the main process (the
    /// launcher, then QEMU in its place) was forked, on `CLOCK_MONOTONIC`,
    /// to the microsecond (the realtime property has whole seconds only).
    pub main_start_monotonic: Option<Duration>,
    /// `NeedDaemonReload`: the unit file on disk differs from what systemd
    /// loaded.
    pub need_daemon_reload: bool,
}

/// A VM's state in one word, as `inspect` and `list --json` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SimpleState {
    /// The unit is active (or stopping: QEMU still runs).
    Running,
    /// The unit is starting.
    Starting,
    /// The unit is inactive or unknown to systemd.
    Stopped,
    /// The unit failed.
    Failed,
}

impl UnitStatus {
    /// The unit's state in one word.
    pub fn simple_state(&self) -> SimpleState {
        match self.active_state.as_str() {
            "active" | "reloading" | "deactivating" => SimpleState::Running,
            "activating" => SimpleState::Starting,
            "failed" => SimpleState::Failed,
            _ => SimpleState::Stopped,
        }
    }

    /// Whether the unit starts at boot (`UnitFileState=enabled`).
    pub fn enabled(&self) -> bool {
        matches!(self.unit_file_state.as_str(), "enabled" | "enabled-runtime")
    }

    /// `ActiveState/SubState` when both are set and differ, otherwise
    /// whichever is set (the Go program's `State()`).
    pub fn state(&self) -> String {
        state_text(&self.active_state, &self.sub_state)
    }

    /// The timestamp of the current state: active or reloading → entering
    /// active; inactive or failed → entering inactive; activating → leaving
    /// inactive; anything else → leaving active.
    pub fn since(&self) -> Option<SystemTime> {
        match self.active_state.as_str() {
            "active" | "reloading" => self.active_enter,
            "inactive" | "failed" => self.inactive_enter,
            "activating" => self.inactive_exit,
            _ => self.active_exit,
        }
    }

    /// When the main process was started, on the realtime clock, to the
    /// microsecond: its monotonic start placed relative to the current
    /// monotonic and realtime clocks (so a clock step after the start moves
    /// it with the clock, as it moves file times written afterwards).
    pub fn main_started(&self) -> Option<SystemTime> {
        let start = self.main_start_monotonic?;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
            return None;
        }
        let now_mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        SystemTime::now().checked_sub(now_mono.checked_sub(start)?)
    }

    /// How long the unit has been in its current state, as of `now`.
    pub fn duration(&self, now: SystemTime) -> Option<Duration> {
        self.since().and_then(|t| now.duration_since(t).ok())
    }
}

/// Parses a `systemctl show --timestamp=unix` timestamp: `@<seconds>`, or
/// empty / `n/a` when unset.
fn parse_timestamp(v: &str) -> Result<Option<SystemTime>, ControlError> {
    let v = v.trim();
    if v.is_empty() || v == "n/a" || v == "0" {
        return Ok(None);
    }
    let secs = v
        .strip_prefix('@')
        .ok_or_else(|| ControlError::Parse(format!("timestamp {v:?} is not @<seconds>")))?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    let whole: u64 = whole
        .parse()
        .map_err(|_| ControlError::Parse(format!("timestamp {v:?} is not @<seconds>")))?;
    let mut t = UNIX_EPOCH + Duration::from_secs(whole);
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let nanos: u32 = format!("{digits:0<9}")
            .parse()
            .map_err(|_| ControlError::Parse(format!("timestamp {v:?} is not @<seconds>")))?;
        t += Duration::from_nanos(u64::from(nanos));
    }
    Ok(Some(t))
}

/// Parses the output of `systemctl show --timestamp=unix --property=…` for
/// one or more units: blocks of `Key=Value` lines separated by blank lines.
/// Unknown keys are ignored (a newer systemd may add some).
pub fn parse_show(text: &str) -> Result<Vec<UnitStatus>, ControlError> {
    let mut list = Vec::new();
    let mut cur: Option<UnitStatus> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if let Some(s) = cur.take() {
                list.push(s);
            }
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| ControlError::Parse(format!("line {line:?} has no '='")))?;
        let s = cur.get_or_insert_with(UnitStatus::default);
        match key {
            "Id" => s.unit = value.to_owned(),
            "Description" => s.description = value.to_owned(),
            "LoadState" => s.load_state = value.to_owned(),
            "ActiveState" => s.active_state = value.to_owned(),
            "SubState" => s.sub_state = value.to_owned(),
            "Result" => s.result = value.to_owned(),
            "MainPID" => {
                let pid: u32 = value
                    .parse()
                    .map_err(|_| ControlError::Parse(format!("MainPID {value:?}")))?;
                s.main_pid = (pid != 0).then_some(pid);
            }
            "UnitFileState" => s.unit_file_state = value.to_owned(),
            "FragmentPath" => s.fragment_path = value.to_owned(),
            "ActiveEnterTimestamp" => s.active_enter = parse_timestamp(value)?,
            "ActiveExitTimestamp" => s.active_exit = parse_timestamp(value)?,
            "InactiveEnterTimestamp" => s.inactive_enter = parse_timestamp(value)?,
            "InactiveExitTimestamp" => s.inactive_exit = parse_timestamp(value)?,
            "ExecMainStartTimestampMonotonic" => {
                let us: u64 = value.parse().map_err(|_| {
                    ControlError::Parse(format!("ExecMainStartTimestampMonotonic {value:?}"))
                })?;
                s.main_start_monotonic = (us != 0).then(|| Duration::from_micros(us));
            }
            "NeedDaemonReload" => s.need_daemon_reload = value == "yes",
            _ => {}
        }
    }
    if let Some(s) = cur.take() {
        list.push(s);
    }
    Ok(list)
}

/// The real uid of `pid` (the first field of `Uid:` in its status file).
fn process_uid(proc_root: &Path, pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    parse_status_uid(&text)
}

/// The real gid of `pid` (the first field of `Gid:` in its status file).
fn process_gid(proc_root: &Path, pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Gid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Extracts the real uid from a `/proc/<pid>/status` text.
pub fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from systemd 252 (`systemctl show --timestamp=unix
    // --property=… a.service nope.service`), with a Description holding '='.
    const SHOW: &str = "\
Id=machina-qemu-vm1.service
Description=machina qemu/kvm vm1 (a=b)
LoadState=loaded
ActiveState=active
SubState=running
Result=success
MainPID=4242
ExecMainStartTimestampMonotonic=5000123
NeedDaemonReload=yes
ActiveEnterTimestamp=@1763827424
ActiveExitTimestamp=
InactiveEnterTimestamp=
InactiveExitTimestamp=@1763827423.5

Id=nope.service
Description=nope.service
LoadState=not-found
ActiveState=inactive
SubState=dead
Result=success
MainPID=0
ActiveEnterTimestamp=n/a
ActiveExitTimestamp=n/a
InactiveEnterTimestamp=n/a
InactiveExitTimestamp=n/a
NewProperty=whatever
";

    #[test]
    fn parses_two_units() {
        let l = parse_show(SHOW).unwrap();
        assert_eq!(l.len(), 2);
        let a = &l[0];
        assert_eq!(a.unit, "machina-qemu-vm1.service");
        assert_eq!(a.description, "machina qemu/kvm vm1 (a=b)");
        assert_eq!(a.state(), "active/running");
        assert_eq!(a.main_pid, Some(4242));
        assert_eq!(a.main_start_monotonic, Some(Duration::from_micros(5000123)));
        assert!(a.need_daemon_reload);
        assert_eq!(
            a.since(),
            Some(UNIX_EPOCH + Duration::from_secs(1763827424))
        );
        assert_eq!(
            a.inactive_exit,
            Some(UNIX_EPOCH + Duration::from_millis(1763827423500))
        );
        assert_eq!(a.active_exit, None);
        let b = &l[1];
        assert_eq!(b.load_state, "not-found");
        assert!(!b.need_daemon_reload && b.main_start_monotonic.is_none());
        assert_eq!(b.state(), "inactive/dead");
        assert_eq!(b.main_pid, None);
        assert_eq!(b.since(), None);
    }

    #[test]
    fn since_follows_state() {
        let t = |s| Some(UNIX_EPOCH + Duration::from_secs(s));
        let mut s = UnitStatus {
            active_enter: t(1),
            active_exit: t(2),
            inactive_enter: t(3),
            inactive_exit: t(4),
            ..Default::default()
        };
        for (state, want) in [
            ("active", 1),
            ("reloading", 1),
            ("inactive", 3),
            ("failed", 3),
            ("activating", 4),
            ("deactivating", 2),
        ] {
            s.active_state = state.into();
            assert_eq!(s.since(), t(want), "{state}");
        }
        assert_eq!(
            s.duration(UNIX_EPOCH + Duration::from_secs(10)),
            Some(Duration::from_secs(8))
        );
    }

    #[test]
    fn state_when_one_is_missing_or_equal() {
        let s = UnitStatus {
            active_state: "failed".into(),
            sub_state: "failed".into(),
            ..Default::default()
        };
        assert_eq!(s.state(), "failed");
        let s = UnitStatus {
            sub_state: "dead".into(),
            ..Default::default()
        };
        assert_eq!(s.state(), "dead");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_show("no equals sign\n").is_err());
        assert!(parse_show("MainPID=-1\n").is_err());
        assert!(parse_show("ActiveEnterTimestamp=Sun 2026-11-22\n").is_err());
        assert!(parse_show("ActiveEnterTimestamp=@99999999999999999999999\n").is_err());
        assert_eq!(parse_show("").unwrap(), vec![]);
    }

    #[test]
    fn uid_from_proc_status() {
        let st = "Name:\tqemu\nUmask:\t0077\nUid:\t70001\t70001\t70001\t70001\nGid:\t70001\n";
        assert_eq!(parse_status_uid(st), Some(70001));
        assert_eq!(parse_status_uid("Name:\tx\n"), None);
        // Our own process, through the real /proc.
        let me = nix::unistd::getuid().as_raw();
        assert_eq!(
            process_uid(Path::new("/proc"), std::process::id()),
            Some(me)
        );
    }
}
