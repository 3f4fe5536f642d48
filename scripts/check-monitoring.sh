#!/usr/bin/env bash
# Checks the chart's monitoring pieces (docs/monitoring.md): the PrometheusRule's alerts, their
# unit tests, the Grafana dashboard and, given a scrape of the operator's /metrics, that every
# metric they use is served.
#
#   1. helm lint --strict, with the monitoring objects enabled;
#   2. renders templates/prometheusrule.yaml with the default values, takes its `spec:` out (that is
#      what Prometheus loads) and runs `promtool check rules` on it, then again with non-default
#      values (other thresholds, extra labels, runbook URLs, one alert off);
#   3. `promtool test rules` with tests-rules/alerts_test.yaml against the default rendering;
#   4. the dashboard (dashboards/edge-hierarchy.json) parses as JSON, has the datasource,
#      namespace, hierarchy and daily_quota variables, and templates/dashboard-configmap.yaml
#      carries it unchanged;
#   5. with --metrics FILE: `promtool check metrics` (exposition lint) on FILE, converted from
#      OpenMetrics to the classic text format promtool reads, and that every
#      edge_hierarchy_* name the rules and the dashboard use is in FILE, as a sample or as a
#      family declared with # TYPE (a counter X serves X_total, a histogram X_bucket/_sum/_count).
#
# promtool comes from e2e/tools/promtool/build.sh, helm from e2e/tools/build.sh (both build from
# pinned Go modules into ~/.cache/edge-hierarchy-operator/tools on first use). Needs Go and
# Python 3 (standard library only). Works from any directory.
#
# Usage: scripts/check-monitoring.sh [--metrics FILE]
# Exit:  0 when every check passes, 1 on the first failure (with a message on stderr), 2 on bad usage.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$root/charts/edge-hierarchy-operator"
kube_version="1.34.4"   # the chart requires >=1.33; helm's default capabilities are older

usage() { echo "usage: scripts/check-monitoring.sh [--metrics FILE]" >&2; exit 2; }
metrics=""
while [ $# -gt 0 ]; do
  case "$1" in
    --metrics)
      [ $# -ge 2 ] || usage
      metrics="$2"; shift 2 ;;
    --metrics=*) metrics="${1#--metrics=}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done

fail() { echo "check-monitoring: FAIL: $*" >&2; exit 1; }
step() { echo "check-monitoring: $*" >&2; }

if [ -n "$metrics" ]; then
  [ -f "$metrics" ] || fail "--metrics $metrics: no such file"
  metrics="$(cd "$(dirname "$metrics")" && pwd)/$(basename "$metrics")"
fi
command -v python3 >/dev/null 2>&1 || fail "python3 is not on PATH (needed to read the dashboard JSON and the metrics file)"

promtool="$("$root/e2e/tools/promtool/build.sh")" || fail "could not build promtool (e2e/tools/promtool/build.sh)"
helm_bin="$("$root/e2e/tools/build.sh")" || fail "could not build helm (e2e/tools/build.sh)"
helm="$helm_bin/helm"
[ -x "$helm" ] || fail "e2e/tools/build.sh printed $helm_bin, which holds no helm"
step "promtool: $("$promtool" --version 2>&1 | head -n1)"
step "helm: $("$helm" version --template '{{.Version}}')"

work="$(mktemp -d "${TMPDIR:-/tmp}/check-monitoring.XXXXXX")"
trap 'rm -rf "$work"' EXIT

monitoring_on=(--set prometheusRule.enabled=true --set grafanaDashboard.enabled=true --set podMonitor.enabled=true)

# 1. Lint.
step "helm lint --strict (monitoring enabled)"
"$helm" lint --strict "$chart" "${monitoring_on[@]}" >"$work/lint.out" 2>&1 \
  || { cat "$work/lint.out" >&2; fail "helm lint --strict failed with the monitoring objects enabled"; }
"$helm" lint --strict "$chart" >"$work/lint-default.out" 2>&1 \
  || { cat "$work/lint-default.out" >&2; fail "helm lint --strict failed with the default values"; }

# render OUT ARGS...: renders the chart with ARGS into OUT.
render() {
  local out="$1"; shift
  "$helm" template eho "$chart" --namespace eho-system --kube-version "$kube_version" "$@" >"$out" 2>"$out.err" \
    || { cat "$out.err" >&2; fail "helm template $* failed"; }
}
# The rule groups Prometheus loads: the `spec:` block of the rendered PrometheusRule, de-indented.
extract_spec() {
  awk '
    /^---/ { in_spec = 0 }
    /^spec:[[:space:]]*$/ { in_spec = 1; found = 1; next }
    in_spec && /^[^[:space:]#]/ { in_spec = 0 }
    in_spec { sub(/^  /, ""); print }
    END { if (!found) exit 1 }
  ' "$1" >"$2" || fail "the rendered $1 has no spec: block"
  grep -q '^groups:' "$2" || fail "the PrometheusRule's spec has no groups:"
}

# 2. Rules, as rendered with the default values and with others.
step "render the PrometheusRule and promtool check rules"
render "$work/rule.yaml" --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml
grep -q '^kind: PrometheusRule$' "$work/rule.yaml" || fail "templates/prometheusrule.yaml did not render a PrometheusRule"
grep -q '^apiVersion: monitoring.coreos.com/v1$' "$work/rule.yaml" || fail "the PrometheusRule is not monitoring.coreos.com/v1"
extract_spec "$work/rule.yaml" "$work/alerts.yaml"
"$promtool" check rules "$work/alerts.yaml" >&2 || fail "promtool check rules failed on the default rendering"

render "$work/rule-custom.yaml" --set prometheusRule.enabled=true --show-only templates/prometheusrule.yaml \
  --set prometheusRule.alerts.certificateExpiringSoon.days=3 --set prometheusRule.alerts.certificateRenewalOverdue.thresholdSeconds=60 \
  --set prometheusRule.alerts.stalled.for=1h --set prometheusRule.alerts.iotHubThrottled.window=5m \
  --set prometheusRule.alerts.modulesFailing.enabled=false --set prometheusRule.additionalAlertLabels.team=plant-it \
  --set prometheusRule.runbookBaseURL=https://example.invalid/monitoring --set prometheusRule.labels.release=prom
extract_spec "$work/rule-custom.yaml" "$work/alerts-custom.yaml"
"$promtool" check rules "$work/alerts-custom.yaml" >&2 || fail "promtool check rules failed with non-default values"
grep -q 'EdgeHierarchyModulesFailing' "$work/alerts-custom.yaml" && fail "prometheusRule.alerts.modulesFailing.enabled=false still renders the alert"
grep -q 'team: plant-it' "$work/alerts-custom.yaml" || fail "prometheusRule.additionalAlertLabels are not on the alerts"
grep -q '< 3 \* 86400' "$work/alerts-custom.yaml" || fail "prometheusRule.alerts.certificateExpiringSoon.days is not used"
render "$work/rule-off.yaml"
grep -q 'kind: PrometheusRule' "$work/rule-off.yaml" && fail "the chart renders a PrometheusRule although prometheusRule.enabled is false"
grep -q 'grafana_dashboard' "$work/rule-off.yaml" && fail "the chart renders the dashboard ConfigMap although grafanaDashboard.enabled is false"

# 3. Unit tests. promtool resolves rule_files next to the test file, so both go in $work.
step "promtool test rules tests-rules/alerts_test.yaml"
cp "$chart/tests-rules/alerts_test.yaml" "$work/alerts_test.yaml"
"$promtool" test rules "$work/alerts_test.yaml" >&2 || fail "promtool test rules failed (tests-rules/alerts_test.yaml)"

# 4. Dashboard.
step "dashboard JSON and its ConfigMap"
render "$work/dashboard.yaml" --set grafanaDashboard.enabled=true --show-only templates/dashboard-configmap.yaml
python3 - "$chart/dashboards/edge-hierarchy.json" "$work/dashboard.yaml" <<'PY' || fail "the dashboard check failed"
import json, sys
path, rendered = sys.argv[1], sys.argv[2]
try:
    dash = json.load(open(path))
except ValueError as e:
    sys.exit(f"{path} is not JSON: {e}")
names = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
missing = {"datasource", "namespace", "hierarchy", "daily_quota"} - names
if missing:
    sys.exit(f"{path} lacks the template variables {sorted(missing)}")
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash.get("panels", [])):
    if p.get("type") == "row":
        continue
    if not p.get("targets"):
        sys.exit(f"panel {p.get('title')!r} has no queries")
    for t in p["targets"]:
        if t.get("datasource", {}).get("uid") != "${datasource}":
            sys.exit(f"panel {p.get('title')!r} does not use the datasource variable")
# The ConfigMap must carry the file byte for byte (indented by 4 under the key).
lines = open(rendered).read().split("\n")
try:
    start = lines.index("  edge-hierarchy.json: |-") + 1
except ValueError:
    sys.exit("the dashboard ConfigMap has no edge-hierarchy.json key")
body = []
for line in lines[start:]:
    if line and not line.startswith("    "):
        break
    body.append(line[4:])
while body and body[-1] == "":
    body.pop()
if json.loads("\n".join(body)) != dash:
    sys.exit("the dashboard ConfigMap does not carry dashboards/edge-hierarchy.json unchanged")
if 'grafana_dashboard: "1"' not in open(rendered).read():
    sys.exit("the dashboard ConfigMap lacks the label grafana_dashboard: \"1\"")
PY

# 5. A scrape of /metrics.
if [ -n "$metrics" ]; then
  # promtool check metrics reads only the classic text format (0.0.4). The operator serves
  # OpenMetrics, where a counter family X is declared without _total and serves X_total, so
  # promlint would see every counter as an untyped family without help. Convert first, the way
  # Prometheus reads OpenMetrics: counter families take the _total name, _created samples,
  # exemplars, # UNIT and # EOF go.
  step "promtool check metrics < $metrics (OpenMetrics converted to the classic text format)"
  python3 - "$metrics" >"$work/metrics.prom" <<'PY' || fail "could not read $metrics as OpenMetrics or Prometheus text"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
types = {}
for line in lines:
    parts = line.split()
    if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
        types[parts[2]] = parts[3]
def family_of(sample):
    for suffix in ("_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_gcount", "_info"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in types:
            return sample[: -len(suffix)], suffix
    return sample, ""
out = []
for line in lines:
    if not line.strip() or line.strip() == "# EOF":
        continue
    parts = line.split(None, 3)
    if line.startswith("#"):
        if len(parts) >= 3 and parts[1] in ("HELP", "TYPE", "UNIT"):
            name, kind = parts[2], types.get(parts[2], "untyped")
            if parts[1] == "UNIT":
                continue
            if kind == "counter" and not name.endswith("_total"):
                name += "_total"
            elif kind == "info":
                name += "_info"
            if parts[1] == "TYPE":
                kind = {"unknown": "untyped", "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}.get(kind, kind)
                out.append(f"# TYPE {name} {kind}")
            else:
                out.append(f"# HELP {name} {parts[3] if len(parts) > 3 else ''}".rstrip())
        continue
    sample = re.split(r"[{\s]", line, maxsplit=1)[0]
    family, suffix = family_of(sample)
    if suffix == "_created":
        continue
    out.append(re.sub(r"\s+#\s*\{.*$", "", line))
print("\n".join(out))
PY
  "$promtool" check metrics <"$work/metrics.prom" >"$work/lint-metrics.out" 2>&1 \
    || { cat "$work/lint-metrics.out" >&2; fail "promtool check metrics found problems in $metrics"; }
  step "every metric the rules and the dashboard use is in $metrics"
  python3 - "$metrics" "$work/alerts.yaml" "$chart/dashboards/edge-hierarchy.json" <<'PY' || fail "the rules or the dashboard use metrics $metrics does not have"
import re, sys
scrape, users = sys.argv[1], sys.argv[2:]
served, families = set(), {}
for line in open(scrape):
    line = line.strip()
    if not line:
        continue
    if line.startswith("#"):
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "TYPE":
            families[parts[2]] = parts[3]
        continue
    served.add(re.split(r"[{\s]", line, maxsplit=1)[0])
suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
            "gaugehistogram": ["_bucket", "_gsum", "_gcount"], "summary": ["", "_sum", "_count", "_created"],
            "info": ["_info"], "stateset": [""], "gauge": [""], "unknown": [""], "untyped": [""]}
for name, kind in families.items():
    for s in suffixes.get(kind, [""]):
        served.add(name + s)
missing = {}
for path in users:
    for name in re.findall(r"\bedge_hierarchy_[A-Za-z0-9_:]+", open(path).read()):
        if name not in served:
            missing.setdefault(name, set()).add(path.rsplit("/", 1)[-1])
for name, where in sorted(missing.items()):
    print(f"  {name} (used in {', '.join(sorted(where))})", file=sys.stderr)
if missing:
    sys.exit(f"{len(missing)} metric names are not in {scrape}")
print(f"check-monitoring: {len(served)} series names served; every edge_hierarchy_* name used is among them", file=sys.stderr)
PY
fi

echo "check-monitoring: OK" >&2
