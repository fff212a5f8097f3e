# Developer commands. `make help` lists them. Everything a fresh machine lacks is installed by the
# targets themselves (control-plane tools are built from the Go module proxy into a cache outside
# the repo; see docs/development.md).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
CRD := crds/crawlerresources.crawler.dev.yaml

.PHONY: help
help: ## List the developer commands
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Build the pinned etcd, kube-apiserver, kubectl, kube-controller-manager, kube-scheduler and helm (one binary, cached outside the repo); install PostgreSQL and mold
	hack/install-tools.sh mold etcd kube-apiserver kubectl kube-controller-manager postgres

# The container image's binary: a static build with a target directory of its own.
STATIC_BIN := target/x86_64-unknown-linux-gnu/debug/crawler-operator

.PHONY: test
test: ## The whole check: fmt, clippy, generated files current, chart checks, all tests and the container test
	@# On a fresh machine the Go-built tools and the Rust builds take minutes each: side by side.
	@# The image's static build (a second build of the dependency tree) joins them only while its
	@# target directory is empty; after an edit its rebuild is small and runs beside the tests.
	$(MAKE) --no-print-directory -j4 --output-sync=target tools check-chart checks-then-build \
	  $(if $(wildcard $(STATIC_BIN)),,test-image)
	CARGO=$(CARGO) hack/test-all.py --container

.PHONY: checks-then-build
checks-then-build: # (make test's first step) the checks, then every test target, beside the tools
	$(MAKE) --no-print-directory checks
	$(CARGO) test --workspace --locked --all-targets --no-run

.PHONY: test-image
test-image: ## The image the container test runs: crawler-operator:test from the dev profile
	IMAGE=crawler-operator:test IMAGE_PROFILE=dev hack/image.sh build

.PHONY: checks
checks: ## fmt, clippy -D warnings (the benchmark too), crds/ current: what `make test` checks before testing
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy --locked --features bench --test bench -- -D warnings
	$(MAKE) --no-print-directory check-generated

.PHONY: unit
unit: ## Only the fast tests that need no control plane
	$(CARGO) test --workspace --locked --lib

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types (then `make deploy-manifests` copies it into the chart)
	$(CARGO) run --quiet --locked -- crdgen > $(CRD)

.PHONY: check-generated
check-generated: ## Fail when crds/ is stale against the Rust types
	@tmp=$$(mktemp); $(CARGO) run --quiet --locked -- crdgen > $$tmp; \
	if ! diff -u $(CRD) $$tmp; then \
	  echo "$(CRD) is stale: run 'make crds' and commit the result" >&2; rm -f $$tmp; exit 1; fi; \
	rm -f $$tmp; echo "crds/ is current"

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: lint
lint: ## clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# --- Packaging: Helm chart, deploy/, Dockerfile (issue 5) ---

.PHONY: chart-tools
chart-tools: ## Install helm, kubernetes-validate, hadolint, helm-docs, prometheus-operator CRDs (cached outside the repo)
	hack/install-tools.sh helm kubernetes-validate hadolint helm-docs prometheus-operator-crds

.PHONY: deploy-manifests
deploy-manifests: chart-tools ## Copy crds/ into the chart and deploy/, render deploy/, the dashboard and the chart README
	hack/chart.sh generate

.PHONY: check-deploy
check-deploy: chart-tools ## Fail when the chart's CRD copy or deploy/ is stale
	hack/chart.sh check-deploy

.PHONY: check-chart
check-chart: chart-tools ## helm lint/template, offline schema validation, copies current, Dockerfile lint
	hack/chart.sh check

# --- The container image, built here without a registry (issue 15; docs/install.md) ---

IMAGE_PROFILE ?= release

.PHONY: image
image: ## Static binary + `podman build` FROM scratch -> crawler-operator:<version> (installs podman if missing)
	IMAGE_PROFILE=$(IMAGE_PROFILE) hack/image.sh build

.PHONY: container-test
container-test: tools chart-tools test-image ## The image's controller and worker in podman against the test control plane (image from the dev profile)
	CRAWLER_IMAGE=crawler-operator:test $(CARGO) test --locked --test it -- --ignored --nocapture container::

# --- Benchmarks (issue 7) ---

.PHONY: bench
bench: tools ## Controller benchmarks on a real etcd (fsync) + kube-apiserver; rewrites BENCHMARKS.md (~40 min, scenario 8's 100 workers ~15 of them; plus the release build)
	hack/install-tools.sh kube-scheduler
	mkdir -p target/bench/tmp
	# The control plane's temp dir lives under target/bench/tmp, out of reach of /tmp cleanups.
	TMPDIR=$(CURDIR)/target/bench/tmp \
	  $(CARGO) test --release --locked --features bench --test bench -- --ignored --nocapture --test-threads=1
	hack/bench-doc.py

.PHONY: bench-doc
bench-doc: ## Render BENCHMARKS.md's generated section from the last run (target/bench/results.md)
	hack/bench-doc.py

.PHONY: bench-hosts
bench-hosts: tools ## Politeness at scale: the aggregate rate of 1,000 hosts crawled by 10 workers vs the sum of their budgets and the machine's limit (~3 min; BENCH_HOSTS=N for fewer)
	$(CARGO) test --release --locked --test it -- --ignored --nocapture politeness::thousand_hosts_by_ten_workers

.PHONY: bench-fleet
bench-fleet: tools ## Fleet cost alone (benchmark scenario 8): N worker processes idle and busy, counted by the API server's apiserver_request_total, and worker failover at the default timings (~20 min at BENCH_FLEET_WORKERS=100; results in target/bench/results.md, BENCHMARKS.md untouched)
	mkdir -p target/bench/tmp
	TMPDIR=$(CURDIR)/target/bench/tmp BENCH_SCENARIOS=fleet \
	  $(CARGO) test --release --locked --features bench --test bench -- --ignored --nocapture --test-threads=1

.PHONY: bench-store
bench-store: ## Result-store benchmarks: PostgreSQL vs file sink, checkpoint cost, resume after a move; rewrites its BENCHMARKS.md section (~1 min)
	hack/install-tools.sh postgres
	BENCH_UPDATE_DOC=1 $(CARGO) test --release --locked --test it -- --ignored --nocapture store_bench::

# --- The demo: a local cluster with the whole system running (issue 6; docs/demo.md) ---

.PHONY: demo
demo: ## Local cluster (kube-apiserver, controller-manager, scheduler, kwok) + chart + controller + workers + sample crawls
	hack/demo.sh up

.PHONY: demo-down
demo-down: ## Stop everything `make demo` started and remove its directory
	hack/demo.sh down

.PHONY: demo-test
demo-test: ## The docs/demo.md walk-through as a test, on a demo of its own (~40 s once the demo tools are built)
	$(CARGO) test --locked --test it -- --ignored --nocapture demo::

# --- Reliability (issue 8) ---

.PHONY: soak
soak: tools ## The reliability scenarios at scale (1,000 leader cycles, 100 silent freezes, 5 held-write fences, 30 heartbeat-watch stalls with slow reads, 5 delayed moves, 10 database row-lock stalls, 20 worker process pauses; ~20.5 min); prints JUDGE and RELIABILITY lines
	CRAWLER_SOAK=1 $(CARGO) test --locked --test it -- --nocapture --test-threads=1 reliability:: fence:: results::a_dead_owners_row_lock pause:: 2>&1 | tee target/soak.log | grep -oE '(JUDGE .*|RELIABILITY .*|leader cycles: .*|silent freezes: .*|[a-z0-9-]+: [0-9]+ of [0-9]+ (leader|freeze) cycles|test result.*)'
