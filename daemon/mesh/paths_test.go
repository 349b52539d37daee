package mesh

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/record"
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

// TestDiffRelayedPairIsAnEndpointChange: a relayed pair keeps its CIDRs
// on its own entry, aimed at its relay address, which the relay's peer
// carries (on the punched path too) and a route sends from our relay
// address. Going direct (punched) and back changes the far entry's
// endpoint only: not where the pair's CIDRs are, not what the relay
// carries, so nothing in flight on either path is dropped.
func TestDiffRelayedPairIsAnEndpointChange(t *testing.T) {
	relay, far := peer(t, "10.244.2.0/24"), peer(t, "10.244.3.0/24")
	self := netip.MustParseAddr("10.244.9.254")
	far.Unreachable = true
	far.Endpoint = netip.MustParseAddrPort("10.99.0.14:40001") // punched
	relayed := far
	relayed.RelayedVia, relayed.Endpoint = "relay", netip.AddrPortFrom(record.RelayAddr(far.primary()), 51820)
	relay.Carries, relay.CarrySrc = []netip.Prefix{netip.PrefixFrom(record.RelayAddr(far.primary()), 32)}, self
	if rs := relay.routes(link, []netip.Addr{gw}); !slices.Contains(rs, route.Peer{Dst: relay.Carries[0], LinkIndex: link, Src: self}) {
		t.Fatalf("relay's routes %+v lack the carried relay address from our own", rs)
	}
	for _, tc := range []struct {
		name      string
		have, wnt Peer
	}{
		{"punched to relayed", far, relayed},
		{"relayed to punched", relayed, far},
	} {
		t.Run(tc.name, func(t *testing.T) {
			desired := map[netip.Prefix]Peer{relay.primary(): relay, far.primary(): tc.wnt}
			routes := map[netip.Prefix]route.Peer{}
			for _, p := range []Peer{relay, tc.have} {
				for _, r := range p.routes(link, []netip.Addr{gw}) {
					routes[r.Dst] = r
				}
			}
			have := []wgtypes.Peer{onDeviceAs(relay), onDeviceAs(tc.have)}
			p := Diff(desired, have, routes, link, []netip.Addr{gw})
			if len(p.RouteAdd)+len(p.RouteDel) != 0 || len(p.Peers) != 1 || p.Peers[0].PublicKey != far.PublicKey {
				t.Fatalf("plan %+v, want one change: far's entry", p)
			}
			pc := p.Peers[0]
			if len(pc.AllowedIPs) != 1 || pc.AllowedIPs[0].String() != "10.244.3.0/24" {
				t.Errorf("far's entry allows %v, want its CIDR on both paths", pc.AllowedIPs)
			}
			if pc.Endpoint == nil || pc.Endpoint.AddrPort() != tc.wnt.Endpoint {
				t.Errorf("far's endpoint %v, want %v", pc.Endpoint, tc.wnt.Endpoint)
			}
			if p := Diff(desired, []wgtypes.Peer{onDeviceAs(relay), onDeviceAs(tc.wnt)}, routes, link, []netip.Addr{gw}); !p.Empty() {
				t.Errorf("not converged: %+v", p)
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
