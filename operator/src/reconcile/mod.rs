//! The reconciler (docs/architecture.md, "The reconcile pipeline"). For each `EdgeHierarchy`
//! the controller runs [`sync`] (or, behind the finalizer, [`cleanup`]); `sync` runs the steps
//! in order, each in the same shape: observe (reads), a pure plan, apply (writes); then the
//! status, built by pure functions, is written once.
//!
//! - [`controller`]: watches, shared state, retry backoff.
//! - [`sync`] and [`cleanup`]: the two pipelines; [`error`]: what each failure leads to.
//! - The steps: [`certs`], [`devices`], [`bundles`], [`deployments`].
//! - [`status`] and [`conditions`]: the status, pure; [`events`]: Events, pure notes plus one
//!   publisher.
//! - [`scope`]: what a reconcile works with; [`secrets`]: the operator's own Secrets;
//!   [`credentials`]: hub clients from the user's Secrets; [`registry_auth`]: registry logins
//!   from the user's Secrets; [`memory`]: what a hierarchy's reconciles read back after their
//!   own writes.

pub mod bundles;
pub mod certs;
pub mod cleanup;
pub mod conditions;
pub mod controller;
pub mod credentials;
pub mod deployments;
pub mod devices;
pub mod error;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod memory;
pub mod proof_keys;
pub mod registry_auth;
pub mod scope;
pub mod secret_cache;
pub mod secrets;
pub mod status;
pub mod sync;

pub use controller::{Context, run};
pub use error::{Disposition, Error};
