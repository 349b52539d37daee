package registry

import (
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// TestRegistryLock: a second holder waits until the first lets go.
func TestRegistryLock(t *testing.T) {
	runDir := t.TempDir()
	unlock, err := Lock(runDir)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(LockPath(runDir)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v %v", st, err)
	}
	var second atomic.Bool
	got := make(chan error, 1)
	go func() {
		u, err := Lock(runDir)
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
