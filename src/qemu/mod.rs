//! The QEMU hardware model: options, the PCIe topology, and the translation
//! of a built machine into an argv.

mod hardware;
pub mod needs;
pub mod options;
pub mod topology;

pub use hardware::{
    build, netdev_id, valid_node_name, Hardware, TapFds, FIRST_FD, LISTEN_ADDRESS, SANDBOX,
};
pub use options::{argv_line, into_argv, options_line, to_argv, Opt};
