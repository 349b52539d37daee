GO ?= go
BIN := $(CURDIR)/bin
BINARIES := wgcnid wgcnictl wgcni wgcni-ipam
DEMO_PID ?= /tmp/wge-demo.pid
# Whole suite limit: `make test` must finish within 15 minutes on 2 cores.
TEST_TIMEOUT ?= 13m
# The build's version, stamped into every binary (`wgcnid --version`,
# `wgcni --version`, ...): the nearest tag, commits since, commit, -dirty.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
VERSION_LDFLAG := -X github.com/wgcni/wgcni/daemon/buildinfo.version=$(VERSION)

.PHONY: build deps test demo demo-down bench

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(VERSION_LDFLAG)" -o $(BIN)/wgcnid ./daemon/wgcnid
	$(GO) build -ldflags "$(VERSION_LDFLAG)" -o $(BIN)/wgcnictl ./daemon/wgcnictl
	@# The plugins are exec'd once per CNI call: static, stripped binaries
	@# start measurably faster (~0.8 ms per call).
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(VERSION_LDFLAG)" -o $(BIN)/wgcni ./plugins/wgcni
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(VERSION_LDFLAG)" -o $(BIN)/wgcni-ipam ./ipam/wgcni-ipam

# Debian packages (only the missing ones), cnitool, and the chained
# reference plugins (portmap, bandwidth, tuning) built from go.mod.
deps:
	GO=$(GO) ./tests/deps.sh

# Unit tests plus the root end-to-end tests in the namespace cluster.
# WGCNI_E2E_REQUIRE=1 turns "skipped: tool missing" into a failure, so the
# suite can never pass by skipping the end-to-end tests. tests/gotest is
# `go test` that ends with a recap of each failed test's message, which a
# failed cluster test's process-log dump would otherwise push out of view.
test: deps build
	WGCNI_E2E_REQUIRE=1 GO=$(GO) $(GO) run ./tests/gotest -count=1 -timeout $(TEST_TIMEOUT) ./...
	cd conf/prometheus && $(GO) test -count=1 ./...

# A 3-node cluster with 2 pods per node and a short tour; runs until
# Ctrl-C or `make demo-down`, then removes everything it made.
demo: deps build
	$(GO) build -o $(BIN)/wgcni-demo ./tests/demo
	$(BIN)/wgcni-demo -pidfile $(DEMO_PID)

demo-down:
	@if [ -f $(DEMO_PID) ] && kill -0 $$(cat $(DEMO_PID)) 2>/dev/null; then \
		pid=$$(cat $(DEMO_PID)); echo "stopping demo (pid $$pid)"; kill -TERM $$pid; \
		while kill -0 $$pid 2>/dev/null; do sleep 0.2; done; echo "demo stopped and cleaned up"; \
	else echo "no demo running"; fi
	@# Also remove what a crashed demo or test run left behind (only wge-*
	@# namespaces whose owning process is gone).
	@if [ -x $(BIN)/wgcni-demo ]; then $(BIN)/wgcni-demo -sweep; fi

# Benchmarks under tests/bench (each prints its figures and ratios against a
# reference measured in the same run; issue 11, docs/performance.md). Not
# part of `make test`, which only runs a tiny smoke run of each.
BENCH_CNI_ARGS ?=
BENCH_CP_ARGS ?=
BENCH_DP_ARGS ?=
bench: deps build
	WGCNI_BENCH=1 GO=$(GO) ./tests/deps.sh
	$(GO) run ./tests/bench/cni -cnitool $(BIN)/cnitool $(BENCH_CNI_ARGS)
	$(GO) run ./tests/bench/controlplane $(BENCH_CP_ARGS)
	$(GO) run ./tests/bench/datapath $(BENCH_DP_ARGS)

# The Kubernetes lab (tests/kube, docs/operating.md): upstream Kubernetes
# built from the module proxy in its own module (tests/kube/build/k8s, so
# the main go.mod never requires k8s.io/kubernetes), containerd 2 and
# CoreDNS at pinned versions, the lab's pause binary, and wgcni's image
# binaries built the way conf/kubernetes/Dockerfile builds them.
KUBE_BIN := $(BIN)/kube
KUBE_VERSION := v1.34.4
CONTAINERD_VERSION := v2.4.2
COREDNS_VERSION := v1.15.0
KUBE_TEST_TIMEOUT ?= 60m
KUBE_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34

.PHONY: kube-build kube-test kube-demo kube-e2e-build kube-e2e

kube-build:
	@mkdir -p $(KUBE_BIN)/image
	cd tests/kube/build/k8s && $(GO) build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(KUBE_BIN)/ ./cmd/...
	GOBIN=$(KUBE_BIN) CGO_ENABLED=0 $(GO) install -trimpath -ldflags "-s -w" \
		github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION) \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD_VERSION) \
		github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD_VERSION)
	GOBIN=$(KUBE_BIN) CGO_ENABLED=0 $(GO) install -trimpath -ldflags "-s -w" github.com/coredns/coredns@$(COREDNS_VERSION)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(KUBE_BIN)/pause ./tests/kube/images/pause
	@# Same commands as conf/kubernetes/Dockerfile: the lab's image has
	@# the layout and binaries a user's docker build produces.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(KUBE_BIN)/image/wgcnid ./daemon/wgcnid
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(KUBE_BIN)/image/wgcnictl ./daemon/wgcnictl
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(KUBE_BIN)/image/wgcni ./plugins/wgcni
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(KUBE_BIN)/image/wgcni-ipam ./ipam/wgcni-ipam
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(KUBE_BIN)/image/portmap github.com/containernetworking/plugins/plugins/meta/portmap

# wgcni under a real Kubernetes in namespaces (tests/kube). Not part of
# `make test`: the first kube-build compiles Kubernetes (~15 min on 2 cores).
kube-test: deps build kube-build
	WGCNI_KUBE=1 WGCNI_E2E_REQUIRE=1 $(GO) test -count=1 -timeout $(KUBE_TEST_TIMEOUT) -v ./tests/kube/

# The lab with wgcni installed and a 6-pod Deployment; runs until Ctrl-C.
kube-demo: deps build kube-build
	$(GO) run ./tests/kube/demo

# Kubernetes' own e2e tests as a judge: e2e.test (the network suites only,
# tests/kube/build/k8s/e2e) and agnhost from the same k8s.io/kubernetes,
# plus a tiny curl and nc for agnhost's image; then the lab with the conformance
# checks "[sig-network] Networking Granular Checks: Pods".
kube-e2e-build: kube-build
	cd tests/kube/build/k8s && $(GO) test -c -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $(KUBE_BIN)/e2e.test ./e2e
	cd tests/kube/build/k8s && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(KUBE_BIN)/agnhost k8s.io/kubernetes/test/images/agnhost
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(KUBE_BIN)/curl ./tests/kube/images/curl
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(KUBE_BIN)/nc ./tests/kube/images/nc

kube-e2e: deps build kube-e2e-build
	WGCNI_KUBE=1 WGCNI_KUBE_E2E=1 WGCNI_E2E_REQUIRE=1 $(GO) test -count=1 -timeout $(KUBE_TEST_TIMEOUT) -v ./tests/kube/
