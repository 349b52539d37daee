package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/internal/etcdtest"
	"github.com/wgcni/wgcni/daemon/record"
)

const prefix = "/wgcni"

// testLog logs into the test's own output: shown when it fails (or with -v).
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

func mustCluster(t *testing.T, cidr string, n int) record.Cluster {
	c, err := record.NewCluster(cidr, n)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func selfRecord(t *testing.T, node string) record.Lease {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return record.Lease{Node: node, PublicKey: k.PublicKey(), Endpoint: netip.MustParseAddrPort("10.99.0.1:51820")}
}

func acquirer(t *testing.T, cli *clientv3.Client, c record.Cluster, node string, ttl time.Duration) *Acquirer {
	return &Acquirer{Client: cli, Prefix: prefix, Cluster: c, Node: node, TTL: ttl, Log: testLog(t)}
}

func TestEnsureConfig(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	c1 := mustCluster(t, "10.244.0.0/16", 24)
	created, err := EnsureConfig(ctx, cli, prefix, c1)
	if err != nil || !created {
		t.Fatalf("first writer: created=%v err=%v", created, err)
	}
	created, err = EnsureConfig(ctx, cli, prefix, c1)
	if err != nil || created {
		t.Fatalf("same config: created=%v err=%v", created, err)
	}
	c2 := mustCluster(t, "10.245.0.0/16", 26)
	_, err = EnsureConfig(ctx, cli, prefix, c2)
	var me *MismatchError
	if !errors.As(err, &me) {
		t.Fatalf("mismatch not refused: %v", err)
	}
	for _, want := range []string{"10.244.0.0/16", "nodePrefixLen=24", "10.245.0.0/16", "--node-prefix-len=26", "/wgcni/config"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("mismatch error %q does not name %q", err, want)
		}
	}
	// Stored value unchanged by the refused writer.
	resp, _ := cli.Get(ctx, record.ConfigKey(prefix))
	if got, _ := record.DecodeConfig("k", resp.Kvs[0].Value); !got.Equal(c1) {
		t.Fatalf("config changed to %v", got)
	}
	// A corrupt config record is named, not overwritten.
	cli.Put(ctx, record.ConfigKey(prefix), `{"clusterCIDR":7}`)
	if _, err := EnsureConfig(ctx, cli, prefix, c1); err == nil || !strings.Contains(err.Error(), "/wgcni/config") {
		t.Fatalf("corrupt config: %v", err)
	}
}

func TestAcquireAndRestart(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx := context.Background()
	c := mustCluster(t, "10.244.0.0/16", 24)
	self := selfRecord(t, "n1")
	a := acquirer(t, cli, c, "n1", 30*time.Second)
	h1, err := a.Acquire(ctx, self, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if h1.How != "created" || !c.Primary().Holds(h1.Primary()) {
		t.Fatalf("held %+v", h1)
	}
	resp, err := cli.Get(ctx, h1.Key)
	if err != nil || len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != h1.LeaseID {
		t.Fatalf("record not bound to lease: %v %v", resp, err)
	}
	got, err := record.DecodeSubnet(prefix, h1.Key, resp.Kvs[0].Value, c)
	if err != nil || got.PublicKey != self.PublicKey || got.Node != "n1" {
		t.Fatalf("record %+v %v", got, err)
	}

	// "Restart": a new acquirer (new client) for the same node, asking for a
	// different CIDR, gets its own record back with the same live lease.
	b := acquirer(t, cli, c, "n1", 30*time.Second)
	h2, err := b.Acquire(ctx, self, netip.MustParsePrefix("10.244.200.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if h2.Primary() != h1.Primary() || h2.LeaseID != h1.LeaseID || h2.How != "adopted" {
		t.Fatalf("restart got %+v, want CIDR %s lease %x adopted", h2, h1.Primary(), int64(h1.LeaseID))
	}

	// A changed TTL moves the record to a new lease without it vanishing.
	c3 := acquirer(t, cli, c, "n1", 40*time.Second)
	h3, err := c3.Acquire(ctx, self, netip.Prefix{})
	if err != nil || h3.Primary() != h1.Primary() || h3.LeaseID == h1.LeaseID {
		t.Fatalf("TTL change: %+v %v", h3, err)
	}
	ttl, _ := cli.TimeToLive(ctx, h3.LeaseID)
	if ttl.GrantedTTL != 40 {
		t.Fatalf("granted TTL %d", ttl.GrantedTTL)
	}

	// Remembered CIDR is preferred by a node without a record.
	d := acquirer(t, cli, c, "n2", 30*time.Second)
	want := netip.MustParsePrefix("10.244.77.0/24")
	h4, err := d.Acquire(ctx, selfRecord(t, "n2"), want)
	if err != nil || h4.Primary() != want {
		t.Fatalf("preferred: %+v %v", h4, err)
	}
	// Preferred held by someone else: another CIDR, no error.
	e := acquirer(t, cli, c, "n3", 30*time.Second)
	h5, err := e.Acquire(ctx, selfRecord(t, "n3"), want)
	if err != nil || h5.Primary() == want || h5.Primary() == h1.Primary() {
		t.Fatalf("preferred taken: %+v %v", h5, err)
	}
	// Publish can update own record but not someone else's.
	self.Endpoint = netip.MustParseAddrPort("10.99.0.9:51820")
	if err := b.Publish(ctx, h3, self); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, Held{Key: h4.Key, LeaseID: h3.LeaseID}, self); err == nil {
		t.Fatal("overwrote another node's record")
	}
}

func TestRaceForTheLastCIDRs(t *testing.T) {
	// 8 nodes race for 4 CIDRs: exactly 4 win, 4 get ErrClusterFull.
	srv := etcdtest.Start(t)
	c := mustCluster(t, "10.244.0.0/22", 24)
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := map[netip.Prefix]int{}
	full := 0
	for i := range 8 {
		cli := srv.Client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := fmt.Sprintf("n%d", i)
			h, err := acquirer(t, cli, c, node, 30*time.Second).Acquire(context.Background(), selfRecord(t, node), netip.Prefix{})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won[h.Primary()]++
			case errors.Is(err, ErrClusterFull):
				full++
			default:
				t.Errorf("node %s: %v", node, err)
			}
		}()
	}
	wg.Wait()
	if len(won) != 4 || full != 4 {
		t.Fatalf("won %v, full %d", won, full)
	}
	for p, n := range won {
		if n != 1 {
			t.Fatalf("%s won %d times", p, n)
		}
	}
}

func TestFullClusterAndExpiryReuse(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	c := mustCluster(t, "10.244.0.0/24", 25) // two node CIDRs
	ha, err := acquirer(t, cli, c, "a", 3*time.Second).Acquire(ctx, selfRecord(t, "a"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	// b keeps its lease alive for the whole test.
	bAcq := acquirer(t, cli, c, "b", 3*time.Second)
	hb, err := bAcq.Acquire(ctx, selfRecord(t, "b"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go NewKeeper(bAcq, selfRecord(t, "b"), hb).Run(kctx)

	cAcq := acquirer(t, cli, c, "c", 3*time.Second)
	_, err = cAcq.Acquire(ctx, selfRecord(t, "c"), netip.Prefix{})
	if !errors.Is(err, ErrClusterFull) || !strings.Contains(err.Error(), "10.244.0.0/24") || !strings.Contains(err.Error(), "/25") {
		t.Fatalf("full cluster: %v", err)
	}
	t.Logf("full cluster error: %v", err)
	// a's lease is not kept alive: c gets a's CIDR only once it expired.
	start := time.Now()
	var hc Held
	for {
		hc, err = cAcq.Acquire(ctx, selfRecord(t, "c"), netip.Prefix{})
		if err == nil {
			break
		}
		if !errors.Is(err, ErrClusterFull) {
			t.Fatal(err)
		}
		if time.Since(start) > 15*time.Second {
			t.Fatal("a's CIDR never freed")
		}
		time.Sleep(200 * time.Millisecond)
	}
	waited := time.Since(start)
	if hc.Primary() != ha.Primary() {
		t.Fatalf("c got %s, want a's %s", hc.Primary(), ha.Primary())
	}
	if waited < 1500*time.Millisecond {
		t.Fatalf("CIDR reused after %s, before a's 3s lease could have expired", waited)
	}
	// b, kept alive, still holds its CIDR.
	resp, _ := cli.Get(ctx, hb.Key)
	if len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != hb.LeaseID {
		t.Fatal("b lost its record although its lease was kept alive")
	}
	t.Logf("a's CIDR reused after %s", waited.Round(100*time.Millisecond))
}

func TestCorruptRecordsSkipped(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	c := mustCluster(t, "10.244.0.0/22", 24)
	// Garbage on three of the four CIDRs and junk keys elsewhere.
	for k, v := range map[string]string{
		"/wgcni/subnets/10.244.0.0-24": "{not json",
		"/wgcni/subnets/10.244.1.0-24": `{"node":"x","publicKey":"short"}`,
		"/wgcni/subnets/10.244.2.0-24": `{"node":"n1","publicKey":"short"}`, // claims our name but invalid
		"/wgcni/subnets/garbage":       "zzz",
		"/wgcni/subnets/10.244.8.0-24": `{}`, // outside the cluster
	} {
		cli.Put(ctx, k, v)
	}
	h, err := acquirer(t, cli, c, "n1", 30*time.Second).Acquire(ctx, selfRecord(t, "n1"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if h.Primary() != netip.MustParsePrefix("10.244.3.0/24") {
		t.Fatalf("got %s; corrupt records' CIDRs must count as taken, not overwritten", h.Primary())
	}
	resp, _ := cli.Get(ctx, "/wgcni/subnets/10.244.0.0-24")
	if string(resp.Kvs[0].Value) != "{not json" {
		t.Fatal("corrupt record overwritten")
	}
}

func TestKeeperRetakesVanishedRecord(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := mustCluster(t, "10.244.0.0/16", 24)
	self := selfRecord(t, "n1")
	a := acquirer(t, cli, c, "n1", 3*time.Second)
	h, err := a.Acquire(ctx, self, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	k := NewKeeper(a, self, h)
	go k.Run(ctx)

	// Kept alive well past the TTL.
	time.Sleep(4 * time.Second)
	if resp, _ := cli.Get(ctx, h.Key); len(resp.Kvs) != 1 {
		t.Fatal("record expired although kept alive")
	}
	// Simulate expiry during a partition: revoke the lease (deletes the record).
	if _, err := cli.Revoke(ctx, h.LeaseID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "record retaken", func() bool {
		resp, _ := cli.Get(ctx, h.Key)
		return len(resp.Kvs) == 1 && k.Retakes.Load() == 1
	})
	if k.Held().Primary() != h.Primary() || k.Held().LeaseID == h.LeaseID {
		t.Fatalf("held %+v", k.Held())
	}

	// Now another node grabs it meanwhile: the keeper counts conflicts and
	// never renumbers; when the intruder goes, it takes the CIDR back.
	cur := k.Held()
	cli.Revoke(ctx, cur.LeaseID)
	intruder := selfRecord(t, "intruder")
	g, _ := cli.Grant(ctx, 30)
	cli.Put(ctx, h.Key, string(intruder.Encode()), clientv3.WithLease(g.ID))
	k.Recheck()
	waitFor(t, 10*time.Second, "conflict counted", func() bool { return k.Conflicts.Load() > 0 })
	if k.Held().Primary() != h.Primary() {
		t.Fatal("keeper renumbered")
	}
	cli.Revoke(ctx, g.ID)
	waitFor(t, 40*time.Second, "CIDR taken back after intruder left", func() bool {
		resp, _ := cli.Get(ctx, h.Key)
		if len(resp.Kvs) != 1 {
			return false
		}
		l, err := record.DecodeSubnet(prefix, h.Key, resp.Kvs[0].Value, c)
		return err == nil && l.Node == "n1"
	})
}

func TestRemember(t *testing.T) {
	dir := t.TempDir()
	if len(LoadRemembered(dir)) != 0 {
		t.Fatal("remembered from empty dir")
	}
	p := netip.MustParsePrefix("10.244.5.0/24")
	if err := Remember(dir, []netip.Prefix{p}); err != nil || LoadRemembered(dir)[0] != p {
		t.Fatalf("remember: %v", err)
	}
}

func TestNextBlock(t *testing.T) {
	for _, c := range []struct {
		in   string
		bits int
		want string
	}{
		{"10.244.0.0", 24, "10.244.1.0"},
		{"10.244.255.0", 24, "10.245.0.0"},
		{"10.244.0.0", 25, "10.244.0.128"},
		{"10.244.0.128", 25, "10.244.1.0"},
		{"fd00::", 64, "fd00:0:0:1::"},
		{"10.0.0.0", 8, "11.0.0.0"},
	} {
		if got := nextBlock(netip.MustParseAddr(c.in), c.bits); got.String() != c.want {
			t.Errorf("nextBlock(%s,%d)=%s want %s", c.in, c.bits, got, c.want)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func dualCluster(t *testing.T, v4 string, n4 int, v6 string, n6 int) record.Cluster {
	c, err := record.Join(mustCluster(t, v4, n4).Grids[0], mustCluster(t, v6, n6).Grids[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Racing nodes get distinct CIDRs of every family of the cluster, each
// further CIDR's guard bound to the same lease as the record. In the dual
// cluster the IPv6 grid is smaller than the IPv4 one, so the guards are
// what the race is decided on; once a grid is full, the next node is
// refused with a clear error and leaves nothing behind.
func TestRaceDistinct(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grids [][2]any // cluster CIDR, node prefix length
		n     int      // nodes that fit
	}{
		{"v4", [][2]any{{"10.244.0.0/20", 24}}, 16},
		{"v6", [][2]any{{"fd00:244::/60", 64}}, 16},
		{"dual", [][2]any{{"10.244.0.0/16", 24}, {"fd00:244::/60", 64}}, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var grids []record.Grid
			for _, g := range tc.grids {
				grids = append(grids, mustCluster(t, g[0].(string), g[1].(int)).Grids[0])
			}
			c, err := record.Join(grids...)
			if err != nil {
				t.Fatal(err)
			}
			raceDistinct(t, c, tc.n)
		})
	}
}

func raceDistinct(t *testing.T, c record.Cluster, n int) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	results := make([]Held, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		cli := srv.Client(t) // one client per daemon, as in a fleet
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := fmt.Sprintf("node-%02d", i)
			<-start
			results[i], errs[i] = acquirer(t, cli, c, node, 30*time.Second).Acquire(ctx, selfRecord(t, node))
		}()
	}
	close(start)
	wg.Wait()
	seen := map[netip.Prefix]bool{}
	cli := srv.Client(t)
	for i, h := range results {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		if len(h.CIDRs) != len(c.Grids) {
			t.Fatalf("node %d holds %v, want one CIDR per grid of %s", i, h.CIDRs, c)
		}
		for j, p := range h.CIDRs {
			if seen[p] || !c.Grids[j].Holds(p) {
				t.Fatalf("node %d: duplicate or off-grid CIDR %s", i, p)
			}
			seen[p] = true
		}
		resp, err := cli.Get(ctx, h.Key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("record %s: %v", h.Key, err)
		}
		l, err := record.DecodeSubnet(prefix, h.Key, resp.Kvs[0].Value, c)
		if err != nil || !slices.Equal(l.CIDRs, h.CIDRs) || l.Node != fmt.Sprintf("node-%02d", i) {
			t.Fatalf("record %s: %+v %v", h.Key, l, err)
		}
		for _, p := range h.CIDRs[1:] {
			g, err := cli.Get(ctx, record.GuardKey(prefix, p))
			if err != nil || len(g.Kvs) != 1 || clientv3.LeaseID(g.Kvs[0].Lease) != h.LeaseID {
				t.Fatalf("guard of %s not bound to lease %x: %v %v", p, int64(h.LeaseID), g, err)
			}
		}
	}
	_, err := acquirer(t, cli, c, "late", 30*time.Second).Acquire(ctx, selfRecord(t, "late"))
	if !errors.Is(err, ErrClusterFull) {
		t.Fatalf("node %d of a full grid: %v", n+1, err)
	}
	t.Logf("%d racing nodes got distinct CIDRs; the next: %v", n, err)
	resp, _ := cli.Get(ctx, record.SubnetsPrefix(prefix), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if resp.Count != int64(n) {
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
	want6 := netip.MustParsePrefix("fd00:244:0:7::/64")
	h1, err := a.Acquire(ctx, self, want6, netip.MustParsePrefix("10.244.7.0/24"))
	if err != nil || !slices.Equal(h1.CIDRs, []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24"), want6}) {
		t.Fatalf("preferred: %+v %v", h1, err)
	}
	b := acquirer(t, cli, c, "n1", 40*time.Second) // restart with a new TTL: new lease
	h2, err := b.Acquire(ctx, self, netip.Prefix{})
	if err != nil || h2.How != "adopted" || !slices.Equal(h2.CIDRs, h1.CIDRs) || h2.LeaseID == h1.LeaseID {
		t.Fatalf("adopt: %+v %v", h2, err)
	}
	g, _ := cli.Get(ctx, record.GuardKey(prefix, h1.CIDRs[1]))
	if len(g.Kvs) != 1 || clientv3.LeaseID(g.Kvs[0].Lease) != h2.LeaseID {
		t.Fatalf("guard did not move to the new lease: %v", g.Kvs)
	}
	// Another node may not take our IPv6 CIDR even if it asks for it.
	o := acquirer(t, cli, c, "n2", 30*time.Second)
	h3, err := o.Acquire(ctx, selfRecord(t, "n2"), h1.CIDRs[1])
	if err != nil || h3.CIDRs[1] == h1.CIDRs[1] {
		t.Fatalf("second node: %+v %v", h3, err)
	}
	// Record deleted by an operator (lease alive): retake both.
	if _, err := cli.Delete(ctx, h2.Key); err != nil {
		t.Fatal(err)
	}
	h4, err := b.Retake(ctx, self, h2.CIDRs)
	if err != nil || h4.How != "retaken" || !slices.Equal(h4.CIDRs, h2.CIDRs) {
		t.Fatalf("retake: %+v %v", h4, err)
	}
	// Retaking an IPv6 CIDR that another node holds is a TakenError.
	if _, err := cli.Delete(ctx, h4.Key); err != nil {
		t.Fatal(err)
	}
	var te *TakenError
	if _, err := b.Retake(ctx, self, []netip.Prefix{h4.CIDRs[0], h3.CIDRs[1]}); !errors.As(err, &te) || te.By != "n2" {
		t.Fatalf("retake of n2's IPv6 CIDR: %v", err)
	}
	// Byte compatibility: a single-family record has no podCIDRv6 field.
	v4only := record.Lease{Node: "n1", PublicKey: self.PublicKey, Endpoint: self.Endpoint}
	if want := `{"node":"n1","publicKey":"` + record.Lease.Subnet(v4only).PublicKey + `","endpoint":"10.99.0.1","port":51820,"keepalive":0}`; string(v4only.Encode()) != want {
		t.Fatalf("v4-only record changed: %s", v4only.Encode())
	}
}
