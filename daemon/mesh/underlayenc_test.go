package mesh

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/route"
)

var underlaySelf = netip.MustParseAddr("10.99.0.1")

func TestDiffHostEncryption(t *testing.T) {
	a := peer(t, "10.244.2.0/24")
	a.Underlay, a.UnderlaySrc = a.Endpoint.Addr(), underlaySelf
	dev := onDevice(a)
	dev.AllowedIPs = append(dev.AllowedIPs, toIPNet(netip.MustParsePrefix("10.99.0.2/32")))
	rs := a.routes(link, []netip.Addr{gw})
	if len(rs) != 2 || rs[1] != (route.Peer{Dst: netip.MustParsePrefix("10.99.0.2/32"), LinkIndex: link, Src: underlaySelf, Table: route.HostTable}) {
		t.Fatalf("routes %+v: want the PodCIDR's and the underlay /32 in the host table", rs)
	}
	routes := map[netip.Prefix]route.Peer{rs[0].Dst: rs[0], rs[1].Dst: rs[1]}
	desired := map[netip.Prefix]Peer{a.primary(): a}
	if p := Diff(desired, []wgtypes.Peer{dev}, routes, link, []netip.Addr{gw}); !p.Empty() {
		t.Fatalf("converged host-encrypted peer gives plan %+v", p)
	}
	// Host encryption off: the /32 is no longer allowed and its route goes.
	off := a
	off.Underlay, off.UnderlaySrc = netip.Addr{}, netip.Addr{}
	p := Diff(map[netip.Prefix]Peer{a.primary(): off}, []wgtypes.Peer{dev}, routes, link, []netip.Addr{gw})
	if len(p.Peers) != 1 || len(p.Peers[0].AllowedIPs) != 1 || len(p.RouteDel) != 1 || p.RouteDel[0].Table != route.HostTable {
		t.Fatalf("off: %+v", p)
	}
	p = DiffOne(&a, &off, link, []netip.Addr{gw})
	if len(p.RouteDel) != 1 || p.RouteDel[0].Dst.String() != "10.99.0.2/32" || len(p.Peers[0].AllowedIPs) != 1 {
		t.Fatalf("DiffOne off: %+v", p)
	}
	p = DiffOne(&off, &a, link, []netip.Addr{gw})
	if len(p.RouteDel) != 0 || len(p.RouteAdd) != 2 || len(p.Peers[0].AllowedIPs) != 2 {
		t.Fatalf("DiffOne on: %+v", p)
	}
}

// hostState returns the AllowedIPs per peer node and our host table routes.
func (e *env) hostState() (map[wgtypes.Key]int, map[netip.Prefix]route.Peer) {
	n := map[wgtypes.Key]int{}
	var rs map[netip.Prefix]route.Peer
	e.netns.Do(func(ns.NetNS) error {
		d, err := e.wg.Device(e.dev)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, p := range d.Peers {
			n[p.PublicKey] = len(p.AllowedIPs)
		}
		rs, _ = route.OursTable(netlink.FAMILY_V4, route.HostTable)
		return nil
	})
	return n, rs
}

// Against real etcd and a userspace device: only peers advertising host
// encryption get their underlay /32 allowed and routed in the host table,
// never an etcd endpoint's address; turning it off removes both; a removed
// table route is repaired by the resync.
func TestReconcilerHostEncryption(t *testing.T) {
	e := setup(t)
	e.r.cfg.UnderlayEncryption, e.r.cfg.UnderlaySrc = true, underlaySelf
	e.r.cfg.NoTunnel = []netip.Addr{netip.MustParseAddr("10.99.0.9")}
	// The source of a host route must be a local address (the underlay's).
	e.netns.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "wgd-under"
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			t.Fatal(err)
		}
		l, _ := netlink.LinkByName("wgd-under")
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: underlaySelf.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		return netlink.LinkSetUp(l)
	})
	a, ka := rec(t, "a", "10.99.0.2:51820")
	a.UnderlayEncryption = true
	b, kb := rec(t, "b", "10.99.0.3:51820") // does not advertise it
	c, kc := rec(t, "c", "10.99.0.9:51820") // advertises it, but is an etcd endpoint
	c.UnderlayEncryption = true
	e.put("10.244.2.0/24", string(a.Encode()))
	e.put("10.244.3.0/24", string(b.Encode()))
	e.put("10.244.4.0/24", string(c.Encode()))
	e.start(func(ctx context.Context) { e.r.Run(ctx) })
	select {
	case <-e.r.Synced():
	case <-time.After(20 * time.Second):
		t.Fatalf("no first sync\nlogs:\n%s", e.logs.String())
	}

	n, rs := e.hostState()
	if n[ka] != 2 || n[kb] != 1 || n[kc] != 1 {
		t.Fatalf("AllowedIPs counts a=%d b=%d c=%d, want 2 1 1", n[ka], n[kb], n[kc])
	}
	want := route.HostRoute(netip.MustParseAddr("10.99.0.2"), e.r.cfg.LinkIndex, underlaySelf)
	if len(rs) != 1 || rs[want.Dst] != want {
		t.Fatalf("host table %+v, want only %+v", rs, want)
	}

	// Drift: the table route is deleted; the resync puts it back.
	e.netns.Do(func(ns.NetNS) error { return route.DeletePeer(want) })
	e.netns.Do(func(ns.NetNS) error { return e.r.kernelResync() })
	if _, rs = e.hostState(); len(rs) != 1 {
		t.Fatalf("resync did not repair the host route: %+v", rs)
	}

	// a turns host encryption off: /32 and route go.
	a.UnderlayEncryption = false
	e.put("10.244.2.0/24", string(a.Encode()))
	e.waitFor("a's underlay out of the tunnel", func() bool { n, rs := e.hostState(); return n[ka] == 1 && len(rs) == 0 })

	// b turns it on: tunneled now.
	b.UnderlayEncryption = true
	e.put("10.244.3.0/24", string(b.Encode()))
	e.waitFor("b's underlay tunneled", func() bool { n, rs := e.hostState(); return n[kb] == 2 && len(rs) == 1 })
}
