// Package ipv6 runs wgcni end to end with IPv6 (issue 9) in the namespace
// cluster: (b) dual-stack pods over an IPv4 underlay and (a) IPv6-only pods
// over an IPv6-only underlay. Pod to pod across nodes for each family,
// underlay captures proving only WireGuard leaves the nodes for each
// family, strict mode per family, and the CNI result of every cniVersion
// that carries IPv6 (0.3.0 and later). Skips unless root with the tools
// present (WGCNI_E2E_REQUIRE=1 turns a skip into a failure).
package ipv6

import (
	"encoding/binary"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	wgPort   = 51820
	leaseTTL = 6 * time.Second
)

func transfer(t *testing.T, from, to harness.NS, addr netip.Addr, what string) {
	t.Helper()
	r, err := harness.TCPTransfer(from, to, addr, 5201, 4<<20, 30*time.Second)
	if err != nil {
		t.Fatalf("%s: TCP transfer: %v", what, err)
	}
	t.Logf("%s: %d bytes verified in %v (%.0f Mbit/s)", what, r.Bytes, r.Duration.Round(time.Millisecond), r.Mbps())
}

// fullSizePing sends one packet of exactly the pod MTU with DF set.
func fullSizePing(t *testing.T, from harness.NS, to netip.Addr, mtu int, what string) {
	t.Helper()
	hdr := 28 // IPv4 + ICMP
	if to.Is6() {
		hdr = 48 // IPv6 + ICMPv6
	}
	r, err := from.PingSize(to, 3, 100*time.Millisecond, mtu-hdr)
	if err != nil || r.Received == 0 {
		t.Fatalf("%s: full-size (%d-byte) DF ping: %v\n%s", what, mtu, err, r.Output)
	}
}

// waitPeers waits until every node has the other nodes as peers with
// AllowedIPs exactly their PodCIDRs of every family.
func waitPeers(t *testing.T, nodes []*harness.Node) map[string]*nodefile.Node {
	t.Helper()
	files := map[string]*nodefile.Node{}
	for _, n := range nodes {
		nf, err := n.NodeFile()
		if err != nil {
			t.Fatal(err)
		}
		files[n.Name] = nf
	}
	for _, n := range nodes {
		var want []string
		for _, o := range nodes {
			if o != n {
				cidrs := append([]string(nil), files[o.Name].PodCIDRs...)
				sort.Strings(cidrs)
				want = append(want, strings.Join(cidrs, " "))
			}
		}
		sort.Strings(want)
		err := harness.WaitFor(30*time.Second, "peers of "+n.Name, func() (bool, error) {
			peers, err := n.PeerAllowedIPs()
			if err != nil {
				return false, err
			}
			var got []string
			for _, ips := range peers {
				got = append(got, strings.Join(ips, " "))
			}
			sort.Strings(got)
			return strings.Join(got, "|") == strings.Join(want, "|"), nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// captureUnderlay runs f while capturing on the underlay bridge and fails
// on any plaintext pod packet or missing WireGuard data. wantEther is the
// ethertype every WireGuard frame must have (0x0800 IPv4, 0x86dd IPv6).
func captureUnderlay(t *testing.T, c *harness.Cluster, cls *capture.Classifier, wantEther uint16, what string, f func()) {
	t.Helper()
	cp, err := capture.Start(c.Underlay.Path(), "", cls, capture.Options{Samples: 200})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	f()
	rep, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: underlay capture: %s\n%s", what, rep, rep.Excerpt(6))
	if rep.PlainPod() != 0 {
		t.Fatalf("%s: %d plaintext pod packets on the underlay:\n%s", what, rep.PlainPod(), rep.Excerpt(30))
	}
	if rep.WGTypes[capture.WGTransportData] == 0 {
		t.Fatalf("%s: no WireGuard data on the underlay: the traffic did not cross it", what)
	}
	if rep.Drops != 0 {
		t.Fatalf("%s: capture dropped %d frames", what, rep.Drops)
	}
	for _, s := range rep.Samples {
		if s.Result.Kind != capture.KindWireGuard || len(s.Data) < 14 {
			continue
		}
		if et := binary.BigEndian.Uint16(s.Data[12:14]); et != wantEther {
			t.Fatalf("%s: WireGuard frame with ethertype %#04x, want %#04x: %s", what, et, wantEther, s)
		}
	}
}

// unleased returns an address inside cluster but outside every PodCIDR.
func unleased(t *testing.T, cluster netip.Prefix, files map[string]*nodefile.Node, bits int) netip.Addr {
	t.Helper()
	held := map[netip.Prefix]bool{}
	for _, nf := range files {
		for _, p := range nf.PodCIDRs {
			held[netip.MustParsePrefix(p)] = true
		}
	}
	a := cluster.Addr()
	for i := 0; i < 64; i++ {
		p := netip.PrefixFrom(a, bits)
		if !held[p] {
			return a.Next().Next()
		}
		b := a.AsSlice()
		idx := (bits - 1) / 8
		b[idx] += 1 << (7 - uint(bits-1)%8)
		a, _ = netip.AddrFromSlice(b)
	}
	t.Fatal("no unleased node CIDR")
	return netip.Addr{}
}

// strict checks that a pod address of no node is refused locally.
func strict(t *testing.T, from harness.NS, dst netip.Addr) {
	t.Helper()
	r, err := from.Ping(dst, 2, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Received != 0 {
		t.Fatalf("unleased %s answered", dst)
	}
	// ping -q reports a local refusal as "connect: ... unreachable" and
	// an ICMP(v6) destination-unreachable error from the node as
	// "+N errors"; a silent drop would show neither.
	if !r.Unreachable && !strings.Contains(r.Output, "nreachable") && !strings.Contains(r.Output, " errors") {
		t.Fatalf("ping to unleased %s was not refused as unreachable:\n%s", dst, r.Output)
	}
}

func nftHas(t *testing.T, n *harness.Node, family, want string) {
	t.Helper()
	out, err := n.Exec("nft", "list", "table", family, "wgcni")
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("nft table %s wgcni on %s lacks %q: %v\n%s", family, n.Name, want, err, out)
	}
}
