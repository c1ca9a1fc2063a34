//! systemd: rendering of the VM's unit, `systemctl` control and unit status.

pub mod control;
pub mod machined;
pub mod swtpm_unit;
pub mod unit;

pub use control::{systemd_running, unit_status, UnitStatus};
pub use unit::{render, unit_name, UnitError, UnitOptions};
