package reliability

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/tests/harness"
)

// TestBadRecordsLive writes malformed, wrong-typed, conflicting, misplaced
// and oversized records into etcd under a live 2-node cluster, and a
// wrong-typed config record. Figures: bad records skipped with an error
// naming the key (all of them), crashes (0), wrong peers or routes (0), pod traffic
// still flowing; a daemon starting against the bad config exits with an
// error naming the config key.
func TestBadRecordsLive(t *testing.T) {
	c := start(t, harness.Config{}, 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	harness.WaitMesh(t, c.Nodes(), 20*time.Second)
	p1 := n1.MustAddPod(t)
	p2 := n2.MustAddPod(t)
	connect(t, p1.NS, p2.IP)
	before := map[string]map[string]peerState{n1.Name: peers(t, n1), n2.Name: peers(t, n2)}
	l2, err := c.LeaseOf(n2.Name)
	if err != nil || l2 == nil {
		t.Fatal(err)
	}
	ep := c.Underlay.Gateway.Next().Next().Next().String()
	_, goodVal := fakeRecord(t, "ghost", "10.244.240.0/24", c.Underlay.Gateway.Next().Next().Next())
	pfx := harness.Prefix + "/subnets/"
	// The bad records go to free PodCIDRs: the nodes got theirs at random,
	// and overwriting one would test something else (a node's own record
	// turned bad, after which its key is free for the "thief" below).
	own1, own2 := n1.MustPodCIDR(t), n2.MustPodCIDR(t)
	var free []string
	for i := 255; len(free) < 7; i-- {
		if cidr := fmt.Sprintf("10.244.%d.0/24", i); cidr != own1 && cidr != own2 {
			free = append(free, strings.TrimSuffix(cidr, "/24")+"-24")
		}
	}
	bad := []struct{ what, key, value string }{
		{"malformed JSON", pfx + free[0], `{"node":"x","publicKey":`},
		{"wrong-typed field", pfx + free[1], strings.Replace(goodVal, `"port":51820`, `"port":"51820"`, 1)},
		{"another node's public key", pfx + free[2], fmt.Sprintf(`{"node":"thief","publicKey":%q,"endpoint":%q,"port":51820,"keepalive":0}`, l2.PublicKey, ep)},
		{"CIDR outside the cluster", pfx + "10.245.0.0-24", goodVal},
		{"wrong prefix length", pfx + "10.244.254.0-23", goodVal},
		{"not a CIDR", pfx + "garbage", goodVal},
		{"endpoint inside the cluster CIDR", pfx + free[3], strings.Replace(goodVal, `"endpoint":"`+ep+`"`, `"endpoint":"10.244.1.1"`, 1)},
		{"oversized value (1 MiB)", pfx + free[4], `{"node":"` + strings.Repeat("a", 1<<20) + `"}`},
		{"empty value", pfx + free[5], ``},
		{"JSON null", pfx + free[6], `null`},
	}
	cli := c.Etcd.MustClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream := startPing(t, p1.NS, p2.IP, 800, 10*time.Millisecond)
	for _, b := range bad {
		if _, err := cli.Put(ctx, b.key, b.value); err != nil {
			t.Fatalf("put %s: %v", b.what, err)
		}
	}
	// Wrong-typed config record: running daemons never re-read it; a
	// starting daemon must refuse with the key in the message.
	cfgKey := record.ConfigKey(harness.Prefix)
	good, err := cli.Get(ctx, cfgKey)
	if err != nil || len(good.Kvs) != 1 {
		t.Fatalf("config record: %v", err)
	}
	if _, err := cli.Put(ctx, cfgKey, `{"clusterCIDR":16,"nodePrefixLen":"24"}`); err != nil {
		t.Fatal(err)
	}
	refusedNode(t, c, "bad config record", cfgKey, 20*time.Second)
	if _, err := cli.Put(ctx, cfgKey, string(good.Kvs[0].Value)); err != nil {
		t.Fatal(err)
	}

	// Every bad record is named in both running daemons' logs.
	named := 0
	for _, n := range []*harness.Node{n1, n2} {
		for _, b := range bad {
			err := harness.WaitFor(10*time.Second, b.what+" skipped on "+n.Name, func() (bool, error) {
				for _, l := range n.LogLines("skipping bad node record") {
					if strings.Contains(l, "key="+b.key) || strings.Contains(l, `key="`+b.key) {
						return true, nil
					}
				}
				return false, nil
			})
			if err != nil {
				t.Errorf("%s (%s): %v", b.what, b.key, err)
			} else {
				named++
			}
		}
	}
	sent, recv := stream.Wait(t)
	crashes, wrong := 0, 0
	for _, n := range []*harness.Node{n1, n2} {
		if !n.Daemon().Running() {
			crashes++
			t.Errorf("%s: wgcnid died: %v", n.Name, n.Daemon().Err())
		}
		if now := peers(t, n); !peersEqual(before[n.Name], now) {
			wrong++
			t.Errorf("%s: peers changed: %v -> %v", n.Name, before[n.Name], now)
		}
		// No route into the tunnel for any bad record's CIDR either.
		for _, key := range free {
			gw := netip.MustParsePrefix(strings.Replace(key, "-", "/", 1)).Addr().Next()
			rt, _ := n.RouteTo(net.IP(gw.AsSlice()))
			if strings.Contains(rt, n.Device) {
				wrong++
				t.Errorf("%s routes %s into WireGuard: %s", n.Name, gw, rt)
			}
		}
		if ls := n.LogLines("level=ERROR"); len(ls) > 0 {
			t.Logf("%s error lines: %v", n.Name, ls)
		}
	}
	for _, l := range n1.LogLines("skipping bad node record") {
		if len(l) > 400 {
			l = l[:400] + "..."
		}
		t.Logf("n1: %s", l)
	}
	t.Logf("%d bad records x 2 daemons: %d skip lines naming the key; %d crashes; %d wrong peers; ping %d/%d lost", len(bad), named, crashes, wrong, sent-recv, sent)
	if sent != recv {
		t.Errorf("%d pings lost", sent-recv)
	}
	harness.Result(t, "%d kinds of bad record + wrong-typed config in a live cluster: %d/%d skipped with the key named, %d crashes, %d wrong peers/routes, %d/%d pings lost; new daemon refuses bad config naming %s",
		len(bad), named, 2*len(bad), crashes, wrong, sent-recv, sent, cfgKey)
}
