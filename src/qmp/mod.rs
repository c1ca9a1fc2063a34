//! qmp (to be written).
