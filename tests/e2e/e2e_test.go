// Package e2e runs wgcni end to end in a cluster of network namespaces
// (tests/harness): real etcd, real wgcnid per node, pods wired by cnitool,
// real packets captured on the underlay. It skips unless run as root with
// the tools and binaries present (make test sets WGCNI_E2E_REQUIRE=1 so a
// missing piece fails instead).
package e2e

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

const (
	// A /22 split into /24s has room for four nodes: after a node is lost,
	// a newcomer must take one of the free CIDRs, and filling the cluster
	// forces the lost node's CIDR to be reused.
	clusterCIDR = "10.244.0.0/22"
	leaseTTL    = 5 * time.Second
	wgPort      = 51820
)

// TestCluster is one cluster life story; the steps share the cluster and
// run in order because each changes it.
func TestCluster(t *testing.T) {
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, ListenPort: wgPort}, 3)
	nodes := c.Nodes()
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	pods := map[string][2]*harness.Pod{}
	for _, n := range nodes {
		pods[n.Name] = [2]*harness.Pod{n.MustAddPod(t), n.MustAddPod(t)}
	}
	// PodCIDRs are distinct and pods got addresses inside their node's.
	seen := map[string]string{}
	for _, n := range nodes {
		cidr := n.MustPodCIDR(t)
		if other, dup := seen[cidr]; dup {
			t.Fatalf("nodes %s and %s both hold %s", other, n.Name, cidr)
		}
		seen[cidr] = n.Name
		pfx := netip.MustParsePrefix(cidr)
		for _, p := range pods[n.Name] {
			if !pfx.Contains(p.IP) {
				t.Fatalf("pod %s got %s outside its node's %s", p.Name, p.IP, cidr)
			}
		}
	}
	harness.WaitMesh(t, nodes, 20*time.Second)

	t.Run("pod to pod across nodes", func(t *testing.T) {
		for i, a := range nodes {
			b := nodes[(i+1)%len(nodes)]
			src, dst := pods[a.Name][0], pods[b.Name][1]
			what := src.Name + " -> " + dst.Name
			harness.Connect(t, src.NS, dst.IP, what, 5)
			harness.Transfer(t, src.NS, dst.NS, dst.IP, 4<<20, what)
		}
		// A full-size packet with DF set fits the pod MTU end to end: the
		// pod MTU leaves room for WireGuard's overhead on the underlay.
		nf := n1.MustNodeFile(t)
		src, dst := pods[n1.Name][0], pods[n2.Name][0]
		r, err := src.PingSize(dst.IP, 3, 100*time.Millisecond, nf.MTU-28)
		if err != nil || r.Loss() != 0 {
			t.Fatalf("ping with DF at pod MTU %d: %d/%d: %v\n%s", nf.MTU, r.Received, r.Sent, err, r.Output)
		}
	})

	t.Run("pod to pod on the same node", func(t *testing.T) {
		a, b := pods[n1.Name][0], pods[n1.Name][1]
		harness.Connect(t, a.NS, b.IP, a.Name+" -> "+b.Name, 5)
		harness.Transfer(t, a.NS, b.NS, b.IP, 4<<20, a.Name+" -> "+b.Name)
	})

	t.Run("node host to pod on another node and back", func(t *testing.T) {
		dst := pods[n2.Name][0]
		harness.Connect(t, n1.NS, dst.IP, "host "+n1.Name+" -> "+dst.Name, 5)
		harness.Transfer(t, n1.NS, dst.NS, dst.IP, 1<<20, "host "+n1.Name+" -> "+dst.Name)
		nf := n1.MustNodeFile(t)
		gw := netip.MustParseAddr(nf.Gateway)
		harness.Connect(t, dst.NS, gw, dst.Name+" -> host "+n1.Name+" ("+nf.Gateway+")", 5)
		harness.Transfer(t, dst.NS, n1.NS, gw, 1<<20, dst.Name+" -> host "+n1.Name)
	})

	t.Run("only wireguard on the underlay", func(t *testing.T) {
		c.EncryptedOnly(t, c.Classifier(), "pods and hosts across nodes", func() {
			for i, a := range nodes {
				b := nodes[(i+1)%len(nodes)]
				src, dst := pods[a.Name][1], pods[b.Name][0]
				harness.Connect(t, src.NS, dst.IP, src.Name+" -> "+dst.Name, 5)
				harness.Transfer(t, src.NS, dst.NS, dst.IP, 2<<20, src.Name+" -> "+dst.Name)
				harness.Connect(t, a.NS, dst.IP, "host "+a.Name+" -> "+dst.Name, 5)
			}
		})
	})

	t.Run("lost node expires, strict drop, CIDR reused, new node joins", func(t *testing.T) {
		lostCIDR := n3.MustPodCIDR(t)
		lostPod := pods[n3.Name][0]
		dev3, err := n3.WGDevice()
		if err != nil {
			t.Fatal(err)
		}
		lostKey := dev3.PublicKey.String()
		n3.Shutdown()
		start := time.Now()
		err = harness.WaitFor(leaseTTL+15*time.Second, "lease of "+n3.Name+" to expire", func() (bool, error) {
			l, err := c.LeaseOf(n3.Name)
			return err == nil && l == nil, err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("lease of %s gone %v after shutdown (TTL %v)", n3.Name, time.Since(start).Round(100*time.Millisecond), leaseTTL)
		live := []*harness.Node{n1, n2}
		harness.WaitMesh(t, live, 20*time.Second)
		for _, n := range live {
			peers, err := n.PeerAllowedIPs()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := peers[lostKey]; ok {
				t.Fatalf("%s still has the lost node's key as a peer", n.Name)
			}
			// Strict: the lost CIDR is not routed out of the default route.
			out, err := n.RouteTo(net.IP(lostPod.IP.AsSlice()))
			if err == nil && strings.Contains(out, "dev eth0") {
				t.Fatalf("%s routes the lost CIDR %s to the underlay: %s", n.Name, lostCIDR, out)
			}
			t.Logf("%s: ip route get %s -> %s", n.Name, lostPod.IP, strings.TrimSpace(out+errText(err)))
		}
		c.NoPlaintext(t, c.Classifier(), "pinging the lost CIDR", func() {
			for _, from := range []harness.NS{pods[n1.Name][0].NS, n2.NS} {
				r, err := from.Ping(lostPod.IP, 3, 100*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				if r.Received != 0 {
					t.Fatalf("%d replies from the lost node's pod %s", r.Received, lostPod.IP)
				}
			}
		})

		// Fill the cluster until a newcomer holds the lost CIDR: the /22
		// has at most one other free /24.
		var n4 *harness.Node
		for tries := 0; tries < 2; tries++ {
			n, err := c.AddNode()
			if err != nil {
				t.Fatal(err)
			}
			live = append(live, n)
			if n4 == nil {
				n4 = n
			}
			if n.MustPodCIDR(t) == lostCIDR {
				t.Logf("%s took the lost node's CIDR %s", n.Name, lostCIDR)
				break
			}
			if tries == 1 {
				t.Fatalf("no new node got the expired CIDR %s", lostCIDR)
			}
		}
		harness.WaitMesh(t, live, 20*time.Second)
		p4 := n4.MustAddPod(t)
		for _, n := range []*harness.Node{n1, n2} {
			src := pods[n.Name][0]
			harness.Connect(t, src.NS, p4.IP, src.Name+" -> "+p4.Name+" (new node)", 5)
			harness.Transfer(t, src.NS, p4.NS, p4.IP, 1<<20, src.Name+" -> "+p4.Name)
			harness.Connect(t, p4.NS, src.IP, p4.Name+" -> "+src.Name, 5)
		}
	})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}
