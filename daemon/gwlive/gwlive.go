// Package gwlive tells the gateway observer (package gateway) which
// gateways' tunnels this node counts as dead, from the self-healing's
// per-peer liveness (package heal): a serving gateway whose process and
// etcd lease are fine but whose tunnel from here does not carry packets
// is skipped here, and the next candidate in election order serves the
// site on this node (docs/gateways.md, "Dead tunnels").
//
// Which states count (package liveness names them):
//   - no-handshake, stale, one-way are dead: each already rests on
//     sustained evidence (initiations unanswered past the grace, or
//     sending for WireGuard's keepalive plus a retry with nothing back,
//     or a probe through the tunnel lost);
//   - pending is not: a peer configured a moment ago has had no chance;
//   - a single lost probe turns a peer one-way at once, and its repair's
//     verification probe clears it about 5 s later: a blip. So a peer
//     counts as dead only once it has stayed in a dead state for
//     DeadAfter (two rekey timeouts).
//
// Failback: an excluded gateway is used again only once its tunnel has
// been up for UpAfter without a break; the elected order is kept, so the
// site then returns to the elected gateway in one atomic move. A tunnel
// that keeps failing costs one move out and one back per
// dead-detection + UpAfter period, never a move per blip.
package gwlive

import (
	"net/netip"
	"sync"
	"time"

	"github.com/wgcni/wgcni/daemon/gateway"
	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/liveness"
)

const (
	// DeadAfter is how long a peer stays in a dead state before its
	// gateway is skipped: longer than a lost probe's repair takes to be
	// verified (liveness.Config.VerifyAfter, one rekey timeout, plus a
	// heal tick).
	DeadAfter = 2 * liveness.RekeyTimeout
	// UpAfter is how long a skipped gateway's tunnel must stay up before
	// it serves again here: two of liveness's silence windows, so a link
	// that drops packets in bursts is not taken back between bursts.
	UpAfter = 2 * (liveness.KeepaliveTimeout + liveness.RekeyTimeout)
)

// Dead reports whether liveness state s counts as a dead tunnel.
func Dead(s liveness.State) bool {
	return s == liveness.NoHandshake || s == liveness.Stale || s == liveness.OneWay
}

// Judge follows the healer's statuses and excludes the gateways whose
// tunnel is dead. Update may be called from the reconciler's loop,
// Usable and Why from anywhere.
type Judge struct {
	deadAfter, upAfter time.Duration
	recheck            func()

	mu    sync.Mutex
	peers map[netip.Prefix]heal.PeerStatus // by record CIDR
	dead  map[netip.Prefix]string          // skipped records: why
	timer *time.Timer
	now   func() time.Time
}

// New returns a judge that calls recheck (gateway.Observer.Recheck) when
// its answer changes.
func New(recheck func()) *Judge {
	return &Judge{deadAfter: DeadAfter, upAfter: UpAfter, recheck: recheck, now: time.Now,
		peers: map[netip.Prefix]heal.PeerStatus{}, dead: map[netip.Prefix]string{}}
}

// Update takes every peer's status (heal.Config.OnChange).
func (j *Judge) Update(st []heal.PeerStatus) {
	j.mu.Lock()
	j.peers = make(map[netip.Prefix]heal.PeerStatus, len(st))
	for _, s := range st {
		if c, err := netip.ParsePrefix(s.CIDR); err == nil {
			j.peers[c] = s
		}
	}
	changed, recheck := j.evaluate(), j.recheck
	j.mu.Unlock()
	if changed {
		recheck()
	}
}

// evaluate applies the holds at now and arms the timer for the next one
// due; it reports whether the set of skipped gateways changed.
func (j *Judge) evaluate() bool {
	now := j.now()
	changed := false
	var next time.Duration
	due := func(wait time.Duration) bool {
		if wait <= 0 {
			changed = true
			return true
		}
		if next == 0 || wait < next {
			next = wait
		}
		return false
	}
	for c := range j.dead {
		if _, ok := j.peers[c]; !ok {
			delete(j.dead, c) // no peer any more: the mesh routes nothing to it anyway
			changed = true
		}
	}
	for c, s := range j.peers {
		_, skipped := j.dead[c]
		switch {
		case !skipped && Dead(s.State):
			if due(j.deadAfter - now.Sub(s.Since)) {
				j.dead[c] = "tunnel " + string(s.State)
			}
		case skipped && s.State == liveness.Up:
			if due(j.upAfter - now.Sub(s.Since)) {
				delete(j.dead, c)
			}
		}
	}
	if j.timer != nil {
		j.timer.Stop()
		j.timer = nil
	}
	if next > 0 {
		j.timer = time.AfterFunc(next, j.expire)
	}
	return changed
}

func (j *Judge) expire() {
	j.mu.Lock()
	changed, recheck := j.evaluate(), j.recheck
	j.mu.Unlock()
	if changed {
		recheck()
	}
}

// Close stops the timer.
func (j *Judge) Close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.timer != nil {
		j.timer.Stop()
		j.timer = nil
	}
	j.recheck = func() {}
}

// Usable is gateway.Observer.Usable: false for a gateway whose tunnel
// from here is dead.
func (j *Judge) Usable(c gateway.Candidate) bool { return j.Why(c) == "" }

// Why is gateway.Observer.Why: why c is skipped here ("" it is not).
func (j *Judge) Why(c gateway.Candidate) string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.dead[c.Record]
}
