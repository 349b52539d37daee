package ipv6

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

// clusters are the address families a cluster can run: one test body
// checks each, the families of a cluster being the list its ClusterCIDR
// names.
var clusters = []struct {
	name string
	cfg  harness.Config
	// wgOverhead is what WireGuard costs per packet on this underlay:
	// 60 bytes over IPv4, 80 over IPv6.
	wgOverhead int
}{
	// IPv4 pods over an IPv4 underlay.
	{"v4", harness.Config{ClusterCIDR: "10.244.0.0/22"}, 60},
	// (a) IPv6-only underlay (ULA, etcd on IPv6 too) and IPv6-only pods.
	{"v6", harness.Config{UnderlayIPv6: true, ClusterCIDR: "fd00:245::/56", NodePrefixLenV6: 64}, 80},
	// (b) Dual-stack pods over an IPv4 underlay.
	{"dual", harness.Config{ClusterCIDR: "10.244.0.0/22,fd00:244::/56", NodePrefixLenV6: 64}, 60},
}

// TestFamilies runs two nodes of every cluster family: node files and
// guard keys, the underlay's family, pods with one address per family,
// pod to pod across nodes and node to remote pod per family with only
// WireGuard (of the underlay's family) on the underlay, full-size DF
// pings, same-node pods, strict unreachable routes and refusal, masquerade
// and the CNI result of every cniVersion, per family.
func TestFamilies(t *testing.T) {
	for _, cl := range clusters {
		t.Run(cl.name, func(t *testing.T) {
			cfg := cl.cfg
			cfg.LeaseTTL, cfg.ListenPort = leaseTTL, wgPort
			testFamilies(t, harness.Start(t, cfg, 2), cl.wgOverhead)
		})
	}
}

func testFamilies(t *testing.T, c *harness.Cluster, wgOverhead int) {
	nodes := c.Nodes()
	n1, n2 := nodes[0], nodes[1]
	fams := c.Families()
	if n1.UnderlayIP.Is6() != c.Cfg.UnderlayIPv6 || c.Underlay.Gateway.Is6() != c.Cfg.UnderlayIPv6 {
		t.Fatalf("underlay IPv6=%v: node %s, etcd %s", c.Cfg.UnderlayIPv6, n1.UnderlayIP, c.Etcd.Endpoint)
	}
	wantEther := uint16(0x0800)
	if c.Cfg.UnderlayIPv6 {
		wantEther = 0x86dd
		if out, _ := n1.Exec("ip", "-4", "addr", "show", "dev", "eth0"); out != "" {
			t.Fatalf("IPv6-only underlay but eth0 has IPv4:\n%s", out)
		}
	}
	files := harness.WaitMesh(t, nodes, 30*time.Second)
	for _, n := range nodes {
		nf := files[n.Name]
		if len(nf.PodCIDRs) != len(fams) || nf.PodCIDRs[0] != nf.PodCIDR {
			t.Fatalf("%s node file podCIDRs %v (podCIDR %s), want one per family of %v", n.Name, nf.PodCIDRs, nf.PodCIDR, c.ClusterCIDRs())
		}
		for _, f := range fams {
			if p := netip.MustParsePrefix(nf.PodCIDRs[f.Index]); !f.Cluster.Contains(p.Addr()) || p.Bits() != f.Bits {
				t.Fatalf("%s: %s PodCIDR %s, want a /%d of %s", n.Name, f.Name, p, f.Bits, f.Cluster)
			}
		}
		if nf.MTU != c.Cfg.UnderlayMTU-wgOverhead {
			t.Fatalf("%s: MTU %d over this underlay, want %d", n.Name, nf.MTU, c.Cfg.UnderlayMTU-wgOverhead)
		}
		t.Logf("%s: underlay %s, podCIDRs %v, gateways %v, mtu %d, etcd %s", n.Name, n.UnderlayIP, nf.PodCIDRs, nf.Gateways, nf.MTU, c.Etcd.Endpoint)
	}
	for _, f := range fams {
		if files[n1.Name].PodCIDRs[f.Index] == files[n2.Name].PodCIDRs[f.Index] {
			t.Fatalf("two nodes hold one %s PodCIDR", f.Name)
		}
	}
	// Peers are reached over the underlay's family.
	dev, err := n1.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dev.Peers {
		if p.Endpoint == nil || (p.Endpoint.IP.To4() == nil) != c.Cfg.UnderlayIPv6 {
			t.Fatalf("peer endpoint %v is not of the underlay's family", p.Endpoint)
		}
		t.Logf("n1 peer endpoint %s allowed %v", p.Endpoint, p.AllowedIPs)
	}
	if len(fams) > 1 {
		// etcd: each node's IPv6 CIDR has its guard key, bound to the
		// record's lease.
		cli := c.Etcd.MustClient(t)
		resp, err := cli.Get(context.Background(), record.GuardsPrefix(harness.Prefix), clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 2 {
			t.Fatalf("guard keys: %v %v", resp, err)
		}
		for _, kv := range resp.Kvs {
			t.Logf("etcd %s = %s (lease %x)", kv.Key, kv.Value, kv.Lease)
			if kv.Lease == 0 {
				t.Fatalf("guard %s is not bound to a lease", kv.Key)
			}
		}
	}

	a1 := n1.MustAddPod(t)
	a2 := n1.MustAddPod(t)
	b1 := n2.MustAddPod(t)
	for _, p := range []*harness.Pod{a1, a2, b1} {
		ok := len(p.IPs) == len(fams) && p.IP == p.IPs[0].Addr()
		for _, f := range fams {
			ok = ok && f.Cluster.Contains(f.Addr(p))
		}
		if !ok {
			t.Fatalf("pod %s got %v, want one address of each family of %v", p.Name, p.IPs, c.ClusterCIDRs())
		}
		t.Logf("pod %s: %v", p.Name, p.IPs)
	}
	cls := c.Classifier()

	for _, f := range fams {
		t.Run(f.Name+" across nodes, only WireGuard on the underlay", func(t *testing.T) {
			rep := c.EncryptedOnly(t, cls, f.Name, func() {
				harness.Connect(t, a1.NS, f.Addr(b1), f.Name+" "+a1.Name+" -> "+b1.Name, 5)
				harness.Connect(t, b1.NS, f.Addr(a2), f.Name+" "+b1.Name+" -> "+a2.Name, 5)
				harness.Transfer(t, a1.NS, b1.NS, f.Addr(b1), 4<<20, f.Name+" "+a1.Name+" -> "+b1.Name)
				fullSizePing(t, a1.NS, f.Addr(b1), files[n1.Name].MTU, f.Name)
				// Node to remote pod: sourced from the node's gateway of the family.
				harness.Connect(t, n1.NS, f.Addr(b1), f.Name+" node n1 -> "+b1.Name, 5)
			})
			sawWG := false
			for _, s := range rep.Samples {
				if s.Result.Kind != capture.KindWireGuard || len(s.Data) < 14 {
					continue
				}
				sawWG = true
				if et := binary.BigEndian.Uint16(s.Data[12:14]); et != wantEther {
					t.Fatalf("%s: WireGuard frame with ethertype %#04x, want %#04x: %s", f.Name, et, wantEther, s)
				}
			}
			if !sawWG {
				t.Fatalf("%s: no WireGuard frame among the capture's samples to check its ethertype", f.Name)
			}
		})
		t.Run(f.Name+" same node", func(t *testing.T) {
			harness.Connect(t, a1.NS, f.Addr(a2), f.Name+" "+a1.Name+" -> "+a2.Name, 5)
		})
	}

	t.Run("strict mode per family", func(t *testing.T) {
		c.NoPlaintext(t, cls, "strict", func() {
			for _, f := range fams {
				dst := unleased(t, f.Cluster, files, f.Bits)
				strict(t, n1.NS, dst)
				strict(t, a1.NS, dst)
			}
		})
		for _, f := range fams {
			out, err := n1.Exec("ip", f.IPFlag, "route", "show", "type", "unreachable", f.Cluster.String())
			if err != nil || out == "" {
				t.Fatalf("%s: no unreachable route for %s: %v %q", n1.Name, f.Cluster, err, out)
			}
		}
	})

	t.Run("masquerade per family", func(t *testing.T) {
		for _, f := range fams {
			nftHas(t, n1, f.NFT, "masquerade")
		}
	})

	t.Run("CNI result per cniVersion", func(t *testing.T) {
		var peers []netip.Addr
		for _, f := range fams {
			peers = append(peers, f.Addr(b1))
		}
		cniVersions(t, c, n1, peers...)
	})
}
