package pqpeer

import (
	"net/netip"
	"slices"
	"testing"

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
