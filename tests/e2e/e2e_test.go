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

	"github.com/wgcni/wgcni/tests/capture"
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

func classifier() *capture.Classifier {
	return &capture.Classifier{
		PodNets: []netip.Prefix{netip.MustParsePrefix(clusterCIDR)},
		WGPorts: []uint16{wgPort},
	}
}

func transfer(t *testing.T, from, to harness.NS, addr netip.Addr, size int64, what string) {
	t.Helper()
	r, err := harness.TCPTransfer(from, to, addr, 5201, size, 30*time.Second)
	if err != nil {
		t.Fatalf("%s: TCP transfer: %v", what, err)
	}
	t.Logf("%s: %d bytes verified in %v (%.0f Mbit/s)", what, r.Bytes, r.Duration.Round(time.Millisecond), r.Mbps())
}

// waitMesh waits until every live node has exactly the other live nodes'
// PodCIDRs as peers.
func waitMesh(t *testing.T, nodes []*harness.Node) {
	t.Helper()
	cidrs := map[string]string{}
	for _, n := range nodes {
		nf, err := n.NodeFile()
		if err != nil {
			t.Fatal(err)
		}
		cidrs[n.Name] = nf.PodCIDR
	}
	for _, n := range nodes {
		var want []string
		for _, o := range nodes {
			if o != n {
				want = append(want, cidrs[o.Name])
			}
		}
		if err := n.WaitPeerCIDRs(want, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

func podCIDR(t *testing.T, n *harness.Node) string {
	t.Helper()
	nf, err := n.NodeFile()
	if err != nil {
		t.Fatal(err)
	}
	return nf.PodCIDR
}

// TestCluster is one cluster life story; the steps share the cluster and
// run in order because each changes it.
func TestCluster(t *testing.T) {
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, ListenPort: wgPort}, 3)
	nodes := c.Nodes()
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	pods := map[string][2]*harness.Pod{}
	for _, n := range nodes {
		var two [2]*harness.Pod
		for i := range two {
			p, err := n.AddPod()
			if err != nil {
				t.Fatal(err)
			}
			two[i] = p
		}
		pods[n.Name] = two
	}
	// PodCIDRs are distinct and pods got addresses inside their node's.
	seen := map[string]string{}
	for _, n := range nodes {
		cidr := podCIDR(t, n)
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
	waitMesh(t, nodes)

	t.Run("pod to pod across nodes", func(t *testing.T) {
		for i, a := range nodes {
			b := nodes[(i+1)%len(nodes)]
			src, dst := pods[a.Name][0], pods[b.Name][1]
			what := src.Name + " -> " + dst.Name
			harness.Connect(t, src.NS, dst.IP, what, 5)
			transfer(t, src.NS, dst.NS, dst.IP, 4<<20, what)
		}
		// A full-size packet with DF set fits the pod MTU end to end: the
		// pod MTU leaves room for WireGuard's overhead on the underlay.
		nf, err := n1.NodeFile()
		if err != nil {
			t.Fatal(err)
		}
		src, dst := pods[n1.Name][0], pods[n2.Name][0]
		r, err := src.PingSize(dst.IP, 3, 100*time.Millisecond, nf.MTU-28)
		if err != nil || r.Loss() != 0 {
			t.Fatalf("ping with DF at pod MTU %d: %d/%d: %v\n%s", nf.MTU, r.Received, r.Sent, err, r.Output)
		}
	})

	t.Run("pod to pod on the same node", func(t *testing.T) {
		a, b := pods[n1.Name][0], pods[n1.Name][1]
		harness.Connect(t, a.NS, b.IP, a.Name+" -> "+b.Name, 5)
		transfer(t, a.NS, b.NS, b.IP, 4<<20, a.Name+" -> "+b.Name)
	})

	t.Run("node host to pod on another node and back", func(t *testing.T) {
		dst := pods[n2.Name][0]
		harness.Connect(t, n1.NS, dst.IP, "host "+n1.Name+" -> "+dst.Name, 5)
		transfer(t, n1.NS, dst.NS, dst.IP, 1<<20, "host "+n1.Name+" -> "+dst.Name)
		nf, err := n1.NodeFile()
		if err != nil {
			t.Fatal(err)
		}
		gw := netip.MustParseAddr(nf.Gateway)
		harness.Connect(t, dst.NS, gw, dst.Name+" -> host "+n1.Name+" ("+nf.Gateway+")", 5)
		transfer(t, dst.NS, n1.NS, gw, 1<<20, dst.Name+" -> host "+n1.Name)
	})

	t.Run("only wireguard on the underlay", func(t *testing.T) {
		cp, err := capture.Start(c.Underlay.Path(), "", classifier(), capture.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer cp.Stop()
		for i, a := range nodes {
			b := nodes[(i+1)%len(nodes)]
			src, dst := pods[a.Name][1], pods[b.Name][0]
			harness.Connect(t, src.NS, dst.IP, src.Name+" -> "+dst.Name, 5)
			transfer(t, src.NS, dst.NS, dst.IP, 2<<20, src.Name+" -> "+dst.Name)
			harness.Connect(t, a.NS, dst.IP, "host "+a.Name+" -> "+dst.Name, 5)
		}
		rep, err := cp.Stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("underlay capture: %s\n%s", rep, rep.Excerpt(10))
		if rep.PlainPod() != 0 {
			t.Fatalf("%d plaintext pod packets on the underlay:\n%s", rep.PlainPod(), rep.Excerpt(30))
		}
		if rep.WGTypes[capture.WGTransportData] == 0 {
			t.Fatal("no WireGuard data packets on the underlay: the capture saw nothing of the traffic")
		}
		if rep.Drops != 0 {
			t.Fatalf("capture dropped %d frames: the count above cannot be trusted", rep.Drops)
		}
	})

	t.Run("lost node expires, strict drop, CIDR reused, new node joins", func(t *testing.T) {
		lostCIDR := podCIDR(t, n3)
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
		waitMesh(t, live)
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
		cp, err := capture.Start(c.Underlay.Path(), "", classifier(), capture.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer cp.Stop()
		for _, from := range []harness.NS{pods[n1.Name][0].NS, n2.NS} {
			r, err := from.Ping(lostPod.IP, 3, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if r.Received != 0 {
				t.Fatalf("%d replies from the lost node's pod %s", r.Received, lostPod.IP)
			}
		}
		rep, err := cp.Stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("underlay while pinging the lost CIDR: %s", rep)
		if rep.PlainPod() != 0 {
			t.Fatalf("traffic to the lost CIDR left in plain text:\n%s", rep.Excerpt(20))
		}

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
			if podCIDR(t, n) == lostCIDR {
				t.Logf("%s took the lost node's CIDR %s", n.Name, lostCIDR)
				break
			}
			if tries == 1 {
				t.Fatalf("no new node got the expired CIDR %s", lostCIDR)
			}
		}
		waitMesh(t, live)
		p4, err := n4.AddPod()
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []*harness.Node{n1, n2} {
			src := pods[n.Name][0]
			harness.Connect(t, src.NS, p4.IP, src.Name+" -> "+p4.Name+" (new node)", 5)
			transfer(t, src.NS, p4.NS, p4.IP, 1<<20, src.Name+" -> "+p4.Name)
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
