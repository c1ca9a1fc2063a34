//! The operations the `machina` subcommands perform over QMP: shutdown,
//! observe, query and ping. Each takes the VM's socket paths (in the order
//! to try them) and reports progress through a callback, so the CLI decides
//! where lines go and runs many VMs in parallel.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{sleep_until, Instant};

use super::client::{Client, Options};
use super::codec::{Event, Greeting};
use super::error::QmpError;

/// How [`shutdown`] behaves.
#[derive(Debug, Clone)]
pub struct ShutdownOptions {
    /// Wait for QEMU to exit (the socket to close), re-sending
    /// `system_powerdown` every [`ShutdownOptions::powerdown_interval`].
    pub wait: bool,
    /// After this long, send `quit`. Setting it implies waiting, as in the
    /// Go program.
    pub timeout: Option<Duration>,
    /// Interval between repeated `system_powerdown` requests (Go: 5 s);
    /// a guest may miss the first ACPI event while booting.
    pub powerdown_interval: Duration,
    /// How long to wait for the socket to close after `quit` before giving
    /// up with [`QmpError::QuitIgnored`]. The Go program waited forever;
    /// an operator stopping many VMs needs a bound.
    pub quit_grace: Duration,
    /// Session limits.
    pub client: Options,
}

impl Default for ShutdownOptions {
    fn default() -> Self {
        ShutdownOptions {
            wait: false,
            timeout: None,
            powerdown_interval: Duration::from_secs(5),
            quit_grace: Duration::from_secs(10),
            client: Options::default(),
        }
    }
}

/// How a [`shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// `system_powerdown` was accepted; not asked to wait.
    Issued,
    /// The QMP socket closed: QEMU has exited.
    Completed {
        /// Whether `quit` had to be sent because the timeout expired.
        quit_sent: bool,
    },
}

/// The human line for an event: `<name>: <EVENT>: <data>` or
/// `<name>: <EVENT>` without data. Data is compact JSON (keys sorted).
pub fn format_event(name: &str, ev: &Event) -> String {
    match &ev.data {
        Some(data) => format!("{name}: {}: {data}", ev.name),
        None => format!("{name}: {}", ev.name),
    }
}

/// One compact JSON object per event:
/// `{"vm":…,"event":…,"data":…,"timestamp":{"seconds":…,"microseconds":…}}`
/// (`data` and `timestamp` only when QEMU sent them).
pub fn format_event_json(name: &str, ev: &Event) -> String {
    let mut s = format!(
        "{{\"vm\":{},\"event\":{}",
        Value::from(name),
        Value::from(ev.name.as_str())
    );
    if let Some(data) = &ev.data {
        s.push_str(&format!(",\"data\":{data}"));
    }
    if let Some((secs, usecs)) = ev.timestamp {
        s.push_str(&format!(
            ",\"timestamp\":{{\"seconds\":{secs},\"microseconds\":{usecs}}}"
        ));
    }
    s.push('}');
    s
}

/// `Connected to <name> (qemu 7.2.0 / <package>, capabilities: [oob])`, as
/// the Go program prints it.
pub fn format_connected(name: &str, g: &Greeting) -> String {
    format!(
        "Connected to {name} (qemu {}.{}.{} / {}, capabilities: [{}])",
        g.qemu.major,
        g.qemu.minor,
        g.qemu.micro,
        g.qemu.package,
        g.capabilities.join(" ")
    )
}

/// A QMP value indented with tabs, like the Go program's `query` output.
pub fn pretty_tabs(v: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serialising a Value into a Vec cannot fail.
    let _ = v.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

type Pending<'a> = Pin<Box<dyn Future<Output = Result<Value, QmpError>> + Send + 'a>>;

/// Shuts a VM down over QMP, as `machina shutdown` (Go semantics, see
/// machina-reference.md §1.9), but with an honest result:
///
/// 1. connect (first working socket), subscribe to events *before* sending;
/// 2. send `system_powerdown` (an error here is returned);
/// 3. without `wait` or `timeout`, return [`ShutdownOutcome::Issued`];
/// 4. otherwise re-send `system_powerdown` every `powerdown_interval`, report
///    each event, and when `timeout` expires send `quit`; return
///    [`ShutdownOutcome::Completed`] as soon as the socket closes, or
///    [`QmpError::QuitIgnored`] if it is still open `quit_grace` after `quit`.
///
/// Lines passed to `report`: `<name>: Issued shutdown command.`,
/// `<name>: <EVENT>[: data]`, `<name>: Timeout expired. Sending QUIT message.`,
/// `<name>: Failed to send QUIT: <err>`,
/// `<name>: QMP socket closed. Shutdown complete.`.
pub async fn shutdown(
    name: &str,
    sockets: &[PathBuf],
    opts: &ShutdownOptions,
    mut report: impl FnMut(&str),
) -> Result<ShutdownOutcome, QmpError> {
    let (client, _) = Client::connect_any(sockets, &opts.client).await?;
    let mut events = client.events();
    client.execute("system_powerdown", None).await?;
    report(&format!("{name}: Issued shutdown command."));
    if !opts.wait && opts.timeout.is_none() {
        return Ok(ShutdownOutcome::Issued);
    }

    let start = Instant::now();
    let interval = opts.powerdown_interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(start + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = opts.timeout.map(|t| start + t);
    let mut quit_deadline: Option<Instant> = None;
    // A repeated powerdown runs beside event handling so that a slow reply
    // never delays noticing the socket closing.
    let mut resend: Option<Pending<'_>> = None;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => report(&format_event(name, &ev)),
                Err(RecvError::Lagged(n)) => report(&format!("{name}: {n} events not shown (output too slow)")),
                Err(RecvError::Closed) => {
                    report(&format!("{name}: QMP socket closed. Shutdown complete."));
                    return Ok(ShutdownOutcome::Completed { quit_sent: quit_deadline.is_some() });
                }
            },
            _ = ticker.tick(), if quit_deadline.is_none() && resend.is_none() => {
                resend = Some(Box::pin(client.execute("system_powerdown", None)));
            }
            res = async {
                match resend.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if resend.is_some() => {
                resend = None;
                match res {
                    // The socket closing is reported by the event stream.
                    Err(e) if !e.is_closed() => report(&format!("{name}: {e}")),
                    _ => {}
                }
            }
            _ = sleep_until(deadline.unwrap_or(start)), if deadline.is_some() && quit_deadline.is_none() => {
                report(&format!("{name}: Timeout expired. Sending QUIT message."));
                resend = None;
                quit_deadline = Some(Instant::now() + opts.quit_grace);
                match client.execute("quit", None).await {
                    Err(e) if !e.is_closed() => report(&format!("{name}: Failed to send QUIT: {e}")),
                    _ => {}
                }
            }
            _ = sleep_until(quit_deadline.unwrap_or(start)), if quit_deadline.is_some() => {
                return Err(QmpError::QuitIgnored { name: name.to_owned(), timeout: opts.quit_grace });
            }
        }
    }
}

/// Streams a VM's events to `out`, one line each ([`format_event`], or
/// [`format_event_json`] with `json`), until the socket closes; then returns
/// `Ok`. In human mode it first prints [`format_connected`] and finally
/// `<name>: QMP socket closed.`. Cancel by dropping the future.
pub async fn observe(
    name: &str,
    sockets: &[PathBuf],
    json: bool,
    opts: &Options,
    mut out: impl FnMut(&str),
) -> Result<(), QmpError> {
    let (client, greeting) = Client::connect_any(sockets, opts).await?;
    let mut events = client.events();
    if !json {
        out(&format_connected(name, &greeting));
    }
    loop {
        match events.recv().await {
            Ok(ev) if json => out(&format_event_json(name, &ev)),
            Ok(ev) => out(&format_event(name, &ev)),
            Err(RecvError::Lagged(n)) if json => {
                out(&format!("{{\"vm\":{},\"dropped\":{n}}}", Value::from(name)))
            }
            Err(RecvError::Lagged(n)) => {
                out(&format!("{name}: {n} events not shown (output too slow)"))
            }
            Err(RecvError::Closed) => {
                if !json {
                    out(&format!("{name}: QMP socket closed."));
                }
                return Ok(());
            }
        }
    }
}

/// What `machina query` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `query-pci`: the PCI buses and devices.
    Pci,
    /// `query-cpus-fast`: the vCPUs and their threads.
    Cpus,
}

impl Query {
    /// The QMP command name.
    pub fn command(self) -> &'static str {
        match self {
            Query::Pci => "query-pci",
            Query::Cpus => "query-cpus-fast",
        }
    }
}

/// Runs a query on the first working socket and returns QEMU's `return`
/// value.
pub async fn query(sockets: &[PathBuf], what: Query, opts: &Options) -> Result<Value, QmpError> {
    let (client, _) = Client::connect_any(sockets, opts).await?;
    client.execute(what.command(), None).await
}

/// Whether one of the sockets answers QMP (greeting and capabilities
/// negotiated), for `machina status`. Each socket tried gets `limit` for
/// connecting, the greeting and the capabilities reply.
pub async fn ping(sockets: &[PathBuf], limit: Duration) -> bool {
    ping_with(sockets, &Options::with_timeout(limit)).await
}

/// [`ping`] with explicit session options (e.g. a required
/// [`Options::peer`]).
pub async fn ping_with(sockets: &[PathBuf], opts: &Options) -> bool {
    Client::connect_any(sockets, opts).await.is_ok()
}
