package mesh

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// A peer whose key changed (a rotation on its node) gets a new session from
// a single exchange: our initiation, its response, our keepalive. When any
// of the three is lost (a UDP drop on a loaded node, the peer's device not
// switched yet), WireGuard on both sides waits REKEY_TIMEOUT (5 s) before
// trying again, and the rotating node holds its packets meanwhile: ~5 s of
// traffic lost. Neither side can retry sooner: an initiation sent within
// 5 s of the last one is suppressed, and no configuration call resets that
// clock short of a private-key change. Re-creating the peer entry does (a
// new entry has no rate-limit history), so until the first handshake with
// the new key is seen, the reconciler re-creates the entry and initiates
// again, at most rekeyAttempts times (rekeyDelay apart) after the key
// change. A re-created entry loses the packets it held, which only matters
// when it was stuck anyway.
const rekeyAttempts = 3

// rekeyDelay is how long to wait for a handshake before the given attempt
// (0-based) to re-create the entry: a handshake normally takes a round trip.
func rekeyDelay(attempt int) time.Duration {
	switch attempt {
	case 0:
		return 300 * time.Millisecond
	case 1:
		return time.Second
	default:
		return 2 * time.Second
	}
}

// rekeyWatch follows one re-keyed peer until its first handshake.
type rekeyWatch struct {
	key      wgtypes.Key
	attempts int
	next     time.Time
}

// watchRekey starts following the peer of cidr, which just got key.
func (r *Reconciler) watchRekey(cidr netip.Prefix, key wgtypes.Key, now time.Time) {
	if r.rekeyed == nil {
		r.rekeyed = map[netip.Prefix]*rekeyWatch{}
	}
	r.rekeyed[cidr] = &rekeyWatch{key: key, next: now.Add(rekeyDelay(0))}
	r.armRekey(now)
}

// rekeyC fires when the next re-keyed peer is due for a check; nil (never)
// when no peer is followed.
func (r *Reconciler) rekeyC() <-chan time.Time {
	if r.rekeyTimer == nil {
		return nil
	}
	return r.rekeyTimer.C
}

// armRekey sets the timer to the earliest check due, or drops it.
func (r *Reconciler) armRekey(now time.Time) {
	if r.rekeyTimer != nil {
		r.rekeyTimer.Stop()
		r.rekeyTimer = nil
	}
	var first time.Time
	for _, w := range r.rekeyed {
		if first.IsZero() || w.next.Before(first) {
			first = w.next
		}
	}
	if !first.IsZero() {
		r.rekeyTimer = time.NewTimer(max(first.Sub(now), 0))
	}
}

// checkRekeys re-creates the entries of re-keyed peers that still have no
// handshake, and stops following those that have one, were removed or
// changed key again.
func (r *Reconciler) checkRekeys(now time.Time) {
	defer r.armRekey(now)
	dev, err := r.cfg.WG.Device(r.cfg.Device)
	if err != nil {
		r.cfg.Log.Warn("read device to check re-keyed peers", "device", r.cfg.Device, "err", err)
		for _, w := range r.rekeyed {
			w.next = now.Add(rekeyDelay(rekeyAttempts))
		}
		return
	}
	handshake := make(map[wgtypes.Key]time.Time, len(dev.Peers))
	for _, p := range dev.Peers {
		handshake[p.PublicKey] = p.LastHandshakeTime
	}
	for cidr, w := range r.rekeyed {
		p, ok := r.applied[cidr]
		if !ok || p.PublicKey != w.key {
			delete(r.rekeyed, cidr)
			continue
		}
		if hs := handshake[w.key]; !hs.IsZero() {
			delete(r.rekeyed, cidr)
			if w.attempts > 0 {
				r.cfg.Log.Info("handshake with re-keyed peer after re-creating its entry", "cidr", cidr, "peer_node", p.Node, "attempts", w.attempts)
			}
			continue
		}
		if now.Before(w.next) {
			continue
		}
		if w.attempts == rekeyAttempts {
			delete(r.rekeyed, cidr)
			r.cfg.Log.Warn("no handshake with re-keyed peer; WireGuard keeps retrying every 5 s", "cidr", cidr, "peer_node", p.Node, "public_key", w.key.String())
			continue
		}
		w.attempts++
		r.Stats.RekeyRetries.Add(1)
		r.cfg.Log.Info("no handshake with re-keyed peer yet; re-creating its entry to initiate again", "cidr", cidr, "peer_node", p.Node, "attempt", w.attempts)
		if err := r.recreatePeer(p); err != nil {
			r.cfg.Log.Warn("re-create re-keyed peer", "cidr", cidr, "err", err)
		}
		w.next = now.Add(rekeyDelay(w.attempts))
	}
}

// recreatePeer removes and adds back p's entry in one configuration call
// (so its AllowedIPs are never without an owner) and makes the new entry
// initiate at once.
func (r *Reconciler) recreatePeer(p Peer) error {
	if err := r.recreateEntry(p); err != nil {
		return err
	}
	if p.Keepalive == 0 {
		r.handshakeNow(p)
	}
	return nil
}

// recreateEntry removes and re-adds the peer's device entry as applied,
// in one configuration call: its session, its initiation retries and its
// counters go; its PSK stays. It initiates nothing itself.
func (r *Reconciler) recreateEntry(p Peer) error {
	pcs := []wgtypes.PeerConfig{{PublicKey: p.PublicKey, Remove: true}, p.config()}
	r.withPresharedKeys(pcs) // the new entry keeps the pair's PSK
	return r.cfg.WG.ConfigureDevice(r.cfg.Device, wgtypes.Config{Peers: pcs})
}
