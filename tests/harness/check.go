package harness

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/tests/capture"
)

// The helpers here fail the test themselves: they are the checks every
// end-to-end package makes, written once.

// ClusterCIDRs are the cluster's pod networks, one per family
// (Config.ClusterCIDR split at commas).
func (c *Cluster) ClusterCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range strings.Split(c.Cfg.ClusterCIDR, ",") {
		// New has parsed them already.
		out = append(out, netip.MustParsePrefix(strings.TrimSpace(s)))
	}
	return out
}

// Classifier judges captured packets of this cluster: pod traffic is any
// packet of a ClusterCIDR, WireGuard is UDP to or from the nodes' listen
// port and extraPorts (e.g. a same-node hub's port).
func (c *Cluster) Classifier(extraPorts ...uint16) *capture.Classifier {
	return &capture.Classifier{
		PodNets: c.ClusterCIDRs(),
		WGPorts: append([]uint16{uint16(c.Cfg.ListenPort)}, extraPorts...),
	}
}

// Transfer sends size bytes over TCP from `from` to addr, served in `to`,
// checks every byte arrived intact and logs the throughput; it fails the
// test otherwise.
func Transfer(tb testing.TB, from, to NS, addr netip.Addr, size int64, what string) {
	tb.Helper()
	r, err := TCPTransfer(from, to, addr, 5201, size, 30*time.Second)
	if err != nil {
		tb.Fatalf("%s: TCP transfer: %v", what, err)
	}
	tb.Logf("%s: %d bytes verified in %v (%.0f Mbit/s)", what, r.Bytes, r.Duration.Round(time.Millisecond), r.Mbps())
}

// MustNodeFile is NodeFile for tests: it fails the test when the node has
// no node file.
func (n *Node) MustNodeFile(tb testing.TB) *nodefile.Node {
	tb.Helper()
	nf, err := n.NodeFile()
	if err != nil {
		tb.Fatal(err)
	}
	return nf
}

// MustPodCIDR is the node's (first) PodCIDR from its node file.
func (n *Node) MustPodCIDR(tb testing.TB) string {
	tb.Helper()
	return n.MustNodeFile(tb).PodCIDR
}

// WaitMesh waits until every node has exactly the other nodes as peers,
// each allowed exactly its PodCIDRs of every family, and returns the node
// files by node name.
func WaitMesh(tb testing.TB, nodes []*Node, timeout time.Duration) map[string]*nodefile.Node {
	tb.Helper()
	files := map[string]*nodefile.Node{}
	for _, n := range nodes {
		files[n.Name] = n.MustNodeFile(tb)
	}
	for _, n := range nodes {
		var want []string
		for _, o := range nodes {
			if o != n {
				cidrs := append([]string(nil), files[o.Name].PodCIDRs...)
				if len(cidrs) == 0 { // a node file of one family only
					cidrs = []string{files[o.Name].PodCIDR}
				}
				sort.Strings(cidrs)
				want = append(want, strings.Join(cidrs, " "))
			}
		}
		sort.Strings(want)
		err := WaitFor(timeout, "peers of "+n.Name, func() (bool, error) {
			peers, err := n.PeerAllowedIPs()
			if err != nil {
				return false, err
			}
			var got []string
			for _, ips := range peers {
				got = append(got, strings.Join(ips, " "))
			}
			sort.Strings(got)
			if strings.Join(got, "|") != strings.Join(want, "|") {
				return false, fmt.Errorf("have %v, want %v", got, want)
			}
			return true, nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return files
}

// EncryptedOnly captures on the underlay bridge while f runs and fails the
// test on any plaintext pod packet, on frames the capture dropped (the
// count could not be trusted), and when no WireGuard data crossed (the
// traffic did not take the underlay). It returns the report.
func (c *Cluster) EncryptedOnly(tb testing.TB, cls *capture.Classifier, what string, f func()) *capture.Report {
	tb.Helper()
	rep := c.captureUnderlay(tb, cls, what, f)
	if rep.WGTypes[capture.WGTransportData] == 0 {
		tb.Fatalf("%s: no WireGuard data on the underlay: the traffic did not cross it", what)
	}
	return rep
}

// NoPlaintext is EncryptedOnly for traffic that may not cross at all
// (refused or dropped): only plaintext pod packets and dropped frames fail.
func (c *Cluster) NoPlaintext(tb testing.TB, cls *capture.Classifier, what string, f func()) *capture.Report {
	tb.Helper()
	return c.captureUnderlay(tb, cls, what, f)
}

func (c *Cluster) captureUnderlay(tb testing.TB, cls *capture.Classifier, what string, f func()) *capture.Report {
	tb.Helper()
	// Samples let callers look at the WireGuard frames themselves.
	cp, err := capture.Start(c.Underlay.Path(), "", cls, capture.Options{Samples: 200})
	if err != nil {
		tb.Fatal(err)
	}
	defer cp.Stop()
	f()
	rep, err := cp.Stop()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Logf("%s: underlay capture: %s\n%s", what, rep, rep.Excerpt(6))
	if rep.PlainPod() != 0 {
		tb.Fatalf("%s: %d plaintext pod packets on the underlay:\n%s", what, rep.PlainPod(), rep.Excerpt(30))
	}
	if rep.Drops != 0 {
		tb.Fatalf("%s: capture dropped %d frames: the counts cannot be trusted", what, rep.Drops)
	}
	return rep
}
