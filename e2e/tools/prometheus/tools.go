//go:build tools

// Package tools pins the Prometheus server's module for this wrapper; build.sh builds
// github.com/prometheus/prometheus/cmd/prometheus from the module cache at the version go.mod names.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
