package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

const object = `apiVersion: edgehierarchy.dev/v1alpha1
kind: EdgeHierarchy
metadata: {name: tutorial, namespace: iot, generation: 3}
spec: {}
status:
  observedGeneration: 3
  conditions:
  - {type: Ready, status: "True", reason: Reconciled, message: ok}
`

func mustParse(t *testing.T, text string) *unstructured.Unstructured {
	t.Helper()
	obj, err := parseObject([]byte(text))
	if err != nil {
		t.Fatalf("parseObject: %v", err)
	}
	return obj
}

func run(t *testing.T, script string) (Health, error) {
	t.Helper()
	return argoHealth(mustParse(t, object), script)
}

func TestParseObjectAcceptsOneYAMLOrJSONObject(t *testing.T) {
	for name, text := range map[string]string{
		"yaml":                 object,
		"yaml between ---":     "---\n" + object + "---\n",
		"json":                 `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","generation":2}}`,
		"json with blank ends": "\n  {\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"x\"}}\n\n",
	} {
		t.Run(name, func(t *testing.T) {
			obj := mustParse(t, text)
			if obj.GetKind() == "" || obj.GetName() == "" {
				t.Fatalf("kind %q name %q", obj.GetKind(), obj.GetName())
			}
		})
	}
	// kstatus reads generations with NestedInt64: the decoder must give int64, not float64.
	if _, ok := mustParse(t, object).Object["metadata"].(map[string]any)["generation"].(int64); !ok {
		t.Fatal("metadata.generation is not an int64")
	}
}

func TestParseObjectRejectsBadInput(t *testing.T) {
	for name, tc := range map[string]struct{ text, want string }{
		"empty":         {"", "no object"},
		"blank":         {" \n\t\n", "no object"},
		"only ---":      {"---\n---\n", "only empty documents"},
		"two documents": {object + "---\n" + object, "2 documents"},
		"a list":        {"- a\n- b\n", "not an object"},
		"a scalar":      {"hello\n", "not an object"},
		"no kind":       {"apiVersion: v1\nmetadata: {name: x}\n", "Kind"},
		"no apiVersion": {"kind: ConfigMap\nmetadata: {name: x}\n", "apiVersion"},
		"broken yaml":   {"a: [\n", "neither a JSON nor a YAML"},
		"broken json":   {`{"kind": `, "neither a JSON nor a YAML"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseObject([]byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestKstatusFollowsGenerationAndConditions(t *testing.T) {
	for name, tc := range map[string]struct{ text, want string }{
		"ready": {object, "Current"},
		"behind": {strings.Replace(object, "observedGeneration: 3", "observedGeneration: 2", 1),
			"InProgress"},
		"stalled": {object + `  - {type: Stalled, status: "True", reason: InvalidSpec, message: bad}` + "\n",
			"Failed"},
		"no status": {"apiVersion: edgehierarchy.dev/v1alpha1\nkind: EdgeHierarchy\nmetadata: {name: x, generation: 1}\n",
			"Current"},
	} {
		t.Run(name, func(t *testing.T) {
			h, err := kstatusHealth(mustParse(t, tc.text))
			if err != nil || h.Status != tc.want {
				t.Fatalf("got %+v, %v; want %s", h, err, tc.want)
			}
		})
	}
}

func TestObjectIsTheGlobalObj(t *testing.T) {
	h, err := run(t, `return {status = "Healthy", message = obj.kind .. " " .. obj.metadata.generation .. " " .. obj.status.conditions[1].type}`)
	if err != nil || h != (Health{"Healthy", "EdgeHierarchy 3 Ready"}) {
		t.Fatalf("got %+v, %v", h, err)
	}
}

func TestOnlyArgoLibrariesAreOpen(t *testing.T) {
	// What Argo CD opens for an argocd-cm check: package, base, table, and os with time and date.
	h, err := run(t, `
local present = {}
local function mark(name, value) if value ~= nil then present[#present + 1] = name end end
mark("string", string) mark("math", math) mark("io", io) mark("coroutine", coroutine)
mark("debug", debug) mark("channel", channel)
mark("table", table) mark("require", require) mark("pairs", pairs) mark("ipairs", ipairs)
mark("os.time", os.time) mark("os.date", os.date) mark("os.exit", os.exit)
mark("os.execute", os.execute) mark("os.getenv", os.getenv) mark("os.remove", os.remove)
mark("required os.time", require("os").time) mark("required os.exit", require("os").exit)
return {status = "Healthy", message = table.concat(present, ",")}`)
	want := "table,require,pairs,ipairs,os.time,os.date,required os.time"
	if err != nil || h.Message != want {
		t.Fatalf("got %+v, %v; want %s", h, err, want)
	}
}

func TestStringMethodsAreUnavailable(t *testing.T) {
	// Without the string library, strings have no methods; a check relying on them fails in Argo.
	if _, err := run(t, `return {status = ("Healthy"):lower()}`); err == nil {
		t.Fatal("a string method worked, but Argo CD opens no string library")
	}
}

func TestTimeoutStopsARunawayScript(t *testing.T) {
	start := time.Now()
	_, err := runArgoScript(mustParse(t, object), `while true do end`, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not finish within 100ms") {
		t.Fatalf("got %v", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("took %s", elapsed)
	}
	if luaTimeout != time.Second {
		t.Fatalf("Argo CD gives scripts 1s, not %s", luaTimeout)
	}
}

func TestConversion(t *testing.T) {
	for name, tc := range map[string]struct {
		script  string
		want    Health
		invalid bool   // not one of Argo's statuses: *errInvalidStatus, with what Argo shows
		err     string // any other error
	}{
		"status and message":   {script: `return {status = "Degraded", message = "m"}`, want: Health{"Degraded", "m"}},
		"status only":          {script: `return {status = "Suspended"}`, want: Health{"Suspended", ""}},
		"extra fields ignored": {script: `return {status = "Missing", message = "m", extra = 1}`, want: Health{"Missing", "m"}},
		"last value counts":    {script: `return 1, {status = "Healthy"}`, want: Health{"Healthy", ""}},
		"every status": {script: `local s = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
			return {status = s[6]}`, want: Health{"Unknown", ""}},
		"unknown status":     {script: `return {status = "Fine"}`, want: Health{"Unknown", argoInvalidStatusMessage}, invalid: true},
		"lower-case status":  {script: `return {status = "healthy"}`, want: Health{"Unknown", argoInvalidStatusMessage}, invalid: true},
		"no status":          {script: `return {message = "m"}`, want: Health{"Unknown", argoInvalidStatusMessage}, invalid: true},
		"empty table":        {script: `return {}`, invalid: true},
		"status of a number": {script: `return {status = 5}`, invalid: true},
		"an array":           {script: `return {"Healthy"}`, invalid: true},
		"nothing":            {script: `local x = 1`, invalid: true},
		"nil":                {script: `return nil`, invalid: true},
		"a string":           {script: `return "Healthy"`, err: "expect table output from Lua script, not string"},
		"a syntax error":     {script: `return {status = `, err: "<string>"},
		"a runtime error":    {script: `return {status = obj.nothing.here}`, err: "attempt to index"},
	} {
		t.Run(name, func(t *testing.T) {
			h, err := run(t, tc.script)
			var invalid *errInvalidStatus
			switch {
			case tc.invalid:
				if !errors.As(err, &invalid) || invalid.shown != tc.want {
					t.Fatalf("got %+v, %v; want an invalid status shown as %+v", h, err, tc.want)
				}
			case tc.err != "":
				if err == nil || errors.As(err, &invalid) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %+v, %v; want an error containing %q", h, err, tc.err)
				}
			default:
				if err != nil || h != tc.want {
					t.Fatalf("got %+v, %v; want %+v", h, err, tc.want)
				}
			}
		})
	}
}

func TestRuntimeErrorsHaveNoStackTrace(t *testing.T) {
	_, err := run(t, `error("broken")`)
	if err == nil || strings.Contains(err.Error(), "stack traceback") {
		t.Fatalf("got %v", err)
	}
}

func writeCase(t *testing.T, dir, script, tests string, inputs map[string]string) {
	t.Helper()
	files := map[string]string{"health.lua": script, "health_test.yaml": tests}
	for name, text := range inputs {
		files[filepath.Join("testdata", name)] = text
	}
	for name, text := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestArgoTestReportsEachCase(t *testing.T) {
	dir := t.TempDir()
	writeCase(t, dir,
		`for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" and c.status == "True" then return {status = "Healthy", message = c.message} end
end
return {status = "Progressing", message = "waiting"}`,
		`tests:
- healthStatus: {status: Healthy, message: ok}
  inputPath: testdata/ready.yaml
- healthStatus: {status: Degraded, message: ok}
  inputPath: testdata/ready.yaml
- healthStatus: {status: Healthy}
  inputPath: testdata/missing.yaml
`, map[string]string{"ready.yaml": object})
	var out strings.Builder
	failed, err := argoTest(dir, &out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if failed != 2 || len(lines) != 3 {
		t.Fatalf("failed %d, output:\n%s", failed, out.String())
	}
	if lines[0] != "ok   testdata/ready.yaml" {
		t.Errorf("line 1: %s", lines[0])
	}
	if want := `FAIL testdata/ready.yaml: want {"status":"Degraded","message":"ok"} got {"status":"Healthy","message":"ok"}`; lines[1] != want {
		t.Errorf("line 2: %s", lines[1])
	}
	if !strings.HasPrefix(lines[2], "FAIL testdata/missing.yaml: want ") || !strings.Contains(lines[2], "got error") {
		t.Errorf("line 3: %s", lines[2])
	}
}

func TestArgoTestRejectsAFileWithoutCases(t *testing.T) {
	for name, tests := range map[string]string{
		"empty list":    "tests: []\n",
		"empty file":    "",
		"unknown field": "test:\n- inputPath: testdata/x.yaml\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeCase(t, dir, `return {status = "Healthy"}`, tests, nil)
			if _, err := argoTest(dir, &strings.Builder{}); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func TestVersionLineNamesEveryLibrary(t *testing.T) {
	line := versionLine()
	for _, m := range reportedModules {
		if !strings.Contains(line, m+" ") {
			t.Errorf("%q does not name %s", line, m)
		}
	}
}
