// Package ipv6 runs wgcni end to end over every address family (issue 9)
// in the namespace cluster, one table-driven test over IPv4 pods on an
// IPv4 underlay, (a) IPv6-only pods over an IPv6-only underlay and (b)
// dual-stack pods over an IPv4 underlay. Pod to pod across nodes for each
// family, underlay captures proving only WireGuard leaves the nodes for
// each family, strict mode per family, and the CNI result of every
// cniVersion that carries IPv6 (0.3.0 and later). Skips unless root with the tools
// present (WGCNI_E2E_REQUIRE=1 turns a skip into a failure).
package ipv6

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	wgPort   = 51820
	leaseTTL = 6 * time.Second
)

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
