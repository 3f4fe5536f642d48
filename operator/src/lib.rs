//! edge-hierarchy-operator: keeps hierarchies of Azure IoT Edge devices in IoT Hub, their
//! certificates and config bundles, and their module deployments equal to `EdgeHierarchy`
//! resources.

pub mod api;
pub mod bundle;
pub mod deploy;
pub mod est;
pub mod import;
pub mod iothub;
pub mod leadership;
pub mod metrics;
pub mod names;
pub mod ownership;
pub mod pki;
pub mod plugin;
pub mod reconcile;
pub mod tree;
