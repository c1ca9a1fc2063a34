//! launcher (to be written).

/// Entry point of `machina-launch`; returns the exit code.
pub fn main() -> i32 {
    0
}
