package mesh

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/route"
)

// onDeviceAs is how the device reports p configured as desired.
func onDeviceAs(p Peer) wgtypes.Peer {
	h := onDevice(p)
	h.AllowedIPs = p.allowed()
	if !p.Endpoint.IsValid() {
		h.Endpoint = &net.UDPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40001} // roamed
	}
	return h
}

// TestDiffMovesCIDRWithoutGap: a CIDR moving between two peers in one
// update goes first to the gaining peer (WireGuard's insert takes it over)
// and the losing peer is not replaced (a replace would first drop it and
// its own CIDR), in either direction.
func TestDiffMovesCIDRWithoutGap(t *testing.T) {
	relay, far := peer(t, "10.244.2.0/24"), peer(t, "10.244.3.0/24")
	far.Unreachable, far.Endpoint = true, netip.AddrPort{}
	relayed, carrying := far, relay
	relayed.RelayedVia = "relay"
	carrying.Carries = far.CIDRs
	routes := map[netip.Prefix]route.Peer{}
	for _, p := range []Peer{relay, far} {
		routes[p.primary()] = p.routes(link, []netip.Addr{gw})[0]
	}
	for _, tc := range []struct {
		name          string
		have, want    []Peer
		first, second wgtypes.Key
	}{
		{"direct to relayed", []Peer{relay, far}, []Peer{carrying, relayed}, relay.PublicKey, far.PublicKey},
		{"relayed to direct", []Peer{carrying, relayed}, []Peer{relay, far}, far.PublicKey, relay.PublicKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			desired := map[netip.Prefix]Peer{}
			var have []wgtypes.Peer
			for i := range tc.want {
				desired[tc.want[i].primary()] = tc.want[i]
				have = append(have, onDeviceAs(tc.have[i]))
			}
			p := Diff(desired, have, routes, link, []netip.Addr{gw})
			if len(p.Peers) != 2 || len(p.RouteAdd)+len(p.RouteDel) != 0 {
				t.Fatalf("plan %+v, want two peer changes and no route change", p)
			}
			if p.Peers[0].PublicKey != tc.first || p.Peers[1].PublicKey != tc.second {
				t.Fatalf("order %v, %v: the gaining peer must come first", p.Peers[0].PublicKey, p.Peers[1].PublicKey)
			}
			if !p.Peers[0].ReplaceAllowedIPs || p.Peers[1].ReplaceAllowedIPs {
				t.Errorf("replace: gaining %v, losing %v; want true, false", p.Peers[0].ReplaceAllowedIPs, p.Peers[1].ReplaceAllowedIPs)
			}
			if p.Peers[1].Endpoint != nil && p.Peers[1].PublicKey == far.PublicKey {
				t.Errorf("an unreachable peer's endpoint was set: %v", p.Peers[1].Endpoint)
			}
			// Applied, the state is converged.
			var after []wgtypes.Peer
			for _, w := range tc.want {
				after = append(after, onDeviceAs(w))
			}
			if p := Diff(desired, after, routes, link, []netip.Addr{gw}); !p.Empty() {
				t.Errorf("not converged after the move: %+v", p)
			}
		})
	}
}

// TestDiffDropsStaleSession: a session older than DropSessionsBefore is
// dropped by removing and re-adding the entry, in that order; a newer one
// or none is kept.
func TestDiffDropsStaleSession(t *testing.T) {
	p := peer(t, "10.244.3.0/24")
	died := time.Now()
	p.DropSessionsBefore = died
	desired := map[netip.Prefix]Peer{p.primary(): p}
	routes := map[netip.Prefix]route.Peer{p.primary(): p.routes(link, []netip.Addr{gw})[0]}
	for _, tc := range []struct {
		name      string
		handshake time.Time
		recreate  bool
	}{
		{"older session", died.Add(-time.Minute), true},
		{"newer session", died.Add(time.Second), false},
		{"no session", time.Time{}, false},
	} {
		h := onDeviceAs(p)
		h.LastHandshakeTime = tc.handshake
		plan := Diff(desired, []wgtypes.Peer{h}, routes, link, []netip.Addr{gw})
		if !tc.recreate {
			if !plan.Empty() {
				t.Errorf("%s: plan %+v, want none", tc.name, plan)
			}
			continue
		}
		if len(plan.Peers) != 2 || !plan.Peers[0].Remove || plan.Peers[1].Remove || plan.Peers[1].PublicKey != p.PublicKey {
			t.Errorf("%s: plan %+v, want remove then add", tc.name, plan.Peers)
		}
	}
}
