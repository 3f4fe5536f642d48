#!/usr/bin/env python3
"""Draws the chart's Grafana dashboard as one PNG from a Prometheus server, without Grafana.

Reads the dashboard JSON (charts/edge-hierarchy-operator/dashboards/edge-hierarchy.json), takes
every panel's title, gridPos, type and targets (expr, legendFormat, instant), substitutes the
template variables the way Grafana would with the values given here (namespace and hierarchy
"All", i.e. the regex `.*`; daily_quota the dashboard's default; $__rate_interval and $__interval
from the step and the scrape interval), runs each query against Prometheus' HTTP API
(query_range over the run, or query at its end for instant targets) and draws the panels at
their grid positions: time series as lines (stacked where the panel stacks) with the legend table
the panel asks for (last, max), stat panels and bar gauges as the last value coloured by the
panel's thresholds. A footer says where the picture comes from.

It is a stand-in for a screenshot, not Grafana: fonts, colours and layout only resemble it.
scripts/render-dashboard.sh runs a real fleet, a Prometheus that scrapes it and then this script.

Usage: render-dashboard.py --prometheus URL --start UNIX --end UNIX --out PNG
                           [--dashboard JSON] [--events TSV] [--scrape-interval S] [--step S]
                           [--namespace REGEX] [--hierarchy REGEX] [--daily-quota N]
"""
import argparse
import datetime as dt
import io
import json
import math
import os
import re
import textwrap
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402  (Pillow comes with matplotlib)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DASHBOARD = os.path.join(ROOT, "charts/edge-hierarchy-operator/dashboards/edge-hierarchy.json")

# Grafana's dark theme, roughly.
BG = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
DIM = "#8e8e9e"
GRID = "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#705da0", "#37872d", "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c",
           "#6d1f62", "#584477", "#b7dbab", "#f4d598", "#70dbed", "#f9ba8f"]
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a",
         "blue": "#5794f2", "purple": "#b877d9", "text": TEXT}

PX_W = 1600          # figure width in pixels (24 grid columns)
ROW_PX = 36          # one grid row unit in pixels (Grafana: 30 px plus margins)
DPI = 100
HEADER_PX = 70
PAD_PX = 4


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--start", type=float, required=True, help="Unix time of the range's start")
    p.add_argument("--end", type=float, required=True, help="Unix time of the range's end")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--dashboard", default=DEFAULT_DASHBOARD)
    p.add_argument("--events", help="TSV of <unix time> <label>: numbered markers on the time series")
    p.add_argument("--scrape-interval", type=float, default=5.0, help="Prometheus' scrape interval in s")
    p.add_argument("--step", type=float, help="query_range step in s (default: range/400, at least the scrape interval)")
    p.add_argument("--namespace", default=".*", help="value of $namespace (default: All)")
    p.add_argument("--hierarchy", default=".*", help="value of $hierarchy (default: All)")
    p.add_argument("--daily-quota", help="value of $daily_quota (default: the dashboard's)")
    p.add_argument("--note", default="", help="extra text for the footer")
    return p.parse_args()


# ---- Prometheus ---------------------------------------------------------------------------------

def prom(base, path, params):
    url = f"{base.rstrip('/')}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=60) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def build_info(base):
    try:
        return prom(base, "status/buildinfo", {}).get("version", "?")
    except Exception:  # noqa: BLE001 - only decoration
        return "?"


# ---- the dashboard ------------------------------------------------------------------------------

def panels_of(dash):
    for p in dash.get("panels", []):
        yield p
        for q in p.get("panels", []):   # collapsed rows keep their panels inside
            yield q


def substitute(expr, values):
    # Longest names first so $__rate_interval is not read as $__rate followed by text.
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def legend(fmt, metric, expr):
    if not fmt:
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
        return f"{metric.get('__name__', '')}{{{labels}}}" if labels or metric else expr
    return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()


def value(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


# ---- units --------------------------------------------------------------------------------------

def short(v, decimals=None):
    if v is None or math.isnan(v):
        return "-"
    a = abs(v)
    for div, suf in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if a >= div:
            return f"{v / div:.{1 if decimals is None else decimals}f}{suf}"
    if decimals is not None:
        return f"{v:.{decimals}f}"
    if a == 0 or a >= 100 or float(v).is_integer():
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.2f}"
    return f"{v:.3g}"


def percent(v, decimals=None):
    if v is None or math.isnan(v):
        return "-"
    x = v * 100
    if decimals is not None:
        return f"{x:.{decimals}f}%"
    a = abs(x)
    if a == 0 or a >= 10 or float(x).is_integer():
        return f"{x:.0f}%"
    if a >= 1:
        return f"{x:.1f}%"
    if a >= 0.01:
        return f"{x:.2f}%"
    return f"{x:.2g}%"


def seconds(v, decimals=None):
    if v is None or math.isnan(v):
        return "-"
    a = abs(v)
    if a == 0:
        return "0 s"
    if a < 1:
        return f"{v * 1000:.{0 if decimals is None else decimals}f} ms"
    for div, suf in ((86400 * 365, "year"), (86400, "day"), (3600, "hour"), (60, "min")):
        if a >= div:
            return f"{short(v / div, decimals)} {suf}"
    return f"{short(v, decimals)} s"


def formatter(unit, decimals=None):
    unit = unit or "short"
    if unit == "percentunit":
        return lambda v: percent(v, decimals)
    if unit == "s":
        return lambda v: seconds(v, decimals)
    if unit == "ops":
        return lambda v: f"{short(v, decimals)} ops/s"
    if unit == "reqps":
        return lambda v: f"{short(v, decimals)} req/s"
    if unit.startswith("suffix:"):
        suffix = unit[len("suffix:"):]
        return lambda v: f"{short(v, decimals)}{suffix}"
    return lambda v: short(v, decimals)


def threshold_color(v, field):
    steps = (field.get("thresholds") or {}).get("steps") or [{"color": "green", "value": None}]
    color = steps[0]["color"]
    for s in steps:
        if s.get("value") is None or (v is not None and not math.isnan(v) and v >= s["value"]):
            color = s["color"]
    return NAMED.get(color, color)


# ---- drawing ------------------------------------------------------------------------------------

class Canvas:
    def __init__(self, rows):
        self.height_px = HEADER_PX + rows * ROW_PX + FOOTER_PX
        self.fig = plt.figure(figsize=(PX_W / DPI, self.height_px / DPI), dpi=DPI, facecolor=BG)

    def rect(self, x_px, y_px, w_px, h_px):
        """Figure coordinates of a box given in pixels from the top left."""
        return (x_px / PX_W, 1 - (y_px + h_px) / self.height_px, w_px / PX_W, h_px / self.height_px)

    def text(self, x_px, y_px, s, **kw):
        self.fig.text(x_px / PX_W, 1 - y_px / self.height_px, s, **kw)


FOOTER_PX = 150


def panel_box(cv, gp):
    col = PX_W / 24
    x, y = gp["x"] * col + PAD_PX, HEADER_PX + gp["y"] * ROW_PX + PAD_PX
    w, h = gp["w"] * col - 2 * PAD_PX, gp["h"] * ROW_PX - 2 * PAD_PX
    bg = cv.fig.add_axes(cv.rect(x, y, w, h))
    bg.set_axis_off()
    bg.add_patch(FancyBboxPatch((0, 0), 1, 1, boxstyle="round,pad=0,rounding_size=0.01",
                                transform=bg.transAxes, facecolor=PANEL, edgecolor=BORDER, lw=0.8))
    return x, y, w, h, bg


def draw_title(cv, x, y, title):
    cv.text(x + 8, y + 6, title, color=TEXT, fontsize=9.5, fontweight="bold", va="top")


def draw_timeseries(cv, panel, series, t0, t1, events):
    x, y, w, h, _ = panel_box(cv, panel["gridPos"])
    draw_title(cv, x, y, panel["title"])
    field = panel.get("fieldConfig", {}).get("defaults", {})
    fmt = formatter(field.get("unit"), field.get("decimals"))
    custom = field.get("custom", {})
    stacked = (custom.get("stacking") or {}).get("mode", "none") == "normal"
    calcs = panel.get("options", {}).get("legend", {}).get("calcs", [])

    row_px = 12
    max_rows = max(1, int((h * 0.42 - row_px) // row_px))
    shown = series
    hidden = 0
    if len(series) > max_rows:   # Grafana scrolls the legend; here the largest series are listed
        shown = sorted(series, key=lambda s: -max([v for v in s["v"] if not math.isnan(v)] or [0]))[:max_rows - 1]
        hidden = len(series) - len(shown)
    legend_px = (len(shown) + (1 if hidden else 0) + (1 if calcs else 0)) * row_px + 6 if series else 0
    top, left, right, bottom_axis = 26, 58, 10, 18
    ax = cv.fig.add_axes(cv.rect(x + left, y + top, w - left - right, h - top - bottom_axis - legend_px))
    ax.set_facecolor(PANEL)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.grid(True, color=GRID, lw=0.6)
    ax.tick_params(colors=DIM, labelsize=7.5, length=0, pad=3)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=dt.timezone.utc))
    ax.xaxis.set_major_locator(mdates.MinuteLocator(byminute=range(0, 60, 2), tz=dt.timezone.utc))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10], min_n_ticks=2,
                                           integer=field.get("unit", "short") == "short" and not field.get("decimals")))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    ax.set_xlim(mdates.date2num(dt.datetime.fromtimestamp(t0, dt.timezone.utc)),
                mdates.date2num(dt.datetime.fromtimestamp(t1, dt.timezone.utc)))

    base = None
    top_val = 0.0
    for i, s in enumerate(series):
        s["color"] = PALETTE[i % len(PALETTE)]
        ts = [dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in s["t"]]
        vals = s["v"]
        if stacked:
            # Stack on the same timestamps (query_range aligns them to the step).
            if base is None:
                base = {}
            lower = [base.get(t, 0.0) for t in s["t"]]
            upper = [lo + (0.0 if math.isnan(v) else v) for lo, v in zip(lower, vals)]
            for t, u in zip(s["t"], upper):
                base[t] = u
            ax.fill_between(ts, lower, upper, color=s["color"], alpha=0.25, lw=0, step=None)
            ax.plot(ts, upper, color=s["color"], lw=1.1)
            top_val = max([top_val] + upper)
        else:
            ax.fill_between(ts, 0, [0 if math.isnan(v) else v for v in vals], color=s["color"], alpha=0.08, lw=0)
            ax.plot(ts, vals, color=s["color"], lw=1.1)
            top_val = max([top_val] + [v for v in vals if not math.isnan(v)])
    lo = field.get("min", None)
    hi = field.get("max", None)
    if top_val <= 0 and hi is None:
        hi_auto = 1.0
    else:
        hi_auto = top_val * 1.08
    ax.set_ylim(lo if lo is not None else 0, hi if hi is not None else hi_auto)
    if not series:
        ax.text(0.5, 0.5, "No data", color=DIM, fontsize=10, ha="center", va="center", transform=ax.transAxes)

    for n, (t, _) in enumerate(events, 1):
        when = mdates.date2num(dt.datetime.fromtimestamp(t, dt.timezone.utc))
        ax.axvline(when, color="#9fa7b3", lw=0.7, ls=(0, (3, 3)), alpha=0.8)
        ax.text(when, 0.985, str(n), color="#ffffff", fontsize=6.5, va="top", ha="center",
                transform=ax.get_xaxis_transform(), clip_on=False,
                bbox=dict(boxstyle="round,pad=0.18", facecolor="#3d71d9", edgecolor="none"))

    # The legend table: name, then the panel's calcs (last, max).
    if series:
        ly = y + h - legend_px - 2
        cols = [c for c in calcs if c in ("lastNotNull", "max", "mean", "min")]
        names = {"lastNotNull": "Last *", "max": "Max", "mean": "Mean", "min": "Min"}
        col_w = 62
        if cols:
            for j, c in enumerate(cols):
                cv.text(x + w - 10 - (len(cols) - 1 - j) * col_w, ly, names[c], color="#5794f2",
                        fontsize=7, ha="right", va="top")
            ly += row_px
        for s in shown:
            good = [v for v in s["v"] if not math.isnan(v)]
            stats = {"lastNotNull": good[-1] if good else math.nan, "max": max(good) if good else math.nan,
                     "mean": sum(good) / len(good) if good else math.nan, "min": min(good) if good else math.nan}
            cv.fig.patches.append(Rectangle(((x + 10) / PX_W, 1 - (ly + 8) / cv.height_px), 12 / PX_W,
                                            3 / cv.height_px, transform=cv.fig.transFigure,
                                            facecolor=s["color"], edgecolor="none"))
            name = s["name"]
            max_chars = int((w - 30 - len(cols) * col_w) / 5.2)
            if len(name) > max_chars:
                name = name[:max_chars - 1] + "…"
            cv.text(x + 26, ly, name, color=TEXT, fontsize=7, va="top")
            for j, c in enumerate(cols):
                cv.text(x + w - 10 - (len(cols) - 1 - j) * col_w, ly, fmt(stats[c]), color=TEXT,
                        fontsize=7, ha="right", va="top")
            ly += row_px
        if hidden:
            cv.text(x + 26, ly, f"… and {hidden} more series (Grafana scrolls the legend)", color=DIM,
                    fontsize=7, va="top")


def draw_stat(cv, panel, series, t0, t1):
    x, y, w, h, bg = panel_box(cv, panel["gridPos"])
    field = panel.get("fieldConfig", {}).get("defaults", {})
    opts = panel.get("options", {})
    fmt = formatter(field.get("unit"), field.get("decimals"))
    mode = opts.get("colorMode", "value")
    with_name = opts.get("textMode") == "value_and_name" or len(series) > 1
    if not series:
        draw_title(cv, x, y, panel["title"])
        cv.text(x + w / 2, y + h / 2 + 8, "No data", color=DIM, fontsize=11, ha="center", va="center")
        return
    n = len(series)
    inner_x, inner_y, inner_w, inner_h = x + 6, y + 24, w - 12, h - 30
    cell_w = inner_w / n
    for i, s in enumerate(series):
        good = [v for v in s["v"] if not math.isnan(v)]
        v = good[-1] if good else math.nan
        color = threshold_color(v, field)
        cx = inner_x + i * cell_w
        if mode == "background":
            a = cv.fig.add_axes(cv.rect(cx + 2, inner_y, cell_w - 4, inner_h))
            a.set_axis_off()
            a.add_patch(Rectangle((0, 0), 1, 1, transform=a.transAxes, facecolor=color, edgecolor="none"))
            vcolor, ncolor = "#ffffff", "#ffffff"
        else:
            vcolor, ncolor = color, TEXT
        size = min(30, inner_h * 0.42, cell_w / max(3, len(fmt(v))) * 1.3)
        spark = opts.get("graphMode") == "area" and len(s["t"]) > 1
        if spark:
            # Grafana's sparkline: the series over the time range, under the value.
            sa = cv.fig.add_axes(cv.rect(cx + 2, inner_y + inner_h * 0.55, cell_w - 4, inner_h * 0.45))
            sa.set_axis_off()
            sa.set_xlim(t0, t1)
            vals = [0 if math.isnan(u) else u for u in s["v"]]
            sa.set_ylim(0, max(vals + [1]) * 1.15)
            line = "#ffffff" if mode == "background" else color
            sa.fill_between(s["t"], 0, vals, color=line, alpha=0.25, lw=0, step="post")
            sa.step(s["t"], vals, where="post", color=line, lw=1.0, alpha=0.8)
            size = min(size, inner_h * 0.36)
        if with_name:
            cv.text(cx + cell_w / 2, inner_y + inner_h * 0.30, s["name"], color=ncolor, fontsize=8,
                    ha="center", va="center")
            cv.text(cx + cell_w / 2, inner_y + inner_h * 0.66, fmt(v), color=vcolor, fontsize=size,
                    fontweight="bold", ha="center", va="center")
        else:
            cv.text(cx + cell_w / 2, inner_y + inner_h * (0.32 if spark else 0.52), fmt(v), color=vcolor,
                    fontsize=size, fontweight="bold", ha="center", va="center")
    draw_title(cv, x, y, panel["title"])


def draw_bargauge(cv, panel, series):
    x, y, w, h, _ = panel_box(cv, panel["gridPos"])
    draw_title(cv, x, y, panel["title"])
    field = panel.get("fieldConfig", {}).get("defaults", {})
    fmt = formatter(field.get("unit"), field.get("decimals"))
    if not series:
        cv.text(x + w / 2, y + h / 2, "No data", color=DIM, fontsize=11, ha="center", va="center")
        return
    vals = []
    for s in series:
        good = [v for v in s["v"] if not math.isnan(v)]
        vals.append(good[-1] if good else math.nan)
    lo = field.get("min", 0) or 0
    hi = field.get("max")
    if hi is None:
        hi = max([v for v in vals if not math.isnan(v)] or [1]) or 1
    inner_y, inner_h = y + 28, h - 36
    slot = inner_h / len(series)
    bar_h = min(22, slot * 0.5)
    for i, (s, v) in enumerate(zip(series, vals)):
        sy = inner_y + i * slot
        color = threshold_color(v, field)
        cv.text(x + 10, sy + 2, s["name"], color=TEXT, fontsize=8, va="top")
        bx, bw = x + 10, w - 90
        a = cv.fig.add_axes(cv.rect(bx, sy + 15, bw, bar_h))
        a.set_axis_off()
        a.set_xlim(0, 1)
        a.add_patch(Rectangle((0, 0), 1, 1, facecolor="#22252b", edgecolor="none"))
        frac = 0 if math.isnan(v) else max(0.0, min(1.0, (v - lo) / (hi - lo)))
        a.add_patch(Rectangle((0, 0), frac, 1, facecolor=color, edgecolor="none", alpha=0.85))
        cv.text(x + w - 10, sy + 15 + bar_h / 2, fmt(v), color=color, fontsize=12, fontweight="bold",
                ha="right", va="center")


def main():
    args = parse_args()
    dash = json.load(open(args.dashboard))
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    quota = args.daily_quota or str((variables.get("daily_quota", {}).get("current") or {}).get("value", "400000"))
    rng = args.end - args.start
    step = args.step or max(args.scrape_interval, math.ceil(rng / 400))
    # Grafana: $__rate_interval = max($__interval + scrape interval, 4 * scrape interval), with the
    # data source's scrape interval set to Prometheus' own.
    rate_interval = max(step + args.scrape_interval, 4 * args.scrape_interval)
    values = {"namespace": args.namespace, "hierarchy": args.hierarchy, "daily_quota": quota,
              "datasource": "prometheus", "__rate_interval": f"{int(rate_interval)}s",
              "__interval": f"{int(step)}s", "__range": f"{int(rng)}s"}
    events = []
    if args.events and os.path.exists(args.events):
        for line in open(args.events):
            if line.strip():
                t, label = line.rstrip("\n").split("\t", 1)
                events.append((float(t), label))

    panels = [p for p in panels_of(dash)]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    cv = Canvas(rows)
    t0s = dt.datetime.fromtimestamp(args.start, dt.timezone.utc)
    t1s = dt.datetime.fromtimestamp(args.end, dt.timezone.utc)
    cv.text(14, 14, dash.get("title", "dashboard"), color=TEXT, fontsize=15, fontweight="bold", va="top")
    ns = "All" if args.namespace == ".*" else args.namespace
    hi = "All" if args.hierarchy == ".*" else args.hierarchy
    cv.text(14, 44, f"Namespace: {ns}    Hierarchy: {hi}    Daily message quota: {quota}    "
            f"Time: {t0s:%Y-%m-%d %H:%M:%S} to {t1s:%H:%M:%S} UTC ({rng / 60:.0f} min)",
            color=DIM, fontsize=9, va="top")

    problems = []
    for p in panels:
        if p["type"] == "row":
            gp = p["gridPos"]
            cv.text(14, HEADER_PX + gp["y"] * ROW_PX + ROW_PX * 0.55, "⌄ " + p["title"], color=TEXT,
                    fontsize=11, fontweight="bold", va="center")
            continue
        series = []
        for t in p.get("targets", []):
            expr = substitute(t["expr"], values)
            instant = t.get("instant") and not t.get("range", True)
            try:
                if instant:
                    data = prom(args.prometheus, "query", {"query": expr, "time": args.end})
                    result = [{"metric": r["metric"], "values": [r["value"]]} for r in data["result"]] \
                        if data["resultType"] == "vector" else []
                else:
                    data = prom(args.prometheus, "query_range",
                                {"query": expr, "start": args.start, "end": args.end, "step": step})
                    result = data["result"]
            except Exception as e:  # noqa: BLE001
                problems.append(f"{p['title']}: {expr}: {e}")
                continue
            for r in result:
                series.append({"name": legend(t.get("legendFormat"), r["metric"], expr),
                               "t": [float(a) for a, _ in r["values"]],
                               "v": [value(b) for _, b in r["values"]]})
            if not result:
                problems.append(f"{p['title']}: no data for {expr}")
        if p["type"] == "timeseries":
            draw_timeseries(cv, p, series, args.start, args.end, events)
        elif p["type"] == "stat":
            draw_stat(cv, p, series, args.start, args.end)
        elif p["type"] == "bargauge":
            draw_bargauge(cv, p, series)
        else:
            x, y, w, h, _ = panel_box(cv, p["gridPos"])
            draw_title(cv, x, y, p["title"])
            cv.text(x + w / 2, y + h / 2, f"(panel type {p['type']} not drawn)", color=DIM, ha="center")

    # Footer: what this picture is.
    fy = HEADER_PX + rows * ROW_PX + 10
    if events:
        per_col = math.ceil(len(events) / 2)
        for n, (t, label) in enumerate(events, 1):
            col, row = divmod(n - 1, per_col)
            when = dt.datetime.fromtimestamp(t, dt.timezone.utc)
            cv.text(14 + col * PX_W / 2, fy + row * 16, str(n), color="#ffffff", fontsize=7.5, va="top",
                    bbox=dict(boxstyle="round,pad=0.18", facecolor="#3d71d9", edgecolor="none"))
            cv.text(32 + col * PX_W / 2, fy + row * 16,
                    f"{when:%H:%M:%S}  +{(t - args.start) / 60:4.1f} min  {label}",
                    color=TEXT, fontsize=8, va="top", family="monospace")
        fy += per_col * 16 + 8
    version = build_info(args.prometheus)
    footer = (
        f"Drawn by scripts/render-dashboard.py from the dashboard's own queries "
        f"({os.path.relpath(args.dashboard, ROOT)}) against Prometheus {version} scraping a real run every "
        f"{args.scrape_interval:g} s: the operator, the IoT Hub emulator and edge-sim devices on a local control plane, "
        f"driven by scripts/render-dashboard.sh.\n"
        f"Run {t0s:%Y-%m-%d %H:%M}–{t1s:%H:%M} UTC, {rng / 60:.1f} min; query step {step:g} s, "
        f"$__rate_interval {rate_interval:g} s. Numbered dashed lines are the script's steps (listed above), not part "
        f"of the dashboard. Grafana itself did not render this image; its look is imitated."
    )
    if args.note:
        footer += "\n" + args.note
    footer = "\n".join(textwrap.fill(part, 200) for part in footer.split("\n"))
    cv.text(14, fy, footer, color=DIM, fontsize=8, va="top", linespacing=1.5)
    # A palette PNG: the picture is flat colours and thin lines, so 256 colours lose nothing
    # visible and keep the file small enough for the docs.
    buf = io.BytesIO()
    cv.fig.savefig(buf, dpi=DPI, facecolor=BG, format="png")
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    for pr in problems:
        print(f"render-dashboard.py: {pr}", file=sys.stderr)
    print(f"render-dashboard.py: wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
