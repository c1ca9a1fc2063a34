//! Configuration: the JSON schema of host and machine files, loading with
//! clear errors, tag merge, `${var}` patterns and resolution into a
//! [`Machine`] that the QEMU model and the launch plan are built from.

mod build;
pub mod error;
mod load;
pub mod locate;
pub mod model;
pub mod pattern;
pub mod schema;

pub use build::{build, link_name, Host, MIN_PORT};
pub use error::{ConfigError, Origin, Problem, Problems};
pub use load::{
    parse, ConfigDir, MachineScan, DEFAULT_CONFIG_DIR, HOST_FILE, MACHINE_DIR, MACHINE_SUFFIX,
};
pub use model::Machine;
pub use schema::{HostFile, MachineFile};

use crate::names::MachineName;

/// Loads and builds one machine from a configuration directory.
pub fn load_machine(
    dir: &ConfigDir,
    host: &HostFile,
    name: &MachineName,
) -> Result<Machine, ConfigError> {
    let (path, file) = dir.load_machine(name)?;
    let host_path = dir.host_path();
    build(
        &Host {
            file: host,
            path: &host_path,
        },
        name,
        &file,
        &path,
    )
}
