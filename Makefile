# stickyvol: build, test and demo entry points.
#
# Build outputs, tools and the local cluster's binaries live in $(CACHE), never in
# the tree. `make test` is the one test command (README, .ci/run).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CACHE       ?= $(HOME)/.cache/stickyvol
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN         := $(CACHE)/bin
TOOLS       := $(CACHE)/tools
LDFLAGS     := -s -w -X main.version=$(VERSION)
GO_BUILD    := CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)"

.PHONY: all build plugin test unit sanity lint fmt golangci-lint bench bench-driver fuzz clean deploy-check cache image
.PHONY: localcluster cluster-up cluster-down cluster-env e2e demo conformance chaos

all: build

build:
	$(GO_BUILD) -o $(BIN)/stickyvol ./cmd/stickyvol

# The kubectl plugin: kubectl runs kubectl-stickyvol from PATH for
# `kubectl stickyvol status|version`; it is the same binary under that name.
PREFIX ?= /usr/local

plugin: build
	install -d $(PREFIX)/bin
	install -m 0755 $(BIN)/stickyvol $(PREFIX)/bin/kubectl-stickyvol

# The images stickyvol.local/stickyvol:dev (the agent) and
# stickyvol.local/demo:dev (busybox and stickyvol-demo, for deploy/examples) as
# OCI tarballs in $(CACHE)/images, which `ctr -n k8s.io images import`,
# `kind load image-archive` and the local cluster load with no registry. The
# same recipe the demo and the e2e suites use.
image:
	go run ./e2e/cmd/images --cache-dir $(CACHE)

# Everything the local cluster needs before it starts: OS packages (apt-get,
# as root), the pinned binaries built from the Go module proxy (many minutes
# and a few GB of Go build cache the first time, instant after) and the base
# images, all cached in $(CACHE).
cache:
	go run ./e2e/cmd/localcluster prepare --cache-dir $(CACHE)

# The local cluster (e2e/cluster), as root: a real control plane, NODES real
# nodes (private mount namespaces with their own containerd and kubelet) and
# FAKE_NODES kwok nodes. `eval "$$(make -s cluster-env)"` points a shell at it.
NODES      ?= 2
FAKE_NODES ?= 0
# Pods each kwok node has room for (kwok's own default is 110).
FAKE_NODE_PODS ?= 110
LOCALCLUSTER := $(BIN)/localcluster

localcluster:
	@$(GO_BUILD) -o $(LOCALCLUSTER) ./e2e/cmd/localcluster

cluster-up: localcluster
	$(LOCALCLUSTER) up --cache-dir $(CACHE) --nodes $(NODES) --fake-nodes $(FAKE_NODES) --fake-node-pods $(FAKE_NODE_PODS)

cluster-down: localcluster
	$(LOCALCLUSTER) down --cache-dir $(CACHE)

cluster-env: localcluster
	@$(LOCALCLUSTER) env --cache-dir $(CACHE)

# The cluster tier: the tests under e2e/ (build tag e2e), which bring the local
# cluster up and down themselves, one package at a time (-p 1: the machine holds
# one cluster). Binaries are built first, outside the test timeout. The trap
# tears the cluster down however the tests end (failure, Ctrl-C, SIGTERM from a
# CI timeout); after a SIGKILL, the next up clears what was left.
E2E_TIMEOUT ?= 60m
E2E_PKGS    ?= ./e2e/...

# The StatefulSet story runs twice: once on the kustomize overlay (with the
# other packages), once on the Helm chart (STICKYVOL_E2E_INSTALL=helm), which
# ends with `helm uninstall` and a check of what it left behind.
E2E_HELM_PKGS ?= ./e2e/story/

e2e: cache localcluster
	trap '$(LOCALCLUSTER) down --cache-dir $(CACHE)' EXIT; trap 'exit 130' INT TERM; \
	go test -tags e2e -count=1 -p 1 -v -timeout $(E2E_TIMEOUT) $(E2E_PKGS); \
	STICKYVOL_E2E_INSTALL=helm go test -tags e2e -count=1 -p 1 -v -timeout $(E2E_TIMEOUT) -skip '^TestChaos' $(E2E_HELM_PKGS)

# The chaos scenarios (e2e/story/chaos_test.go) at full counts: 300 claims on
# kwok nodes with 10 agent kills during scale-up and 10 during deletion, 3
# restarts of kube-apiserver and etcd, 100 pod delete/recreate cycles, a second
# agent on a live data root and a corrupt record, and the node-loss scenario;
# each ends in an audit, and the suite prints a table. `make e2e` runs them
# once with small counts (the kustomize pass only).
chaos: cache localcluster
	trap '$(LOCALCLUSTER) down --cache-dir $(CACHE)' EXIT; trap 'exit 130' INT TERM; \
	STICKYVOL_CHAOS=full go test -tags e2e -count=1 -v -timeout 120m -run '^(TestChaos|TestNodeLoss)' ./e2e/story/

# The README's first command, as root: brings up the local cluster (the first
# run builds and caches it), builds and loads the stickyvol and example images,
# deploys deploy/overlays/local and walks through the StatefulSet story of
# deploy/examples/web.yaml. The cluster stays up; `make cluster-down` ends it.
# DEMO_FLAGS=--attach reuses a cluster that `make cluster-up` started.
DEMO_FLAGS ?=

demo:
	go run ./e2e/cmd/demo --cache-dir $(CACHE) $(DEMO_FLAGS)

# Conformance (e2e/conformance), as root: csi-sanity against the agent of a
# real node through its CSI socket, then the upstream Kubernetes
# External.Storage e2e suites (not Serial, Disruptive, Slow or Feature)
# through e2e/conformance/test-driver.yaml, on a local cluster it brings up
# and tears down. The first run builds the e2e binary, agnhost and csi-sanity
# into $(CACHE)/bin. Reports and logs: $(CACHE)/conformance/<time>/.
# CONFORMANCE_FLAGS=--attach (or STICKYVOL_E2E_ATTACH=1) uses the running
# cluster and leaves it up; --dry-run lists the specs without a cluster;
# --sanity=false, --e2e=false, --focus=subPath narrow the run.
CONFORMANCE_FLAGS ?=

conformance:
	go run ./e2e/cmd/conformance --cache-dir $(CACHE) $(CONFORMANCE_FLAGS)

# Unit tests and the in-process csi-sanity suite (driver/). Needs root for the
# real bind mounts; without root the mount tests skip and say so, and with
# CI=true they fail instead.
unit:
	go test -count=1 ./...

test: lint unit e2e conformance

# gofmt over every Go file, then golangci-lint as .golangci.yml configures it
# (go vet's analyzers, staticcheck, errcheck, errorlint, ineffassign, unused,
# and logcheck and loggercheck for contextual, structured logging) over every
# package, the files behind the e2e build tag included.
lint: fmt golangci-lint

fmt:
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# golangci-lint with the logcheck plugin linked in, built by
# hack/golangci-lint.sh from the Go module proxy (a few minutes the first time)
# and cached by version. Its analysis cache lives in $(CACHE) too.
GOLANGCI_LINT_VERSION := v2.15.0
LOGTOOLS_VERSION      := v0.11.0
# The binary's name carries a hash of the build script, not a dependency on
# its mtime: a fresh clone (every CI run) has a new mtime and would rebuild it.
GOLANGCI_LINT_SCRIPT := $(shell sha256sum hack/golangci-lint.sh | cut -c1-12)
GOLANGCI_LINT := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)-logcheck-$(LOGTOOLS_VERSION)-$(GOLANGCI_LINT_SCRIPT)

golangci-lint: $(GOLANGCI_LINT)
	GOLANGCI_LINT_CACHE=$(CACHE)/golangci-lint $(GOLANGCI_LINT) run ./...

$(GOLANGCI_LINT):
	bash hack/golangci-lint.sh $(GOLANGCI_LINT_VERSION) $(LOGTOOLS_VERSION) $@

# Renders deploy/base and the overlays as `kubectl apply -k` does, decodes every
# object (and the examples) strictly into client-go's types and checks what a
# cluster depends on. Needs no cluster.
deploy-check:
	go test -count=1 ./deploy/

# The cluster benchmark (e2e/bench, README "Benchmark"), as root: a local
# cluster of kwok nodes only, a Parallel StatefulSet provisioned by stickyvol's
# agents (one host process per fake node) and by an instant provisioner, the
# agents' memory with 10,000 objects of other nodes; then, with the cluster
# down, the driver benchmark; then the table again with the driver's figure,
# ending in the summary line. Results: $(CACHE)/bench/latest/. The trap tears
# the cluster down however the run ends. BENCH_FLAGS passes flags
# (--claims 200,1000 --runs 5 --fake-nodes 20 --skip-memory); BENCH_ATTACH=1
# uses a running cluster (make cluster-up NODES=0 FAKE_NODES=5
# FAKE_NODE_PODS=200) and leaves it up.
BENCH_FLAGS  ?=
BENCH_ATTACH ?=
BENCH        := $(BIN)/bench

bench: cache localcluster
	$(GO_BUILD) -o $(BENCH) ./e2e/cmd/bench
	if [ -n "$(BENCH_ATTACH)" ]; then \
		$(BENCH) --cache-dir $(CACHE) --attach $(BENCH_FLAGS); \
	else \
		trap '$(LOCALCLUSTER) down --cache-dir $(CACHE)' EXIT; trap 'exit 130' INT TERM; \
		$(BENCH) --cache-dir $(CACHE) $(BENCH_FLAGS); \
	fi
	$(MAKE) --no-print-directory bench-driver
	$(BENCH) report --results $(CACHE)/bench/latest --driver-bench $(CACHE)/bench.txt

# Driver benchmarks over the real socket and data root (root: bind mounts),
# 6 runs each; benchstat prints the median and its spread. `make bench` reads
# CreateVolume+DeleteVolume pairs/s from $(CACHE)/bench.txt.
BENCHSTAT_VERSION := v0.0.0-20260908200009-22c9c6c9d4da
BENCHSTAT := $(TOOLS)/benchstat-$(BENCHSTAT_VERSION)

bench-driver: $(BENCHSTAT)
	mkdir -p $(CACHE)
	go test -run '^$$' -bench . -benchmem -count 6 ./driver/ | tee $(CACHE)/bench.txt
	$(BENCHSTAT) $(CACHE)/bench.txt

$(BENCHSTAT):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS)/benchstat.tmp go install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)
	mv $(TOOLS)/benchstat.tmp/benchstat $@ && rmdir $(TOOLS)/benchstat.tmp

# Fuzz the driver's input checks (volume IDs, parameters, target paths),
# FUZZTIME each.
FUZZTIME ?= 60s
FUZZ_TARGETS := FuzzValidateVolumeID FuzzParameters FuzzValidateTargetPath

fuzz:
	for target in $(FUZZ_TARGETS); do \
		go test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) ./driver/ || exit 1; \
	done

clean:
	rm -rf $(BIN)
