package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoDaemonOnlyDependencies keeps packages the plugins never use out of
// their binaries: every CNI call is a process start, and a linked package's
// initialisation runs on each one whether it is used or not. The etcd client
// alone (with gRPC and protobuf registrations) cost about 6.5 ms of CPU per
// call, more than exec'ing the reference host-local plugin.
func TestNoDaemonOnlyDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/wgcni/wgcni/plugins/wgcni", "github.com/wgcni/wgcni/ipam/wgcni-ipam").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v: %s", err, out)
	}
	banned := []string{"go.etcd.io/etcd/", "google.golang.org/grpc"}
	for _, pkg := range strings.Fields(string(out)) {
		for _, b := range banned {
			if strings.HasPrefix(pkg, b) {
				t.Errorf("the CNI plugins link %s (prefix %s): find the import chain with `go mod why -m` / `go list -deps -f '{{.ImportPath}}: {{.Imports}}'` and move the daemon-only code out", pkg, b)
			}
		}
	}
}
