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
	return Peer{CIDR: netip.MustParsePrefix(cidr), Node: cidr, PublicKey: key(t), Endpoint: netip.MustParseAddrPort("10.99.0.2:51820")}
}

// onDevice is how the device reports a configured peer.
func onDevice(p Peer) wgtypes.Peer {
	n := toIPNet(p.CIDR)
	return wgtypes.Peer{PublicKey: p.PublicKey, Endpoint: net.UDPAddrFromAddrPort(p.Endpoint), AllowedIPs: []net.IPNet{n},
		PersistentKeepaliveInterval: time.Duration(p.Keepalive) * time.Second}
}

func TestDiffConverged(t *testing.T) {
	a, b := peer(t, "10.244.2.0/24"), peer(t, "10.244.3.0/24")
	desired := map[netip.Prefix]Peer{a.CIDR: a, b.CIDR: b}
	routes := map[netip.Prefix]route.Peer{a.CIDR: a.routes(link, []netip.Addr{gw})[0], b.CIDR: b.routes(link, []netip.Addr{gw})[0]}
	if p := Diff(desired, []wgtypes.Peer{onDevice(a), onDevice(b)}, routes, link, gw); !p.Empty() {
		t.Fatalf("converged state gives plan %+v", p)
	}
}

func TestDiffAddRemoveUpdate(t *testing.T) {
	a, b, stale := peer(t, "10.244.2.0/24"), peer(t, "10.244.3.0/24"), peer(t, "10.244.9.0/24")
	moved := a
	moved.Endpoint = netip.MustParseAddrPort("10.99.0.7:51820")
	wide := onDevice(b)
	wide.AllowedIPs = append(wide.AllowedIPs, toIPNet(netip.MustParsePrefix("0.0.0.0/0")))
	desired := map[netip.Prefix]Peer{a.CIDR: moved, b.CIDR: b}
	have := []wgtypes.Peer{onDevice(a), wide, onDevice(stale)}
	routes := map[netip.Prefix]route.Peer{
		stale.CIDR: stale.routes(link, []netip.Addr{gw})[0],
		b.CIDR:     {Dst: b.CIDR, LinkIndex: link, Src: netip.MustParseAddr("10.244.1.9")}, // wrong source
	}
	p := Diff(desired, have, routes, link, gw)
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
	if len(p.RouteDel) != 1 || p.RouteDel[0].Dst != stale.CIDR {
		t.Fatalf("route dels %+v", p.RouteDel)
	}
	if len(p.RouteAdd) != 2 || p.RouteAdd[0].Src != gw || p.RouteAdd[1].Src != gw {
		t.Fatalf("route adds %+v", p.RouteAdd)
	}
}

func TestDiffOne(t *testing.T) {
	a := peer(t, "10.244.2.0/24")
	if p := DiffOne(nil, nil, link, gw); !p.Empty() {
		t.Fatal("nil/nil not empty")
	}
	if p := DiffOne(&a, &a, link, gw); !p.Empty() {
		t.Fatal("same not empty")
	}
	p := DiffOne(nil, &a, link, gw)
	if len(p.Peers) != 1 || p.Peers[0].Remove || len(p.RouteAdd) != 1 || len(p.RouteDel) != 0 {
		t.Fatalf("add: %+v", p)
	}
	if n := p.Peers[0].AllowedIPs; len(n) != 1 || n[0].String() != "10.244.2.0/24" {
		t.Fatalf("AllowedIPs %v, want exactly the PodCIDR", n)
	}
	p = DiffOne(&a, nil, link, gw)
	if len(p.Peers) != 1 || !p.Peers[0].Remove || len(p.RouteDel) != 1 || len(p.RouteAdd) != 0 {
		t.Fatalf("remove: %+v", p)
	}
	rotated := a
	rotated.PublicKey = key(t)
	p = DiffOne(&a, &rotated, link, gw)
	if len(p.Peers) != 2 || !p.Peers[0].Remove || p.Peers[0].PublicKey != a.PublicKey || p.Peers[1].PublicKey != rotated.PublicKey || p.Peers[1].Remove {
		t.Fatalf("key change must remove the old peer, then add the new: %+v", p.Peers)
	}
	ka := a
	ka.Keepalive = 25
	p = DiffOne(&a, &ka, link, gw)
	if len(p.Peers) != 1 || *p.Peers[0].PersistentKeepaliveInterval != 25*time.Second {
		t.Fatalf("keepalive: %+v", p.Peers)
	}
}
