// Wrapper module: gitops-health (main.go), which judges one object with the health libraries Flux
// and Argo CD run. kstatus comes from Flux's fork github.com/fluxcd/cli-utils (the module Flux's
// controllers pin, v0.36.0-flux.N), tried first and served by the module proxy at
// v0.36.0-flux.13, so sigs.k8s.io/cli-utils is not used. gopher-lua v1.1.2 and gopher-json at
// this pseudo-version are the ones argoproj/argo-cd's go.mod pins.
module local/edge-hierarchy-operator/tools/gitops-health

go 1.26.0

require (
	github.com/fluxcd/cli-utils v0.36.0-flux.13
	github.com/yuin/gopher-lua v1.1.2
	k8s.io/apimachinery v0.33.0
	layeh.com/gopher-json v0.0.0-20190114024228-97fed8db8427
	sigs.k8s.io/yaml v1.4.0
)

require (
	github.com/fxamacker/cbor/v2 v2.7.0 // indirect
	github.com/go-logr/logr v1.4.2 // indirect
	github.com/gogo/protobuf v1.3.2 // indirect
	github.com/json-iterator/go v1.1.12 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/modern-go/concurrent v0.0.0-20180306012644-bacd9c7ef1dd // indirect
	github.com/modern-go/reflect2 v1.0.2 // indirect
	github.com/x448/float16 v0.8.4 // indirect
	golang.org/x/net v0.39.0 // indirect
	golang.org/x/text v0.24.0 // indirect
	gopkg.in/inf.v0 v0.9.1 // indirect
	k8s.io/api v0.33.0 // indirect
	k8s.io/klog/v2 v2.130.1 // indirect
	k8s.io/utils v0.0.0-20250321185631-1f6e0b77f77e // indirect
	sigs.k8s.io/json v0.0.0-20241014173422-cfa47c3a1cc8 // indirect
	sigs.k8s.io/randfill v1.0.0 // indirect
	sigs.k8s.io/structured-merge-diff/v4 v4.6.0 // indirect
)
