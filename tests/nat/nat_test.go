// Package nat tests NAT traversal end to end (docs/nat.md) in the
// namespace cluster (tests/harness): "home router" namespaces masquerade
// nodes on their LANs — one router with endpoint-independent mapping per
// LAN host, one symmetric (masquerade random) — while reachable nodes sit
// on the open underlay. Real etcd, real wgcnid, real WireGuard, pods wired
// by cnitool, packets captured on every segment.
package nat

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/ctl"
	"github.com/wgcni/wgcni/daemon/nat"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	metricsAddr = "127.0.0.1:9586" // inside each node's namespace
	clusterCIDR = "10.244.0.0/16"
	// Long enough that a killed relay's record outlives the test's wait:
	// the pair must move through the relay's own short-lived announcement.
	leaseTTL = 60 * time.Second
	relayTTL = 5 * time.Second // nat.Config.RelayTTL's default
)

// paths reads the node's NAT paths file: peer node -> path.
func paths(n *harness.Node) map[string]nat.Path { return nat.ReadPaths(n.RunDir) }

// waitPath waits until a's path to b has mode (and via, if not "").
func waitPath(t *testing.T, a, b *harness.Node, mode string, timeout time.Duration) nat.Path {
	t.Helper()
	var p nat.Path
	err := harness.WaitFor(timeout, fmt.Sprintf("%s's path to %s %s", a.Name, b.Name, mode), func() (bool, error) {
		p = paths(a)[b.Name]
		return p.Mode == mode, nil
	})
	if err != nil {
		t.Fatalf("%v; last: %+v", err, p)
	}
	return p
}

// observed reads what reachable nodes published about node from etcd.
func observed(t *testing.T, c *harness.Cluster, node string) map[string]netip.AddrPort {
	t.Helper()
	cli := c.Etcd.MustClient(t)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, nat.ObservedPrefix("/wgcni")+node+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get observations: %v", err)
	}
	m := map[string]netip.AddrPort{}
	for _, kv := range resp.Kvs {
		_, observer, ap, err := nat.ParseObserved("/wgcni", string(kv.Key), kv.Value)
		if err != nil {
			t.Fatalf("observation in etcd: %v", err)
		}
		m[observer] = ap
	}
	return m
}

// firstPacket pings to from `from` once a second-ish until a reply comes
// and returns how long that took.
func firstPacket(t *testing.T, from harness.NS, to netip.Addr, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		r, err := from.Ping(to, 1, 100*time.Millisecond)
		if err == nil && r.Received == 1 {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no packet %s -> %s within %v", from.Name, to, timeout)
	return 0
}

// checkVisible checks that wgcnictl status and the metrics on a say how
// it reaches b.
func checkVisible(t *testing.T, c *harness.Cluster, a, b *harness.Node, mode, via string) {
	t.Helper()
	out, err := a.ExecTimeout(20*time.Second, append([]string{c.Bin("wgcnictl"), "status", "-o", "json"}, a.DaemonArgs()...)...)
	if err != nil {
		t.Fatalf("wgcnictl status on %s: %v\n%s", a.Name, err, out)
	}
	var st ctl.StatusReport
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("wgcnictl status -o json: %v\n%s", err, out)
	}
	found := false
	for _, p := range st.Peers {
		if p.Node == b.Name {
			found = p.Path == mode && p.Via == via
			if !found {
				t.Errorf("wgcnictl status on %s: peer %s path %q via %q, want %q via %q", a.Name, b.Name, p.Path, p.Via, mode, via)
			}
		}
	}
	if !found {
		t.Errorf("wgcnictl status on %s shows no peer %s:\n%s", a.Name, b.Name, out)
	}
	body, err := scrape(a)
	if err != nil {
		t.Fatalf("scrape %s: %v", a.Name, err)
	}
	want := fmt.Sprintf(`wgcni_peer_path{mode=%q,peer_node=%q,via=%q`, mode, b.Name, via)
	if !strings.Contains(body, want) {
		t.Errorf("metrics of %s lack %s:\n%s", a.Name, want, grepLines(body, "wgcni_peer_path"))
	}
}

// scrape gets the node's /metrics over a connection made inside its
// namespace (the metrics listen on the namespace's loopback).
func scrape(n *harness.Node) (string, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", metricsAddr, 5*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req, err := http.NewRequest(http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	if err := req.Write(conn); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// logTime is when n's log first (or, with last, last) has a line with
// every one of subs.
func logTime(t *testing.T, n *harness.Node, last bool, subs ...string) time.Time {
	t.Helper()
	var at time.Time
	for _, l := range n.LogLines(subs[0]) {
		ok := true
		for _, s := range subs[1:] {
			ok = ok && strings.Contains(l, s)
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		if ts, err := time.Parse(time.RFC3339Nano, ts); ok && err == nil {
			at = ts
			if !last {
				break
			}
		}
	}
	if at.IsZero() {
		t.Fatalf("%s's log never has a line with %q", n.Name, subs)
	}
	return at
}

// pingDuring pings at 100/s for d from `from` to `to` in the background;
// the result comes on the channel when ping exits.
func pingDuring(from harness.NS, to netip.Addr, d time.Duration) <-chan harness.PingResult {
	ch := make(chan harness.PingResult, 1)
	go func() {
		r, err := from.Ping(to, int(d/(10*time.Millisecond)), 10*time.Millisecond)
		if err != nil {
			r.Output += err.Error()
		}
		ch <- r
	}()
	return ch
}

// captures runs one capture per segment: the underlay and every router
// (its LAN and its WAN port).
type captures struct {
	names []string
	caps  []*capture.Capture
}

func startCaptures(t *testing.T, c *harness.Cluster, routers []*harness.Router) *captures {
	t.Helper()
	var ports []uint16
	for i := 1; i <= 4; i++ {
		ports = append(ports, harness.PublicPort(i))
	}
	cls := c.Classifier(ports...)
	cs := &captures{}
	add := func(name, path string) {
		cp, err := capture.Start(path, "", cls, capture.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cs.names = append(cs.names, name)
		cs.caps = append(cs.caps, cp)
	}
	add("underlay", c.Underlay.Path())
	for _, r := range routers {
		add(r.Name+" ("+string(r.Mapping)+" NAT: LAN and WAN)", r.Path())
	}
	return cs
}

func (cs *captures) check(t *testing.T) {
	t.Helper()
	for i, cp := range cs.caps {
		rep, err := cp.Stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE capture %s: %s", cs.names[i], rep)
		if rep.PlainPod() != 0 {
			t.Errorf("plaintext pod packets on %s:\n%s", cs.names[i], rep.Excerpt(10))
		}
		if rep.WGTypes[capture.WGTransportData] == 0 {
			t.Errorf("no WireGuard data on %s: the traffic did not cross it?\n%s", cs.names[i], rep.Excerpt(10))
		}
	}
}

// TestNATTraversal builds two reachable nodes (r1, r2) on the underlay and
// NATed nodes: a1, a2 behind router A and c1 behind router C (both
// endpoint-independent), b1 behind router B (symmetric). It checks, in
// order: observed endpoints and roaming (a NATed node and a reachable one
// talk both ways), the same-NAT pair over its LAN, the relay for the pair
// with a symmetric NAT (the relay's device sees the pair only inside
// WireGuard; 4 MiB of TCP across it), hole punching for the
// endpoint-independent pair with a 100/s ping across the relay -> direct
// switch that must lose nothing, the fall back to the relay when the
// direct path dies, and the relay's loss.
func TestNATTraversal(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		harness.Missing(t, "nft (the home routers' NAT; make deps installs nftables)")
	}
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, Tag: "nt"}, 0)
	r1, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	rtA, err := c.AddRouter(harness.EndpointIndependent)
	if err != nil {
		t.Fatal(err)
	}
	rtC, err := c.AddRouter(harness.EndpointIndependent)
	if err != nil {
		t.Fatal(err)
	}
	rtB, err := c.AddRouter(harness.Symmetric)
	if err != nil {
		t.Fatal(err)
	}
	behind := func(r *harness.Router) *harness.Node {
		n, err := r.AddNode("--reachable=no", "--metrics-addr", metricsAddr)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	a1, a2 := behind(rtA), behind(rtA)
	c1Start := time.Now()
	c1 := behind(rtC)
	pod := map[*harness.Node]*harness.Pod{}
	for _, n := range []*harness.Node{r1, r2, a1, a2, c1} {
		pod[n] = n.MustAddPod(t)
	}
	caps := startCaptures(t, c, []*harness.Router{rtA, rtB, rtC})
	var res []string // the RESULT line's figures
	defer func() { harness.Result(t, "nat: %s (failed=%v)", strings.Join(res, "; "), t.Failed()) }()

	// 1. Observed endpoints and roaming: a1 keeps alive to r1, r1's
	// device roams to the NAT's mapping and publishes it.
	t.Run("observed endpoint and roaming", func(t *testing.T) {
		harness.Connect(t, pod[a1].NS, pod[r1].IP, "pod a1 -> pod r1", 3)
		harness.Connect(t, pod[r1].NS, pod[a1].IP, "pod r1 -> pod a1 (to the address r1 observed)", 3)
		want := netip.AddrPortFrom(rtA.WAN, harness.PublicPort(1))
		err := harness.WaitFor(10*time.Second, "observations of a1 by r1 and r2", func() (bool, error) {
			o := observed(t, c, a1.Name)
			return o[r1.Name] == want && o[r2.Name] == want, nil
		})
		if err != nil {
			t.Fatalf("%v: %v", err, observed(t, c, a1.Name))
		}
		dev, err := r1.WGDevice()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range dev.Peers {
			if p.Endpoint != nil && p.Endpoint.AddrPort().Addr().Unmap() == a1.UnderlayIP {
				t.Errorf("r1 sends to a1's unreachable LAN address %s", p.Endpoint)
			}
		}
		t.Logf("FIGURE a1 (LAN %s) observed by r1 and r2 at %s", a1.UnderlayIP, want)
	})

	// 2. Two nodes behind one NAT: same public address, direct over the LAN.
	t.Run("same NAT over the LAN", func(t *testing.T) {
		p := waitPath(t, a1, a2, nat.Direct, 15*time.Second)
		if p.Why != "same NAT" {
			t.Errorf("a1 -> a2: %+v, want direct because same NAT", p)
		}
		harness.Connect(t, pod[a1].NS, pod[a2].IP, "pod a1 -> pod a2", 3)
		harness.Connect(t, pod[a2].NS, pod[a1].IP, "pod a2 -> pod a1", 3)
	})

	// 3. Relay: b1 behind the symmetric NAT comes up; a1 <-> b1 go
	// through the relay both pick.
	var b1 *harness.Node
	t.Run("relayed behind a symmetric NAT", func(t *testing.T) {
		start := time.Now()
		b1 = behind(rtB)
		pod[b1] = b1.MustAddPod(t)
		podAt := time.Now()
		t0 := firstPacket(t, pod[a1].NS, pod[b1].IP, 30*time.Second)
		pa := waitPath(t, a1, b1, nat.Relayed, 15*time.Second)
		pb := waitPath(t, b1, a1, nat.Relayed, 15*time.Second)
		if pa.Via != pb.Via || pa.Via == "" {
			t.Fatalf("a1 and b1 chose different relays: %+v / %+v", pa, pb)
		}
		err := harness.WaitFor(15*time.Second, "b1 seen as symmetric", func() (bool, error) {
			return paths(a1)[b1.Name].Why == "symmetric NAT", nil
		})
		if err != nil {
			t.Errorf("%v: %+v; observations of b1: %v", err, paths(a1)[b1.Name], observed(t, c, b1.Name))
		}
		checkVisible(t, c, a1, b1, nat.Relayed, pa.Via)
		// The pair's own session rides the relay (WireGuard in
		// WireGuard): on the relay's device, where everything the relay
		// decrypts shows, the pair's pods appear only inside WireGuard.
		relay := map[string]*harness.Node{r1.Name: r1, r2.Name: r2}[pa.Via]
		cls := &capture.Classifier{PodNets: []netip.Prefix{netip.PrefixFrom(pod[a1].IP, 32), netip.PrefixFrom(pod[b1].IP, 32)},
			WGPorts: []uint16{uint16(c.Cfg.ListenPort)}}
		onRelay, err := capture.Start(relay.Path(), relay.Device, cls, capture.Options{})
		if err != nil {
			t.Fatal(err)
		}
		harness.Connect(t, pod[b1].NS, pod[a1].IP, "pod b1 -> pod a1 (relayed)", 3)
		harness.Connect(t, pod[a1].NS, pod[b1].IP, "pod a1 -> pod b1 (relayed)", 3)
		rep, err := onRelay.Stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("FIGURE relay %s's WireGuard device while a1 and b1 pods ping through it: %s", relay.Name, rep)
		res = append(res, fmt.Sprintf("relay's device: %d plaintext packets of the pair, %d WireGuard data", rep.PlainPod(), rep.WGTypes[capture.WGTransportData]))
		if rep.PlainPod() != 0 || rep.WGTypes[capture.WGTransportData] == 0 {
			t.Errorf("the relay sees the pair's pod packets in plaintext, or no WireGuard of theirs at all:\n%s", rep.Excerpt(10))
		}
		// Bulk TCP: the pair's own WireGuard header and padding must fit
		// in the relay's tunnel (the relayed routes' MTU, nat.relayMTU);
		// at the device's MTU less the header only, 100 kB got through
		// and 1 MiB stalled.
		harness.Transfer(t, pod[a1].NS, pod[b1].NS, pod[b1].IP, 4<<20, "TCP pod a1 -> pod b1 (relayed)")

		// Two nodes behind the symmetric NAT: the same public address
		// (other ports), so direct over their LAN.
		b2 := behind(rtB)
		pod[b2] = b2.MustAddPod(t)
		if p := waitPath(t, b2, b1, nat.Direct, 15*time.Second); p.Why != "same NAT" {
			t.Errorf("b2 -> b1: %+v, want direct because same NAT", p)
		}
		harness.Connect(t, pod[b2].NS, pod[b1].IP, "pod b2 -> pod b1 (same symmetric NAT)", 3)
		harness.Connect(t, pod[b1].NS, pod[b2].IP, "pod b1 -> pod b2 (same symmetric NAT)", 3)
		t.Logf("FIGURE relayed a1 <-> b1 via %s (symmetric NAT): first packet %v after b1's pod was created, %v after b1's daemon started",
			pa.Via, t0.Round(time.Millisecond), time.Since(start).Round(time.Millisecond)-time.Since(podAt.Add(t0)).Round(time.Millisecond))
	})

	// 4a. a1 and c1 punched their direct path when c1 came up.
	t.Run("punched when the pair came up", func(t *testing.T) {
		waitPath(t, a1, c1, nat.Punched, 30*time.Second)
		waitPath(t, c1, a1, nat.Punched, 10*time.Second)
		at := logTime(t, c1, false, "peer_node="+a1.Name+" mode=punched")
		t.Logf("FIGURE a1 <-> c1 punched: c1 aimed its session with a1 at a1's public endpoint %v after c1's daemon was started", at.Sub(c1Start).Round(time.Millisecond))
		harness.Connect(t, pod[a1].NS, pod[c1].IP, "pod a1 -> pod c1 (punched)", 3)
		checkVisible(t, c, a1, c1, nat.Punched, "")
	})

	// 4. Hole punching: a1 <-> c1 first relayed (router C cut off from
	// router A), then the block is lifted: each end hears the other's
	// punches and aims the pair's session at the direct path, while a
	// 100/s ping runs across the switch.
	t.Run("punched with a ping across the switch", func(t *testing.T) {
		if err := rtC.Block(rtA.WAN); err != nil {
			t.Fatal(err)
		}
		// The punched path may already be up: it dies and falls back.
		waitPath(t, a1, c1, nat.Relayed, 30*time.Second)
		waitPath(t, c1, a1, nat.Relayed, 30*time.Second)
		harness.Connect(t, pod[a1].NS, pod[c1].IP, "pod a1 -> pod c1 (relayed)", 3)
		ping := pingDuring(pod[a1].NS, pod[c1].IP, 15*time.Second)
		time.Sleep(time.Second)
		t0 := time.Now()
		if err := rtC.Unblock(); err != nil {
			t.Fatal(err)
		}
		waitPath(t, a1, c1, nat.Punched, 12*time.Second)
		waitPath(t, c1, a1, nat.Punched, 5*time.Second)
		direct := time.Since(t0)
		r := <-ping
		t.Logf("FIGURE punched a1 <-> c1: direct %v after the NATs let it through; 100/s ping across relay -> direct: %d sent, %d lost",
			direct.Round(time.Millisecond), r.Sent, r.Loss())
		res = append(res, fmt.Sprintf("relay -> direct: %d of %d pings lost, direct after %v", r.Loss(), r.Sent, direct.Round(time.Millisecond)))
		// The pair's session is the same on the relay and on the direct
		// path (its entry holds its CIDRs on both): the switch is an
		// endpoint change, and a packet still on the relay is accepted.
		if r.Sent == 0 || r.Loss() != 0 {
			t.Errorf("ping across the relay -> direct switch lost %d of %d:\n%s", r.Loss(), r.Sent, r.Output)
		}
		harness.Connect(t, pod[c1].NS, pod[a1].IP, "pod c1 -> pod a1 (punched)", 3)
		for _, n := range []*harness.Node{a1, c1} {
			dev, err := n.WGDevice()
			if err != nil {
				t.Fatal(err)
			}
			other := map[*harness.Node]*harness.Router{a1: rtC, c1: rtA}[n]
			found := false
			for _, p := range dev.Peers {
				if p.Endpoint != nil && p.Endpoint.AddrPort().Addr().Unmap() == other.WAN && len(p.AllowedIPs) > 0 {
					found = true
				}
			}
			if !found {
				t.Errorf("%s has no peer at %s carrying CIDRs (the punched path)", n.Name, other.WAN)
			}
		}

		// The direct path dies: back to the relay.
		ping = pingDuring(pod[a1].NS, pod[c1].IP, 20*time.Second)
		time.Sleep(time.Second)
		t1 := time.Now()
		if err := rtC.Block(rtA.WAN); err != nil {
			t.Fatal(err)
		}
		waitPath(t, a1, c1, nat.Relayed, 20*time.Second)
		waitPath(t, c1, a1, nat.Relayed, 20*time.Second)
		back := time.Since(t1)
		r = <-ping
		deadA := logTime(t, a1, true, "punched path died", "peer_node="+c1.Name).Sub(t1)
		deadC := logTime(t, c1, true, "punched path died", "peer_node="+a1.Name).Sub(t1)
		t.Logf("FIGURE punched path cut: declared dead by a1 after %v, by c1 after %v; both seen back on the relay after %v; ping (100/s, slowed by ping itself while replies are missing): %d sent, %d lost",
			deadA.Round(time.Millisecond), deadC.Round(time.Millisecond), back.Round(time.Millisecond), r.Sent, r.Loss())
		res = append(res, fmt.Sprintf("direct path cut: back on the relay after %v", back.Round(time.Millisecond)))
		if r.Received == 0 || r.Loss() > r.Sent/2 {
			t.Errorf("ping did not recover on the relay: %d of %d lost", r.Loss(), r.Sent)
		}
		harness.Connect(t, pod[c1].NS, pod[a1].IP, "pod c1 -> pod a1 (relayed again)", 3)
		if err := rtC.Unblock(); err != nil {
			t.Fatal(err)
		}
	})

	// 5. --reachable=auto behind a NAT (with keepalive, to be seen at
	// all): reachable nodes see its traffic come from router C, it turns
	// itself unreachable and punches to a1 like c1.
	t.Run("auto reachability", func(t *testing.T) {
		start := time.Now()
		c2, err := rtC.AddNode("--reachable=auto", "--keepalive=5s")
		if err != nil {
			t.Fatal(err)
		}
		err = harness.WaitFor(30*time.Second, c2.Name+"'s record unreachable", func() (bool, error) {
			l, err := c.LeaseOf(c2.Name)
			return err == nil && l != nil && l.Unreachable, err
		})
		if err != nil {
			t.Fatal(err)
		}
		decided := time.Since(start)
		pod[c2] = c2.MustAddPod(t)
		if p := waitPath(t, c2, c1, nat.Direct, 15*time.Second); p.Why != "same NAT" {
			t.Errorf("c2 -> c1: %+v, want direct because same NAT", p)
		}
		waitPath(t, c2, a1, nat.Punched, 30*time.Second)
		harness.Connect(t, pod[c2].NS, pod[a1].IP, "pod c2 -> pod a1 (punched)", 3)
		harness.Connect(t, pod[r1].NS, pod[c2].IP, "pod r1 -> pod c2", 3)
		for _, n := range []*harness.Node{a1, a2, b1, c1} {
			if l := n.LogLines("via=" + c2.Name + " "); len(l) > 0 {
				t.Errorf("%s relayed through %s, whose reachability is only auto: %s", n.Name, c2.Name, l[0])
			}
		}
		t.Logf("FIGURE --reachable=auto behind router C: record unreachable %v after the daemon started", decided.Round(time.Millisecond))
	})

	// Captures end before a node is killed (its namespace goes).
	t.Run("only WireGuard on every segment", func(t *testing.T) { caps.check(t) })

	// 5. The relay of a1 <-> b1 dies: both move to the other relay.
	t.Run("relay killed", func(t *testing.T) {
		if b1 == nil {
			t.Skip("no relayed pair")
		}
		via := paths(a1)[b1.Name].Via
		relay, other := r1, r2
		if via == r2.Name {
			relay, other = r2, r1
		}
		ping := pingDuring(pod[a1].NS, pod[b1].IP, 20*time.Second)
		time.Sleep(time.Second)
		t0 := time.Now()
		relay.Shutdown()
		var moved time.Duration
		err := harness.WaitFor(20*time.Second, "a1 and b1 relayed via "+other.Name, func() (bool, error) {
			return paths(a1)[b1.Name].Via == other.Name && paths(b1)[a1.Name].Via == other.Name, nil
		})
		if err != nil {
			t.Fatalf("%v: %+v / %+v", err, paths(a1)[b1.Name], paths(b1)[a1.Name])
		}
		moved = time.Since(t0)
		r := <-ping
		t.Logf("FIGURE relay %s killed: a1 <-> b1 via %s after %v (record lease TTL %v, relay announcement TTL %v); ping (100/s, slowed by ping itself while replies are missing): %d sent, %d lost",
			relay.Name, other.Name, moved.Round(time.Millisecond), leaseTTL, relayTTL, r.Sent, r.Loss())
		res = append(res, fmt.Sprintf("relay killed: next relay after %v", moved.Round(time.Millisecond)))
		if r.Received == 0 {
			t.Errorf("no reply at all after the relay moved: %s", r.Output)
		}
		harness.Connect(t, pod[b1].NS, pod[a1].IP, "pod b1 -> pod a1 (new relay)", 3)
		harness.Connect(t, pod[a1].NS, pod[b1].IP, "pod a1 -> pod b1 (new relay)", 3)
	})
}
