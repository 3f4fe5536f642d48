//! A real, local Kubernetes control plane for tests, the processes the operator runs against
//! ([`operator_env`]: the IoT Hub emulator, the operator, the CRD), and small utilities e2e tests
//! and the benchmark share.
//!
//! [`ControlPlane::start`] runs etcd, kube-apiserver and kube-controller-manager (built from the
//! pinned Go modules in `e2e/tools`) on free loopback ports and writes an admin kubeconfig.
//! With [`ControlPlaneOptions::with_node`] it also runs kube-scheduler and a real node
//! (containerd and a kubelet, see [`node`]) that runs Pods of images loaded with
//! [`ControlPlane::load_image`]. Nothing it starts outlives it: see [`process`] and [`node`].

pub mod checks;
pub mod control_plane;
pub mod kubeconfig;
pub mod node;
pub mod operator_env;
pub mod pki;
pub mod process;
pub mod tools;
pub mod wait;

pub use checks::Checks;
pub use control_plane::{
    ComponentProcess, ControlPlane, ControlPlaneOptions, DEFAULT_CONTROLLERS, NODE_CONTROLLERS,
};
pub use operator_env::{Emulator, Operator, OperatorFlags, install_crd};
pub use tools::{TOOLS_BIN_ENV, script_built_tool, tools_bin_dir, workspace_bin, workspace_root};
pub use wait::wait_until;
