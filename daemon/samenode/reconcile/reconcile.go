// Package reconcile is the daemon's side of same-node encryption: it owns
// the hub device and the pod device process, and keeps pod devices, hub
// peers, hub routes and the registry in agreement — at once when the pod
// device process dies, every resync interval anyway, and sooner while
// something failed. Failures are kept in a dirty set (what failed and
// why), retried with backoff until they clear, and counted (Stats, shown
// as metrics), like the mesh's.
package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgcni/wgcni/daemon/keys"
	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/samenode/attach"
	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/poddevices"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// Options configure the daemon's side of same-node encryption.
type Options struct {
	Device   string // the node's WireGuard device; the hub is hub.DeviceName(Device)
	Port     int    // hub UDP port
	MTU      int
	Mode     wgdev.Mode
	StateDir string // hub key lives in <StateDir>/samenode
	RunDir   string
	// Gateways: this node's gateway of each family it has (the sources of
	// host -> pod routes).
	Gateways []netip.Addr
	// PodCIDRs: this node's PodCIDR of each family it has, the pod route
	// re-created for registrations that do not record it.
	PodCIDRs []netip.Prefix
	Resync   time.Duration
	Log      *slog.Logger
}

// Stats count what failed, for operators and metrics.
type Stats struct {
	Failures atomic.Int64 // failed steps (a pod's device, hub peer or route; the hub; the pod device process)
	Retries  atomic.Int64 // steps tried again after failing
	Pending  atomic.Int64 // gauge: steps failing right now (the dirty set)
}

// Reconciler owns the hub device, its peers and routes, and the pod device
// process. Its dirty set is owned by whoever runs Sync: Setup, then Run.
type Reconciler struct {
	o       Options
	hub     hub.Hub
	wg      *wgctrl.Client
	podMode wgdev.Mode // WireGuard of new pods' devices
	Stats   Stats
	// dirty holds what failed in the last pass, by what it is (a pod ID,
	// "hub", "hub peer KEY", ...), with the error.
	dirty map[string]error
}

// Setup ensures the hub device (adopted if it exists) with its own key, the
// pod device process, and an initial reconcile of the registry.
func Setup(o Options) (*Reconciler, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	h := hub.Hub{Name: hub.DeviceName(o.Device), Gateways: o.Gateways}
	// Pod devices send to the hub on 127.0.0.1: loopback must be up.
	if lo, err := netlink.LinkByName("lo"); err == nil && lo.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(lo); err != nil {
			return nil, fmt.Errorf("set lo up: %w", err)
		}
	}
	priv, _, err := keys.LoadOrCreate(filepath.Join(o.StateDir, "samenode"))
	if err != nil {
		return nil, fmt.Errorf("same-node hub key: %w", err)
	}
	dev, err := wgdev.Ensure(wgdev.Options{Name: h.Name, MTU: hub.DeviceMTU, Want: o.Mode, RunDir: o.RunDir, Log: o.Log})
	if err != nil {
		return nil, fmt.Errorf("same-node hub: %w", err)
	}
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	if err := wgdev.Configure(wg, h.Name, priv.Key(), o.Port); err != nil {
		wg.Close()
		return nil, err
	}
	for _, gw := range o.Gateways {
		if gw.Is6() {
			// Routes of pods' /128s need IPv6 on the hub's interface.
			if err := route.SetIPv6Enabled(h.Name, true); err != nil {
				wg.Close()
				return nil, err
			}
		}
	}
	o.Log.Info("same-node hub ready", "device", h.Name, "mode", dev.Mode, "adopted", dev.Adopted, "port", o.Port, "public_key", priv.Public())
	if err := poddevices.Ensure(o.RunDir, o.Log); err != nil {
		wg.Close()
		return nil, err
	}
	podMode, err := attach.PodDeviceMode(o.Mode, attach.ProbeName(o.Device), o.Log)
	if err != nil {
		wg.Close()
		return nil, err
	}
	o.Log.Info("same-node pod devices", "mode", podMode)
	r := &Reconciler{o: o, hub: h, wg: wg, podMode: podMode, dirty: map[string]error{}}
	r.Sync()
	return r, nil
}

// PodMode is the WireGuard new pods' devices use (for the node file).
func (r *Reconciler) PodMode() wgdev.Mode { return r.podMode }

// retryMin is the first quick retry of a failed step.
const retryMin = 200 * time.Millisecond

// Run reconciles until ctx ends: at once when the pod device process dies
// (poddevices.Watch), every Resync interval anyway, and after a failure
// again with backoff (retryMin doubling up to Resync) until the dirty set
// is empty.
func (r *Reconciler) Run(ctx context.Context) {
	defer r.wg.Close()
	died := make(chan struct{}, 1)
	go poddevices.Watch(ctx, r.o.RunDir, retryMin, r.o.Resync, died, r.o.Log)
	t := time.NewTicker(r.o.Resync)
	defer t.Stop()
	retry := time.NewTimer(retryMin)
	if len(r.dirty) == 0 { // Setup's pass went through
		retry.Stop()
	}
	defer retry.Stop()
	backoff := retryMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-died:
			r.o.Log.Warn("same-node pod device process gone; restarting it and re-creating pod devices")
		case <-t.C:
		case <-retry.C:
			r.Stats.Retries.Add(int64(len(r.dirty)))
			r.o.Log.Info("same-node reconcile: retrying failed steps", "failed", dirtyKeys(r.dirty))
		}
		failed := map[string]error{}
		if err := poddevices.Ensure(r.o.RunDir, r.o.Log); err != nil {
			failed[podDevicesKey] = err
			r.o.Log.Error("same-node pod device process", "err", err)
		}
		r.sync(failed)
		if len(r.dirty) > 0 {
			retry.Reset(backoff)
			backoff = min(2*backoff, r.o.Resync)
		} else {
			backoff = retryMin
		}
	}
}

// podDevicesKey is the dirty-set entry of the pod device process.
const podDevicesKey = "pod device process"

// settle makes failed the dirty set, says what recovered and counts.
func (r *Reconciler) settle(failed map[string]error) {
	for k := range r.dirty {
		if _, still := failed[k]; !still {
			r.o.Log.Info("same-node step recovered", "step", k)
		}
	}
	r.Stats.Failures.Add(int64(len(failed)))
	r.Stats.Pending.Store(int64(len(failed)))
	r.dirty = failed
}

func dirtyKeys(m map[string]error) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
