package reconcile

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/poddevices"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

const helperEnv = "WGD_RECONCILE_TEST_HELPER"

// TestMain lets the test binary double as both helper processes Setup
// starts: the hub's userspace WireGuard device and the pod device process.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" && len(os.Args) > 1 {
		switch os.Args[1] {
		case "userspace-device":
			os.Exit(wgdev.RunUserspaceDevice(os.Args[2:], os.Stderr))
		case poddevices.Subcommand:
			os.Exit(poddevices.Serve(os.Args[2:], os.Stderr))
		}
	}
	os.Exit(m.Run())
}

// TestFailedStepsAreRetried: a step that fails (here: the hub route of a
// pod address of a family the node has no gateway of) goes into the dirty
// set and is counted; Run retries it on its own (without waiting for the
// resync) until it clears, and counts the retries; once the cause is gone
// (the registration removed) the dirty set empties and the hub holds no
// trace of the pod.
func TestFailedStepsAreRetried(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Setenv(helperEnv, "1")
	node, _ := netnstest.New(t, "snr")
	runDir := t.TempDir()
	device := netnstest.DeviceName("wgr")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var r *Reconciler
	err := node.Do(func(ns.NetNS) error {
		var err error
		r, err = Setup(Options{
			Device: device, Port: 0, MTU: 1420, Mode: wgdev.Userspace, StateDir: t.TempDir(), RunDir: runDir,
			Gateways: []netip.Addr{netip.MustParseAddr("10.244.1.1")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
			Resync: time.Hour, Log: log,
		})
		return err
	})
	t.Cleanup(func() {
		node.Do(func(ns.NetNS) error { return Cleanup(runDir, device, log) })
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Stats.Pending.Load() != 0 || r.Stats.Failures.Load() != 0 {
		t.Fatalf("after Setup: pending %d failures %d, want none", r.Stats.Pending.Load(), r.Stats.Failures.Load())
	}
	key, _ := wgtypes.GeneratePrivateKey()
	pod := &registry.Pod{ID: "wgvretry", Network: "n", ContainerID: "c", IfName: "eth0", Netns: "/nonexistent/netns",
		IPs: []netip.Addr{netip.MustParseAddr("fd00:244:0:1::5")}, WGIfName: "wg-eth0", PublicKey: key.PublicKey().String(), Port: 40000}
	if err := registry.Register(runDir, pod); err != nil {
		t.Fatal(err)
	}
	var res SyncResult
	node.Do(func(ns.NetNS) error { res = r.Sync(); return nil })
	if res.Failed != 1 || r.dirty[pod.ID] == nil || r.Stats.Pending.Load() != 1 || r.Stats.Failures.Load() != 1 {
		t.Fatalf("sync with a failing pod: %+v, dirty %v, pending %d, failures %d; want the pod in the dirty set, counted",
			res, r.dirty, r.Stats.Pending.Load(), r.Stats.Failures.Load())
	}
	t.Logf("dirty: %v", r.dirty)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		node.Do(func(ns.NetNS) error { r.Run(ctx); return nil })
	}()
	defer func() {
		cancel()
		<-done
	}()
	waitFor(t, "Run retries the failed step before any resync", func() bool { return r.Stats.Retries.Load() >= 2 })
	if err := registry.Unregister(runDir, pod.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dirty set empties once the cause is gone", func() bool { return r.Stats.Pending.Load() == 0 })
	t.Logf("failures %d, retries %d", r.Stats.Failures.Load(), r.Stats.Retries.Load())
	err = node.Do(func(ns.NetNS) error {
		wg, err := wgctrlDevice(r.hub.Name)
		if err != nil {
			return err
		}
		if len(wg.Peers) != 0 {
			t.Errorf("hub still has peers %v", wg.Peers)
		}
		routes, err := r.hub.Routes()
		if err != nil || len(routes) != 0 {
			t.Errorf("hub routes %v %v, want none", routes, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if hub.DeviceName(device) != r.hub.Name {
		t.Errorf("hub %s, want %s", r.hub.Name, hub.DeviceName(device))
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20 s", what)
		}
	}
}

func wgctrlDevice(name string) (*wgtypes.Device, error) {
	wg, err := wgctrl.New()
	if err != nil {
		return nil, err
	}
	defer wg.Close()
	return wg.Device(name)
}
