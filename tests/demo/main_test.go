package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestDemoTour runs the whole `make demo` tour (without waiting for
// Ctrl-C), so a broken demo fails `make test`.
func TestDemoTour(t *testing.T) {
	harness.Require(t)
	pid := filepath.Join(t.TempDir(), "demo.pid")
	if err := run(3, 2, pid, true, 2*time.Second); err != nil {
		t.Fatal(err)
	}
}
