package gateway

import (
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

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
	g1 := startGateway(t, c, site, 11, "--gateway-masquerade")
	n3, err := c.AddNode("--metrics-addr", "127.0.0.1:9586")
	if err != nil {
		t.Fatal(err)
	}
	waitHolder(t, c, n3, g1.Name, 20*time.Second)
	g2 := startGateway(t, c, site, 12, "--gateway-masquerade")
	if _, err := site.AddHost("host", siteHost); err != nil { // no route back: the gateways masquerade
		t.Fatal(err)
	}
	pod := n3.MustAddPod(t)
	harness.Connect(t, pod.NS, siteHost, pod.Name+" -> site host (masquerading "+g1.Name+")", 5)
	cls := classifier(c)

	// 1. The serving gateway dies.
	c.NoPlaintext(t, cls, "SIGKILL of "+g1.Name, func() {
		stop := make(chan struct{})
		seen := watchHolder(c, n3, stop)
		ping := startPing(t, pod.NS, siteHost, 1000, pingInterval)
		time.Sleep(2 * time.Second)
		dev := g1.MustDeviceHost(t)
		// The data plane first (the device), then the daemon: both
		// within a millisecond, as when the machine dies.
		killed := time.Now()
		if err := syscall.Kill(dev, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		g1.StopDaemon(syscall.SIGKILL)
		waitHolder(t, c, n3, g2.Name, 15*time.Second)
		moved := routedAt(t, n3, g2.Name, killed).Sub(killed)
		sent, recv, gap := ping.wait(t)
		close(stop)
		seq := <-seen
		result(t, "serving gateway %s SIGKILLed (daemon and device): site moved to %s's peer on %s %v after the kill (applied, per its log); ping 100/s: %d/%d lost, longest outage %v; holders seen %q",
			g1.Name, g2.Name, n3.Name, moved.Round(time.Millisecond), sent-recv, sent, gap, seq)
		checkSeq(t, seq, g1.Name, g2.Name)
		if gap > failoverTarget {
			t.Errorf("outage %v after the gateway's death, target %v", gap, failoverTarget)
		}
	})
	if f := failovers(t, n3); f != 1 {
		t.Errorf("wgcni_gateway_failovers_total on %s = %v, want 1", n3.Name, f)
	}

	// 2. It comes back: it queues behind g2, nothing moves.
	c.NoPlaintext(t, cls, g1.Name+" returns", func() {
		stop := make(chan struct{})
		seen := watchHolder(c, n3, stop)
		ping := startPing(t, pod.NS, siteHost, 800, pingInterval)
		if err := g1.StartDaemon(); err != nil {
			t.Fatal(err)
		}
		g1.WaitLog(t, 20*time.Second, "gateway candidate for site")
		sent, recv, gap := ping.wait(t)
		close(stop)
		seq := <-seen
		result(t, "%s back: holders seen on %s %q; ping 100/s: %d/%d lost, longest outage %v", g1.Name, n3.Name, seq, sent-recv, sent, gap)
		checkSeq(t, seq, g2.Name)
		if sent-recv > 0 {
			t.Errorf("%d pings lost while the old gateway returned", sent-recv)
		}
	})
	if r := gateways(t, c, n3); len(r.Sites) != 1 || r.Sites[0].Gateway != g2.Name || len(r.Sites[0].Candidates) != 2 || r.Sites[0].Candidates[1] != g1.Name {
		t.Fatalf("wgcnictl gateways after %s returned: %+v, want %s serving, %s queued", g1.Name, r.Sites, g2.Name, g1.Name)
	}

	// 3. The new gateway's underlay link is cut: its candidacy lapses.
	c.NoPlaintext(t, cls, "link of "+g2.Name+" cut", func() {
		stop := make(chan struct{})
		seen := watchHolder(c, n3, stop)
		ping := startPing(t, pod.NS, siteHost, 1000, pingInterval)
		time.Sleep(2 * time.Second)
		cut := time.Now()
		if out, err := g2.Exec("ip", "link", "set", "eth0", "down"); err != nil {
			t.Fatal(out, err)
		}
		waitHolder(t, c, n3, g1.Name, 15*time.Second)
		moved := routedAt(t, n3, g1.Name, cut).Sub(cut)
		sent, recv, gap := ping.wait(t)
		close(stop)
		seq := <-seen
		result(t, "link of serving gateway %s cut: site moved to %s's peer on %s %v after the cut (applied, per its log); ping 100/s: %d/%d lost, longest outage %v; holders seen %q",
			g2.Name, g1.Name, n3.Name, moved.Round(time.Millisecond), sent-recv, sent, gap, seq)
		checkSeq(t, seq, g2.Name, g1.Name)
		if gap > failoverTarget {
			t.Errorf("outage %v after the link cut, target %v", gap, failoverTarget)
		}
	})

	// 4. The link comes back: g2 campaigns again, behind g1.
	if out, err := g2.Exec("ip", "link", "set", "eth0", "up"); err != nil {
		t.Fatal(out, err)
	}
	if out, err := g2.Exec("ip", "route", "replace", "default", "via", c.Underlay.Gateway.String(), "dev", "eth0"); err != nil {
		t.Fatal(out, err)
	}
	stop := make(chan struct{})
	seen := watchHolder(c, n3, stop)
	ping := startPing(t, pod.NS, siteHost, 800, pingInterval)
	g2.WaitLog(t, 20*time.Second, "campaigning again")
	sent, recv, gap := ping.wait(t)
	close(stop)
	seq := <-seen
	result(t, "%s's link back: holders seen on %s %q; ping 100/s: %d/%d lost, longest outage %v; failovers counted %v",
		g2.Name, n3.Name, seq, sent-recv, sent, gap, failovers(t, n3))
	checkSeq(t, seq, g1.Name)
	if f := failovers(t, n3); f != 2 {
		t.Errorf("wgcni_gateway_failovers_total on %s = %v, want 2", n3.Name, f)
	}
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
	m := failoverMetric.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no wgcni_gateway_failovers_total in %s's metrics", n.Name)
	}
	f, _ := strconv.ParseFloat(string(m[1]), 64)
	return f
}

