//! Where machina keeps its run-time state on the host.
//!
//! These paths are facts about the host layout, needed by every layer
//! (config names the QMP sockets in a VM's runtime directory, the plan and
//! the launcher create it), so they live below all of them.

/// Parent of every VM's runtime directory (`/run/machina/<vm>`).
pub const RUNTIME_ROOT: &str = "/run/machina";

/// Directory of machina's lock files. VM names start with a letter or
/// digit, so no VM's runtime directory (`/run/machina/<vm>`) can be it or
/// be inside it, and no VM name can name a lock.
pub const LOCK_DIR: &str = "/run/machina/.lock";
