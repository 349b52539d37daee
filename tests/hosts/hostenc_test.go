package hosts

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

// hostTable is route.HostTable as `ip` prints it.
const hostTable = "22375"

// hostClassifier counts TCP/ICMP between a and b in clear as plaintext.
func hostClassifier(cl *harness.Cluster, a, b netip.Addr) *capture.Classifier {
	c := cl.Classifier()
	c.PlainHosts = []netip.Addr{a, b}
	return c
}

// etcdGet is what an operator's etcdctl does from a node: a read of the
// cluster config over the node's own path to etcd.
func etcdGet(n *harness.Node, endpoint string) error {
	out, err := n.ExecTimeout(10*time.Second, "etcdctl", "--endpoints", endpoint, "--command-timeout=5s", "get", harness.Prefix+"/config", "--print-value-only")
	if err != nil || !strings.Contains(out, "clusterCIDR") {
		return fmt.Errorf("etcdctl get from %s: %v: %s", n.Name, err, out)
	}
	return nil
}

// probeEtcd runs etcdGet from every node every 300 ms until stop is
// called, which returns the number of successful gets and the failures.
func probeEtcd(nodes []*harness.Node, endpoint string) (stop func() (int64, []error)) {
	var ok atomic.Int64
	var mu sync.Mutex
	var fails []error
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := etcdGet(n, endpoint); err != nil {
					mu.Lock()
					fails = append(fails, err)
					mu.Unlock()
				} else {
					ok.Add(1)
				}
				select {
				case <-done:
					return
				case <-time.After(300 * time.Millisecond):
				}
			}
		}()
	}
	return func() (int64, []error) {
		close(done)
		wg.Wait()
		return ok.Load(), fails
	}
}

// addHostEncNodes adds n nodes whose wgcnid runs with --host-encryption.
func addHostEncNodes(t *testing.T, c *harness.Cluster, n int) []*harness.Node {
	t.Helper()
	var out []*harness.Node
	for range n {
		node, err := c.AddNode("--host-encryption")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, node)
	}
	return out
}

// tunnels reports whether from routes traffic to addr into its WireGuard
// device.
func tunnels(from *harness.Node, addr netip.Addr) bool {
	r, err := from.Exec("ip", "route", "get", addr.String())
	return err == nil && strings.Contains(r, "dev "+from.Device)
}

// hostTraffic sends ICMP and a 4 MiB TCP transfer from a's underlay
// address to b's, capturing the underlay meanwhile.
func hostTraffic(t *testing.T, c *harness.Cluster, a, b *harness.Node) *capture.Report {
	t.Helper()
	cp, err := capture.Start(c.Underlay.Path(), "", hostClassifier(c, a.UnderlayIP, b.UnderlayIP), capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	harness.Connect(t, a.NS, b.UnderlayIP, fmt.Sprintf("ping %s -> %s underlay", a.Name, b.Name), 5)
	r, err := harness.TCPTransfer(a.NS, b.NS, b.UnderlayIP, 5301, 4<<20, 30*time.Second)
	if err != nil {
		cp.Stop()
		t.Fatalf("TCP %s -> %s underlay: %v", a.Name, b.Name, err)
	}
	rep, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s -> %s underlay: %d bytes verified in %v; capture: %s", a.Name, b.Name, r.Bytes, r.Duration.Round(time.Millisecond), rep)
	return rep
}

// TestHostEncryption: over an IPv4 and an IPv6 underlay, two nodes with
// --host-encryption send their underlay-to-underlay TCP and ICMP only
// inside WireGuard (the peer's underlay /32 or /128 is allowed and routed,
// the rule is of the underlay's family); etcd stays reachable from them
// throughout and they keep their leases; towards a node without the
// option the same traffic is plain (the control), and cleanup removes the
// rule and the table.
func TestHostEncryption(t *testing.T) {
	for _, u := range []struct {
		name string
		cfg  harness.Config
	}{
		{"IPv4 underlay", harness.Config{ClusterCIDR: clusterCIDR}},
		{"IPv6 underlay", harness.Config{UnderlayIPv6: true, ClusterCIDR: "fd00:246::/56", NodePrefixLenV6: 64}},
	} {
		t.Run(u.name, func(t *testing.T) {
			cfg := u.cfg
			cfg.LeaseTTL, cfg.ListenPort = leaseTTL, wgPort
			testHostEncryption(t, harness.Start(t, cfg, 0))
		})
	}
}

func testHostEncryption(t *testing.T, c *harness.Cluster) {
	hn := addHostEncNodes(t, c, 2)
	n1, n2 := hn[0], hn[1]
	n3, err := c.AddNode() // without the option
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*harness.Node{n1, n2, n3} {
		if _, err := n.WaitReady(30 * time.Second); err != nil {
			t.Fatalf("%v\n%s", err, c.DumpLogs(40))
		}
	}
	if n1.UnderlayIP.Is6() != c.Cfg.UnderlayIPv6 {
		t.Fatalf("underlay IPv6=%v, but n1 is on %s", c.Cfg.UnderlayIPv6, n1.UnderlayIP)
	}
	ipFamily := "-4"
	if c.Cfg.UnderlayIPv6 {
		ipFamily = "-6"
	}

	// Records: advertised by n1 and n2 only.
	cli := c.Etcd.MustClient(t)
	records := map[string]string{}
	resp, err := cli.Get(context.Background(), harness.Prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		for _, n := range []*harness.Node{n1, n2, n3} {
			if strings.Contains(string(kv.Value), `"node":"`+n.Name+`"`) {
				records[n.Name] = string(kv.Value)
			}
		}
	}
	for n, want := range map[*harness.Node]bool{n1: true, n2: true, n3: false} {
		if got := strings.Contains(records[n.Name], `"hostEncryption":true`); got != want {
			t.Fatalf("record of %s: hostEncryption %v, want %v: %s", n.Name, got, want, records[n.Name])
		}
	}

	// n1 and n2 tunnel to each other's underlay address, not to n3's.
	err = harness.WaitFor(20*time.Second, "n1<->n2 underlay routes through WireGuard", func() (bool, error) {
		return tunnels(n1, n2.UnderlayIP) && tunnels(n2, n1.UnderlayIP), nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, c.DumpLogs(40))
	}
	for _, pair := range [][2]*harness.Node{{n1, n3}, {n3, n1}} {
		if tunnels(pair[0], pair[1].UnderlayIP) {
			t.Fatalf("%s tunnels to %s, which does not use host encryption", pair[0].Name, pair[1].Name)
		}
	}
	allowed, err := n1.PeerAllowedIPs()
	if err != nil {
		t.Fatal(err)
	}
	n2host := netip.PrefixFrom(n2.UnderlayIP, n2.UnderlayIP.BitLen()).String()
	found := 0
	for _, ips := range allowed {
		for _, ip := range ips {
			if ip == n2host {
				found++
			}
		}
		if len(ips) > 2 {
			t.Fatalf("a peer has AllowedIPs %v: want its PodCIDR, plus its underlay address only with host encryption", ips)
		}
	}
	if found != 1 {
		t.Fatalf("n2's underlay %s in n1's AllowedIPs %d times, want once: %v", n2host, found, allowed)
	}
	// WireGuard's own packets carry the mark and take the underlay.
	mark := fmt.Sprintf("%#x", route.FirewallMark)
	if r, err := n1.Exec("ip", "route", "get", n2.UnderlayIP.String(), "mark", mark); err != nil || strings.Contains(r, "dev "+n1.Device) {
		t.Fatalf("marked packet to n2's underlay: %s %v (must not enter the tunnel)", r, err)
	}
	rules, _ := n1.Exec("ip", ipFamily, "rule", "show")
	if !strings.Contains(rules, "not from all fwmark "+mark+" lookup "+hostTable) {
		t.Fatalf("rule missing on n1:\n%s", rules)
	}
	if rules, _ := n3.Exec("ip", ipFamily, "rule", "show"); strings.Contains(rules, mark) {
		t.Fatalf("rule on n3 without the option:\n%s", rules)
	}

	leasesBefore := map[string]int64{}
	for _, n := range []*harness.Node{n1, n2} {
		l, err := c.LeaseOf(n.Name)
		if err != nil || l == nil {
			t.Fatalf("lease of %s: %v", n.Name, err)
		}
		leasesBefore[n.Name] = l.LeaseID
	}

	// Encrypted: n1 <-> n2, with etcd probed from both all along.
	stop := probeEtcd([]*harness.Node{n1, n2}, c.Etcd.Endpoint)
	rep := hostTraffic(t, c, n1, n2)
	rep2 := hostTraffic(t, c, n2, n1)
	gets, fails := stop()
	for _, r := range []*capture.Report{rep, rep2} {
		if r.PlainPod() != 0 {
			t.Errorf("plaintext host-to-host packets on the underlay with host encryption on:\n%s", r.Excerpt(10))
		}
		if r.WGTypes[capture.WGTransportData] < 100 {
			t.Errorf("only %d WireGuard data packets for 4 MiB: the traffic did not go through the tunnel?\n%s", r.WGTypes[capture.WGTransportData], r.Excerpt(10))
		}
	}
	if len(fails) != 0 || gets == 0 {
		t.Errorf("etcd from the nodes during the test: %d gets ok, %d failed: %v", gets, len(fails), fails)
	}
	t.Logf("FIGURE host encryption on (%s): n1->n2 %d wireguard data / %d plaintext, n2->n1 %d / %d; etcdctl get from n1,n2 during it: %d ok, %d failed",
		n1.UnderlayIP, rep.WGTypes[capture.WGTransportData], rep.PlainPod(), rep2.WGTypes[capture.WGTransportData], rep2.PlainPod(), gets, len(fails))
	for _, n := range []*harness.Node{n1, n2} {
		l, err := c.LeaseOf(n.Name)
		if err != nil || l == nil || l.LeaseID != leasesBefore[n.Name] || l.TTL <= 0 {
			t.Errorf("%s lost its lease during the test: before %x, now %+v %v", n.Name, leasesBefore[n.Name], l, err)
		}
	}

	// A pod on n1 reaching n2's underlay address goes through the tunnel
	// as well (its packets are masqueraded, then routed by the same rule).
	pod := n1.MustAddPod(t)
	cp, err := capture.Start(c.Underlay.Path(), "", hostClassifier(c, n1.UnderlayIP, n2.UnderlayIP), capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	harness.Connect(t, pod.NS, n2.UnderlayIP, "ping pod on n1 -> n2 underlay", 5)
	prep, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if prep.PlainPod() != 0 || prep.WGTypes[capture.WGTransportData] == 0 {
		t.Errorf("pod on n1 -> n2's underlay: %s\n%s", prep, prep.Excerpt(10))
	}

	// Control: the option off on one side, the same traffic is plain.
	ctl := hostTraffic(t, c, n1, n3)
	if ctl.PlainPod() == 0 {
		t.Errorf("control: no plaintext TCP/ICMP seen between n1 and n3 (option off on n3): the classifier would not notice plaintext\n%s", ctl.Excerpt(10))
	}
	t.Logf("FIGURE control (n3 without the option): n1->n3 %d plaintext host packets, %d wireguard data", ctl.PlainPod(), ctl.WGTypes[capture.WGTransportData])

	// Cleanup removes the rule and the table routes.
	n1.StopDaemon(syscall.SIGTERM)
	if out, err := n1.Cleanup(); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	rules, _ = n1.Exec("ip", ipFamily, "rule", "show")
	// A table with no route left does not exist any more.
	table, err := n1.Exec("ip", ipFamily, "route", "show", "table", hostTable)
	if err != nil && strings.Contains(table, "does not exist") {
		table = ""
	} else if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rules, fmt.Sprintf("%#x", route.FirewallMark)) || strings.TrimSpace(table) != "" {
		t.Fatalf("left after cleanup: rules\n%s\ntable %s:\n%s", rules, hostTable, table)
	}
}

// TestHostEncryptionFollowsEndpoint: a node with --host-encryption whose
// underlay address moves re-publishes it, its peer tunnels to the new
// address (and no longer to the old one), its own host routes take the new
// source, and host-to-host TCP and ICMP between the two nodes still cross
// the underlay only inside WireGuard — without restarting anything.
func TestHostEncryptionFollowsEndpoint(t *testing.T) {
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, ListenPort: wgPort,
		ResyncInterval: 5 * time.Second}, 0)
	hn := addHostEncNodes(t, c, 2)
	n1, n2 := hn[0], hn[1]
	err := harness.WaitFor(20*time.Second, "n1<->n2 underlay routes through WireGuard", func() (bool, error) {
		return tunnels(n1, n2.UnderlayIP) && tunnels(n2, n1.UnderlayIP), nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, c.DumpLogs(40))
	}
	daemon := n1.Daemon().PID()

	oldIP, newIP := moveUnderlay(t, c, n1, 111)
	start := time.Now()
	err = harness.WaitFor(30*time.Second, "n2 to tunnel to n1's new address and n1's host routes to use it as source", func() (bool, error) {
		if !tunnels(n2, newIP) || tunnels(n2, oldIP) {
			return false, nil
		}
		out, err := n1.Exec("ip", "route", "show", "table", hostTable)
		return err == nil && strings.Contains(out, n2.UnderlayIP.String()) && strings.Contains(out, "src "+newIP.String()), nil
	})
	if err != nil {
		out, _ := n1.Exec("ip", "route", "show", "table", hostTable)
		t.Fatalf("%v\nn1's host table:\n%s\n%s", err, out, c.DumpLogs(40))
	}
	followed := time.Since(start)
	if n1.Daemon().PID() != daemon {
		t.Fatal("n1's wgcnid restarted")
	}
	rep := hostTraffic(t, c, n2, n1)
	if rep.PlainPod() != 0 || rep.WireGuard() == 0 {
		t.Fatalf("n2 -> n1's new address: %d plaintext host packets, %d WireGuard:\n%s", rep.PlainPod(), rep.WireGuard(), rep.Excerpt(20))
	}
	rep = hostTraffic(t, c, n1, n2)
	if rep.PlainPod() != 0 || rep.WireGuard() == 0 {
		t.Fatalf("n1 (new address) -> n2: %d plaintext host packets, %d WireGuard:\n%s", rep.PlainPod(), rep.WireGuard(), rep.Excerpt(20))
	}
	fmt.Printf("RESULT %s: node with host encryption moved %s -> %s: peer tunnels to the new address and host routes use it as source after %v; host-to-host TCP+ICMP both ways: 0 plaintext, only WireGuard; no restart\n",
		t.Name(), oldIP, newIP, followed.Round(100*time.Millisecond))
}
