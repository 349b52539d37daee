// Package harness builds a whole wgcni cluster on one machine out of
// network namespaces it creates: an underlay bridge, node namespaces running
// wgcnid, a real etcd, and pod namespaces wired by cnitool exactly as a
// container runtime would. Everything it starts it stops by PID, and every
// namespace, link and directory it makes it removes, also when a test fails.
//
// Nothing it builds has a route out of the machine: the underlay namespace
// has no default route and does not forward, so all traffic stays between
// namespaces the harness made.
package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/tests/netnsdir"
)

// NetnsDir is where named network namespaces live (as with `ip netns`).
const NetnsDir = netnsdir.Dir

// NS is a named network namespace, usable with `ip netns exec NAME`.
type NS struct {
	Name string
}

// Path is the namespace's bind-mount path.
func (n NS) Path() string { return filepath.Join(NetnsDir, n.Name) }

// createNS makes a named namespace with its loopback up.
func createNS(name string) (NS, error) {
	if len(name) > 64 {
		return NS{}, fmt.Errorf("netns name %q too long", name)
	}
	if err := netnsdir.Prepare(); err != nil {
		return NS{}, err
	}
	errc := make(chan error, 1)
	go func() {
		// The thread's namespace is changed and never restored: keeping the
		// thread locked when this goroutine returns makes the runtime
		// destroy it instead of reusing it for other goroutines.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		h.Close()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return NS{}, err
	}
	n := NS{Name: name}
	err := n.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		_ = deleteNS(n)
		return NS{}, fmt.Errorf("netns %s: bring up lo: %w", name, err)
	}
	return n, nil
}

// deleteNS kills every process still inside the namespace (by PID), then
// removes it. Links inside it disappear with it; a veth's peer elsewhere
// goes too.
func deleteNS(n NS) error {
	if _, err := os.Stat(n.Path()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	killProcsInNS(n.Path(), 3*time.Second)
	if err := netns.DeleteNamed(n.Name); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	// A file left behind is a namespace still mounted where we cannot see
	// it (netnsdir's package comment): a leak, said, not ignored.
	if err := os.Remove(n.Path()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	return nil
}

// Do runs f with the calling goroutine's OS thread inside the namespace.
// Sockets created in f stay in the namespace after f returns.
func (n NS) Do(f func() error) error {
	h, err := ns.GetNS(n.Path())
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

// Command returns a command that runs argv inside the namespace through
// `ip netns exec` (which also gives it a /sys matching the namespace).
func (n NS) Command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, argv...)...)
	// Its own process group: stopping it never signals the test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// NsenterCommand runs argv in the namespace with `nsenter --net=PATH`,
// which, unlike `ip netns exec`, leaves /sys and cgroups as they are
// (container runtimes such as runc need that).
func (n NS) NsenterCommand(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), "--"}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// Exec runs argv inside the namespace (60 s limit) and returns its combined
// output; the error includes the output.
func (n NS) Exec(argv ...string) (string, error) {
	return n.ExecTimeout(60*time.Second, argv...)
}

// ExecTimeout is Exec with a time limit.
func (n NS) ExecTimeout(d time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := n.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in netns %s: %v: %w: %s", n.Name, argv, err, out)
	}
	return string(out), nil
}

// nsID identifies a network namespace by device and inode.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, false
	}
	return nsID{uint64(st.Dev), st.Ino}, true
}

// procsInNS lists the PIDs of processes whose network namespace is the one
// at path.
func procsInNS(path string) []int {
	want, ok := statNS(path)
	if !ok {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if id, ok := statNS(fmt.Sprintf("/proc/%d/ns/net", pid)); ok && id == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killProcsInNS is the backstop that guarantees nothing we started
// survives its namespace (e.g. a detached userspace WireGuard process):
// SIGTERM, then SIGKILL after grace, each by PID.
func killProcsInNS(path string, grace time.Duration) []int {
	pids := procsInNS(path)
	for _, p := range pids {
		_ = unix.Kill(p, unix.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for len(procsInNS(path)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range procsInNS(path) {
		_ = unix.Kill(p, unix.SIGKILL)
	}
	return pids
}
