//! A local Azure IoT Hub service (data-plane REST API 2021-04-12) for tests and demos.
//!
//! Start one in-process with [`start`], or run the `iothub-emulator` binary. See the crate's
//! README.md for the flags, the files it writes, the endpoints and what differs from Azure.

pub mod auth;
pub mod clock;
pub mod deployment;
pub mod error;
pub mod hub;
pub mod meter;
pub mod pki;
pub mod query;
pub mod realism;
pub mod registry;
pub mod routes;
pub mod scopes;
pub mod server;
pub mod service;
pub mod stats;
pub mod strict;
pub mod throttle;
pub mod twin;
pub mod writes;

pub use realism::{Realism, RegisteredWithoutTwin};
pub use server::{Emulator, EmulatorOptions, start};
pub use throttle::Sku;
