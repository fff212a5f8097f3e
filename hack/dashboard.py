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
y = 0


def row(title):
    global y
    panels.append({"type": "row", "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


def panel(kind, title, description, targets, x, w, h=8, unit=None, **extra):
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


def next_line(h=8):
    global y
    y += h


row("Placement")
panel("stat", "Leading controllers", "Replicas that hold the leader Lease: 1 is right; 0 for long means nothing is placed.",
      [(f"sum(crawler_controller_leader{{{NS}}})", "leaders")], 0, 4, h=4)
panel("stat", "Unschedulable resources", "CrawlerResources no ready worker may take (capacity, workerSelector).",
      [(f"max(crawler_controller_unschedulable_resources{{{NS}}})", "unschedulable")], 4, 4, h=4)
panel("stat", "Resources", "CrawlerResources in the leader's index.",
      [(f"max(crawler_controller_index_resources{{{NS}}})", "resources")], 8, 4, h=4)
panel("stat", "Workers", "Worker Pods in the leader's index.",
      [(f"max(crawler_controller_index_workers{{{NS}}})", "workers")], 12, 4, h=4)
panel("stat", "Work queue", "Resource keys waiting to be reconciled.",
      [(f"max(crawler_controller_queue_depth{{{NS}}})", "queued")], 16, 4, h=4)
panel("stat", "Running tasks", "Crawl tasks running on all workers.",
      [(f"sum(crawler_worker_running_tasks{{{NS}}})", "running")], 20, 4, h=4)
next_line(4)
panel("timeseries", "Placements", "Assignments written: first placements and moves to another worker.",
      [(f"sum by (kind) (rate(crawler_controller_assignments_total{{{NS}}}[{RATE}]))", "{{kind}}")], 0, 12, unit="ops")
panel("timeseries", "Reconcile latency", "Time one reconcile took, its status write included.",
      [(f"histogram_quantile(0.99, sum by (le) (rate(crawler_controller_reconcile_duration_seconds_bucket{{{NS}}}[{RATE}])))", "p99"),
       (f"histogram_quantile(0.5, sum by (le) (rate(crawler_controller_reconcile_duration_seconds_bucket{{{NS}}}[{RATE}])))", "p50")],
      12, 12, unit="s")
next_line()

row("Load per worker")
panel("timeseries", "Load per worker", "Load units assigned to each worker Pod (sum of its resources' weight).",
      [(f"max by (worker) (crawler_controller_worker_load{{{NS}}})", "{{worker}}")], 0, 12)
panel("timeseries", "Fill ratio", "Load over capacity, for workers with a crawler.dev/capacity annotation.",
      [(f"max by (worker) (crawler_controller_worker_load{{{NS}}}) / max by (worker) (crawler_controller_worker_capacity{{{NS}}})", "{{worker}}")],
      12, 12, unit="percentunit")
next_line()
panel("timeseries", "Running tasks per worker", "Crawl tasks each worker process runs.",
      [(f"sum by (pod) (crawler_worker_running_tasks{{{NS}}})", "{{pod}}")], 0, 12)
panel("timeseries", "Heartbeat age", "Time since each worker last renewed its heartbeat Lease.",
      [(f"max by (pod) (crawler_worker_heartbeat_age_seconds{{{NS}}})", "{{pod}}")], 12, 12, unit="s")
next_line()

row("Crawl throughput")
panel("timeseries", "Pages fetched", "Pages that got an HTTP response, per worker.",
      [(f"sum by (pod) (rate(crawler_worker_pages_fetched_total{{{NS}}}[{RATE}]))", "{{pod}}")], 0, 12, unit="reqps")
panel("timeseries", "Tasks started and stopped", "Tasks started, and stopped by reason.",
      [(f"sum(rate(crawler_worker_tasks_started_total{{{NS}}}[{RATE}]))", "started"),
       (f"sum by (reason) (rate(crawler_worker_tasks_stopped_total{{{NS}}}[{RATE}]))", "stopped: {{reason}}")],
      12, 12, unit="ops")
next_line()

row("Errors")
panel("timeseries", "Fetch errors", "Requests that got no usable response, by kind.",
      [(f"sum by (kind) (rate(crawler_worker_fetch_errors_total{{{NS}}}[{RATE}]))", "{{kind}}")], 0, 8, unit="reqps")
panel("timeseries", "Status writes", "Fenced status writes of the controller by outcome (conflicts are harmless in small numbers).",
      [(f"sum by (outcome) (rate(crawler_controller_status_writes_total{{{NS}}}[{RATE}]))", "{{outcome}}")], 8, 8, unit="ops")
panel("timeseries", "Reconcile errors and failed tasks", "Reconciles that failed, by category; tasks that failed on workers (output, Secrets, configuration).",
      [(f"sum by (error) (rate(crawler_controller_reconciles_total{{{NS}, result=\"error\"}}[{RATE}]))", "reconcile: {{error}}"),
       (f"sum(rate(crawler_worker_tasks_stopped_total{{{NS}, reason=\"failed\"}}[{RATE}]))", "tasks failed"),
       (f"sum(rate(crawler_worker_heartbeat_renew_failures_total{{{NS}}}[{RATE}]))", "heartbeat renewals failed"),
       (f"sum by (outcome) (rate(crawler_controller_events_total{{{NS}, outcome=~\"dropped|failed\"}}[{RATE}]))", "events {{outcome}}")],
      16, 8, unit="ops")
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
