//! machina: run QEMU/KVM virtual machines as systemd units, with QEMU never
//! holding root.
//!
//! Data flows one way: files → [`config`] (merged, identities filled in) →
//! [`qemu`] (hardware + argv) → [`plan`] → unit + plan file → [`launcher`] →
//! [`prepare`] → exec. See DESIGN.md for the architecture.

mod bytes;
pub mod cli;
pub mod config;
pub mod identity;
pub mod launcher;
pub mod names;
pub mod paths;
pub mod plan;
pub mod prepare;
pub mod qemu;
pub mod qmp;
pub mod systemd;
