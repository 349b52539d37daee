package ipv6

import (
	"context"
	"net/netip"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	dualV4 = "10.244.0.0/22"
	dualV6 = "fd00:244::/56"
)

// (b) Dual-stack pods over an IPv4 underlay.
func TestDualStackOverIPv4Underlay(t *testing.T) {
	c := harness.Start(t, harness.Config{ClusterCIDR: dualV4 + "," + dualV6, NodePrefixLenV6: 64, LeaseTTL: leaseTTL, ListenPort: wgPort}, 2)
	nodes := c.Nodes()
	n1, n2 := nodes[0], nodes[1]
	files := waitPeers(t, nodes)
	for _, n := range nodes {
		nf := files[n.Name]
		if len(nf.PodCIDRs) != 2 || nf.PodCIDRs[0] != nf.PodCIDR || !netip.MustParsePrefix(nf.PodCIDRs[1]).Addr().Is6() {
			t.Fatalf("%s node file podCIDRs %v", n.Name, nf.PodCIDRs)
		}
		if nf.MTU != c.Cfg.UnderlayMTU-60 {
			t.Fatalf("%s MTU %d over an IPv4 underlay, want %d", n.Name, nf.MTU, c.Cfg.UnderlayMTU-60)
		}
		t.Logf("%s: podCIDRs %v gateways %v mtu %d", n.Name, nf.PodCIDRs, nf.Gateways, nf.MTU)
	}
	if files["n1"].PodCIDRs[1] == files["n2"].PodCIDRs[1] {
		t.Fatal("two nodes hold one IPv6 PodCIDR")
	}
	// etcd: each node's IPv6 CIDR has its guard key, bound to the record's lease.
	cli, err := c.Etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "/wgcni/subnets6/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 2 {
		t.Fatalf("guard keys: %v %v", resp, err)
	}
	for _, kv := range resp.Kvs {
		t.Logf("etcd %s = %s (lease %x)", kv.Key, kv.Value, kv.Lease)
		if kv.Lease == 0 {
			t.Fatalf("guard %s is not bound to a lease", kv.Key)
		}
	}

	a1 := n1.MustAddPod(t)
	a2 := n1.MustAddPod(t)
	b1 := n2.MustAddPod(t)
	for _, p := range []*harness.Pod{a1, a2, b1} {
		if !p.Addr4().IsValid() || !p.Addr6().IsValid() {
			t.Fatalf("pod %s got %v, want one address of each family", p.Name, p.IPs)
		}
		t.Logf("pod %s: %v", p.Name, p.IPs)
	}
	cls := &capture.Classifier{PodNets: []netip.Prefix{netip.MustParsePrefix(dualV4), netip.MustParsePrefix(dualV6)}, WGPorts: []uint16{wgPort}}

	for _, fam := range []struct {
		name string
		addr func(*harness.Pod) netip.Addr
		gw   func(n string) netip.Addr
	}{
		{"IPv4", (*harness.Pod).Addr4, func(n string) netip.Addr { return netip.MustParseAddr(files[n].Gateways[0]) }},
		{"IPv6", (*harness.Pod).Addr6, func(n string) netip.Addr { return netip.MustParseAddr(files[n].Gateways[1]) }},
	} {
		t.Run(fam.name+" across nodes, only WireGuard on the underlay", func(t *testing.T) {
			captureUnderlay(t, c, cls, 0x0800, fam.name, func() {
				harness.Connect(t, a1.NS, fam.addr(b1), fam.name+" "+a1.Name+" -> "+b1.Name, 5)
				harness.Connect(t, b1.NS, fam.addr(a2), fam.name+" "+b1.Name+" -> "+a2.Name, 5)
				transfer(t, a1.NS, b1.NS, fam.addr(b1), fam.name+" "+a1.Name+" -> "+b1.Name)
				fullSizePing(t, a1.NS, fam.addr(b1), files["n1"].MTU, fam.name)
				// Node to remote pod: sourced from the node's gateway of the family.
				harness.Connect(t, n1.NS, fam.addr(b1), fam.name+" node n1 -> "+b1.Name, 5)
			})
		})
		t.Run(fam.name+" same node", func(t *testing.T) {
			harness.Connect(t, a1.NS, fam.addr(a2), fam.name+" "+a1.Name+" -> "+a2.Name, 5)
		})
	}

	t.Run("strict mode per family", func(t *testing.T) {
		captureUnderlayNoPlain(t, c, cls, func() {
			strict(t, n1.NS, unleased(t, netip.MustParsePrefix(dualV4), files, 24))
			strict(t, n1.NS, unleased(t, netip.MustParsePrefix(dualV6), files, 64))
			strict(t, a1.NS, unleased(t, netip.MustParsePrefix(dualV6), files, 64))
		})
		for _, n := range []*harness.Node{n1} {
			for _, cidr := range []string{dualV4, dualV6} {
				fam := "-4"
				if netip.MustParsePrefix(cidr).Addr().Is6() {
					fam = "-6"
				}
				out, err := n.Exec("ip", fam, "route", "show", "type", "unreachable", cidr)
				if err != nil || out == "" {
					t.Fatalf("%s: no unreachable route for %s: %v %q", n.Name, cidr, err, out)
				}
			}
		}
	})

	t.Run("masquerade per family", func(t *testing.T) {
		nftHas(t, n1, "ip", "masquerade")
		nftHas(t, n1, "ip6", "masquerade")
	})

	t.Run("CNI result per cniVersion", func(t *testing.T) {
		cniVersions(t, c, n1, b1.Addr4(), b1.Addr6())
	})
}

// captureUnderlayNoPlain captures while f runs and requires zero
// plaintext pod packets (no WireGuard traffic needed).
func captureUnderlayNoPlain(t *testing.T, c *harness.Cluster, cls *capture.Classifier, f func()) {
	t.Helper()
	cp, err := capture.Start(c.Underlay.Path(), "", cls, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	f()
	rep, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if rep.PlainPod() != 0 {
		t.Fatalf("%d plaintext pod packets on the underlay:\n%s", rep.PlainPod(), rep.Excerpt(20))
	}
}
