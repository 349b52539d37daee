package mesh

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/gateway"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
)

// TestSiteMovesBetweenPeers: a site CIDR two gateways advertise sits on
// exactly the serving gateway's peer, routed into the device; when that
// gateway's candidacy ends it moves to the other's peer, and a device
// read continuously meanwhile never shows it on no peer or on two; with
// no candidate left it is on no peer and unreachable; with no record
// advertising it, its route is gone.
func TestSiteMovesBetweenPeers(t *testing.T) {
	e := setup(t)
	site := netip.MustParsePrefix("192.168.77.0/24")
	a, _ := rec(t, "a", "10.99.0.2:51820")
	b, _ := rec(t, "b", "10.99.0.3:51820")
	a.Sites, b.Sites = []netip.Prefix{site}, []netip.Prefix{site}
	e.put("10.244.2.0/24", string(a.Encode()))
	e.put("10.244.3.0/24", string(b.Encode()))

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	obs := gateway.NewObserver(e.cli, "/wgcni", e.cfg.Cluster, gateway.Advert{Node: "self", Record: e.cfg.OwnCIDR}, slog.New(slog.NewTextHandler(e.logs, nil)))
	go obs.Run(ctx)
	<-obs.Synced()
	e.cfg.Sites = obs
	e.r = New(e.cfg)

	campaign := func(node, cidr string) *concurrency.Session {
		s, err := concurrency.NewSession(e.cli, concurrency.WithTTL(60))
		if err != nil {
			t.Fatal(err)
		}
		el := concurrency.NewElection(s, record.ElectionPrefix("/wgcni", site))
		go el.Campaign(ctx, `{"node":"`+node+`","record":"`+cidr+`"}`)
		return s
	}
	sa := campaign("a", "10.244.2.0/24")
	e.start(func(ctx context.Context) { e.r.Run(ctx) })
	holders := func() []string {
		var out []string
		peers, _ := e.state()
		for ips := range peers {
			if strings.Contains(ips, site.String()) {
				out = append(out, ips)
			}
		}
		return out
	}
	e.waitFor("site on a's peer", func() bool { return slices.Equal(holders(), []string{"10.244.2.0/24," + site.String()}) })
	_, routes := e.state()
	if r, ok := routes[site]; !ok || r.LinkIndex != e.cfg.LinkIndex {
		t.Fatalf("site route %+v, want through the device", routes)
	}
	sb := campaign("b", "10.244.3.0/24") // queued behind a

	// Read the device without pause while the site moves.
	var reads, bad atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			d, err := e.wg.Device(e.dev)
			if err != nil {
				continue
			}
			n := 0
			for _, p := range d.Peers {
				for _, ip := range p.AllowedIPs {
					if ip.String() == site.String() {
						n++
					}
				}
			}
			reads.Add(1)
			if n != 1 {
				bad.Add(1)
			}
		}
	}()
	e.waitFor("reads going", func() bool { return reads.Load() >= 50 })
	before := reads.Load()
	sa.Close() // revokes a's lease: its key goes, b leads
	e.waitFor("site on b's peer", func() bool { return slices.Equal(holders(), []string{"10.244.3.0/24," + site.String()}) })
	close(stop)
	<-done
	t.Logf("%d device reads from the revocation to the move, %d with the site on no peer or on two", reads.Load()-before, bad.Load())
	if bad.Load() != 0 || reads.Load() == 0 {
		t.Fatalf("%d of %d reads had the site on no peer or two", bad.Load(), reads.Load())
	}

	sb.Close() // no candidate left
	e.waitFor("site on no peer, unreachable", func() bool {
		if len(holders()) != 0 {
			return false
		}
		var strict []netip.Prefix
		e.netns.Do(func(ns.NetNS) error { _, strict, _ = route.Ours(netlink.FAMILY_V4); return nil })
		return slices.Contains(strict, site)
	})
	peers, _ := e.state()
	if _, ok := peers["10.244.2.0/24"]; !ok {
		t.Fatalf("a's peer lost its PodCIDR: %v", peers)
	}

	for _, c := range []string{"10.244.2.0/24", "10.244.3.0/24"} {
		e.cli.Delete(context.Background(), record.SubnetKey("/wgcni", netip.MustParsePrefix(c)))
	}
	e.waitFor("site route gone with the adverts", func() bool {
		var strict []netip.Prefix
		var peers map[netip.Prefix]route.Peer
		e.netns.Do(func(ns.NetNS) error { peers, strict, _ = route.Ours(netlink.FAMILY_V4); return nil })
		_, via := peers[site]
		return !via && !slices.Contains(strict, site)
	})
}

// TestDiffSiteHolderFirst: a full resync that finds a site on the wrong
// peer configures the new holder before it rewrites or removes the old.
func TestDiffSiteHolderFirst(t *testing.T) {
	site := netip.MustParsePrefix("192.168.77.0/24")
	a, b, c := peer(t, "10.244.2.0/24"), peer(t, "10.244.3.0/24"), peer(t, "10.244.4.0/24")
	onA := onDevice(a)
	onA.AllowedIPs = append(onA.AllowedIPs, toIPNet(site))
	a.Endpoint = netip.MustParseAddrPort("10.99.0.9:51820") // a changes too
	b.Sites = []netip.Prefix{site}
	desired := map[netip.Prefix]Peer{a.primary(): a, b.primary(): b}
	for _, have := range [][]wgtypes.Peer{{onA, onDevice(b)}, {onA, onDevice(c), onDevice(b)}} {
		p := Diff(desired, have, nil, link, []netip.Addr{gw})
		if len(p.Peers) < 2 || p.Peers[0].PublicKey != b.PublicKey {
			t.Fatalf("peer changes %+v: want b (gaining the site) first", p.Peers)
		}
	}
}
