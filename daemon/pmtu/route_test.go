package pmtu

import (
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
	"github.com/wgcni/wgcni/daemon/route"
)

func TestPeerRouteRejects(t *testing.T) {
	for _, c := range []struct {
		dst string
		mtu int
	}{{"10.1.0.0/24", 500}, {"fd00::/64", 1279}, {"10.1.0.0/24", 70000}} {
		if _, err := PeerRoute(netip.MustParsePrefix(c.dst), 1, netip.Addr{}, c.mtu); err == nil {
			t.Errorf("PeerRoute(%s, mtu %d) accepted", c.dst, c.mtu)
		}
	}
	if _, err := PeerRoute(netip.Prefix{}, 1, netip.Addr{}, 1400); err == nil {
		t.Error("invalid destination accepted")
	}
}

// The route is installed with its MTU and advmss and reads back so, in a
// namespace of our own; replacing it with another path MTU updates both.
func TestEnsurePeerRoute(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel() // namespaces of its own; no shared names
	for _, c := range []struct {
		name string
		src  string // our gateway on the dummy device
		dst  string // the peer's PodCIDR
	}{
		{"ipv4", "10.98.0.1/24", "10.98.7.0/24"},
		{"ipv6", "fd98::1/64", "fd98:7::/64"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t, "pmtu-rt")
			// A veth pair stands in for the WireGuard device (no dummy
			// module here); the route only needs a link to point at.
			if err := n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wgtest", MTU: 1440}, PeerName: "wgtest-peer"}); err != nil {
				t.Fatal(err)
			}
			l, err := n.h.LinkByName("wgtest")
			if err != nil {
				t.Fatal(err)
			}
			src := netip.MustParsePrefix(c.src)
			if err := n.h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(src), Flags: unix.IFA_F_NODAD}); err != nil {
				t.Fatal(err)
			}
			if err := n.h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
			dst := netip.MustParsePrefix(c.dst)
			for _, mtu := range []int{1340, 1420} {
				err := n.ns.Do(func(ns.NetNS) error { return EnsurePeerRoute(dst, l.Attrs().Index, src.Addr(), mtu) })
				if err != nil {
					t.Fatal(err)
				}
				fam := netlink.FAMILY_V4
				if dst.Addr().Is6() {
					fam = netlink.FAMILY_V6
				}
				rs, err := n.h.RouteListFiltered(fam, &netlink.Route{Dst: ipnet(dst), Protocol: route.Protocol, Table: unix.RT_TABLE_MAIN},
					netlink.RT_FILTER_DST|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
				if err != nil {
					t.Fatal(err)
				}
				if len(rs) != 1 {
					t.Fatalf("%d routes to %s with protocol %d, want 1: %+v", len(rs), dst, route.Protocol, rs)
				}
				r := rs[0]
				if r.MTU != mtu || r.AdvMSS != route.AdvMSS(dst, mtu) || r.LinkIndex != l.Attrs().Index || !r.Src.Equal(src.Addr().AsSlice()) {
					t.Fatalf("route %s: mtu %d advmss %d link %d src %s; want mtu %d advmss %d link %d src %s",
						dst, r.MTU, r.AdvMSS, r.LinkIndex, r.Src, mtu, route.AdvMSS(dst, mtu), l.Attrs().Index, src.Addr())
				}
			}
		})
	}
}
