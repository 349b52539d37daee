// Package hosts tests host-only peers, per-node keepalive and endpoint
// re-publishing end to end in the namespace cluster (tests/harness):
// real etcd, real wgcnid, pods wired by cnitool, packets captured on the
// underlay. Skips unless root with the tools (make test requires them).
package hosts

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/agent"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	clusterCIDR = "10.244.0.0/16"
	hostCIDR    = "10.244.200.0/24"
	leaseTTL    = 5 * time.Second
	wgPort      = 51820
)

// startHost starts a host-only peer: a node namespace on the underlay
// whose wgcnid runs with --host-only, and waits for its host file.
func startHost(t *testing.T, c *harness.Cluster, extra ...string) (*harness.Node, netip.Addr) {
	t.Helper()
	h, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	h.ExtraArgs = append([]string{"--host-only", "--host-cidr", hostCIDR}, extra...)
	if err := h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	var st *agent.HostPeerStatus
	err = harness.WaitFor(30*time.Second, "host file of "+h.Name, func() (bool, error) {
		if p := h.Daemon(); p != nil && !p.Running() {
			return false, fmt.Errorf("wgcnid %s exited: %v", h.Name, p.Err())
		}
		var err error
		st, err = agent.ReadHostPeerFile(h.RunDir)
		return err == nil, err
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr(st.Address)
	if !netip.MustParsePrefix(hostCIDR).Contains(addr) {
		t.Fatalf("host %s got %s outside --host-cidr %s", h.Name, addr, hostCIDR)
	}
	if _, err := h.NodeFile(); err == nil {
		t.Fatalf("host-only %s wrote a node file: CNI plugins would think it runs pods", h.Name)
	}
	t.Logf("host-only peer %s has overlay address %s", h.Name, addr)
	return h, addr
}

// TestHostOnlyPeer: a host without pods joins the mesh, reaches a pod on
// every node and is reached back, only WireGuard crosses the underlay,
// and stopping it (its lease expires) removes it from every node.
func TestHostOnlyPeer(t *testing.T) {
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, ListenPort: wgPort}, 0)
	// The host first: its reservation keeps the nodes off its block.
	h, hostAddr := startHost(t, c)
	nodes, err := c.AddNodes(2)
	if err != nil {
		t.Fatal(err)
	}
	hostCIDR32 := netip.PrefixFrom(hostAddr, 32).String()
	var pods []*harness.Pod
	for _, n := range nodes {
		if strings.HasPrefix(n.MustPodCIDR(t), "10.244.200.") {
			t.Fatalf("node %s leased the reserved host range %s", n.Name, hostCIDR)
		}
		p := n.MustAddPod(t)
		pods = append(pods, p)
	}
	// Every node peers with the other node and with the host, whose
	// AllowedIPs are exactly its /32; the host peers with every node.
	for i, n := range nodes {
		want := []string{nodes[1-i].MustPodCIDR(t), hostCIDR32}
		if err := n.WaitPeerCIDRs(want, 20*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.WaitPeerCIDRs([]string{nodes[0].MustPodCIDR(t), nodes[1].MustPodCIDR(t)}, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	c.EncryptedOnly(t, c.Classifier(), "host to pods and back", func() {
		for _, p := range pods {
			harness.Connect(t, h.NS, p.IP, "host "+h.Name+" -> "+p.Name, 5)
			harness.Transfer(t, h.NS, p.NS, p.IP, 1<<20, "host "+h.Name+" -> "+p.Name)
			harness.Connect(t, p.NS, hostAddr, p.Name+" -> host "+h.Name, 5)
			harness.Transfer(t, p.NS, h.NS, hostAddr, 1<<20, p.Name+" -> host "+h.Name)
		}
	})

	// Removal: stop the daemon (SIGTERM keeps the lease, as for a
	// restart), then the lease expires and every node drops the host.
	h.StopDaemon(syscall.SIGTERM)
	for i, n := range nodes {
		if err := n.WaitPeerCIDRs([]string{nodes[1-i].MustPodCIDR(t)}, 4*leaseTTL); err != nil {
			t.Fatalf("after the host's lease expired: %v", err)
		}
		out, err := n.RouteTo(hostAddr.AsSlice())
		// The strict route answers: "unreachable" in the route, or
		// EHOSTUNREACH ("No route to host") from ip route get.
		if got := out + err2s(err); !strings.Contains(got, "nreachable") && !strings.Contains(got, "No route to host") {
			t.Fatalf("route to the removed host's %s on %s: %q %v (want unreachable: strict route)", hostAddr, n.Name, out, err)
		}
	}
	r, err := pods[0].Ping(hostAddr, 1, 200*time.Millisecond)
	if err != nil || r.Received != 0 {
		t.Fatalf("pod still reaches the removed host: %+v %v", r, err)
	}
	ls, err := c.Leases()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.Node == h.Name {
			t.Fatalf("host record %s still in etcd after its lease expired", l.Key)
		}
	}
}

func err2s(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestKeepaliveAndEndpointChange: a node's --keepalive applies to its own
// peers and to what others use towards it; when a node's underlay address
// changes, it re-publishes its record and the peers follow without a
// restart, and pods keep talking.
func TestKeepaliveAndEndpointChange(t *testing.T) {
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, ListenPort: wgPort,
		ResyncInterval: 5 * time.Second}, 0)
	n1, err := c.AddNode("--keepalive", "7s") // "behind NAT"
	if err != nil {
		t.Fatal(err)
	}
	n2, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.WaitPeerCIDRs([]string{n2.MustPodCIDR(t)}, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitPeerCIDRs([]string{n1.MustPodCIDR(t)}, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*harness.Node{n1, n2} {
		dev, err := n.WGDevice()
		if err != nil {
			t.Fatal(err)
		}
		if ka := dev.Peers[0].PersistentKeepaliveInterval; ka != 7*time.Second {
			t.Fatalf("%s: keepalive towards its peer is %v, want 7s (n1 asked for it)", n.Name, ka)
		}
	}
	p1 := n1.MustAddPod(t)
	p2 := n2.MustAddPod(t)
	harness.Connect(t, p1.NS, p2.IP, "before: "+p1.Name+" -> "+p2.Name, 5)

	_, newIP := moveUnderlay(t, c, n1, 111)
	start := time.Now()
	err = harness.WaitFor(20*time.Second, "n1's record and n2's peer to carry "+newIP.String(), func() (bool, error) {
		l, err := c.LeaseOf(n1.Name)
		if err != nil || l == nil || l.Endpoint != newIP.String() {
			return false, fmt.Errorf("record %+v %v", l, err)
		}
		dev, err := n2.WGDevice()
		if err != nil {
			return false, err
		}
		if len(dev.Peers) != 1 || dev.Peers[0].Endpoint == nil || dev.Peers[0].Endpoint.IP.String() != newIP.String() {
			return false, fmt.Errorf("n2's peers %+v", dev.Peers)
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("re-published and followed by the peer in %v", time.Since(start).Round(time.Millisecond))
	if b, err := os.ReadFile(n1.LogPath); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "part=endpoint") {
				t.Logf("%s: %s", n1.Name, l)
			}
		}
	}
	harness.Connect(t, p1.NS, p2.IP, "after: "+p1.Name+" -> "+p2.Name, 5)
	harness.Connect(t, p2.NS, p1.IP, "after: "+p2.Name+" -> "+p1.Name, 5)
	harness.Transfer(t, p2.NS, p1.NS, p1.IP, 1<<20, "after: "+p2.Name+" -> "+p1.Name)
	// The lease is still kept alive from the new address: after two TTLs
	// the record is still there, on the same lease.
	before, err := c.LeaseOf(n1.Name)
	if err != nil || before == nil {
		t.Fatalf("n1's record: %+v %v", before, err)
	}
	time.Sleep(2 * leaseTTL)
	after, err := c.LeaseOf(n1.Name)
	if err != nil || after == nil || after.TTL <= 0 {
		t.Fatalf("n1's record after %v: %+v %v (etcd unreachable from the new address?)", 2*leaseTTL, after, err)
	}
	if after.Endpoint != newIP.String() {
		t.Fatalf("n1's record went back to %s", after.Endpoint)
	}
}

// moveUnderlay moves n to the underlay address ending in last: add it,
// drop the old one (the new one is promoted), restore the default route
// the kernel dropped with it.
func moveUnderlay(t *testing.T, c *harness.Cluster, n *harness.Node, last byte) (oldIP, newIP netip.Addr) {
	t.Helper()
	oldIP = n.UnderlayIP
	newIP = netip.AddrFrom4([4]byte{oldIP.As4()[0], oldIP.As4()[1], oldIP.As4()[2], last})
	bits := c.Underlay.Prefix.Bits()
	for _, argv := range [][]string{
		{"sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"},
		{"ip", "addr", "add", fmt.Sprintf("%s/%d", newIP, bits), "dev", "eth0"},
		{"ip", "addr", "del", fmt.Sprintf("%s/%d", oldIP, bits), "dev", "eth0"},
		{"ip", "route", "replace", "default", "via", c.Underlay.Gateway.String(), "dev", "eth0"},
	} {
		if out, err := n.Exec(argv...); err != nil {
			t.Fatalf("%v: %v %s", argv, err, out)
		}
	}
	n.UnderlayIP = newIP
	t.Logf("%s moved from %s to %s", n.Name, oldIP, newIP)
	return oldIP, newIP
}
