package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/internal/etcdtest"
	"github.com/wgcni/wgcni/daemon/record"
)

func dualCluster(t *testing.T, v4 string, n4 int, v6 string, n6 int) record.Cluster {
	c, err := mustCluster(t, v4, n4).WithV6(v6, n6)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Racing dual-stack nodes get distinct CIDRs of both families, each node's
// IPv6 guard bound to the same lease as its record. The IPv6 grid is smaller
// than the IPv4 one, so the IPv6 guards are what the race is decided on.
func TestDualRaceDistinctBothFamilies(t *testing.T) {
	srv := etcdtest.Start(t)
	c := dualCluster(t, "10.244.0.0/16", 24, "fd00:244::/60", 64) // 16 IPv6 node CIDRs
	ctx := context.Background()
	const n = 16
	var wg sync.WaitGroup
	results := make([]Held, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		cli := srv.Client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := fmt.Sprintf("node-%02d", i)
			<-start
			results[i], errs[i] = acquirer(t, cli, c, node, 30*time.Second).Acquire(ctx, selfRecord(t, node), netip.Prefix{})
		}()
	}
	close(start)
	wg.Wait()
	seen4, seen6 := map[netip.Prefix]bool{}, map[netip.Prefix]bool{}
	cli := srv.Client(t)
	for i, h := range results {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		if seen4[h.CIDR] || seen6[h.CIDR6] || !h.CIDR6.IsValid() {
			t.Fatalf("node %d: duplicate or missing CIDR %+v", i, h)
		}
		seen4[h.CIDR], seen6[h.CIDR6] = true, true
		resp, err := cli.Get(ctx, h.Key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("record %s: %v", h.Key, err)
		}
		l, err := record.DecodeSubnet(prefix, h.Key, resp.Kvs[0].Value, c)
		if err != nil || l.CIDR6 != h.CIDR6 {
			t.Fatalf("record %s: %+v %v", h.Key, l, err)
		}
		g, err := cli.Get(ctx, record.Subnet6Key(prefix, h.CIDR6))
		if err != nil || len(g.Kvs) != 1 || clientv3.LeaseID(g.Kvs[0].Lease) != h.LeaseID {
			t.Fatalf("guard of %s not bound to lease %x: %v %v", h.CIDR6, int64(h.LeaseID), g, err)
		}
	}
	// The IPv6 grid is now full: a 17th node is refused with a clear error
	// and leaves nothing behind.
	_, err := acquirer(t, cli, c, "late", 30*time.Second).Acquire(ctx, selfRecord(t, "late"), netip.Prefix{})
	if !errors.Is(err, ErrClusterFull) {
		t.Fatalf("17th node: %v", err)
	}
	t.Logf("full IPv6 grid: %v", err)
	resp, _ := cli.Get(ctx, record.SubnetsPrefix(prefix), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if resp.Count != n {
		t.Fatalf("%d records after refused acquire, want %d", resp.Count, n)
	}
}

// A restarted node adopts both CIDRs; the preferred (remembered) IPv6 CIDR
// is taken when free; a deleted record is retaken with the same IPv6 CIDR;
// a v4-only record of the same node encodes exactly as before.
func TestDualAdoptRetake(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	c := dualCluster(t, "10.244.0.0/16", 24, "fd00:244::/48", 64)
	self := selfRecord(t, "n1")
	a := acquirer(t, cli, c, "n1", 30*time.Second)
	a.Preferred6 = netip.MustParsePrefix("fd00:244:0:7::/64")
	h1, err := a.Acquire(ctx, self, netip.MustParsePrefix("10.244.7.0/24"))
	if err != nil || h1.CIDR6 != a.Preferred6 || h1.CIDR.String() != "10.244.7.0/24" {
		t.Fatalf("preferred: %+v %v", h1, err)
	}
	b := acquirer(t, cli, c, "n1", 40*time.Second) // restart with a new TTL: new lease
	h2, err := b.Acquire(ctx, self, netip.Prefix{})
	if err != nil || h2.How != "adopted" || h2.CIDR != h1.CIDR || h2.CIDR6 != h1.CIDR6 || h2.LeaseID == h1.LeaseID {
		t.Fatalf("adopt: %+v %v", h2, err)
	}
	g, _ := cli.Get(ctx, record.Subnet6Key(prefix, h1.CIDR6))
	if len(g.Kvs) != 1 || clientv3.LeaseID(g.Kvs[0].Lease) != h2.LeaseID {
		t.Fatalf("guard did not move to the new lease: %v", g.Kvs)
	}
	// Another node may not take our IPv6 CIDR even if it asks for it.
	o := acquirer(t, cli, c, "n2", 30*time.Second)
	o.Preferred6 = h1.CIDR6
	h3, err := o.Acquire(ctx, selfRecord(t, "n2"), netip.Prefix{})
	if err != nil || h3.CIDR6 == h1.CIDR6 {
		t.Fatalf("second node: %+v %v", h3, err)
	}
	// Record deleted by an operator (lease alive): retake both.
	if _, err := cli.Delete(ctx, h2.Key); err != nil {
		t.Fatal(err)
	}
	self.CIDR6 = h2.CIDR6
	h4, err := b.Retake(ctx, self, h2.CIDR)
	if err != nil || h4.How != "retaken" || h4.CIDR6 != h2.CIDR6 {
		t.Fatalf("retake: %+v %v", h4, err)
	}
	// Retaking an IPv6 CIDR that another node holds is a TakenError.
	if _, err := cli.Delete(ctx, h4.Key); err != nil {
		t.Fatal(err)
	}
	self.CIDR6 = h3.CIDR6
	var te *TakenError
	if _, err := b.Retake(ctx, self, h4.CIDR); !errors.As(err, &te) || te.By != "n2" {
		t.Fatalf("retake of n2's IPv6 CIDR: %v", err)
	}
	// Byte compatibility: a single-family record has no podCIDRv6 field.
	v4only := record.Lease{Node: "n1", PublicKey: self.PublicKey, Endpoint: self.Endpoint}
	if want := `{"node":"n1","publicKey":"` + record.Lease.Subnet(v4only).PublicKey + `","endpoint":"10.99.0.1","port":51820,"keepalive":0}`; string(v4only.Encode()) != want {
		t.Fatalf("v4-only record changed: %s", v4only.Encode())
	}
}
