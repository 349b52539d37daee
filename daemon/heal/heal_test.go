package heal

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/liveness"
)

func testWant(t *testing.T) (Want, wgtypes.Peer) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	w := Want{Key: k.PublicKey(), Node: "n2", CIDR: netip.MustParsePrefix("10.244.2.0/24"),
		Endpoint: netip.MustParseAddrPort("10.99.0.2:51820"), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}
	d := wgtypes.Peer{PublicKey: w.Key, Endpoint: net.UDPAddrFromAddrPort(w.Endpoint),
		AllowedIPs: []net.IPNet{{IP: net.IP{10, 244, 2, 0}, Mask: net.CIDRMask(24, 32)}}}
	return w, d
}

// Each fault injected on a healthy entry is repaired at the next
// observation, whatever was repaired before (the backoff belongs to a
// drift that persists, not to the peer's history).
func TestEveryFaultRepairedAtOnce(t *testing.T) {
	w, good := testWant(t)
	h := New(Config{})
	defer h.Close()
	now := time.Unix(1000, 0)
	tick := func(dev ...wgtypes.Peer) Result {
		now = now.Add(Tick)
		return h.Observe(now, dev, []Want{w})
	}
	good.LastHandshakeTime = now
	if r := tick(good); len(r.Repairs) != 0 {
		t.Fatalf("healthy entry: repairs %+v", r.Repairs)
	}
	wrongEP := good
	wrongEP.Endpoint = &net.UDPAddr{IP: net.IP{10, 99, 0, 1}, Port: 9}
	narrow := good
	narrow.AllowedIPs = []net.IPNet{{IP: net.IP{10, 244, 2, 0}, Mask: net.CIDRMask(25, 32)}}
	ka := good
	ka.PersistentKeepaliveInterval = time.Second
	for _, f := range []struct {
		name  string
		dev   []wgtypes.Peer
		cause string
	}{
		{"missing", nil, "entry missing from the device"},
		{"endpoint", []wgtypes.Peer{wrongEP}, "device entry differs from the etcd record: endpoint"},
		{"allowed", []wgtypes.Peer{narrow}, "device entry differs from the etcd record: allowed-ips"},
		{"keepalive", []wgtypes.Peer{ka}, "device entry differs from the etcd record: keepalive"},
	} {
		for i := range f.dev {
			f.dev[i].LastHandshakeTime = now
		}
		r := tick(f.dev...)
		if len(r.Repairs) == 0 || r.Repairs[0].Kind != liveness.Reapply || r.Repairs[0].Cause != f.cause {
			t.Fatalf("%s: repairs %+v, want reapply-config (%s)", f.name, r.Repairs, f.cause)
		}
	}
	// A fault that comes back is repaired with backoff.
	if r := tick(good); len(r.Repairs) != 0 {
		t.Fatalf("repaired: repairs %+v", r.Repairs)
	}
	if r := tick(wrongEP); len(r.Repairs) != 1 || r.Repairs[0].Attempt != 1 {
		t.Fatalf("endpoint drift: %+v", r.Repairs)
	}
	if r := tick(wrongEP); len(r.Repairs) != 0 {
		t.Fatalf("endpoint drift again within the backoff: %+v", r.Repairs)
	}
}

// A thousand peers configured at once are probed over the probe interval,
// not in one instant: one tick sends at most its share. The probes go to
// a closed port on loopback (answered by a port unreachable).
func TestProbesSpreadOverTicks(t *testing.T) {
	h := New(Config{ProbePort: 9, ProbeTimeout: 100 * time.Millisecond})
	defer h.Close()
	var wants []Want
	var dev []wgtypes.Peer
	for range 300 {
		w, d := testWant(t)
		w.Probe = netip.MustParseAddr("127.0.0.1")
		wants, dev = append(wants, w), append(dev, d)
	}
	now := time.Unix(1000, 0)
	h.Observe(now, dev, wants)
	h.wg.Wait()
	h.mu.Lock()
	sent := len(h.done)
	h.mu.Unlock()
	if want := 300/30 + 4; sent != want {
		t.Fatalf("first tick sent %d probes to 300 new peers, want %d (a 60 s interval's share of 2 s ticks)", sent, want)
	}
	for _, o := range h.done {
		if !o.answered {
			t.Fatalf("probe to a closed port on loopback: not answered (a port unreachable proves the path)")
		}
	}
}

// OnChange runs after a state change only, with the published statuses.
func TestOnChangeOnTransitions(t *testing.T) {
	w, d := testWant(t)
	var calls [][]PeerStatus
	h := New(Config{OnChange: func(st []PeerStatus) { calls = append(calls, st) }})
	defer h.Close()
	now := time.Unix(1000, 0)
	var tx int64
	for i := 0; i < 12; i++ { // initiations go unanswered past the grace
		now = now.Add(Tick)
		tx += 148
		d.TransmitBytes = tx
		h.Observe(now, []wgtypes.Peer{d}, []Want{w})
	}
	if len(calls) != 1 || len(calls[0]) != 1 || calls[0][0].State != liveness.NoHandshake {
		t.Fatalf("OnChange calls %+v, want one with the peer no-handshake", calls)
	}
	if n := h.Stalls(); n != 1 {
		t.Fatalf("stalls %d after the peer went no-handshake, want 1", n)
	}
	d.LastHandshakeTime, d.ReceiveBytes = now, 92
	now = now.Add(Tick)
	h.Observe(now, []wgtypes.Peer{d}, []Want{w})
	if len(calls) != 2 || calls[1][0].State != liveness.Up || !calls[1][0].Since.Equal(now) {
		t.Fatalf("OnChange calls %+v, want a second with the peer up since %v", calls, now)
	}
	if n := h.Stalls(); n != 1 {
		t.Fatalf("stalls %d after the peer came up, want still 1 (a counter)", n)
	}
}
