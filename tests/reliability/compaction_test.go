package reliability

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/tests/harness"
)

// fakeRecord is a valid subnet record of a node that does not exist.
func fakeRecord(t *testing.T, node, cidr string, endpoint netip.Addr) (string, string) {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	l := record.Lease{Node: node, PublicKey: k.PublicKey(), Endpoint: netip.AddrPortFrom(endpoint, 51820)}
	return record.SubnetKey(harness.Prefix, netip.MustParsePrefix(cidr)), string(l.Encode())
}

// TestWatchCompaction freezes n1's daemon, restarts etcd (its watch
// connection is dead), writes 400 record changes and compacts etcd past
// n1's watch revision, then lets n1 run. n1 must re-list once, converge on
// the final records, and not loop. Figures: re-lists, log lines written
// in the 10 s after convergence.
func TestWatchCompaction(t *testing.T) {
	// A TTL longer than the freeze keeps n1's own lease alive.
	c := start(t, harness.Config{LeaseTTL: 30 * time.Second}, 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	harness.WaitMesh(t, c.Nodes(), 20*time.Second)
	syncs0 := countLog(t, n1, "full sync done")
	behind0 := countLog(t, n1, "watch fell behind etcd compaction")

	p := n1.Daemon()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer p.Signal(syscall.SIGCONT)
	c.Etcd.Stop()
	if err := c.Etcd.Start(); err != nil {
		t.Fatal(err)
	}
	cli := c.Etcd.MustClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ep := c.Underlay.Gateway.Next().Next().Next() // an underlay address no node uses
	// n1's own record is deleted behind its back: it must notice on the
	// re-list and take it back.
	own1, own2 := n1.MustPodCIDR(t), n2.MustPodCIDR(t)
	if _, err := cli.Delete(ctx, record.SubnetKey(harness.Prefix, netip.MustParsePrefix(own1))); err != nil {
		t.Fatal(err)
	}
	// 40 fake nodes come and go ten times; five stay.
	var fakes []string
	for i := 100; len(fakes) < 40; i++ {
		if cidr := fmt.Sprintf("10.244.%d.0/24", i); cidr != own1 && cidr != own2 {
			fakes = append(fakes, cidr)
		}
	}
	final := map[string]bool{}
	writes := 1
	for round := 0; round < 10; round++ {
		for i, cidr := range fakes {
			key, val := fakeRecord(t, fmt.Sprintf("fake%d", i), cidr, ep)
			if round == 9 && i < 5 {
				if _, err := cli.Put(ctx, key, val); err != nil {
					t.Fatal(err)
				}
				final[cidr] = true
			} else if _, err := cli.Put(ctx, key, val); err != nil {
				t.Fatal(err)
			} else if _, err := cli.Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
			writes++
		}
	}
	resp, err := cli.Get(ctx, "health")
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	t.Logf("n1 frozen; etcd restarted, %d record changes written, compacted at revision %d", writes, rev)
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()

	var fk []string
	for cidr := range final {
		fk = append(fk, cidr)
	}
	sort.Strings(fk)
	if err := n1.WaitPeerCIDRs(append([]string{own2}, fk...), 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, c.DumpLogs(30))
	}
	// n2 had n1's record deleted under its (live) watch: n1 must be back.
	if err := n2.WaitPeerCIDRs(append([]string{own1}, fk...), 30*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, c.DumpLogs(30))
	}
	converged := time.Since(resumed)
	if got := n1.MustPodCIDR(t); got != own1 {
		t.Errorf("n1 renumbered %s -> %s", own1, got)
	}
	if l, err := c.LeaseOf(n1.Name); err != nil || l == nil || l.CIDR != own1 {
		t.Errorf("n1's record not retaken: %+v %v", l, err)
	}
	lines0 := len(n1.LogLines("level="))
	time.Sleep(10 * time.Second)
	quiet := len(n1.LogLines("level=")) - lines0
	syncs := countLog(t, n1, "full sync done") - syncs0
	behind := countLog(t, n1, "watch fell behind etcd compaction") - behind0
	t.Logf("n1 after resume: %d compaction notices, %d full re-lists, own record retaken, converged in %v, %d log lines in the next 10 s", behind, syncs, converged.Round(time.Millisecond), quiet)
	if behind < 1 {
		t.Errorf("n1 never saw the compaction (test did not exercise it)")
	}
	if syncs < 1 || syncs > 2 {
		t.Errorf("n1 re-listed %d times; want 1 (2 at most)", syncs)
	}
	if quiet > 5 {
		t.Errorf("n1 wrote %d log lines in 10 s after converging (hot loop?):\n%v", quiet, n1.LogLines("level=")[lines0:])
	}
	harness.Result(t, "watch compacted past its revision (%d changes missed): %d re-list(s), converged in %v, %d log lines in the following 10 s",
		writes, syncs, converged.Round(time.Millisecond), quiet)
}
