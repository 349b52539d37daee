GO ?= go
BIN := $(CURDIR)/bin
BINARIES := wgcnid wgcnictl wgcni wgcni-ipam

.PHONY: build
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/wgcnid ./daemon/wgcnid
	$(GO) build -o $(BIN)/wgcni ./plugins/wgcni
	$(GO) build -o $(BIN)/wgcni-ipam ./ipam/wgcni-ipam
