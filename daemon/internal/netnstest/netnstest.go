// Package netnstest creates named network namespaces for root tests and
// removes them when the test ends.
package netnstest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"

	"github.com/wgcni/wgcni/tests/netnsdir"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

// New creates a named netns "<prefix>-<random>" (visible to `ip netns`),
// deleted at test end.
func New(t testing.TB, prefix string) (ns.NetNS, string) {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("%s-%06x", prefix, rand.N(1<<24))
	if err := netnsdir.Prepare(); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	h.Close()
	if err := netns.Set(orig); err != nil {
		// The thread is unusable; let it die with the locked goroutine.
		panic(fmt.Sprintf("restore netns: %v", err))
	}
	n, err := ns.GetNS(filepath.Join(netnsdir.Dir, name))
	if err != nil {
		netns.DeleteNamed(name)
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return n, name
}
