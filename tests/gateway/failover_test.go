package gateway

import (
	"cmp"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/gateway"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	pingInterval = 10 * time.Millisecond // 100/s
	// failoverTarget: traffic flows again within 5 s of the gateway's
	// death (the target; the election TTL here is 2 s).
	failoverTarget = 5 * time.Second
)

// TestGatewayFailover: with --gateway-masquerade the site host needs no
// route to the cluster. Under a 100/s ping from a pod to the site host,
// the serving gateway is SIGKILLed (daemon and WireGuard device: the
// machine's processes die), later the new one's underlay link is cut;
// each time the site moves to the other gateway, never onto two peers,
// and the outage and the packets lost are reported. A returning gateway
// queues behind the incumbent: no failback, no flap.
func TestGatewayFailover(t *testing.T) {
	c, site := start(t)
	g1, g2, f := masqueradingPair(t, c, site)
	n3 := f.n

	// 1. The serving gateway dies: the data plane first (the device),
	// then the daemon, within a millisecond, as when the machine dies.
	dev := g1.MustDeviceHost(t)
	f.failover(t, "serving gateway "+g1.Name+" SIGKILLed (daemon and device)", g1, g2, func() {
		if err := syscall.Kill(dev, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		g1.StopDaemon(syscall.SIGKILL)
	})
	if v := failovers(t, n3); v != 1 {
		t.Errorf("wgcni_gateway_failovers_total on %s = %v, want 1", n3.Name, v)
	}

	// 2. It comes back: it queues behind g2, nothing moves.
	f.noMove(t, g1.Name+" back", g2, func() {
		if err := g1.StartDaemon(); err != nil {
			t.Fatal(err)
		}
		g1.WaitLog(t, 20*time.Second, "gateway candidate for site")
	})
	if r := gateways(t, c, n3); len(r.Sites) != 1 || r.Sites[0].Gateway != g2.Name || len(r.Sites[0].Candidates) != 2 || r.Sites[0].Candidates[1] != g1.Name {
		t.Fatalf("wgcnictl gateways after %s returned: %+v, want %s serving, %s queued", g1.Name, r.Sites, g2.Name, g1.Name)
	}

	// 3. The new gateway's underlay link is cut: its candidacy lapses.
	f.failover(t, "link of serving gateway "+g2.Name+" cut", g2, g1, func() {
		if out, err := g2.Exec("ip", "link", "set", "eth0", "down"); err != nil {
			t.Fatal(out, err)
		}
	})

	// 4. The link comes back: g2 campaigns again, behind g1.
	f.noMove(t, g2.Name+"'s link back", g1, func() {
		for _, argv := range [][]string{{"ip", "link", "set", "eth0", "up"}, {"ip", "route", "replace", "default", "via", c.Underlay.Gateway.String(), "dev", "eth0"}} {
			if out, err := g2.Exec(argv...); err != nil {
				t.Fatal(out, err)
			}
		}
		g2.WaitLog(t, 20*time.Second, "campaigning again")
	})
	if v := failovers(t, n3); v != 2 {
		t.Errorf("wgcni_gateway_failovers_total on %s = %v, want 2", n3.Name, v)
	}

	// `wgcnid cleanup` takes the masquerade table away with the rest.
	if out, err := g1.Exec("nft", "list", "table", "ip", gateway.MasqTable); err != nil || !strings.Contains(out, "masquerade") {
		t.Fatalf("masquerade table on %s: %v %s", g1.Name, err, out)
	}
	g1.StopDaemon(syscall.SIGTERM)
	if out, err := g1.Cleanup(); err != nil {
		t.Fatal(out, err)
	}
	if out, err := g1.Exec("nft", "list", "table", "ip", gateway.MasqTable); err == nil {
		t.Fatalf("masquerade table left on %s after cleanup: %s", g1.Name, out)
	}
}

// masqueradingPair starts gateway g1 (--gateway-masquerade), a node
// with metrics whose peer of g1 takes the site, then standby g2, the
// site host (no route back: the gateways masquerade) and a pod on the
// node that reaches it.
func masqueradingPair(t *testing.T, c *harness.Cluster, site *harness.Site) (g1, g2 *harness.Node, f *fixture) {
	t.Helper()
	g1 = startGateway(t, c, site, 11, "--gateway-masquerade")
	n, err := c.AddNode("--metrics-addr", "127.0.0.1:9586")
	if err != nil {
		t.Fatal(err)
	}
	waitHolder(t, c, n, g1.Name, 20*time.Second)
	g2 = startGateway(t, c, site, 12, "--gateway-masquerade")
	if _, err := site.AddHost("host", siteHost); err != nil {
		t.Fatal(err)
	}
	pod := n.MustAddPod(t)
	harness.Connect(t, pod.NS, siteHost, pod.Name+" -> site host (masquerading "+g1.Name+")", 5)
	return g1, g2, &fixture{c: c, cls: classifier(c), n: n, pod: pod}
}

// fixture is a pod on node n pinging the site host, the underlay captured.
type fixture struct {
	c   *harness.Cluster
	cls *capture.Classifier
	n   *harness.Node
	pod *harness.Pod
	// pings and target of failover (0: 1000 pings, failoverTarget).
	pings  int
	target time.Duration
}

// failover runs fail (the serving gateway from goes away) 2 s into a
// 10 s ping at 100/s and reports when n moved the site to to's peer (its
// log) and the outage; the site must go straight from one peer to the
// other, within failoverTarget.
func (f *fixture) failover(t *testing.T, what string, from, to *harness.Node, fail func()) {
	t.Helper()
	f.c.NoPlaintext(t, f.cls, what, func() {
		stop := make(chan struct{})
		seen := watchHolder(f.c, f.n, stop)
		pings, target := cmp.Or(f.pings, 1000), cmp.Or(f.target, failoverTarget)
		ping := startPing(t, f.pod.NS, siteHost, pings, pingInterval)
		time.Sleep(2 * time.Second)
		at := time.Now()
		fail()
		waitHolder(t, f.c, f.n, to.Name, target+10*time.Second)
		moved := routedAt(t, f.n, to.Name, at).Sub(at)
		sent, recv, gap := ping.wait(t)
		close(stop)
		seq := <-seen
		harness.Result(t, "%s: site moved to %s's peer on %s %v later (applied, per its log); ping 100/s: %d/%d lost, longest outage %v; holders seen %q",
			what, to.Name, f.n.Name, moved.Round(time.Millisecond), sent-recv, sent, gap, seq)
		checkSeq(t, seq, from.Name, to.Name)
		if gap > target {
			t.Errorf("%s: outage %v, target %v", what, gap, target)
		}
	})
}

// noMove runs during under an 8 s ping at 100/s: the site must stay on
// holder's peer and no ping may be lost.
func (f *fixture) noMove(t *testing.T, what string, holder *harness.Node, during func()) {
	t.Helper()
	f.c.NoPlaintext(t, f.cls, what, func() {
		stop := make(chan struct{})
		seen := watchHolder(f.c, f.n, stop)
		ping := startPing(t, f.pod.NS, siteHost, 800, pingInterval)
		during()
		sent, recv, gap := ping.wait(t)
		close(stop)
		seq := <-seen
		harness.Result(t, "%s: holders seen on %s %q; ping 100/s: %d/%d lost, longest outage %v", what, f.n.Name, seq, sent-recv, sent, gap)
		checkSeq(t, seq, holder.Name)
		if sent-recv > 0 {
			t.Errorf("%s: %d pings lost", what, sent-recv)
		}
	})
}

// checkSeq fails unless the site was held by exactly the holders in
// want, in order (no instant without a holder, none on two peers).
func checkSeq(t *testing.T, seq []string, want ...string) {
	t.Helper()
	if fmt.Sprint(seq) != fmt.Sprint(want) {
		t.Errorf("site holders seen %q, want %q (no window on no peer or on two, no flap)", seq, want)
	}
}

var failoverMetric = regexp.MustCompile(`(?m)^wgcni_gateway_failovers_total\{site="[^"]+"\} (\S+)$`)

// failovers scrapes n's wgcni_gateway_failovers_total.
func failovers(t *testing.T, n *harness.Node) float64 {
	t.Helper()
	m := failoverMetric.FindSubmatch(scrape(t, n))
	if m == nil {
		t.Fatalf("no wgcni_gateway_failovers_total in %s's metrics", n.Name)
	}
	f, _ := strconv.ParseFloat(string(m[1]), 64)
	return f
}

// scrape returns n's /metrics (--metrics-addr 127.0.0.1:9586).
func scrape(t *testing.T, n *harness.Node) []byte {
	t.Helper()
	var body []byte
	// The socket is made inside the node (on the thread Do locks there).
	err := n.Do(func() error {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:9586", 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(conn)
		return err
	})
	if err != nil {
		t.Fatalf("metrics of %s: %v", n.Name, err)
	}
	return body
}
