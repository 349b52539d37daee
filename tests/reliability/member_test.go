package reliability

import (
	"context"
	"encoding/json"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/tests/harness"
)

// recordLeases returns node name -> etcd lease ID of its subnet record.
func recordLeases(t *testing.T, cli *clientv3.Client) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, harness.Prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, kv := range resp.Kvs {
		var r struct {
			Node string `json:"node"`
		}
		if json.Unmarshal(kv.Value, &r) == nil {
			out[r.Node] = kv.Lease
		}
	}
	return out
}

var ssPeer = regexp.MustCompile(`\s(\S+):(\d+)\s*$`)

// etcdPorts counts the node's established TCP connections per remote port.
func etcdPorts(t *testing.T, n *harness.Node) map[int]int {
	t.Helper()
	out, err := n.Exec("ss", "-tnH", "state", "established")
	if err != nil {
		t.Fatal(err)
	}
	ports := map[int]int{}
	for _, line := range strings.Split(out, "\n") {
		if m := ssPeer.FindStringSubmatch(line); m != nil {
			p, _ := strconv.Atoi(m[2])
			ports[p]++
		}
	}
	return ports
}

// TestEtcdMemberLoss runs the daemons against a 3-member etcd cluster and
// kills (SIGKILL) the member n1's daemon is connected to, while a pod on
// n1 pings a pod on n2 at 100/s. Figures: packets lost (0), leases kept
// (same lease IDs, no keepalive loss, no retake), and a node that joins
// after the kill becomes a peer (the watch failed over).
func TestEtcdMemberLoss(t *testing.T) {
	ttl := 6 * time.Second
	c := start(t, harness.Config{LeaseTTL: ttl}, 0)
	ec, err := c.StartEtcdCluster(3, 23790)
	if err != nil {
		t.Fatal(err)
	}
	c.Cfg.DaemonArgs = append(c.Cfg.DaemonArgs, "--etcd-endpoints", ec.EndpointList())
	if _, err := c.AddNodes(2); err != nil {
		t.Fatal(err)
	}
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	harness.WaitMesh(t, c.Nodes(), 20*time.Second)
	cli, err := ec.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	leasesBefore := recordLeases(t, cli)
	p1 := n1.MustAddPod(t)
	p2 := n2.MustAddPod(t)
	connect(t, p1.NS, p2.IP)

	// Which member does n1's daemon talk to?
	conns := etcdPorts(t, n1)
	victim := ec.Members[0]
	for _, m := range ec.Members {
		if conns[m.ClientPort] > conns[victim.ClientPort] {
			victim = m
		}
	}
	var connDesc []string
	for _, m := range ec.Members {
		connDesc = append(connDesc, m.Name+":"+strconv.Itoa(conns[m.ClientPort]))
	}
	sort.Strings(connDesc)
	if conns[victim.ClientPort] == 0 {
		t.Fatalf("n1 has no connection to any etcd member: %v", conns)
	}

	// The client spreads its connections over the members, and its
	// watch and keepalive streams ride one of them: kill each member in
	// turn (quorum stays), so whichever carries them is killed once.
	down := 2 * ttl / 3
	stream := startPing(t, p1.NS, p2.IP, 2800, 10*time.Millisecond)
	time.Sleep(2 * time.Second)
	order := []*harness.EtcdMember{victim}
	for _, m := range ec.Members {
		if m != victim {
			order = append(order, m)
		}
	}
	for _, m := range order {
		m.Kill()
		t.Logf("killed etcd member %s (%s); n1's connections per member before the first kill: %v", m.Name, m.Endpoint, connDesc)
		// Down for two keepalive periods (TTL/3 each): a keepalive stream
		// that did not fail over would lose the lease.
		time.Sleep(down)
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
	}
	// A node joining now must be seen through the watch.
	n3, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	harness.WaitMesh(t, c.Nodes(), 30*time.Second)
	after := etcdPorts(t, n1)
	sent, recv := stream.Wait(t)
	lost := sent - recv
	leasesAfter := recordLeases(t, cli)
	kept := 0
	for _, n := range []*harness.Node{n1, n2} {
		if leasesAfter[n.Name] == leasesBefore[n.Name] && leasesAfter[n.Name] != 0 {
			kept++
		} else {
			t.Errorf("%s: lease changed %x -> %x", n.Name, leasesBefore[n.Name], leasesAfter[n.Name])
		}
		for _, bad := range []string{"lease keepalive ended", "took it back", "peer removed"} {
			if ls := n.LogLines(bad); len(ls) > 0 {
				t.Errorf("%s: %q after member loss: %v", n.Name, bad, ls)
			}
		}
	}
	var afterDesc []string
	for _, m := range ec.Members {
		afterDesc = append(afterDesc, m.Name+":"+strconv.Itoa(after[m.ClientPort]))
	}
	t.Logf("after: n1's connections per member %v; %s joined and is a peer of all; ping %d sent, %d received, %d lost; leases kept %d/2", afterDesc, n3.Name, sent, recv, lost, kept)
	if lost != 0 {
		t.Errorf("%d packets lost when an etcd member died", lost)
	}
	harness.Result(t, "3-member etcd, each member SIGKILLed in turn for %v (first: the one n1 uses): %d/%d pings lost, %d/2 leases kept (same IDs, no keepalive loss), node joining afterwards peered", down, lost, sent, kept)
}
