// Package netnsdir prepares the directory named network namespaces live in
// (/var/run/netns) before a test creates one there.
//
// A named namespace is a bind mount of an nsfs file on /var/run/netns/NAME.
// iproute2 (`ip netns add`), containerd and the CNI plugins' testutils first
// make /var/run/netns a shared mount point of its own, bind-mounting it onto
// itself when it is not one yet (after a reboot it is not: the directory
// outlives the mount). A namespace mounted before that happens stays on the
// mount underneath: the bind copies it, deleting it unmounts the copy, the
// file cannot be removed (EBUSY: still a mount point below) and the
// namespace with all its links leaks, unreachable by name ("setting the
// network namespace failed: Invalid argument"). Test packages run in
// parallel processes, so the first namespace of one can come just before
// another's first `ip netns add`. Prepare, called before every creation,
// does the upgrade once, under a lock, before any namespace is mounted.
package netnsdir

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces live (as with `ip netns`).
const Dir = "/var/run/netns"

// Prepare makes Dir exist and be a shared mount point. Idempotent and cheap
// once done (one mount call).
func Prepare() error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("netns directory %s: %w", Dir, err)
	}
	if err := makeShared(); !errors.Is(err, unix.EINVAL) {
		return err
	}
	// Not a mount point yet. Several test processes can get here at once;
	// two binds would stack, and a namespace mounted on the first would
	// leak the same way. The lock is on the directory itself (the same
	// inode before and after the bind), so nothing is left behind.
	d, err := os.Open(Dir)
	if err != nil {
		return fmt.Errorf("netns directory %s: %w", Dir, err)
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock netns directory %s: %w", Dir, err)
	}
	defer unix.Flock(int(d.Fd()), unix.LOCK_UN)
	if err := makeShared(); !errors.Is(err, unix.EINVAL) {
		return err // another process made it meanwhile
	}
	// Recursive: namespaces mounted by something that did not call
	// Prepare are carried over.
	if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount netns directory %s onto itself: %w", Dir, err)
	}
	if err := makeShared(); err != nil {
		return fmt.Errorf("netns directory %s after binding it onto itself: %w", Dir, err)
	}
	return nil
}

// makeShared is `mount --make-rshared Dir`: EINVAL when Dir is not a mount
// point.
func makeShared() error {
	err := unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("make netns directory %s a shared mount: %w", Dir, err)
	}
	return err
}
