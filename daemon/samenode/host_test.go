package samenode

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
)

const hostEnv = "WGD_SAMENODE_TEST_HOST"

// TestMain lets the test binary double as the pod device host, which
// EnsureHost starts as /proc/self/exe samenode-host.
func TestMain(m *testing.M) {
	if os.Getenv(hostEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "samenode-host" {
		os.Exit(RunHost(os.Args[2:], os.Stderr))
	}
	os.Exit(m.Run())
}

// startHost starts a pod device host for runDir and stops it (by its pid,
// after checking it is one) when the test ends.
func startHost(t *testing.T, runDir string) int {
	t.Helper()
	t.Setenv(hostEnv, "1")
	if err := EnsureHost(runDir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	pid := hostPID(t, runDir)
	t.Cleanup(func() {
		if isHost(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return pid
}

func hostPID(t *testing.T, runDir string) int {
	t.Helper()
	b, err := os.ReadFile(HostPIDFile(runDir))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !isHost(pid) {
		t.Fatalf("pid file %q: %v (is host: %v)", b, err, isHost(pid))
	}
	return pid
}

// TestWatchHostSeesDeath: the daemon learns that the pod device host died
// from its watch connection, at once (not at the next resync), also when
// the host is SIGKILLed; and again for the host started next.
func TestWatchHostSeesDeath(t *testing.T) {
	netnstest.RequireRoot(t)
	runDir := t.TempDir()
	pid := startHost(t, runDir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	died := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchHost(ctx, runDir, time.Minute, died, slog.New(slog.DiscardHandler))
	}()
	for round := 1; round <= 2; round++ {
		// Let the watch connect before the kill.
		time.Sleep(200 * time.Millisecond)
		select {
		case <-died:
			t.Fatalf("round %d: died reported while the host runs", round)
		default:
		}
		start := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		select {
		case <-died:
			t.Logf("round %d: host %d SIGKILLed, death seen after %v", round, pid, time.Since(start).Round(time.Microsecond))
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: host death not reported within 5 s (resync is a minute)", round)
		}
		pid = startHost(t, runDir)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watchHost did not end with its context")
	}
}

// TestRegistryLock: a second holder waits until the first lets go.
func TestRegistryLock(t *testing.T) {
	runDir := t.TempDir()
	unlock, err := lockRegistry(runDir)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(LockPath(runDir)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v %v", st, err)
	}
	var second atomic.Bool
	got := make(chan error, 1)
	go func() {
		u, err := lockRegistry(runDir)
		if err == nil {
			second.Store(true)
			u()
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if second.Load() {
		t.Fatal("second holder got the lock while the first held it")
	}
	unlock()
	select {
	case err := <-got:
		if err != nil || !second.Load() {
			t.Fatalf("second holder after unlock: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second holder still waiting after unlock")
	}
}

// TestHostHandlesWatchAndOps: "watch" is acknowledged and held; the other
// ops still answer meanwhile.
func TestHostHandlesWatchAndOps(t *testing.T) {
	netnstest.RequireRoot(t)
	runDir := t.TempDir()
	startHost(t, runDir)
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
