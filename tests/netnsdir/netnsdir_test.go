package netnsdir_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/tests/harness"
	"github.com/wgcni/wgcni/tests/netnsdir"
)

const childEnv = "WGCNI_NETNSDIR_CHILD"

// TestNamespaceBeforeIPNetnsAdd replays a fresh boot, where /var/run/netns
// is a plain directory, in a mount namespace of its own: a namespace
// created our way (vishvananda/netns, no mount dance), then one by
// `ip netns add` (which bind-mounts the directory onto itself if it is not
// a mount point yet), then the first deleted. Without Prepare the first
// stays mounted under the bind, its file cannot be removed and the
// namespace leaks.
func TestNamespaceBeforeIPNetnsAdd(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		if os.Geteuid() != 0 {
			harness.Missing(t, "root (mount and network namespaces)")
		}
		for _, tool := range []string{"unshare", "ip"} {
			if _, err := exec.LookPath(tool); err != nil {
				harness.Missing(t, "%s", tool)
			}
		}
		// A private mount namespace: nothing done in it reaches the host's.
		// The directory underneath is the host's: a failed child leaves
		// its (unmounted, empty) files there.
		for _, name := range names(os.Getpid()) {
			t.Cleanup(func() { _ = os.Remove(filepath.Join(netnsdir.Dir, name)) })
		}
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--",
			os.Args[0], "-test.run=^TestNamespaceBeforeIPNetnsAdd$", "-test.v")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", childEnv, os.Getpid()))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("child in its own mount namespace: %v\n%s", err, out)
		}
		t.Logf("child in its own mount namespace passed:\n%s", out)
		return
	}
	if mountPoint(t) {
		// As after a reboot. Lazy: other namespaces' mounts under it are
		// detached with it, in this mount namespace only.
		if err := unix.Unmount(netnsdir.Dir, unix.MNT_DETACH); err != nil {
			t.Fatal(err)
		}
	}
	if mountPoint(t) {
		t.Fatalf("%s still a mount point", netnsdir.Dir)
	}
	if err := netnsdir.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := netnsdir.Prepare(); err != nil {
		t.Fatalf("second Prepare: %v", err)
	}
	if !mountPoint(t) {
		t.Fatalf("after Prepare %s is not a mount point", netnsdir.Dir)
	}

	parent, err := strconv.Atoi(os.Getenv(childEnv))
	if err != nil {
		t.Fatalf("$%s: %v", childEnv, err)
	}
	ns := names(parent)
	first, second := ns[0], ns[1]
	errc := make(chan error, 1)
	go func() {
		// The thread moves to the new namespace: locked and never unlocked,
		// so the runtime discards it.
		runtime.LockOSThread()
		h, err := netns.NewNamed(first)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "add", second).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", second, err, out)
	}
	defer exec.Command("ip", "netns", "del", second).Run()
	if out, err := exec.Command("ip", "netns", "exec", first, "true").CombinedOutput(); err != nil {
		t.Fatalf("ip netns exec %s after ip netns add %s: %v: %s", first, second, err, out)
	}
	if err := netns.DeleteNamed(first); err != nil {
		t.Fatalf("delete %s after ip netns add %s: %v (a namespace left mounted under the directory's bind)", first, second, err)
	}
	if _, err := os.Stat(filepath.Join(netnsdir.Dir, first)); !os.IsNotExist(err) {
		t.Fatalf("%s still there after its deletion: %v", first, err)
	}
}

// names are the test's two namespaces, named after the parent test
// process.
func names(pid int) [2]string {
	return [2]string{fmt.Sprintf("wgns-%d-first", pid), fmt.Sprintf("wgns-%d-second", pid)}
}

// mountPoint reports whether netnsdir.Dir (or what it resolves to) is a
// mount point in this mount namespace.
func mountPoint(t *testing.T) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (f[4] == netnsdir.Dir || f[4] == "/run/netns") {
			return true
		}
	}
	return false
}
