package mesh

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Strict mode made visible: peers we send to that never answer.

// peerHealth tracks one peer's handshakes between checks.
type peerHealth struct {
	since   time.Time // first seen on the device with this key
	lastTx  int64
	failing bool
}

// handshakeGrace is how long a peer may try before it counts as failing:
// WireGuard retries a handshake every 5 s, so three attempts.
const handshakeGrace = 15 * time.Second

// rejectAfter is WireGuard's session lifetime: older sessions are dead.
const rejectAfter = 180 * time.Second

// checkHandshakes logs and counts peers that this node is sending to
// (handshake initiations or data) without a live session: with strict
// mode their traffic is dropped, and this is where an operator sees why.
func (r *Reconciler) checkHandshakes(now time.Time) {
	dev, err := r.cfg.WG.Device(r.cfg.Device)
	if err != nil {
		return
	}
	if r.health == nil {
		r.health = map[wgtypes.Key]*peerHealth{}
	}
	seen := make(map[wgtypes.Key]bool, len(dev.Peers))
	failing := int64(0)
	for _, p := range dev.Peers {
		seen[p.PublicKey] = true
		h := r.health[p.PublicKey]
		if h == nil {
			h = &peerHealth{since: now, lastTx: p.TransmitBytes}
			r.health[p.PublicKey] = h
			continue
		}
		sending := p.TransmitBytes > h.lastTx
		h.lastTx = p.TransmitBytes
		dead := p.LastHandshakeTime.IsZero() || now.Sub(p.LastHandshakeTime) > rejectAfter
		bad := dead && sending && now.Sub(h.since) > handshakeGrace
		if !dead && h.failing {
			h.failing = false
			r.cfg.Log.Info("WireGuard handshake problem cleared: handshake with peer succeeded", "cidr", r.cidrOf(p.PublicKey), "public_key", p.PublicKey)
		}
		if bad && !h.failing {
			h.failing = true
			r.Stats.HandshakeStalls.Add(1)
			cidr := r.cidrOf(p.PublicKey)
			r.cfg.Log.Warn("no WireGuard handshake with peer: its traffic is dropped (strict mode, never sent in clear); check the key and endpoint in its record, or whether that node is down",
				"cidr", cidr, "node", r.applied[cidr].Node, "endpoint", p.Endpoint, "public_key", p.PublicKey,
				"last_handshake", p.LastHandshakeTime, "handshake_stalls", r.Stats.HandshakeStalls.Load())
		}
		if h.failing {
			failing++
		}
	}
	for k, h := range r.health {
		if !seen[k] {
			if h.failing {
				r.cfg.Log.Info("WireGuard handshake problem cleared: failing peer removed or re-keyed", "public_key", k)
			}
			delete(r.health, k)
		}
	}
	r.Stats.NoHandshakePeers.Store(failing)
}

func (r *Reconciler) cidrOf(k wgtypes.Key) netip.Prefix {
	for c, p := range r.applied {
		if p.PublicKey == k {
			return c
		}
	}
	return netip.Prefix{}
}
