//! prepare (to be written).
