//! The `EdgeHierarchy` API (v1alpha1): CRD types, status types and whole-tree validation.

pub mod duration;
mod hub_limits;
pub mod schema;
pub mod spec;
pub mod status;
pub mod validate;

pub use spec::*;
pub use status::*;
pub use validate::{Topology, Violation, Violations, validate};
