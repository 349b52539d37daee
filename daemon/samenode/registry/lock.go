package registry

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lockTimeout bounds the wait for the registry lock. The daemon holds it
// for one reconcile (which may re-create every pod's device after the pod
// device host died); runtimes give an ADD minutes.
const lockTimeout = 60 * time.Second

// LockPath is the registry lock in the run dir. It sits outside Dir so
// that removing the registry never removes a held lock.
func LockPath(runDir string) string { return filepath.Join(runDir, "samenode.lock") }

// Lock serializes every change to registrations, hub pod peers and
// pod devices between CNI ADD/DEL/GC (plugin processes) and the daemon's
// reconciler. Without it the reconciler could remove the hub peer of an
// ADD that registered after it read the registry, delete the device of an
// ADD that has not registered yet, or re-create the device of a pod that a
// DEL is removing. flock: released by the kernel if the holder dies.
func Lock(runDir string) (unlock func(), err error) {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, fmt.Errorf("create run dir %s: %w", runDir, err)
	}
	path := LockPath(runDir)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open same-node registry lock %s: %w", path, err)
	}
	deadline := time.Now().Add(lockTimeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				unix.Flock(int(f.Fd()), unix.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock same-node registry %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock same-node registry %s: still held by another process after %v", path, lockTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
