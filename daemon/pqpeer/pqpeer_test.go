package pqpeer

import (
	"log/slog"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/pqexchange"
)

// TestHolds: required mode's rule with explicit times — held without a
// PSK, released by one, held again once the last exchange is more than
// maxAge old, and never for age when maxAge is 0.
func TestHolds(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	const maxAge = 6 * time.Second
	for _, tc := range []struct {
		name   string
		has    bool
		now    time.Time
		maxAge time.Duration
		want   bool
	}{
		{"no PSK yet", false, t0, maxAge, true},
		{"no PSK, no max age", false, t0, 0, true},
		{"fresh PSK", true, t0, maxAge, false},
		{"one interval old", true, t0.Add(2 * time.Second), maxAge, false},
		{"exactly max age", true, t0.Add(maxAge), maxAge, false},
		{"just past max age", true, t0.Add(maxAge + time.Millisecond), maxAge, true},
		{"long past max age", true, t0.Add(time.Hour), maxAge, true},
		{"old PSK, no max age", true, t0.Add(time.Hour), 0, false},
		{"clock behind install", true, t0.Add(-time.Second), maxAge, false},
	} {
		if got := holds(tc.has, t0, time.Time{}, tc.now, tc.maxAge); got != tc.want {
			t.Errorf("%s: holds = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// recorder is the WireGuard device for install: it keeps the PSKs set.
type recorder struct{ psk map[wgtypes.Key]wgtypes.Key }

func (r *recorder) Device(string) (*wgtypes.Device, error) { return &wgtypes.Device{}, nil }
func (r *recorder) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	for _, p := range cfg.Peers {
		r.psk[p.PublicKey] = *p.PresharedKey
	}
	return nil
}

// TestReleaseAfterSettle: in required mode each end keeps the peer held,
// and FirstPSK unreported, for releaseSettle after installing its first
// PSK: the responder because the initiator installs only when our ack
// arrives (and a release drops the session the ack rides on), the
// initiator so that both release together. Outside required mode nothing
// is held.
func TestReleaseAfterSettle(t *testing.T) {
	var peer wgtypes.Key
	peer[0] = 7
	for _, tc := range []struct {
		name                string
		required, initiator bool
		heldAfterInstall    bool
	}{
		{"required, responder", true, false, true},
		{"required, initiator", true, true, true},
		{"on, responder", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := &recorder{psk: map[wgtypes.Key]wgtypes.Key{}}
			m := &Manager{cfg: Config{Required: tc.required, WG: dev, Log: slog.New(slog.DiscardHandler)},
				peers: map[wgtypes.Key]*peerState{peer: {}}, holdChanged: make(chan struct{}, 1)}
			if err := m.install(pqexchange.Result{Peer: peer, Epoch: 1, Initiator: tc.initiator}); err != nil {
				t.Fatal(err)
			}
			if _, ok := dev.psk[peer]; !ok {
				t.Fatal("PSK not set on the device")
			}
			_, reported := m.FirstPSK(peer)
			if held := m.cfg.Required && m.Hold(peer); held != tc.heldAfterInstall || reported == tc.heldAfterInstall {
				t.Fatalf("right after install: held %v, FirstPSK reported %v; want held %v", held, reported, tc.heldAfterInstall)
			}
			if !tc.heldAfterInstall {
				return
			}
			<-m.holdChanged // the install's own signal
			select {
			case <-m.holdChanged:
			case <-time.After(10 * releaseSettle):
				t.Fatal("no signal to the reconciler at the end of the settle")
			}
			if first, ok := m.FirstPSK(peer); m.Hold(peer) || !ok || first.IsZero() {
				t.Fatalf("after the settle: held %v, FirstPSK %v %v", m.Hold(peer), first, ok)
			}
		})
	}
}

// TestCheckAge: a PSK that passes MaxAge holds its peer once (one signal
// to the reconciler, Hold true), only in required mode; a peer with no
// PSK is not re-signalled (it was held all along).
func TestCheckAge(t *testing.T) {
	var fresh, old, none wgtypes.Key
	fresh[0], old[0], none[0] = 1, 2, 3
	newManager := func(required bool) *Manager {
		now := time.Now()
		return &Manager{
			cfg: Config{Required: required, MaxAge: 6 * time.Second, Log: slog.New(slog.DiscardHandler)},
			peers: map[wgtypes.Key]*peerState{
				fresh: {has: true, installed: now},
				old:   {has: true, installed: now.Add(-10 * time.Second)},
				none:  {},
			},
			holdChanged: make(chan struct{}, 1),
		}
	}
	m := newManager(true)
	if !m.Hold(old) || m.Hold(fresh) || !m.Hold(none) {
		t.Fatalf("Hold before checkAge: old %v fresh %v none %v, want true false true", m.Hold(old), m.Hold(fresh), m.Hold(none))
	}
	m.checkAge(time.Now())
	select {
	case <-m.holdChanged:
	default:
		t.Fatal("checkAge: a PSK past MaxAge did not signal the reconciler")
	}
	if !m.peers[old].stale || m.peers[fresh].stale || m.peers[none].stale {
		t.Fatalf("stale after checkAge: old %v fresh %v none %v, want true false false", m.peers[old].stale, m.peers[fresh].stale, m.peers[none].stale)
	}
	m.checkAge(time.Now())
	select {
	case <-m.holdChanged:
		t.Fatal("checkAge: signalled again for a peer already held")
	default:
	}
	// Later, the fresh one ages too.
	m.checkAge(time.Now().Add(7 * time.Second))
	if !m.peers[fresh].stale {
		t.Fatal("checkAge 7s later: the fresh PSK (now 7s old, MaxAge 6s) is not held")
	}

	m = newManager(false)
	m.checkAge(time.Now())
	select {
	case <-m.holdChanged:
		t.Fatal("on mode: checkAge signalled (nothing is held in on mode)")
	default:
	}
	if m.peers[old].stale {
		t.Fatal("on mode: an old PSK was marked held")
	}
}

// TestCarry: a peer's new WireGuard key gets the pair's PSK only from the
// same node with the same ML-KEM key; another node, a changed ML-KEM key
// (a re-created node) or a key already known carry nothing.
func TestCarry(t *testing.T) {
	var oldKey, newKey, other wgtypes.Key
	oldKey[0], newKey[0], other[0] = 1, 2, 3
	var psk wgtypes.Key
	psk[0] = 9
	installed := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		node, kem string
		known     bool // newKey already has a state
		want      bool
	}{
		{"same node, same ML-KEM key", "n1", "kem1", false, true},
		{"other node", "n2", "kem1", false, false},
		{"same node, new ML-KEM key", "n1", "kem2", false, false},
		{"no ML-KEM key", "n1", "", false, false},
		{"new key already known", "n1", "kem1", true, false},
	} {
		m := &Manager{cfg: Config{Log: slog.New(slog.DiscardHandler)}, peers: map[wgtypes.Key]*peerState{
			oldKey: {psk: psk, has: true, installed: installed, info: meshInfo("n1", "kem1")},
			other:  {info: meshInfo("n2", "kem1")},
		}}
		if tc.known {
			m.peers[newKey] = &peerState{}
		}
		m.Carry(newKey, tc.node, tc.kem)
		got, ok := m.PresharedKey(newKey)
		if ok != tc.want || (ok && got != psk) {
			t.Errorf("%s: PSK for the new key present=%v (right one: %v), want %v", tc.name, ok, got == psk, tc.want)
		}
		if tc.want && !m.peers[newKey].installed.Equal(installed) {
			t.Errorf("%s: carried PSK's age restarted (installed %v, want %v): max-age must count from the exchange", tc.name, m.peers[newKey].installed, installed)
		}
	}
}

func meshInfo(node, kem string) mesh.PeerInfo { return mesh.PeerInfo{Node: node, PQPublicKey: kem} }

// TestRelayedExchangeWaitsForItsRelay: a relayed peer's exchange waits
// while the relay's own entry is held (or not configured yet): the tunnel
// carries nothing to the peer then, and every message of an attempt would
// be lost. A direct peer never waits for another.
func TestRelayedExchangeWaitsForItsRelay(t *testing.T) {
	var relay, far, direct wgtypes.Key
	relay[0], far[0], direct[0] = 1, 2, 3
	for _, tc := range []struct {
		name      string
		via       string
		relayHeld bool
		want      bool
	}{
		{"relay held", "r1", true, true},
		{"relay released", "r1", false, false},
		{"relay not configured", "r9", false, true},
		{"direct", "", true, false},
	} {
		m := &Manager{peers: map[wgtypes.Key]*peerState{
			relay:  {info: mesh.PeerInfo{Node: "r1", Held: tc.relayHeld}},
			far:    {info: mesh.PeerInfo{Node: "far", RelayedVia: tc.via}},
			direct: {info: mesh.PeerInfo{Node: "d"}},
		}}
		if got := m.relayHeld(m.peers[far]); got != tc.want {
			t.Errorf("%s: waits %v, want %v", tc.name, got, tc.want)
		}
	}
}
