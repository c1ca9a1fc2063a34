//! QMP (the QEMU Machine Protocol) client and the VM operations built on it.
//!
//! QEMU and its socket are untrusted input: a compromised guest may control
//! QEMU. So the client bounds every line ([`MAX_LINE`]), tolerates a bounded
//! number of garbage lines, puts a timeout on connecting, on the greeting and
//! on every command, fails pending commands promptly when the socket closes,
//! and never panics on what it reads.
//!
//! Own transport rather than the `qapi` crate: its generated types decode
//! events and replies into closed enums and structs for one QEMU version, so
//! a newer QEMU's new event, field or enum value would fail to decode, which
//! this module must never do. machina needs five commands and never
//! interprets events, so untyped [`serde_json::Value`]s are enough.
//!
//! For the `machina` subcommands: [`shutdown`] (ExecStop and `machina
//! shutdown`), [`observe`], [`query`] with [`pretty_tabs`] for output, and
//! [`ping`] for `machina status`. Each takes the VM's socket paths in the
//! order to try them; QEMU serves one client per socket, hence several.
//!
//! ```no_run
//! # async fn demo() -> Result<(), machina::qmp::QmpError> {
//! use machina::qmp::{Client, Options};
//! let path = std::path::Path::new("/run/machina/vm/qmp/command.0.qmp.socket");
//! let (client, greeting) = Client::connect(path, &Options::default()).await?;
//! let status = client.execute("query-status", None).await?;
//! # Ok(()) }
//! ```

mod client;
mod codec;
mod error;
mod ops;
mod socket;

pub use client::{Client, Options};
pub use codec::{
    decode_line, encode_command, DecodeError, Event, Greeting, Message, QemuVersion, MAX_LINE,
};
pub use error::QmpError;
pub use ops::{
    format_connected, format_event, format_event_json, observe, ping, ping_with, pretty_tabs,
    query, shutdown, Query, ShutdownOptions, ShutdownOutcome,
};
pub use socket::{connect as connect_checked, PeerIdentity};
