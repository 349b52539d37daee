package mesh

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/wgdev"
)

// recreateDevice brings a lost device back: a userspace device whose host
// process died, or a link someone deleted. Everything that was on it went
// with it — key, peers, and the routes through it — so the device is
// re-created through cfg.Recreate and every peer and route is applied
// again from the desired state. Until then the strict route drops the
// node's cross-node pod traffic: fail closed, never plain.
// The new device initiates to every peer at once (initiateAll).
func (r *Reconciler) recreateDevice(why string) {
	if r.cfg.Recreate == nil || r.recreating {
		return
	}
	// A deletion event can arrive after a resync already re-created the
	// device: only a device that is gone, or another link than the one
	// in use, needs anything.
	if l, err := netlink.LinkByName(r.cfg.Device); err == nil && l.Attrs().Index == r.cfg.LinkIndex && !r.deviceLost {
		if _, err := r.cfg.WG.Device(r.cfg.Device); err == nil {
			return
		}
	}
	r.recreating = true
	defer func() { r.recreating = false }()
	start := time.Now()
	if !r.deviceLost {
		r.cfg.Log.Warn("WireGuard device lost; re-creating it", "device", r.cfg.Device, "why", why)
	}
	idx, err := r.cfg.Recreate()
	if err != nil {
		// Typically the dead host's UDP socket still holds the listen
		// port for a moment after its TUN is gone, or an external host
		// (a sidecar container) is being restarted: retry soon, and
		// say so now and then, not on every attempt.
		r.deviceLost = true
		r.deviceFailures++
		d := r.deviceBackoff.Next()
		r.deviceTimer = time.NewTimer(d)
		level := slog.LevelDebug
		if r.deviceFailures == 1 || r.deviceFailures%60 == 0 {
			level = slog.LevelWarn
		}
		r.cfg.Log.Log(context.Background(), level, "re-create WireGuard device failed; retrying", "device", r.cfg.Device,
			"attempts", r.deviceFailures, "in", d.Round(time.Millisecond), "err", err)
		return
	}
	r.deviceLost = false
	r.deviceFailures = 0
	r.deviceTimer = nil
	r.deviceBackoff.Reset()
	r.cfg.LinkIndex = idx
	r.Stats.DeviceRecreations.Add(1)
	// Nothing of the old device is left: the resync diffs the desired
	// peers and routes against the empty new one.
	r.applied = make(map[netip.Prefix]Peer)
	if err := r.kernelResync(); err != nil {
		r.cfg.Log.Error("restore peers and routes on the re-created device; the next resync tries again", "device", r.cfg.Device, "err", err)
		return
	}
	r.initiateAll()
	r.cfg.Log.Info("WireGuard device re-created; peers and routes restored", "device", r.cfg.Device, "link_index", idx,
		"peers", len(r.applied), "took", time.Since(start).Round(time.Millisecond))
}

// deviceRetryC fires when re-creating a lost device is to be tried again;
// nil (never) otherwise.
func (r *Reconciler) deviceRetryC() <-chan time.Time {
	if r.deviceTimer == nil {
		return nil
	}
	return r.deviceTimer.C
}

// initiateAll makes a device that replaced another (re-created here, or
// created at start-up after a crash or reboot) start a handshake with
// every peer now. The peers still hold sessions whose keys died with the
// old device and keep sending on them, dropped, until a handshake: ours,
// or theirs after up to 15 s without a reply.
func (r *Reconciler) initiateAll() {
	ka := make(map[wgtypes.Key]time.Duration, len(r.applied))
	for _, p := range r.applied {
		ka[p.PublicKey] = time.Duration(p.Keepalive) * time.Second
	}
	if err := wgdev.Initiate(r.cfg.WG, r.cfg.Device, ka); err != nil {
		r.cfg.Log.Warn("initiate handshakes from the new device", "device", r.cfg.Device, "err", err)
	}
}
