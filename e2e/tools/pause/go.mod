// The sandbox ("pause") process of the test node's Pods: containerd starts one per Pod to hold
// its namespaces. No dependencies; built by e2e/tools/build.sh and packed into an image by the
// e2e harness at node start, so no registry is ever needed.
module local/edge-hierarchy-operator/tools/pause

go 1.24.0
