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
tools: ## Build the pinned etcd, kube-apiserver and kubectl (cached outside the repo)
	hack/install-tools.sh etcd kube-apiserver kubectl

.PHONY: test
test: tools ## The whole check: fmt, clippy, generated files current, unit + integration tests
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(MAKE) --no-print-directory check-generated
	$(CARGO) test --locked --all-targets

.PHONY: unit
unit: ## Only the fast tests that need no control plane
	$(CARGO) test --locked --lib

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types
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
	$(CARGO) clippy --all-targets --locked -- -D warnings
