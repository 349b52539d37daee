package mesh

import (
	"net"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/route"
)

var gw6 = netip.MustParseAddr("fd00:244:0:1::1")

func dualPeer(t *testing.T, v4, v6 string) Peer {
	p := peer(t, v4)
	p.CIDR6 = netip.MustParsePrefix(v6)
	return p
}

// A dual-stack peer allows and routes both PodCIDRs, each route with the
// gateway of its family as source; a device peer allowing only the IPv4
// CIDR is reconfigured, and a converged state is left alone.
func TestDiffDualStack(t *testing.T) {
	a := dualPeer(t, "10.244.2.0/24", "fd00:244:0:2::/64")
	desired := map[netip.Prefix]Peer{a.CIDR: a}
	p := Diff(desired, []wgtypes.Peer{onDevice(a)}, nil, link, gw, gw6)
	if len(p.Peers) != 1 || len(p.Peers[0].AllowedIPs) != 2 {
		t.Fatalf("want the peer reconfigured with 2 AllowedIPs: %+v", p.Peers)
	}
	want := map[netip.Prefix]netip.Addr{a.CIDR: gw, a.CIDR6: gw6}
	if len(p.RouteAdd) != 2 {
		t.Fatalf("routes %+v", p.RouteAdd)
	}
	for _, r := range p.RouteAdd {
		if want[r.Dst] != r.Src || r.LinkIndex != link {
			t.Fatalf("route %+v, want src %s", r, want[r.Dst])
		}
	}
	dev := onDevice(a)
	dev.AllowedIPs = []net.IPNet{toIPNet(a.CIDR6), toIPNet(a.CIDR)} // order does not matter
	routes := map[netip.Prefix]route.Peer{}
	for _, r := range a.routes(link, []netip.Addr{gw, gw6}) {
		routes[r.Dst] = r
	}
	stale6 := netip.MustParsePrefix("fd00:244:0:9::/64")
	routes[stale6] = route.Peer{Dst: stale6, LinkIndex: link, Src: gw6}
	p = Diff(desired, []wgtypes.Peer{dev}, routes, link, gw, gw6)
	if len(p.Peers) != 0 || len(p.RouteAdd) != 0 || len(p.RouteDel) != 1 || p.RouteDel[0].Dst != stale6 {
		t.Fatalf("converged but a stale IPv6 route: plan %+v", p)
	}
}

// Per event: a new dual peer adds two routes; losing its IPv6 CIDR deletes
// that route; removing the peer deletes both.
func TestDiffOneDualStack(t *testing.T) {
	a := dualPeer(t, "10.244.2.0/24", "fd00:244:0:2::/64")
	p := DiffOne(nil, &a, link, gw, gw6)
	if len(p.RouteAdd) != 2 || len(p.Peers) != 1 || len(p.Peers[0].AllowedIPs) != 2 {
		t.Fatalf("add: %+v", p)
	}
	v4only := a
	v4only.CIDR6 = netip.Prefix{}
	p = DiffOne(&a, &v4only, link, gw, gw6)
	if len(p.RouteDel) != 1 || p.RouteDel[0].Dst != a.CIDR6 || len(p.Peers[0].AllowedIPs) != 1 {
		t.Fatalf("v6 gone: %+v", p)
	}
	p = DiffOne(&a, nil, link, gw, gw6)
	if len(p.RouteDel) != 2 || !p.Peers[0].Remove {
		t.Fatalf("remove: %+v", p)
	}
}
