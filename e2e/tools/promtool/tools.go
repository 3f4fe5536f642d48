//go:build tools

// Package tools pins promtool's module for this wrapper; build.sh builds
// github.com/prometheus/prometheus/cmd/promtool from the module cache at the version go.mod names.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
