// A tiny in-cluster client the harness's node test runs as a Pod: no dependencies, built with
// `go build` by e2e/harness/tests/node.rs and packed into an image with imagebuild.
module local/edge-hierarchy-operator/tools/node-probe

go 1.24.0
