package mesh

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/route"
)

const link = 7

var gw = netip.MustParseAddr("10.244.1.1")

func key(t *testing.T) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func peer(t *testing.T, cidr string) Peer {
	return Peer{CIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}, Node: cidr, PublicKey: key(t), Endpoint: netip.MustParseAddrPort("10.99.0.2:51820")}
}

// onDevice is how the device reports a configured peer.
func onDevice(p Peer) wgtypes.Peer {
	n := toIPNet(p.primary())
	return wgtypes.Peer{PublicKey: p.PublicKey, Endpoint: net.UDPAddrFromAddrPort(p.Endpoint), AllowedIPs: []net.IPNet{n},
		PersistentKeepaliveInterval: time.Duration(p.Keepalive) * time.Second}
}

func TestDiffConverged(t *testing.T) {
	a, b := peer(t, "10.244.2.0/24"), peer(t, "10.244.3.0/24")
	desired := map[netip.Prefix]Peer{a.primary(): a, b.primary(): b}
	routes := map[netip.Prefix]route.Peer{a.primary(): a.routes(link, []netip.Addr{gw})[0], b.primary(): b.routes(link, []netip.Addr{gw})[0]}
	if p := Diff(desired, []wgtypes.Peer{onDevice(a), onDevice(b)}, routes, link, []netip.Addr{gw}); !p.Empty() {
		t.Fatalf("converged state gives plan %+v", p)
	}
}

func TestDiffAddRemoveUpdate(t *testing.T) {
	a, b, stale := peer(t, "10.244.2.0/24"), peer(t, "10.244.3.0/24"), peer(t, "10.244.9.0/24")
	moved := a
	moved.Endpoint = netip.MustParseAddrPort("10.99.0.7:51820")
	wide := onDevice(b)
	wide.AllowedIPs = append(wide.AllowedIPs, toIPNet(netip.MustParsePrefix("0.0.0.0/0")))
	desired := map[netip.Prefix]Peer{a.primary(): moved, b.primary(): b}
	have := []wgtypes.Peer{onDevice(a), wide, onDevice(stale)}
	routes := map[netip.Prefix]route.Peer{
		stale.primary(): stale.routes(link, []netip.Addr{gw})[0],
		b.primary():     {Dst: b.primary(), LinkIndex: link, Src: netip.MustParseAddr("10.244.1.9")}, // wrong source
	}
	p := Diff(desired, have, routes, link, []netip.Addr{gw})
	cfg := map[wgtypes.Key]wgtypes.PeerConfig{}
	for _, c := range p.Peers {
		cfg[c.PublicKey] = c
	}
	if len(cfg) != 3 || !cfg[stale.PublicKey].Remove {
		t.Fatalf("peer changes %+v", p.Peers)
	}
	if c := cfg[a.PublicKey]; c.Remove || c.Endpoint.String() != "10.99.0.7:51820" || !c.ReplaceAllowedIPs {
		t.Fatalf("moved endpoint not updated: %+v", c)
	}
	if c := cfg[b.PublicKey]; c.Remove || len(c.AllowedIPs) != 1 || c.AllowedIPs[0].String() != "10.244.3.0/24" || !c.ReplaceAllowedIPs {
		t.Fatalf("too-wide AllowedIPs not narrowed: %+v", c)
	}
	if len(p.RouteDel) != 1 || p.RouteDel[0].Dst != stale.primary() {
		t.Fatalf("route dels %+v", p.RouteDel)
	}
	if len(p.RouteAdd) != 2 || p.RouteAdd[0].Src != gw || p.RouteAdd[1].Src != gw {
		t.Fatalf("route adds %+v", p.RouteAdd)
	}
}

func TestDiffOne(t *testing.T) {
	a := peer(t, "10.244.2.0/24")
	if p := DiffOne(nil, nil, link, []netip.Addr{gw}); !p.Empty() {
		t.Fatal("nil/nil not empty")
	}
	if p := DiffOne(&a, &a, link, []netip.Addr{gw}); !p.Empty() {
		t.Fatal("same not empty")
	}
	p := DiffOne(nil, &a, link, []netip.Addr{gw})
	if len(p.Peers) != 1 || p.Peers[0].Remove || len(p.RouteAdd) != 1 || len(p.RouteDel) != 0 {
		t.Fatalf("add: %+v", p)
	}
	if n := p.Peers[0].AllowedIPs; len(n) != 1 || n[0].String() != "10.244.2.0/24" {
		t.Fatalf("AllowedIPs %v, want exactly the PodCIDR", n)
	}
	p = DiffOne(&a, nil, link, []netip.Addr{gw})
	if len(p.Peers) != 1 || !p.Peers[0].Remove || len(p.RouteDel) != 1 || len(p.RouteAdd) != 0 {
		t.Fatalf("remove: %+v", p)
	}
	rotated := a
	rotated.PublicKey = key(t)
	p = DiffOne(&a, &rotated, link, []netip.Addr{gw})
	if len(p.Peers) != 2 || !p.Peers[0].Remove || p.Peers[0].PublicKey != a.PublicKey || p.Peers[1].PublicKey != rotated.PublicKey || p.Peers[1].Remove {
		t.Fatalf("key change must remove the old peer, then add the new: %+v", p.Peers)
	}
	ka := a
	ka.Keepalive = 25
	p = DiffOne(&a, &ka, link, []netip.Addr{gw})
	if len(p.Peers) != 1 || *p.Peers[0].PersistentKeepaliveInterval != 25*time.Second {
		t.Fatalf("keepalive: %+v", p.Peers)
	}
}

var gw6 = netip.MustParseAddr("fd00:244:0:1::1")

func dualPeer(t *testing.T, v4, v6 string) Peer {
	p := peer(t, v4)
	p.CIDRs = append(p.CIDRs, netip.MustParsePrefix(v6))
	return p
}

// A dual-stack peer allows and routes both PodCIDRs, each route with the
// gateway of its family as source; a device peer allowing only the IPv4
// CIDR is reconfigured, and a converged state is left alone.
func TestDiffDualStack(t *testing.T) {
	a := dualPeer(t, "10.244.2.0/24", "fd00:244:0:2::/64")
	desired := map[netip.Prefix]Peer{a.primary(): a}
	p := Diff(desired, []wgtypes.Peer{onDevice(a)}, nil, link, []netip.Addr{gw, gw6})
	if len(p.Peers) != 1 || len(p.Peers[0].AllowedIPs) != 2 {
		t.Fatalf("want the peer reconfigured with 2 AllowedIPs: %+v", p.Peers)
	}
	want := map[netip.Prefix]netip.Addr{a.primary(): gw, a.CIDRs[1]: gw6}
	if len(p.RouteAdd) != 2 {
		t.Fatalf("routes %+v", p.RouteAdd)
	}
	for _, r := range p.RouteAdd {
		if want[r.Dst] != r.Src || r.LinkIndex != link {
			t.Fatalf("route %+v, want src %s", r, want[r.Dst])
		}
	}
	dev := onDevice(a)
	dev.AllowedIPs = []net.IPNet{toIPNet(a.CIDRs[1]), toIPNet(a.primary())} // order does not matter
	routes := map[netip.Prefix]route.Peer{}
	for _, r := range a.routes(link, []netip.Addr{gw, gw6}) {
		routes[r.Dst] = r
	}
	stale6 := netip.MustParsePrefix("fd00:244:0:9::/64")
	routes[stale6] = route.Peer{Dst: stale6, LinkIndex: link, Src: gw6}
	p = Diff(desired, []wgtypes.Peer{dev}, routes, link, []netip.Addr{gw, gw6})
	if len(p.Peers) != 0 || len(p.RouteAdd) != 0 || len(p.RouteDel) != 1 || p.RouteDel[0].Dst != stale6 {
		t.Fatalf("converged but a stale IPv6 route: plan %+v", p)
	}
}

// Per event: a new dual peer adds two routes; losing its IPv6 CIDR deletes
// that route; removing the peer deletes both.
func TestDiffOneDualStack(t *testing.T) {
	a := dualPeer(t, "10.244.2.0/24", "fd00:244:0:2::/64")
	p := DiffOne(nil, &a, link, []netip.Addr{gw, gw6})
	if len(p.RouteAdd) != 2 || len(p.Peers) != 1 || len(p.Peers[0].AllowedIPs) != 2 {
		t.Fatalf("add: %+v", p)
	}
	v4only := a
	v4only.CIDRs = a.CIDRs[:1]
	p = DiffOne(&a, &v4only, link, []netip.Addr{gw, gw6})
	if len(p.RouteDel) != 1 || p.RouteDel[0].Dst != a.CIDRs[1] || len(p.Peers[0].AllowedIPs) != 1 {
		t.Fatalf("v6 gone: %+v", p)
	}
	p = DiffOne(&a, nil, link, []netip.Addr{gw, gw6})
	if len(p.RouteDel) != 2 || !p.Peers[0].Remove {
		t.Fatalf("remove: %+v", p)
	}
}
