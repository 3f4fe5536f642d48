//! A control plane whose component fails at start-up reports that component's log, and leaves
//! nothing running. (Its own test binary: it counts this process's children.)

use e2e_harness::process::children_of;
use e2e_harness::{ControlPlane, ControlPlaneOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_component_is_named_with_its_log_and_nothing_survives() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let before = children_of(std::process::id());
    let options = ControlPlaneOptions {
        controllers: vec!["no-such-controller".into()],
        ..ControlPlaneOptions::default()
    };
    let err = ControlPlane::start(options)
        .await
        .expect_err("kube-controller-manager refuses an unknown controller");
    let message = format!("{err:#}");
    assert!(
        message.contains("kube-controller-manager exited during start-up"),
        "{message}"
    );
    // The tail of its log says why.
    assert!(message.contains("no-such-controller"), "{message}");
    assert_eq!(
        children_of(std::process::id()),
        before,
        "the failed start left processes behind"
    );
}
