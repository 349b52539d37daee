// Package security proves wgcni's security properties end to end in the
// namespace cluster (tests/harness): etcd TLS and auth, private keys that
// never leave the node, key rotation under traffic, strict mode at every
// moment, anti-spoofing, record hijack resistance, and least privilege.
// Every test fails if the property it names breaks.
package security

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

const (
	clusterCIDR = "10.244.0.0/20"
	leaseTTL    = 6 * time.Second
	wgPort      = 51820
)

func cfg() harness.Config {
	return harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, ListenPort: wgPort}
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func etcdCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// freeCIDR returns a node CIDR of the test cluster that no node holds.
func freeCIDR(t *testing.T, c *harness.Cluster) netip.Prefix {
	t.Helper()
	held := map[string]bool{}
	ls, err := c.Leases()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		held[l.CIDR] = true
	}
	for i := 15; i > 0; i-- {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
		if !held[p.String()] {
			return p
		}
	}
	t.Fatal("no free node CIDR")
	return netip.Prefix{}
}
