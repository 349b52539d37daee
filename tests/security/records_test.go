package security

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/tests/harness"
)

// TestRecordsCannotBeHijacked runs against a live cluster: a rogue node
// using wgcnid's own lease code cannot take or overwrite another node's
// record; records written raw into etcd that lie outside the cluster CIDR,
// overlap node CIDRs, reuse another node's key, or rewrite a live record
// under another node's name are ignored by every daemon with an error
// naming the key; the peers and the traffic stay as they were.
func TestRecordsCannotBeHijacked(t *testing.T) {
	c := harness.Start(t, cfg(), 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	p1, p2 := n1.MustAddPod(t), n2.MustAddPod(t)
	harness.Connect(t, p1.NS, p2.IP, "p1 -> p2", 3)
	cli := c.Etcd.MustClient(t)
	cluster, err := record.NewCluster(clusterCIDR, 24)
	if err != nil {
		t.Fatal(err)
	}
	victim := netip.MustParsePrefix(n2.MustPodCIDR(t))
	victimKey := record.SubnetKey("/wgcni", victim)
	before, err := cli.Get(ctxT(t), victimKey)
	if err != nil || len(before.Kvs) != 1 {
		t.Fatalf("victim record: %v", err)
	}
	n2pub := n2PublicKey(t, c, n2)
	peersOf := func(n *harness.Node) map[string]string {
		dev, err := n.WGDevice()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, p := range dev.Peers {
			for _, a := range p.AllowedIPs {
				m[a.String()] = p.PublicKey.String()
			}
		}
		return m
	}
	wantPeers := map[string]string{victim.String(): n2pub}
	samePeers := func(what string) {
		t.Helper()
		got := peersOf(n1)
		if fmt.Sprint(got) != fmt.Sprint(wantPeers) {
			t.Fatalf("%s: n1's peers changed: %v, want %v", what, got, wantPeers)
		}
	}

	t.Run("rogue node through the lease transactions", func(t *testing.T) {
		pk, _ := wgtypes.GeneratePrivateKey()
		self := record.Lease{Node: "mallory", PublicKey: pk.PublicKey(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("10.99.0.66"), 51820)}
		acq := &lease.Acquirer{Client: cli, Prefix: "/wgcni", Cluster: cluster, Node: "mallory", TTL: 30 * time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		_, err := acq.Retake(ctxT(t), self, []netip.Prefix{victim})
		var te *lease.TakenError
		if !errors.As(err, &te) || te.By != n2.Name {
			t.Fatalf("Retake of n2's CIDR: %v, want TakenError by n2", err)
		}
		t.Logf("retake refused: %v", err)
		g, err := cli.Grant(ctxT(t), 30)
		if err != nil {
			t.Fatal(err)
		}
		err = acq.Publish(ctxT(t), lease.Held{CIDRs: []netip.Prefix{victim}, Key: victimKey, LeaseID: g.ID}, self)
		if err == nil || !strings.Contains(err.Error(), "no longer bound to our lease") {
			t.Fatalf("Publish over n2's record: %v", err)
		}
		t.Logf("overwrite refused: %v", err)
		h, err := acq.Acquire(ctxT(t), self, victim)
		if err != nil {
			t.Fatal(err)
		}
		if h.Primary() == victim {
			t.Fatalf("mallory was given n2's CIDR %s", victim)
		}
		t.Logf("mallory asked for %s and got %s", victim, h.Primary())
		after, _ := cli.Get(ctxT(t), victimKey)
		if string(after.Kvs[0].Value) != string(before.Kvs[0].Value) || after.Kvs[0].Lease != before.Kvs[0].Lease {
			t.Fatalf("n2's record changed: %s", after.Kvs[0].Value)
		}
		// mallory is now a legit node (own CIDR): n1 gets it as a peer.
		if _, err := cli.Revoke(ctxT(t), h.LeaseID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("bad records written raw are ignored with an error naming them", func(t *testing.T) {
		if err := n1.WaitPeerCIDRs([]string{victim.String()}, 15*time.Second); err != nil {
			t.Fatal(err)
		}
		pk, _ := wgtypes.GeneratePrivateKey()
		good := func(node, pub, ep string) string {
			return fmt.Sprintf(`{"node":%q,"publicKey":%q,"endpoint":%q,"port":51820,"keepalive":0}`, node, pub, ep)
		}
		free := freeCIDR(t, c).Addr().String()
		cases := []struct{ name, key, val, why string }{
			{"outside the cluster CIDR", "/wgcni/subnets/10.250.0.0-24", good("eve", pk.PublicKey().String(), "10.99.0.66"), "outside cluster CIDR"},
			{"overlaps n2's CIDR (/23)", "/wgcni/subnets/" + netip.PrefixFrom(victim.Addr(), 23).Masked().Addr().String() + "-23", good("eve", pk.PublicKey().String(), "10.99.0.66"), "not the cluster's node prefix length"},
			{"covers the whole cluster", "/wgcni/subnets/10.244.0.0-20", good("eve", pk.PublicKey().String(), "10.99.0.66"), "not the cluster's node prefix length"},
			{"not on the node grid", "/wgcni/subnets/" + strings.TrimSuffix(free, ".0") + ".128-24", good("eve", pk.PublicKey().String(), "10.99.0.66"), "host bits"},
			{"reuses n2's public key", "/wgcni/subnets/" + free + "-24", good("eve", n2pub, "10.99.0.66"), "is already used by the record for " + victim.String()},
			{"endpoint inside the cluster", "/wgcni/subnets/" + free + "-24", good("eve", pk.PublicKey().String(), "10.244.0.9"), "lies inside cluster CIDR"},
		}
		for _, tc := range cases {
			if _, err := cli.Put(ctxT(t), tc.key, tc.val); err != nil {
				t.Fatal(err)
			}
			line := n1.WaitLog(t, 15*time.Second, "skipping bad node record\" node=n1 part=mesh key="+tc.key, tc.why)
			t.Logf("%s: %s", tc.name, firstLine(line[strings.LastIndex(line, "key="+tc.key)-120:], tc.why))
			samePeers(tc.name)
			if _, err := cli.Delete(ctxT(t), tc.key); err != nil {
				t.Fatal(err)
			}
		}
		harness.Connect(t, p1.NS, p2.IP, "p1 -> p2 after the bad records", 3)
	})

	t.Run("live record rewritten in place under another name", func(t *testing.T) {
		// What a principal with raw write access could try: put its own
		// key and endpoint at n2's key, bypassing the transactions.
		pk, _ := wgtypes.GeneratePrivateKey()
		val := fmt.Sprintf(`{"node":"mallory","publicKey":%q,"endpoint":"10.99.0.66","port":51820,"keepalive":0}`, pk.PublicKey())
		if _, err := cli.Put(ctxT(t), victimKey, val, clientv3.WithIgnoreLease()); err != nil {
			t.Fatal(err)
		}
		n1.WaitLog(t, 15*time.Second, "key="+victimKey, `overwritten in place with node \"mallory\"`)
		samePeers("in-place overwrite")
		harness.Connect(t, p1.NS, p2.IP, "p1 -> p2 while the record is hijacked", 3)
		// n2 notices too (its record no longer carries its name).
		n2.WaitLog(t, 15*time.Second, `claims this node's PodCIDR`)
		// Restore n2's record so the cluster's teardown is clean.
		if _, err := cli.Put(ctxT(t), victimKey, string(before.Kvs[0].Value), clientv3.WithIgnoreLease()); err != nil {
			t.Fatal(err)
		}
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := etcdCtx()
	t.Cleanup(cancel)
	return ctx
}
