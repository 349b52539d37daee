package security

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

// addDefaultRoute gives a node what a real node has: a default route into
// the underlay. Without strict mode, pod traffic with no peer would follow
// it in plain text (the underlay namespace does not forward, so it goes no
// further than our capture).
func addDefaultRoute(t *testing.T, c *harness.Cluster, n *harness.Node) {
	t.Helper()
	err := n.Do(func() error {
		return netlink.RouteReplace(&netlink.Route{Gw: net.IP(c.Underlay.Gateway.AsSlice())})
	})
	if err != nil {
		t.Fatalf("default route on %s: %v", n.Name, err)
	}
}

func startCapture(t *testing.T, c *harness.Cluster) *capture.Capture {
	t.Helper()
	cp, err := capture.Start(c.Underlay.Path(), "", c.Classifier(), capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })
	return cp
}

func requireNoPlain(t *testing.T, what string, cp *capture.Capture) *capture.Report {
	t.Helper()
	rep, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: underlay capture: %s", what, rep)
	fmt.Printf("STRICT %s: %d frames on the underlay, %d WireGuard, %d plaintext pod packets\n", what, rep.Total, rep.WireGuard(), rep.PlainPod())
	if rep.PlainPod() != 0 {
		t.Fatalf("%s: %d plaintext pod packets on the underlay:\n%s", what, rep.PlainPod(), rep.Excerpt(20))
	}
	if rep.Drops != 0 {
		t.Fatalf("%s: capture dropped %d frames", what, rep.Drops)
	}
	return rep
}

// pingFor pings dst from ns at 50/s for d in the background.
func pingFor(ns harness.NS, dst netip.Addr, d time.Duration) func() harness.PingResult {
	var wg sync.WaitGroup
	var res harness.PingResult
	wg.Add(1)
	go func() {
		defer wg.Done()
		res, _ = ns.Ping(dst, int(d/(20*time.Millisecond)), 20*time.Millisecond)
	}()
	return func() harness.PingResult { wg.Wait(); return res }
}

// TestStrictMode proves that pod traffic to a PodCIDR is never sent in
// clear, at every moment: with no record for the CIDR, with a record whose
// peer has a wrong key, with a newly announced node whose key/endpoint are
// bogus, during start-up before the first sync (etcd down), and across
// daemon restarts; and that the operator is told why.
func TestStrictMode(t *testing.T) {
	c := harness.Start(t, cfg(), 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	p1, p2 := n1.MustAddPod(t), n2.MustAddPod(t)
	addDefaultRoute(t, c, n1)
	addDefaultRoute(t, c, n2)
	harness.Connect(t, p1.NS, p2.IP, "p1 -> p2", 3)
	cli := c.Etcd.MustClient(t)

	// A CIDR of the cluster no node holds.
	free := freeCIDR(t, c).Addr().Next().Next().Next().Next().Next() // .5

	t.Run("no record for the CIDR", func(t *testing.T) {
		cp := startCapture(t, c)
		r, _ := p1.Ping(free, 20, 20*time.Millisecond)
		requireNoPlain(t, "no record", cp)
		if r.Received != 0 {
			t.Fatalf("replies from %s with no node there", free)
		}
		route, _ := n1.RouteTo(net.IP(free.AsSlice()))
		t.Logf("route to %s on n1: %q (the pod gets ICMP host unreachable from its gateway)", free, strings.TrimSpace(route))
	})

	t.Run("new node announced with a bogus key and endpoint", func(t *testing.T) {
		// The window between a node's lease being known and its peer
		// working: n1 configures a peer that can never answer (a real
		// host, n2, that knows no such key).
		ghostCIDR := netip.PrefixFrom(free, 24).Masked()
		key := fmt.Sprintf("/wgcni/subnets/%s-24", ghostCIDR.Addr())
		pk, _ := wgtypes.GeneratePrivateKey()
		ctx, cancel := etcdCtx()
		defer cancel()
		g, err := cli.Grant(ctx, 120)
		if err != nil {
			t.Fatal(err)
		}
		val := fmt.Sprintf(`{"node":"ghost","publicKey":%q,"endpoint":%q,"port":51820,"keepalive":0}`, pk.PublicKey(), n2.UnderlayIP.String())
		if _, err := cli.Put(ctx, key, val, clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		defer cli.Revoke(context.Background(), g.ID)
		if err := n1.WaitPeerCIDRs([]string{n2.MustPodCIDR(t), ghostCIDR.String()}, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		cp := startCapture(t, c)
		wait := pingFor(p1.NS, free, 25*time.Second)
		ghostLine := "part=heal peer_node=ghost cidr=" + ghostCIDR.String() + " state=no-handshake"
		log := n1.WaitLog(t, 40*time.Second, unhealthy+`" node=n1 `+ghostLine)
		r := wait()
		rep := requireNoPlain(t, "bogus new node", cp)
		if r.Received != 0 {
			t.Fatal("replies from the ghost node")
		}
		if rep.WGTypes[capture.WGHandshakeInit] == 0 {
			t.Fatalf("no handshake initiations on the underlay: the traffic was not even tried through WireGuard")
		}
		t.Logf("operator sees: %s", firstLine(log, ghostLine))
	})

	t.Run("peer with a wrong key", func(t *testing.T) {
		// Rewrite n2's record (same lease) with a key nobody holds.
		ctx, cancel := etcdCtx()
		defer cancel()
		key := fmt.Sprintf("/wgcni/subnets/%s", strings.Replace(n2.MustPodCIDR(t), "/", "-", 1))
		resp, err := cli.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("n2 record: %v", err)
		}
		kv := resp.Kvs[0]
		pk, _ := wgtypes.GeneratePrivateKey()
		bogus := strings.Replace(string(kv.Value), n2PublicKey(t, c, n2), pk.PublicKey().String(), 1)
		if _, err := cli.Put(ctx, key, bogus, clientv3.WithLease(clientv3.LeaseID(kv.Lease))); err != nil {
			t.Fatal(err)
		}
		// n1 applies the record from its watch: until it has, the old
		// session still carries p1's pings (and their replies), which is
		// right, but not what this case is about.
		if err := harness.WaitFor(10*time.Second, "n1 configures n2's bogus key", func() (bool, error) {
			dev, err := n1.WGDevice()
			if err != nil {
				return false, err
			}
			for _, p := range dev.Peers {
				if p.PublicKey == pk.PublicKey() {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			t.Fatal(err)
		}
		cp := startCapture(t, c)
		wait := pingFor(p1.NS, p2.IP, 25*time.Second)
		who := "part=heal peer_node=n2 cidr=" + n2.MustPodCIDR(t) + " state=no-handshake"
		log := n1.WaitLog(t, 40*time.Second, unhealthy+`" node=n1 `+who)
		r := wait()
		requireNoPlain(t, "wrong key", cp)
		if r.Received != 0 {
			t.Fatalf("%d replies with n2's key wrong", r.Received)
		}
		t.Logf("p1 -> p2 with n2's key wrong: %d/%d replies; operator sees: %s", r.Received, r.Sent, firstLine(log, who))
		// n2 publishing a (new) key repairs it: n1 reports the peer up
		// again (a line after this point: n2 was up before the fault).
		seen, _ := os.ReadFile(n1.LogPath)
		out, err := n2.ExecTimeout(60*time.Second, append([]string{c.Bin("wgcnid"), "rotate-key"}, n2.DaemonArgs()...)...)
		if err != nil {
			t.Fatalf("rotate-key: %v %s", err, out)
		}
		harness.Connect(t, p1.NS, p2.IP, "p1 -> p2 after n2 republished its key", 3)
		if err := harness.WaitFor(20*time.Second, "n1 to log n2 up again", func() (bool, error) {
			b, err := os.ReadFile(n1.LogPath)
			if err != nil || len(b) < len(seen) {
				return false, err
			}
			return strings.Contains(string(b[len(seen):]), `msg="peer up" node=n1 part=heal peer_node=n2 `), nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("daemon restarts", func(t *testing.T) {
		cp := startCapture(t, c)
		wait := pingFor(p1.NS, p2.IP, 8*time.Second)
		time.Sleep(time.Second)
		n1.StopDaemon(syscall.SIGKILL)
		if err := n1.StartDaemon(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := n2.RestartDaemon(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		r := wait()
		requireNoPlain(t, "daemon restarts", cp)
		t.Logf("p1 -> p2 across SIGKILL/SIGTERM restarts: %d/%d replies", r.Received, r.Sent)
		fmt.Printf("STRICT restarts: ping loss %d/%d\n", r.Loss(), r.Sent)
	})

	t.Run("start-up before the first sync", func(t *testing.T) {
		// Reboot-like state on n1 while its pod keeps sending: daemon
		// gone, device, routes and strict route removed; etcd is down so
		// the restarted daemon cannot sync for a while.
		n1.StopDaemon(syscall.SIGTERM)
		c.Etcd.Stop()
		defer c.Etcd.Start()
		if out, err := n1.Cleanup(); err != nil {
			t.Fatalf("cleanup: %v %s", err, out)
		}
		// cleanup keeps the node file while a pod is attached (its DEL
		// needs it); a reboot clears /run, so remove it as a reboot would.
		if err := os.Remove(nodefile.Path(n1.RunDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		// Control: with nothing in place the capture does see plaintext,
		// so its zero below means something.
		cp := startCapture(t, c)
		p1.Ping(p2.IP, 10, 20*time.Millisecond)
		rep, _ := cp.Stop()
		t.Logf("control without any daemon state: %s", rep)
		if rep.PlainPod() == 0 {
			t.Fatal("control: no plaintext seen without strict mode; the capture or the default route is broken")
		}
		cp = startCapture(t, c)
		wait := pingFor(p1.NS, p2.IP, 12*time.Second)
		// Give the pod's stream a head start, then start the daemon: it
		// must shut the plaintext path first thing. Packets sent before
		// that are the control's, so measure from the strict route on.
		time.Sleep(300 * time.Millisecond)
		leakedBefore := snapPlain(cp)
		if err := n1.StartDaemon(); err != nil {
			t.Fatal(err)
		}
		n1.WaitLog(t, 10*time.Second, "strict mode: unreachable route")
		// The route is in place before that line is written, but frames
		// sent before it may still sit in the capture socket (its reader
		// stamps and counts them when it gets to them, tens of ms late on
		// a loaded machine): let it drain before drawing the line. The
		// stream keeps running for seconds after, so a leak through the
		// strict route would still show.
		time.Sleep(150 * time.Millisecond)
		atStrict := snapPlain(cp)
		time.Sleep(4 * time.Second) // daemon retrying etcd: no sync yet
		if _, err := n1.NodeFile(); err == nil {
			t.Fatal("daemon ready while etcd is down?")
		}
		duringNoSync := snapPlain(cp) - atStrict
		if err := c.Etcd.Start(); err != nil {
			t.Fatal(err)
		}
		if _, err := n1.WaitReady(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		r := wait()
		rep, _ = cp.Stop()
		afterStrict := rep.PlainPod() - atStrict
		t.Logf("plaintext: %d before the daemon started, %d until its strict route (log line), %d from then on (%d while it could not sync); ping %d/%d", leakedBefore, atStrict, afterStrict, duringNoSync, r.Received, r.Sent)
		fmt.Printf("STRICT start-up: %d plaintext pod packets after the strict route, %d while waiting for etcd\n", afterStrict, duringNoSync)
		if afterStrict != 0 {
			t.Fatalf("%d plaintext pod packets after the daemon installed its strict route:\n%s", afterStrict, rep.Excerpt(20))
		}
		harness.Connect(t, p1.NS, p2.IP, "p1 -> p2 after start-up", 3)
	})
}

func n2PublicKey(t *testing.T, c *harness.Cluster, n *harness.Node) string {
	t.Helper()
	l, err := c.LeaseOf(n.Name)
	if err != nil || l == nil {
		t.Fatalf("lease of %s: %v", n.Name, err)
	}
	return l.PublicKey
}

// unhealthy is the message of the healer's log line for a peer that goes
// no-handshake, stale or one-way (daemon/heal).
const unhealthy = "peer unhealthy: its pod traffic is dropped (strict mode, never sent in clear)"

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return "(no line with " + sub + ")"
}

func snapPlain(cp *capture.Capture) int {
	r := cp.Snapshot()
	return r.PlainPod()
}
