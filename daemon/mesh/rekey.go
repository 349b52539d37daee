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
//
// A resync that drops a session older than the peer may keep
// (Peer.DropSessionsBefore: made before the pair's post-quantum PSK) is
// followed the same way, on the end that
// initiates after a break (initiatesAfterBreak) so the two ends' retries
// cannot cross. Its first initiation can be lost like a re-keyed one's,
// or answered with an older PSK than ours (the peer installs its PSK
// after ours, docs/post-quantum.md), and WireGuard would try again only
// 5 s later — 5 s in which our old session is gone while the peer still
// sends on it, and every exchange relayed through us is lost.
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

// Why an entry was re-created, for the rekeyWatch logs.
const (
	whyRekeyed      = "key rotated"
	whyStaleSession = "session older than allowed dropped"
)

// rekeyWatch follows one re-created entry until its first handshake.
type rekeyWatch struct {
	key      wgtypes.Key
	why      string // whyRekeyed or whyStaleSession
	attempts int
	next     time.Time
}

// watchRekey starts following the peer of cidr, whose entry with key was
// just (re-)created for why.
func (r *Reconciler) watchRekey(cidr netip.Prefix, key wgtypes.Key, why string, now time.Time) {
	if r.rekeyed == nil {
		r.rekeyed = map[netip.Prefix]*rekeyWatch{}
	}
	r.rekeyed[cidr] = &rekeyWatch{key: key, why: why, next: now.Add(rekeyDelay(0))}
	r.armRekey(now)
}

// watchDroppedSessions follows the peers whose stale sessions the plan
// just dropped (Diff re-creates their entries), on the end that
// initiates after a break. have is the device as read before the plan.
func (r *Reconciler) watchDroppedSessions(desired map[netip.Prefix]Peer, have []wgtypes.Peer, now time.Time) {
	byKey := make(map[wgtypes.Key]wgtypes.Peer, len(have))
	for _, h := range have {
		byKey[h.PublicKey] = h
	}
	for cidr, d := range desired {
		if h, ok := byKey[d.PublicKey]; ok && d.staleSession(h) && d.initiatesAfterBreak(r.cfg.SelfKey) {
			r.watchRekey(cidr, d.PublicKey, whyStaleSession, now)
		}
	}
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

// checkRekeys re-creates the followed entries that still have no
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
				r.cfg.Log.Info("handshake after re-creating the peer's entry again", "cidr", cidr, "peer_node", p.Node, "attempts", w.attempts, "why", w.why)
			}
			continue
		}
		if now.Before(w.next) {
			continue
		}
		if w.attempts == rekeyAttempts {
			delete(r.rekeyed, cidr)
			r.cfg.Log.Warn("no handshake since the peer's entry was re-created; WireGuard keeps retrying every 5 s", "cidr", cidr, "peer_node", p.Node,
				"public_key", w.key.String(), "why", w.why)
			continue
		}
		w.attempts++
		r.Stats.RekeyRetries.Add(1)
		r.cfg.Log.Info("no handshake yet since the peer's entry was re-created; re-creating it to initiate again", "cidr", cidr, "peer_node", p.Node,
			"attempt", w.attempts, "why", w.why)
		if err := r.recreatePeer(p); err != nil {
			r.cfg.Log.Warn("re-create peer entry", "cidr", cidr, "peer_node", p.Node, "err", err, "why", w.why)
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
