package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Prereqs lists what a cluster needs and is missing: root, system tools,
// and the repository's binaries. An empty result means a cluster can run.
func Prereqs(repo string) []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"ip", "etcd", "ping", "wg", "iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" (make deps)")
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	for _, b := range []string{"wgcnid", "wgcni", "wgcni-ipam"} {
		if err := ensureBinary(filepath.Join(repo, "bin", b), "make build"); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if err := ensureBinary(filepath.Join(repo, "bin", "cnitool"), "make deps"); err != nil {
		missing = append(missing, err.Error())
	}
	if err := ensureBinary(filepath.Join(repo, "bin", "ext", "portmap"), "make deps"); err != nil {
		missing = append(missing, err.Error())
	}
	return missing
}

// RequireEnv is the environment variable that turns a skipped cluster test
// into a failure (set by `make test`, so CI can never pass by skipping).
const RequireEnv = "WGCNI_E2E_REQUIRE"

// Missing reports a prerequisite that is not there (a tool, a package's
// file, a kernel feature): it fails the test under $WGCNI_E2E_REQUIRE=1
// (make test installs every prerequisite, so a missing one is a bug) and
// skips it otherwise. The message must name what is missing.
func Missing(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("missing: "+format, args...)
	}
	tb.Skipf("missing: "+format, args...)
}

// Require skips the test when a cluster can't run here, or fails it when
// $WGCNI_E2E_REQUIRE=1. It returns the repository root.
func Require(tb testing.TB) string {
	tb.Helper()
	repo := os.Getenv("WGCNI_REPO")
	if repo == "" {
		r, err := FindRepo()
		if err != nil {
			tb.Fatal(err)
		}
		repo = r
	}
	if missing := Prereqs(repo); len(missing) > 0 {
		msg := fmt.Sprintf("namespace cluster needs: %v", missing)
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	return repo
}

// Start builds a cluster of nodes for a test: it skips (or fails, see
// Require) when prerequisites are missing, logs through tb, dumps the
// process logs if the test failed, and removes everything at the end.
func Start(tb testing.TB, cfg Config, nodes int) *Cluster {
	tb.Helper()
	cfg.Repo = Require(tb)
	if cfg.Logf == nil {
		cfg.Logf = tb.Logf
	}
	c, err := New(cfg)
	if err != nil {
		tb.Fatalf("harness: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("process logs of the failed run:\n%s", c.DumpLogs(60))
		}
		c.Close()
	})
	if _, err := c.AddNodes(nodes); err != nil {
		tb.Fatalf("harness: %v", err)
	}
	return c
}
