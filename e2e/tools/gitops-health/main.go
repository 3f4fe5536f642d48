// gitops-health judges the health of one Kubernetes object with the libraries Flux and Argo CD
// run, so that our claims about how they see an EdgeHierarchy are tested, not assumed.
//
//   - kstatus: Flux (kustomize-controller's `wait`/`healthChecks`) computes health with kstatus.
//     This is built on Flux's own fork, github.com/fluxcd/cli-utils, at the version the module
//     proxy serves (v0.36.0-flux.13; Flux's controllers pin v0.36.0-flux.N). Its
//     pkg/kstatus/status is the package Flux calls, so nothing is re-implemented here: the object
//     goes to status.Compute as an *unstructured.Unstructured decoded as client-go decodes it
//     (integers as int64, which the observedGeneration check needs).
//   - Argo CD: a health check configured in argocd-cm (resource.customizations.health.<group>_<kind>)
//     runs in gopher-lua with the Lua standard libraries skipped unless useOpenLibs is set; Argo
//     then opens only package, base, table and a reduced os (os.time and os.date), sets the
//     object as the global `obj`, runs the script under a 1 s context deadline, and turns the
//     returned table into {status, message} by encoding it with layeh.com/gopher-json and
//     decoding the JSON. The library set and the conversion follow argoproj/argo-cd
//     util/lua/lua.go and util/lua/oslib_safe.go (v3, read 2026-12); the code here is our own.
//
// Usage:
//
//	gitops-health -version
//	gitops-health kstatus            < object.yaml   one JSON line {"status","message"}
//	gitops-health argo-check FILE.lua < object.yaml  one JSON line {"status","message"}
//	gitops-health argo-test DIR                      DIR/health.lua against DIR/health_test.yaml
//
// Exit codes: 0 computed; 1 bad input, a Lua error, a timeout, or failed argo-test cases;
// 2 (argo-check) the script returned something that is not one of Argo's health statuses: stdout
// then still shows what Argo CD would display for it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/yaml"
)

// The modules whose versions -version reports; build.sh checks them against go.mod.
var reportedModules = []string{
	"github.com/fluxcd/cli-utils",
	"github.com/yuin/gopher-lua",
	"layeh.com/gopher-json",
}

// luaTimeout is the deadline Argo CD gives every health script.
const luaTimeout = 1 * time.Second

// argoHealthStatuses are the values of Argo CD's HealthStatusCode a script may return.
var argoHealthStatuses = map[string]bool{
	"Healthy":     true,
	"Progressing": true,
	"Degraded":    true,
	"Suspended":   true,
	"Missing":     true,
	"Unknown":     true,
}

// Argo CD's message when a script returns a status outside argoHealthStatuses.
const argoInvalidStatusMessage = "Lua returned an invalid health status"

// Health is what both checks print: one JSON object per line.
type Health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// argoResult is the shape Argo CD decodes a script's table into (its health.HealthStatus:
// both fields omitempty).
type argoResult struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

// errInvalidStatus marks a script result Argo CD would not show as one of its statuses.
type errInvalidStatus struct {
	shown  Health
	reason string
}

func (e *errInvalidStatus) Error() string { return e.reason }

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  gitops-health -version
  gitops-health kstatus < object.(yaml|json)
  gitops-health argo-check FILE.lua < object.(yaml|json)
  gitops-health argo-test DIR
`)
}

func main() {
	version := flag.Bool("version", false, "print the kstatus and Lua library versions this was built with")
	flag.Usage = usage
	flag.Parse()
	if *version {
		fmt.Println(versionLine())
		return
	}
	args := flag.Args()
	if len(args) == 0 {
		usage()
		os.Exit(1)
	}
	switch args[0] {
	case "kstatus":
		if len(args) != 1 {
			fail("kstatus takes no arguments; the object comes on stdin")
		}
		obj, err := readObject(os.Stdin)
		if err != nil {
			fail("kstatus: %v", err)
		}
		h, err := kstatusHealth(obj)
		if err != nil {
			fail("kstatus: %v", err)
		}
		printHealth(h)
	case "argo-check":
		if len(args) != 2 {
			fail("argo-check takes one argument, the health script: gitops-health argo-check FILE.lua < object.yaml")
		}
		script, err := os.ReadFile(args[1])
		if err != nil {
			fail("argo-check: %v", err)
		}
		obj, err := readObject(os.Stdin)
		if err != nil {
			fail("argo-check: %v", err)
		}
		h, err := argoHealth(obj, string(script))
		var invalid *errInvalidStatus
		if errors.As(err, &invalid) {
			printHealth(invalid.shown)
			fmt.Fprintf(os.Stderr, "gitops-health: argo-check: %s\n", invalid.reason)
			os.Exit(2)
		}
		if err != nil {
			fail("argo-check: %s: %v", args[1], err)
		}
		printHealth(h)
	case "argo-test":
		if len(args) != 2 {
			fail("argo-test takes one argument, the folder holding health.lua and health_test.yaml")
		}
		failed, err := argoTest(args[1], os.Stdout)
		if err != nil {
			fail("argo-test: %v", err)
		}
		if failed > 0 {
			fmt.Fprintf(os.Stderr, "gitops-health: argo-test: %d case(s) failed\n", failed)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "gitops-health: unknown command %q\n", args[0])
		usage()
		os.Exit(1)
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "gitops-health: "+format+"\n", a...)
	os.Exit(1)
}

func printHealth(h Health) {
	line, err := json.Marshal(h)
	if err != nil {
		fail("encoding the result: %v", err)
	}
	fmt.Println(string(line))
}

// versionLine names each library with the version it was built with, e.g.
// "github.com/fluxcd/cli-utils v0.36.0-flux.13 github.com/yuin/gopher-lua v1.1.2 ...".
func versionLine() string {
	found := map[string]string{}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			v := dep.Version
			if dep.Replace != nil {
				v = dep.Replace.Version
			}
			found[dep.Path] = v
		}
	}
	parts := make([]string, 0, len(reportedModules))
	for _, m := range reportedModules {
		v := found[m]
		if v == "" {
			v = "(unknown)"
		}
		parts = append(parts, m+" "+v)
	}
	return strings.Join(parts, " ")
}

// readObject decodes exactly one object, JSON or YAML, the way the API client hands it to both
// tools: as unstructured content with integers as int64.
func readObject(r io.Reader) (*unstructured.Unstructured, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading the object: %w", err)
	}
	return parseObject(data)
}

func parseObject(data []byte) (*unstructured.Unstructured, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("no object on stdin (expected one Kubernetes object as JSON or YAML)")
	}
	dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var docs []json.RawMessage
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("the input is neither a JSON nor a YAML object: %w", err)
		}
		if t := bytes.TrimSpace(raw); len(t) == 0 || bytes.Equal(t, []byte("null")) {
			continue // an empty YAML document, e.g. a leading or trailing "---"
		}
		docs = append(docs, raw)
	}
	switch {
	case len(docs) == 0:
		return nil, errors.New("no object in the input (only empty documents)")
	case len(docs) > 1:
		return nil, fmt.Errorf("the input holds %d documents; give exactly one object", len(docs))
	}
	if t := bytes.TrimSpace(docs[0]); t[0] != '{' {
		return nil, fmt.Errorf("the input is not an object (it starts with %q)", string(t[:1]))
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(docs[0]); err != nil {
		return nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	if obj.GetAPIVersion() == "" {
		return nil, errors.New("not a Kubernetes object: apiVersion is not set")
	}
	return obj, nil
}

// kstatusHealth is kstatus' verdict, as Flux computes it.
func kstatusHealth(obj *unstructured.Unstructured) (Health, error) {
	res, err := status.Compute(obj)
	if err != nil {
		return Health{}, err
	}
	return Health{Status: res.Status.String(), Message: res.Message}, nil
}

// newArgoState is a Lua state with exactly what Argo CD gives a health script configured in
// argocd-cm without useOpenLibs.
func newArgoState() *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openReducedOs},
	} {
		l.Push(l.NewFunction(lib.open))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	// `require("os")` gets the same reduced table.
	l.PreloadModule(lua.OsLibName, func(l *lua.LState) int {
		l.Push(l.SetFuncs(l.NewTable(), reducedOsFuncs))
		return 1
	})
	return l
}

// argoHealth runs script over obj as Argo CD runs a custom health check and converts what it
// returns as Argo CD does.
func argoHealth(obj *unstructured.Unstructured, script string) (Health, error) {
	return runArgoScript(obj, script, luaTimeout)
}

func runArgoScript(obj *unstructured.Unstructured, script string, timeout time.Duration) (Health, error) {
	l := newArgoState()
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj.Object))

	fn, err := l.LoadString(script)
	if err == nil {
		l.Push(fn)
		err = l.PCall(0, lua.MultRet, nil)
	}
	if err != nil {
		var apiErr *lua.ApiError
		if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
			apiErr.StackTrace = "" // Argo CD drops it too
		}
		if ctx.Err() != nil {
			return Health{}, fmt.Errorf("the script did not finish within %s (Argo CD's limit): %w", timeout, err)
		}
		return Health{}, err
	}
	return convertResult(l.Get(-1))
}

// convertResult turns the script's last return value into a health status as Argo CD does:
// a table is encoded to JSON and decoded into {status, message}; nil, an empty table or a
// field of the wrong type give an empty status (Argo CD shows no health); an unknown status
// becomes Unknown with Argo's message. Everything that is not one of Argo's statuses is
// reported as *errInvalidStatus, with what Argo CD would show.
func convertResult(v lua.LValue) (Health, error) {
	switch v.Type() {
	case lua.LTNil:
		return Health{}, &errInvalidStatus{reason: "the script returned nothing (nil): Argo CD shows no health status for the object"}
	case lua.LTTable:
	default:
		return Health{}, fmt.Errorf("expect table output from Lua script, not %s", v.Type().String())
	}
	encoded, err := luajson.Encode(v)
	if err != nil {
		return Health{}, fmt.Errorf("encoding the returned table: %w", err)
	}
	var r argoResult
	if err := json.Unmarshal(encoded, &r); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return Health{}, &errInvalidStatus{reason: fmt.Sprintf("the returned table %s is not {status = <string>, message = <string>}: Argo CD shows no health status for the object", encoded)}
		}
		return Health{}, err
	}
	if !argoHealthStatuses[r.Status] {
		return Health{}, &errInvalidStatus{
			shown:  Health{Status: "Unknown", Message: argoInvalidStatusMessage},
			reason: fmt.Sprintf("status %q is not one of Healthy, Progressing, Degraded, Suspended, Missing, Unknown", r.Status),
		}
	}
	return Health{Status: r.Status, Message: r.Message}, nil
}

// toLua turns decoded JSON into Lua values the way Argo CD hands `obj` to scripts: objects and
// arrays become tables (arrays 1-based), numbers become numbers, and anything else is nil.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(string(v))
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetH(lua.LString(key), toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// The os functions Argo CD leaves to scripts: time and date. Written here for the same surface;
// a health check should not depend on the clock, so only their common forms are supported.
var reducedOsFuncs = map[string]lua.LGFunction{
	"time": func(l *lua.LState) int {
		if l.GetTop() == 0 {
			l.Push(lua.LNumber(time.Now().Unix()))
			return 1
		}
		t := l.CheckTable(1)
		field := func(name string, def int) int {
			if n, ok := t.RawGetString(name).(lua.LNumber); ok {
				return int(n)
			}
			return def
		}
		at := time.Date(field("year", -1), time.Month(field("month", -1)), field("day", -1),
			field("hour", 12), field("min", 0), field("sec", 0), 0, time.Local)
		l.Push(lua.LNumber(at.Unix()))
		return 1
	},
	"date": func(l *lua.LState) int {
		now := time.Now()
		layout := "%c"
		if l.GetTop() >= 1 {
			layout = l.CheckString(1)
		}
		if strings.HasPrefix(layout, "!") {
			now = now.UTC()
			layout = layout[1:]
		}
		if l.GetTop() >= 2 {
			now = time.Unix(l.CheckInt64(2), 0)
		}
		if layout == "*t" {
			t := l.NewTable()
			t.RawSetString("year", lua.LNumber(now.Year()))
			t.RawSetString("month", lua.LNumber(now.Month()))
			t.RawSetString("day", lua.LNumber(now.Day()))
			t.RawSetString("hour", lua.LNumber(now.Hour()))
			t.RawSetString("min", lua.LNumber(now.Minute()))
			t.RawSetString("sec", lua.LNumber(now.Second()))
			t.RawSetString("wday", lua.LNumber(int(now.Weekday())+1))
			t.RawSetString("yday", lua.LNumber(now.YearDay()))
			t.RawSetString("isdst", lua.LFalse)
			l.Push(t)
			return 1
		}
		l.Push(lua.LString(strftime(now, layout)))
		return 1
	},
}

// strftime covers the C conversions health checks plausibly use.
func strftime(t time.Time, layout string) string {
	var b strings.Builder
	for i := 0; i < len(layout); i++ {
		if layout[i] != '%' || i+1 == len(layout) {
			b.WriteByte(layout[i])
			continue
		}
		i++
		switch layout[i] {
		case 'Y':
			b.WriteString(strconv.Itoa(t.Year()))
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'c':
			b.WriteString(t.Format("Mon Jan  2 15:04:05 2006"))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(layout[i])
		}
	}
	return b.String()
}

func openReducedOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.OsLibName, reducedOsFuncs))
	return 1
}

// The convention of argoproj/argo-cd resource_customizations: health_test.yaml beside
// health.lua lists cases, each an input object and the status the script must return.
type testFile struct {
	Tests []testCase `json:"tests"`
}

type testCase struct {
	InputPath    string     `json:"inputPath"`
	HealthStatus argoResult `json:"healthStatus"`
}

// argoTest runs every case of dir/health_test.yaml through dir/health.lua, prints one line per
// case, and returns how many failed. A file without cases is an error.
func argoTest(dir string, out io.Writer) (int, error) {
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	if err != nil {
		return 0, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "health_test.yaml"))
	if err != nil {
		return 0, err
	}
	var tests testFile
	if err := yaml.UnmarshalStrict(raw, &tests); err != nil {
		return 0, fmt.Errorf("%s: %w", filepath.Join(dir, "health_test.yaml"), err)
	}
	if len(tests.Tests) == 0 {
		return 0, fmt.Errorf("%s has no test cases", filepath.Join(dir, "health_test.yaml"))
	}
	failed := 0
	for _, tc := range tests.Tests {
		got, err := runCase(dir, string(script), tc)
		want := Health{Status: tc.HealthStatus.Status, Message: tc.HealthStatus.Message}
		switch {
		case err != nil:
			failed++
			fmt.Fprintf(out, "FAIL %s: want %s got error: %v\n", tc.InputPath, show(want), err)
		case got != want:
			failed++
			fmt.Fprintf(out, "FAIL %s: want %s got %s\n", tc.InputPath, show(want), show(got))
		default:
			fmt.Fprintf(out, "ok   %s\n", tc.InputPath)
		}
	}
	return failed, nil
}

func runCase(dir, script string, tc testCase) (Health, error) {
	if tc.InputPath == "" {
		return Health{}, errors.New("the case has no inputPath")
	}
	data, err := os.ReadFile(filepath.Join(dir, tc.InputPath))
	if err != nil {
		return Health{}, err
	}
	obj, err := parseObject(data)
	if err != nil {
		return Health{}, err
	}
	return argoHealth(obj, script)
}

func show(h Health) string {
	line, _ := json.Marshal(h)
	return string(line)
}
