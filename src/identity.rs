//! Derived identities (to be written).
