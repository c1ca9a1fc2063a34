//! The launcher's log: one line per launch step with the VM, the step and
//! its duration, on stderr, which systemd sends to the unit's journal
//! (`machina logs <vm>` shows it).
//!
//! Lines go through `tracing`; [`init`] installs a plain formatter (no
//! colours, no timestamps: the journal adds its own). Formatting and one
//! `write(2)` per step cost microseconds against QEMU's start of tens of
//! milliseconds, which the launch benchmark checks.

use std::time::Instant;

/// Installs the launcher's subscriber on stderr: info and above when stderr
/// is the journal (systemd sets `JOURNAL_STREAM` for a unit's stdio), else
/// the level in `MACHINA_LOG` (default warn), so a launcher run by hand
/// prints only its one-line error. Does nothing when a subscriber is
/// installed already (`machina run` has its own).
pub fn init() {
    let level = if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing::Level::INFO
    } else {
        std::env::var("MACHINA_LOG")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(tracing::Level::WARN)
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_max_level(level)
        .try_init();
}

/// Times the launch steps of one VM.
pub struct Steps<'a> {
    vm: &'a str,
    start: Instant,
    last: Instant,
}

impl<'a> Steps<'a> {
    /// Starts timing `vm`'s launch now.
    pub fn new(vm: &'a str) -> Steps<'a> {
        let now = Instant::now();
        Steps {
            vm,
            start: now,
            last: now,
        }
    }

    /// Logs that `step` is done, with the time since the previous step.
    pub fn done(&mut self, step: &str) {
        let now = Instant::now();
        let us = now.duration_since(self.last).as_micros() as u64;
        tracing::info!(vm = self.vm, step, us, "launch step");
        self.last = now;
    }

    /// Logs the last line before QEMU is executed, with the total time.
    pub fn exec(&mut self, binary: &std::path::Path) {
        let total_us = self.start.elapsed().as_micros() as u64;
        tracing::info!(
            vm = self.vm,
            step = "exec",
            total_us,
            qemu = %binary.display(),
            "launch step"
        );
    }
}
