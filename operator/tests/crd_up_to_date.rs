//! crds/ and the chart's crds/ are generated from the Rust types and never hand-edited: this
//! fails when either differs from `edge-hierarchy-operator crd` (fix with `make crd`).

use edge_hierarchy_operator::api::EdgeHierarchy;
use kube::CustomResourceExt;

#[test]
fn committed_crds_match_the_generated_one() {
    let generated = serde_yaml::to_string(&EdgeHierarchy::crd()).expect("the CRD serializes");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for path in [
        "crds/edgehierarchy.yaml",
        "charts/edge-hierarchy-operator/crds/edgehierarchy.yaml",
    ] {
        let committed = std::fs::read_to_string(format!("{root}/{path}"))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            committed == generated,
            "{path} differs from `edge-hierarchy-operator crd`; run `make crd`"
        );
    }
}
