package reliability

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestNoDuplicateIPs: 3 nodes x 50 concurrent CNI ADDs (cnitool, 150 at
// once). Figure: duplicate pod IPs (0), failed ADDs (0).
func TestNoDuplicateIPs(t *testing.T) {
	c := start(t, harness.Config{}, 3)
	const perNode = 50
	type res struct {
		node string
		ip   netip.Addr
		err  error
	}
	out := make(chan res, 3*perNode)
	var wg sync.WaitGroup
	t0 := time.Now()
	for _, n := range c.Nodes() {
		for i := 0; i < perNode; i++ {
			wg.Add(1)
			go func(n *harness.Node) {
				defer wg.Done()
				p, err := n.AddPod()
				r := res{node: n.Name, err: err}
				if err == nil {
					r.ip = p.IP
				}
				out <- r
			}(n)
		}
	}
	wg.Wait()
	close(out)
	took := time.Since(t0)
	seen := map[netip.Addr]string{}
	dups, fails := 0, 0
	for r := range out {
		if r.err != nil {
			fails++
			t.Errorf("ADD on %s: %v", r.node, r.err)
			continue
		}
		if prev, ok := seen[r.ip]; ok {
			dups++
			t.Errorf("duplicate IP %s on %s and %s", r.ip, prev, r.node)
		}
		seen[r.ip] = r.node
	}
	for _, n := range c.Nodes() {
		pfx := netip.MustParsePrefix(n.MustPodCIDR(t))
		for ip, node := range seen {
			if node == n.Name && !pfx.Contains(ip) {
				t.Errorf("%s got %s outside its PodCIDR %s", node, ip, pfx)
			}
		}
	}
	t.Logf("%d concurrent ADDs on 3 nodes in %v: %d distinct IPs, %d duplicates, %d failures", 3*perNode, took.Round(time.Millisecond), len(seen), dups, fails)
	harness.Result(t, "3 nodes x %d concurrent ADDs: %d duplicate IPs, %d failed ADDs", perNode, dups, fails)
}

// TestNoDuplicateCIDRs starts 20 daemons at once against an empty etcd
// (daemon-only nodes), then fills the cluster CIDR and starts one more.
// Figures: duplicate CIDRs (0); the extra node exits with a clear error.
func TestNoDuplicateCIDRs(t *testing.T) {
	// 32 node CIDRs: room for the 20, then filled by hand.
	c := start(t, harness.Config{ClusterCIDR: "10.244.0.0/19", LeaseTTL: 20 * time.Second}, 0)
	const count = 20
	var nodes []*harness.Node
	for i := 0; i < count; i++ {
		n, err := c.AddBareNode()
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	var wg sync.WaitGroup
	errs := make([]error, count)
	t0 := time.Now()
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.StartDaemon(); err != nil {
				errs[i] = err
				return
			}
			_, errs[i] = n.WaitReady(90 * time.Second)
		}()
	}
	wg.Wait()
	took := time.Since(t0)
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %s: %v", nodes[i].Name, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	byCIDR := map[string][]string{}
	for _, n := range nodes {
		cidr := n.MustPodCIDR(t)
		byCIDR[cidr] = append(byCIDR[cidr], n.Name)
	}
	dups := 0
	for cidr, ns := range byCIDR {
		if len(ns) > 1 {
			dups += len(ns) - 1
			t.Errorf("CIDR %s held by %v", cidr, ns)
		}
	}
	leases, err := c.Leases()
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != count {
		t.Errorf("%d records in etcd, want %d", len(leases), count)
	}
	for _, l := range leases {
		if got := byCIDR[l.CIDR]; len(got) != 1 || got[0] != l.Node {
			t.Errorf("etcd record %s names %s, node files say %v", l.Key, l.Node, got)
		}
	}
	t.Logf("%d daemons started at once: all held a lease after %v, %d distinct CIDRs, %d duplicates", count, took.Round(time.Millisecond), len(byCIDR), dups)

	// Fill the remaining 12 CIDRs with records of absent nodes.
	cli := c.Etcd.MustClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ep := c.Underlay.Gateway.Next().Next().Next()
	filled := 0
	for i := 0; i < 32; i++ {
		cidr := fmt.Sprintf("10.244.%d.0/24", i)
		if len(byCIDR[cidr]) > 0 {
			continue
		}
		key, val := fakeRecord(t, fmt.Sprintf("filler%d", i), cidr, ep)
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
		filled++
	}
	refusedNode(t, c, fmt.Sprintf("cluster full (%d records added by hand)", filled), "cluster CIDR is full", 20*time.Second)
	harness.Result(t, "%d daemons started at once on an empty etcd: %d duplicate CIDRs (all leased in %v); full cluster: next node exits with \"cluster CIDR is full: all 32 node CIDRs (/24) ... are leased\"",
		count, dups, took.Round(100*time.Millisecond))
}
