package poddevices

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
)

const hostEnv = "WGD_SAMENODE_TEST_HOST"

// TestMain lets the test binary double as the pod device process, which
// Ensure starts as this binary's samenode-host.
func TestMain(m *testing.M) {
	if os.Getenv(hostEnv) == "1" && len(os.Args) > 1 && os.Args[1] == Subcommand {
		os.Exit(Serve(os.Args[2:], os.Stderr))
	}
	os.Exit(m.Run())
}

// startProcess starts a pod device process for runDir and stops it (by its pid,
// after checking it is one) when the test ends.
func startProcess(t *testing.T, runDir string) int {
	t.Helper()
	t.Setenv(hostEnv, "1")
	if err := Ensure(runDir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	pid := processPID(t, runDir)
	t.Cleanup(func() {
		if Running(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return pid
}

func processPID(t *testing.T, runDir string) int {
	t.Helper()
	b, err := os.ReadFile(PIDFile(runDir))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !Running(pid) {
		t.Fatalf("pid file %q: %v (is the process: %v)", b, err, Running(pid))
	}
	return pid
}

// TestWatchSeesDeath: the daemon learns that the pod device process died
// from its watch connection, at once (not at the next resync), also when
// the process is SIGKILLed; and again for the process started next.
func TestWatchSeesDeath(t *testing.T) {
	netnstest.RequireRoot(t)
	runDir := t.TempDir()
	pid := startProcess(t, runDir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	died := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, runDir, 200*time.Millisecond, time.Minute, died, slog.New(slog.DiscardHandler))
	}()
	for round := 1; round <= 2; round++ {
		// Let the watch connect before the kill.
		time.Sleep(200 * time.Millisecond)
		select {
		case <-died:
			t.Fatalf("round %d: died reported while the process runs", round)
		default:
		}
		start := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		select {
		case <-died:
			t.Logf("round %d: process %d SIGKILLed, death seen after %v", round, pid, time.Since(start).Round(time.Microsecond))
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: process death not reported within 5 s (resync is a minute)", round)
		}
		pid = startProcess(t, runDir)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not end with its context")
	}
}

// TestProcessHandlesWatchAndOps: "watch" is acknowledged and held; the other
// ops still answer meanwhile.
func TestProcessHandlesWatchAndOps(t *testing.T) {
	netnstest.RequireRoot(t)
	runDir := t.TempDir()
	startProcess(t, runDir)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- watchOnce(ctx, runDir) }()
	time.Sleep(100 * time.Millisecond)
	resp, err := Call(runDir, Request{Op: "list"}, time.Second)
	if err != nil || len(resp.IDs) != 0 {
		t.Fatalf("list while watched: %+v %v", resp, err)
	}
	if err := <-errc; err == nil || ctx.Err() == nil {
		t.Fatalf("watchOnce returned %v before its context ended", err)
	}
	if _, err := Call(runDir, Request{Op: "bogus"}, time.Second); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("unknown op: %v", err)
	}
}
