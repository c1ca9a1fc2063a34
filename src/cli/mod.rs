//! cli (to be written).

/// Entry point of the `machina` binary; returns the exit code.
pub fn main() -> i32 {
    0
}
