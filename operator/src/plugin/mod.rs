//! The pure parts of `kubectl edgehierarchy`: one device's report and errors worded as kubectl
//! words them. The binary (src/bin/kubectl-edgehierarchy.rs) only reads and writes.

pub mod device;
pub mod errors;
