package ipv6

import (
	"net/netip"
	"testing"

	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const v6only = "fd00:245::/56"

// (a) IPv6-only underlay (ULA, etcd on IPv6 too) and IPv6-only pods.
func TestIPv6OnlyUnderlayAndPods(t *testing.T) {
	c := harness.Start(t, harness.Config{UnderlayIPv6: true, ClusterCIDR: v6only, NodePrefixLenV6: 64, LeaseTTL: leaseTTL, ListenPort: wgPort}, 2)
	nodes := c.Nodes()
	n1, n2 := nodes[0], nodes[1]
	if !n1.UnderlayIP.Is6() || !c.Underlay.Gateway.Is6() {
		t.Fatalf("underlay is not IPv6: node %s, etcd %s", n1.UnderlayIP, c.Etcd.Endpoint)
	}
	if out, _ := n1.Exec("ip", "-4", "addr", "show", "dev", "eth0"); out != "" {
		t.Fatalf("IPv6-only underlay but eth0 has IPv4:\n%s", out)
	}
	files := waitPeers(t, nodes)
	for _, n := range nodes {
		nf := files[n.Name]
		if len(nf.PodCIDRs) != 1 || !netip.MustParsePrefix(nf.PodCIDR).Addr().Is6() {
			t.Fatalf("%s: podCIDRs %v", n.Name, nf.PodCIDRs)
		}
		// WireGuard over IPv6 costs 80 bytes, not 60.
		if nf.MTU != c.Cfg.UnderlayMTU-80 {
			t.Fatalf("%s: MTU %d over an IPv6 underlay, want %d", n.Name, nf.MTU, c.Cfg.UnderlayMTU-80)
		}
		t.Logf("%s: underlay %s, podCIDR %s, mtu %d, etcd %s", n.Name, n.UnderlayIP, nf.PodCIDR, nf.MTU, c.Etcd.Endpoint)
	}
	dev, err := n1.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dev.Peers {
		if p.Endpoint == nil || p.Endpoint.IP.To4() != nil {
			t.Fatalf("peer endpoint %v is not IPv6", p.Endpoint)
		}
		t.Logf("n1 peer endpoint %s allowed %v", p.Endpoint, p.AllowedIPs)
	}

	a1 := n1.MustAddPod(t)
	a2 := n1.MustAddPod(t)
	b1 := n2.MustAddPod(t)
	for _, p := range []*harness.Pod{a1, a2, b1} {
		if len(p.IPs) != 1 || !p.IP.Is6() {
			t.Fatalf("pod %s: %v, want one IPv6 address", p.Name, p.IPs)
		}
	}
	cls := &capture.Classifier{PodNets: []netip.Prefix{netip.MustParsePrefix(v6only)}, WGPorts: []uint16{wgPort}}
	t.Run("across nodes, only WireGuard over IPv6 on the underlay", func(t *testing.T) {
		captureUnderlay(t, c, cls, 0x86dd, "IPv6-only", func() {
			harness.Connect(t, a1.NS, b1.IP, a1.Name+" -> "+b1.Name, 5)
			harness.Connect(t, b1.NS, a2.IP, b1.Name+" -> "+a2.Name, 5)
			transfer(t, a1.NS, b1.NS, b1.IP, a1.Name+" -> "+b1.Name)
			fullSizePing(t, a1.NS, b1.IP, files["n1"].MTU, "IPv6-only")
			harness.Connect(t, n1.NS, b1.IP, "node n1 -> "+b1.Name, 5)
		})
	})
	t.Run("same node", func(t *testing.T) {
		harness.Connect(t, a1.NS, a2.IP, a1.Name+" -> "+a2.Name, 5)
	})
	t.Run("strict mode", func(t *testing.T) {
		captureUnderlayNoPlain(t, c, cls, func() {
			strict(t, n1.NS, unleased(t, netip.MustParsePrefix(v6only), files, 64))
			strict(t, a1.NS, unleased(t, netip.MustParsePrefix(v6only), files, 64))
		})
	})
	t.Run("masquerade", func(t *testing.T) { nftHas(t, n1, "ip6", "masquerade") })
	t.Run("CNI result per cniVersion", func(t *testing.T) {
		cniVersions(t, c, n1, b1.IP)
	})
}
