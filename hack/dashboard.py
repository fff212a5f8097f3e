#!/usr/bin/env python3
"""Writes charts/crawler-operator/dashboards/crawler-operator.json, the Grafana dashboard.

    python3 hack/dashboard.py            # rewrite the JSON
    python3 hack/dashboard.py --check    # fail if the JSON is stale (make check-chart)

Panels are listed here rather than edited in JSON by hand, so the queries stay readable in review.
Every metric name must be one that docs/operations.md lists (tests/chart.rs checks).
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "charts/crawler-operator/dashboards/crawler-operator.json"
NS = 'namespace=~"$namespace"'
RATE = "$__rate_interval"

panels = []
x, y = 0, 0


def rate(metric, by=None, match=None):
    """`sum [by (...)] (rate(metric{namespace[, match]}[$__rate_interval]))`: how every counter is
    shown, so the namespace filter and the rate window are written once."""
    selector = f"{NS}, {match}" if match else NS
    total = f"sum by ({by}) " if by else "sum"
    return f"{total}(rate({metric}{{{selector}}}[{RATE}]))"


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


def panel(kind, title, description, targets, w, h=8, unit=None, **extra):
    """A panel `w` columns wide (of 24), placed right of the last one on its line."""
    global x
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {"defaults": {"unit": unit or "short"}, "overrides": []},
        "options": {},
    }
    p.update(extra)
    panels.append(p)
    x += w


def next_line(h=8):
    global x, y
    x, y = 0, y + h


row("Placement")
# One line of stat tiles, 4 columns each.
for title, description, expr, legend in [
    ("Leading controllers", "Replicas that hold the leader Lease: 1 is right; 0 for long means nothing is placed.",
     f"sum(crawler_controller_leader{{{NS}}})", "leaders"),
    ("Unschedulable resources", "CrawlerResources no ready worker may take (capacity, workerSelector).",
     f"max(crawler_controller_unschedulable_resources{{{NS}}})", "unschedulable"),
    ("Resources", "CrawlerResources in the leader's index.",
     f"max(crawler_controller_index_resources{{{NS}}})", "resources"),
    ("Workers", "Worker Pods in the leader's index.",
     f"max(crawler_controller_index_workers{{{NS}}})", "workers"),
    ("Work queue", "Resource keys waiting to be reconciled.",
     f"max(crawler_controller_queue_depth{{{NS}}})", "queued"),
    ("Running tasks", "Crawl tasks running on all workers.",
     f"sum(crawler_worker_running_tasks{{{NS}}})", "running"),
]:
    panel("stat", title, description, [(expr, legend)], 4, h=4)
next_line(4)
panel("timeseries", "Placements", "Assignments written: first placements and moves to another worker.",
      [(rate("crawler_controller_assignments_total", "kind"), "{{kind}}")], 12, unit="ops")
panel("timeseries", "Reconcile latency", "Time one reconcile took, its status write included.",
      [(f"histogram_quantile(0.99, {rate('crawler_controller_reconcile_duration_seconds_bucket', 'le')})", "p99"),
       (f"histogram_quantile(0.5, {rate('crawler_controller_reconcile_duration_seconds_bucket', 'le')})", "p50")],
      12, unit="s")
next_line()

row("Load per worker")
panel("timeseries", "Load per worker", "Load units assigned to each worker Pod (sum of its resources' weight).",
      [(f"max by (worker) (crawler_controller_worker_load{{{NS}}})", "{{worker}}")], 12)
panel("timeseries", "Fill ratio", "Load over capacity, for workers with a crawler.dev/capacity annotation.",
      [(f"max by (worker) (crawler_controller_worker_load{{{NS}}}) / max by (worker) (crawler_controller_worker_capacity{{{NS}}})", "{{worker}}")],
      12, unit="percentunit")
next_line()
panel("timeseries", "Running tasks per worker", "Crawl tasks each worker process runs.",
      [(f"sum by (pod) (crawler_worker_running_tasks{{{NS}}})", "{{pod}}")], 12)
panel("timeseries", "Heartbeat age", "Time since each worker last renewed its heartbeat Lease.",
      [(f"max by (pod) (crawler_worker_heartbeat_age_seconds{{{NS}}})", "{{pod}}")], 12, unit="s")
next_line()

row("Crawl throughput")
panel("timeseries", "Pages fetched", "Pages that got an HTTP response, per worker.",
      [(rate("crawler_worker_pages_fetched_total", "pod"), "{{pod}}")], 12, unit="reqps")
panel("timeseries", "Tasks started and stopped", "Tasks started, and stopped by reason.",
      [(rate("crawler_worker_tasks_started_total"), "started"),
       (rate("crawler_worker_tasks_stopped_total", "reason"), "stopped: {{reason}}")],
      12, unit="ops")
next_line()

row("Errors")
panel("timeseries", "Fetch errors", "Requests that got no usable response, by kind.",
      [(rate("crawler_worker_fetch_errors_total", "kind"), "{{kind}}")], 8, unit="reqps")
panel("timeseries", "Status writes", "Fenced status writes of the controller by outcome (conflicts are harmless in small numbers).",
      [(rate("crawler_controller_status_writes_total", "outcome"), "{{outcome}}")], 8, unit="ops")
panel("timeseries", "Reconcile errors and failed tasks", "Reconciles that failed, by category; tasks that failed on workers (output, Secrets, configuration).",
      [(rate("crawler_controller_reconciles_total", "error", match='result="error"'), "reconcile: {{error}}"),
       (rate("crawler_worker_tasks_stopped_total", match='reason="failed"'), "tasks failed"),
       (rate("crawler_worker_heartbeat_renew_failures_total"), "heartbeat renewals failed"),
       (rate("crawler_controller_events_total", "outcome", match='outcome=~"dropped|failed"'), "events {{outcome}}")],
      8, unit="ops")
next_line()

dashboard = {
    "title": "crawler-operator",
    "uid": "crawler-operator",
    "description": "Placement, load per worker, crawl throughput and errors of crawler-operator (metrics: docs/operations.md).",
    "tags": ["crawler-operator"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "refresh": "30s",
    "time": {"from": "now-3h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}},
        {"name": "namespace", "label": "Namespace", "type": "query",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(crawler_build_info, namespace)", "refId": "namespace"},
         "definition": "label_values(crawler_build_info, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {}},
    ]},
    "annotations": {"list": []},
    "panels": [dict(p, id=i + 1) for i, p in enumerate(panels)],
}

text = json.dumps(dashboard, indent=2) + "\n"
if sys.argv[1:] == ["--check"]:
    if not OUT.exists() or OUT.read_text() != text:
        sys.exit(f"{OUT} is stale: run 'python3 hack/dashboard.py' (make deploy-manifests) and commit it")
    print("dashboard JSON is current")
else:
    OUT.write_text(text)
    print(f"wrote {OUT}")
