package gateway

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestSiteThroughGateway: the site routes the cluster CIDR to its serving
// gateway (the operator's choice; docs/gateways.md). A pod on a third node
// pings and opens TCP to the plain site host and back; only WireGuard
// crosses the underlay; exactly the serving gateway's peer carries the
// site CIDR, and the standby gateway routes nothing of its own site. The
// serving gateway is a pod node, or a host-only peer.
func TestSiteThroughGateway(t *testing.T) {
	for _, mode := range []struct {
		name     string
		hostOnly bool
	}{{"node gateway", false}, {"host-only gateway", true}} {
		t.Run(mode.name, func(t *testing.T) { testSiteThroughGateway(t, mode.hostOnly) })
	}
}

func testSiteThroughGateway(t *testing.T, hostOnly bool) {
	c, site := start(t)
	// A longer TTL than the failover tests': a restart must fit in it.
	g1 := startGatewayMode(t, c, site, 11, hostOnly, "--gateway-ttl", "5s")
	n3, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	waitHolder(t, c, n3, g1.Name, 20*time.Second)
	g2 := startGateway(t, c, site, 12, "--gateway-ttl", "5s")
	host, err := site.AddHost("host", siteHost)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := host.Exec("ip", "route", "add", clusterCIDR, "via", siteAddr(11).String()); err != nil {
		t.Fatal(out, err)
	}
	pod := n3.MustAddPod(t)

	// g1 came first: it serves, g2 queues behind it, on every node.
	r := gateways(t, c, n3)
	if len(r.Sites) != 1 || r.Sites[0].Site != siteCIDR.String() || r.Sites[0].Gateway != g1.Name ||
		!slices.Equal(r.Sites[0].Candidates, []string{g1.Name, g2.Name}) {
		t.Fatalf("wgcnictl gateways: %+v, want %s served by %s with candidates %s,%s", r, siteCIDR, g1.Name, g1.Name, g2.Name)
	}
	t.Logf("wgcnictl gateways: %+v", r.Sites)
	waitHolder(t, c, g2, g1.Name, 10*time.Second)
	if out, _ := g2.Exec("ip", "route", "show", "proto", "87", siteCIDR.String()); strings.TrimSpace(out) != "" {
		t.Fatalf("standby gateway %s routes its own site: %s", g2.Name, out)
	}
	if out, err := n3.RouteTo(siteHost.AsSlice()); err != nil || !strings.Contains(out, "dev "+n3.Device) {
		t.Fatalf("route to the site host on %s: %q %v, want through %s", n3.Name, out, err, n3.Device)
	}

	c.EncryptedOnly(t, classifier(c), "pod <-> site host through "+g1.Name, func() {
		harness.Connect(t, pod.NS, siteHost, pod.Name+" -> site host", 5)
		harness.Transfer(t, pod.NS, host, siteHost, 1<<20, pod.Name+" -> site host")
		harness.Connect(t, host, pod.IP, "site host -> "+pod.Name, 5)
		harness.Transfer(t, host, pod.NS, pod.IP, 1<<20, "site host -> "+pod.Name)
	})

	// A restart of the pod's node adopts the site on its peer as it is:
	// its first sync knows the elections already.
	stop := make(chan struct{})
	seen := watchHolder(c, n3, stop)
	ping := startPing(t, pod.NS, siteHost, 500, pingInterval)
	repairs := len(n3.LogLines("repairing device/routes"))
	syncs := len(n3.LogLines("full sync done"))
	if err := n3.RestartDaemon(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := harness.WaitFor(20*time.Second, n3.Name+"'s first sync after the restart", func() (bool, error) {
		return len(n3.LogLines("full sync done")) > syncs, nil
	}); err != nil {
		t.Fatal(err)
	}
	sent, recv, _ := ping.wait(t)
	close(stop)
	if seq := <-seen; !slices.Equal(seq, []string{g1.Name}) || sent != recv {
		t.Fatalf("across %s's restart: site holders %q, want only %s; %d/%d pings lost", n3.Name, seq, g1.Name, sent-recv, sent)
	}
	// Nothing to repair: the device already was what the restarted
	// daemon wants (a window this short could slip between the reads).
	if lines := n3.LogLines("repairing device/routes"); len(lines) != repairs {
		t.Fatalf("%s's first sync after its restart changed the device: %q", n3.Name, lines[repairs:])
	}

	// A restart of the serving gateway moves nothing: it campaigns on its
	// remembered lease, whose key still leads.
	stop = make(chan struct{})
	seen = watchHolder(c, n3, stop)
	if err := g1.RestartDaemon(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	g1.WaitLog(t, 20*time.Second, "gateway serves site")
	time.Sleep(6 * time.Second) // past the TTL of the old process's last keepalive
	close(stop)
	if seq := <-seen; !slices.Equal(seq, []string{g1.Name}) {
		t.Fatalf("site holders on %s across %s's restart: %q, want only %s", n3.Name, g1.Name, seq, g1.Name)
	}
	if n := len(g1.LogLines("gateway serves site")); n != 2 {
		t.Fatalf("%s logged serving %d times, want twice (before and after the restart)", g1.Name, n)
	}

	// `wgcnid cleanup` withdraws at once: no wait for the TTL.
	g1.StopDaemon(syscall.SIGTERM)
	cleaned := time.Now()
	if out, err := g1.Cleanup(); err != nil {
		t.Fatal(out, err)
	}
	waitHolder(t, c, n3, g2.Name, 4*time.Second)
	moved := time.Since(cleaned)
	if out, _ := g1.Exec("ip", "route", "show", "proto", "87"); strings.TrimSpace(out) != "" {
		t.Fatalf("routes of ours left on %s after cleanup: %s", g1.Name, out)
	}
	harness.Result(t, "restart of serving gateway %s: site stayed on its peer; after its cleanup the site was on %s's peer within %v (TTL 5s)", g1.Name, g2.Name, moved.Round(time.Millisecond))
}
