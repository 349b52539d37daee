package pqpeer

import (
	"crypto/mlkem"
	"net/netip"
	"slices"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/mesh"
)

// TestExchangeAddrs: where an exchange goes first. Without NAT, the
// underlay until the first PSK or while held (as before); with NAT on
// either end, the tunnel first, and never an unset endpoint.
func TestExchangeAddrs(t *testing.T) {
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")}
	tunnel := netip.MustParseAddrPort("10.244.7.0:51822")
	underlay := netip.MustParseAddrPort("10.99.0.7:51822")
	ep := netip.MustParseAddrPort("10.99.0.7:51820")
	for _, tc := range []struct {
		name    string
		info    mesh.PeerInfo
		has     bool
		selfNAT bool
		want    []netip.AddrPort
	}{
		{"reachable pair, first PSK", mesh.PeerInfo{CIDRs: cidrs, Endpoint: ep}, false, false, []netip.AddrPort{underlay, tunnel}},
		{"reachable pair, held", mesh.PeerInfo{CIDRs: cidrs, Endpoint: ep, Held: true}, true, false, []netip.AddrPort{underlay, tunnel}},
		{"reachable pair, rotation", mesh.PeerInfo{CIDRs: cidrs, Endpoint: ep}, true, false, []netip.AddrPort{tunnel, underlay}},
		{"peer behind a NAT, roaming endpoint", mesh.PeerInfo{CIDRs: cidrs, Unreachable: true}, false, false, []netip.AddrPort{tunnel}},
		{"peer behind a NAT, held", mesh.PeerInfo{CIDRs: cidrs, Unreachable: true, Held: true}, false, false, []netip.AddrPort{tunnel}},
		{"peer punched at its public endpoint", mesh.PeerInfo{CIDRs: cidrs, Endpoint: ep, Unreachable: true}, false, false, []netip.AddrPort{tunnel, underlay}},
		{"this node behind a NAT", mesh.PeerInfo{CIDRs: cidrs, Endpoint: ep, Held: true}, false, true, []netip.AddrPort{tunnel, underlay}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := exchangeAddrs(tc.info, tc.has, tc.selfNAT, 51822); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestAdoptedPSKGoesUnderlayFirst: a PSK adopted from the device at start
// (epoch 0) is of unknown age — the peer may hold us for it and cannot
// answer through the tunnel — so a reachable peer's first exchange after a
// restart goes over the underlay first; once an exchange of ours installed
// one, the tunnel comes first again.
func TestAdoptedPSKGoesUnderlayFirst(t *testing.T) {
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		t.Fatal(err)
	}
	var peer wgtypes.Key
	peer[0] = 9
	info := mesh.PeerInfo{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")}, Endpoint: netip.MustParseAddrPort("10.99.0.7:51820")}
	underlay, tunnel := netip.MustParseAddrPort("10.99.0.7:51822"), netip.MustParseAddrPort("10.244.7.0:51822")
	for _, tc := range []struct {
		name  string
		epoch uint64
		want  []netip.AddrPort
	}{
		{"adopted at start", 0, []netip.AddrPort{underlay, tunnel}},
		{"from an exchange", 1796668733480, []netip.AddrPort{tunnel, underlay}},
	} {
		m := &Manager{cfg: Config{Port: 51822}, peers: map[wgtypes.Key]*peerState{
			peer: {info: info, kem: dk.EncapsulationKey(), has: true, epoch: tc.epoch}}}
		p, ok := m.lookup(peer)
		if !ok || !slices.Equal(p.Addrs, tc.want) {
			t.Errorf("%s: addresses %v (ok %v), want %v", tc.name, p.Addrs, ok, tc.want)
		}
	}
}
