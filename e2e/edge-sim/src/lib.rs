//! Simulated Azure IoT Edge devices for end-to-end tests of edge-hierarchy-operator.
//!
//! An [`EdgeSim`] stands for every IoT Edge device of one hierarchy. It takes each device's
//! bundle (from the operator's bundle Secrets, a folder or memory: [`BundleSource`]), installs it
//! as `install.sh` would, checks it as `iotedge check` would ([`checks`]), serves the device's
//! edgeHub endpoint over TLS with a certificate from its own edge CA, connects every child to its
//! parent with only its bundle's trust bundle, pulls images by the chain rule ([`chain`]),
//! reports `$edgeAgent`/`$edgeHub` properties to the IoT Hub emulator with the bundle's
//! credentials and sends SimulatedTemperatureSensor telemetry up the chain.
//!
//! It shares no code with the operator or the emulator: it parses what it receives itself, as a
//! real device would.

pub mod chain;
pub mod checks;
pub mod config;
pub mod est;
pub mod fixtures;
pub mod hub;
pub mod install;
pub mod leaf;
pub mod link;
pub mod pki;
pub mod reported;
pub mod sim;
pub mod source;

pub use checks::{Check, CheckStatus};
pub use sim::{
    DeviceSnapshot, EdgeSim, HandshakeCounts, LeafSnapshot, LinkSnapshot, ModuleSnapshot,
    SimOptions, Snapshot, TelemetryCounts,
};
pub use source::{Bundle, BundleSource, DirSource, KubeSecretSource, MemorySource};
