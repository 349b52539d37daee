// Package gateway tests sites behind gateways (docs/gateways.md) in the
// namespace cluster (tests/harness): a site namespace with a plain host
// (no WireGuard) behind two gateway nodes, a pod on a third node, real
// etcd elections, packets captured on the underlay. Skips unless root
// with the tools (WGCNI_E2E_REQUIRE=1 makes that a failure).
package gateway

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/agent"
	"github.com/wgcni/wgcni/daemon/ctl"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	tag         = "gw" // namespaces gw-<run>-…
	clusterCIDR = "10.244.0.0/16"
	gatewayTTL  = "2s"
)

var (
	siteCIDR = netip.MustParsePrefix("192.168.77.0/24")
	siteHost = netip.MustParseAddr("192.168.77.100")
)

func start(t *testing.T) (*harness.Cluster, *harness.Site) {
	t.Helper()
	return startTag(t, tag)
}

// startTag is start with the run's namespaces prefixed by tg.
func startTag(t *testing.T, tg string) (*harness.Cluster, *harness.Site) {
	t.Helper()
	c := harness.Start(t, harness.Config{Tag: tg, ClusterCIDR: clusterCIDR, LeaseTTL: 6 * time.Second}, 0)
	site, err := c.AddSite("site", siteCIDR)
	if err != nil {
		t.Fatal(err)
	}
	return c, site
}

// startGateway adds a node joined to the site as eth1 with the site
// address ending in last, advertising the site CIDR.
func startGateway(t *testing.T, c *harness.Cluster, site *harness.Site, last byte, extra ...string) *harness.Node {
	t.Helper()
	return startGatewayMode(t, c, site, last, false, extra...)
}

// startGatewayMode is startGateway for a pod node or, with hostOnly, a
// host-only peer (docs/hosts.md) as the gateway.
func startGatewayMode(t *testing.T, c *harness.Cluster, site *harness.Site, last byte, hostOnly bool, extra ...string) *harness.Node {
	t.Helper()
	g, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	if hostOnly {
		extra = append([]string{"--host-only"}, extra...)
	}
	var addrs []netip.Addr
	var cidrs []string
	for _, p := range site.Prefixes {
		addrs = append(addrs, hostIn(p, last))
		cidrs = append(cidrs, p.String())
	}
	if err := site.Join(g, addrs...); err != nil {
		t.Fatal(err)
	}
	g.ExtraArgs = append([]string{"--advertise-cidrs", strings.Join(cidrs, ","), "--gateway-ttl", gatewayTTL}, extra...)
	if err := g.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	ready := func() (bool, error) { _, err := g.NodeFile(); return err == nil, err }
	if hostOnly {
		ready = func() (bool, error) { _, err := agent.ReadHostPeerFile(g.RunDir); return err == nil, err }
	}
	err = harness.WaitFor(30*time.Second, "gateway "+g.Name+" ready", func() (bool, error) {
		if p := g.Daemon(); !p.Running() {
			return false, fmt.Errorf("wgcnid %s exited: %v", g.Name, p.Err())
		}
		return ready()
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func siteAddr(last byte) netip.Addr { return hostIn(siteCIDR, last) }

// hostIn is the address of prefix p whose last byte is last.
func hostIn(p netip.Prefix, last byte) netip.Addr {
	b := p.Addr().AsSlice()
	b[len(b)-1] = last
	a, _ := netip.AddrFromSlice(b)
	return a
}

// classifier counts any plain packet of the cluster or of the sites.
func classifier(c *harness.Cluster, sites ...netip.Prefix) *capture.Classifier {
	cls := c.Classifier()
	cls.PodNets = append(cls.PodNets, append([]netip.Prefix{siteCIDR}, sites...)...)
	return cls
}

// gateways runs `wgcnictl gateways -o json` in node n.
func gateways(t *testing.T, c *harness.Cluster, n *harness.Node) *ctl.GatewaysReport {
	t.Helper()
	out, err := n.Exec(append([]string{c.Bin("wgcnictl"), "gateways", "-o", "json"}, n.DaemonArgs()...)...)
	if err != nil {
		t.Fatal(err)
	}
	var r ctl.GatewaysReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("wgcnictl gateways: %v: %s", err, out)
	}
	return &r
}

// holder returns the node whose WireGuard peer on n carries the site
// CIDR in its AllowedIPs ("" none); more than one is an error.
func holder(c *harness.Cluster, n *harness.Node) (string, error) { return holderOf(c, n, siteCIDR) }

// holderOf is holder for any site CIDR.
func holderOf(c *harness.Cluster, n *harness.Node, site netip.Prefix) (string, error) {
	dev, err := n.WGDevice()
	if err != nil {
		return "", err
	}
	ls, err := c.Leases()
	if err != nil {
		return "", err
	}
	var got []string
	for _, p := range dev.Peers {
		for _, a := range p.AllowedIPs {
			if a.String() != site.String() {
				continue
			}
			name := p.PublicKey.String()
			for _, l := range ls {
				if l.PublicKey == p.PublicKey.String() {
					name = l.Node
				}
			}
			got = append(got, name)
		}
	}
	if len(got) > 1 {
		return "", fmt.Errorf("site %s on %d peers of %s: %v", site, len(got), n.Name, got)
	}
	if len(got) == 0 {
		return "", nil
	}
	return got[0], nil
}

func waitHolder(t *testing.T, c *harness.Cluster, n *harness.Node, want string, timeout time.Duration) time.Duration {
	t.Helper()
	return waitHolderOf(t, c, n, siteCIDR, want, timeout)
}

func waitHolderOf(t *testing.T, c *harness.Cluster, n *harness.Node, site netip.Prefix, want string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	err := harness.WaitFor(timeout, fmt.Sprintf("site %s on %s's peer of %q", site, n.Name, want), func() (bool, error) {
		h, err := holderOf(c, n, site)
		if err != nil {
			return false, err
		}
		return h == want, fmt.Errorf("held by %q", h)
	})
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// watchHolder polls who holds the site on n every 20 ms until stop is
// closed and returns the sequence of distinct holders seen, and any
// instant the site was on two peers.
func watchHolder(c *harness.Cluster, n *harness.Node, stop <-chan struct{}) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		var seq []string
		for {
			h, err := holder(c, n)
			if err != nil {
				h = "ERROR: " + err.Error()
			}
			if len(seq) == 0 || seq[len(seq)-1] != h {
				seq = append(seq, h)
			}
			select {
			case <-stop:
				out <- seq
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return out
}

// pingStream is a timed ping (-D) whose replies give the longest gap.
type pingStream struct {
	done     chan struct{}
	out      string
	interval time.Duration
}

func startPing(t *testing.T, from harness.NS, dst netip.Addr, count int, interval time.Duration) *pingStream {
	t.Helper()
	s := &pingStream{done: make(chan struct{}), interval: interval}
	go func() {
		defer close(s.done)
		out, _ := from.ExecTimeout(2*time.Duration(count)*interval+60*time.Second, "ping", "-n", "-D", "-c", strconv.Itoa(count),
			"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "2", dst.String())
		s.out = out
	}()
	return s
}

var (
	replyLine   = regexp.MustCompile(`^\[(\d+\.\d+)\] .*icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms`)
	pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`)
)

// reply is one answered request: its sequence number, when the answer
// came (ping -D) and its round trip.
type reply struct {
	seq int
	at  time.Time
	rtt time.Duration
}

// result waits for ping to end and returns requests sent and the replies
// in order.
func (s *pingStream) result(t *testing.T) (sent int, replies []reply) {
	t.Helper()
	<-s.done
	m := pingSummary.FindStringSubmatch(s.out)
	if m == nil {
		t.Fatalf("ping: no summary: %s", s.out)
	}
	sent, _ = strconv.Atoi(m[1])
	for _, l := range strings.Split(s.out, "\n") {
		if r := replyLine.FindStringSubmatch(l); r != nil {
			at, _ := strconv.ParseFloat(r[1], 64)
			seq, _ := strconv.Atoi(r[2])
			ms, _ := strconv.ParseFloat(r[3], 64)
			replies = append(replies, reply{seq: seq, at: time.UnixMicro(int64(at * 1e6)), rtt: time.Duration(ms * float64(time.Millisecond))})
		}
	}
	return sent, replies
}

// wait returns sent, received and the longest outage: the longest time
// between two consecutive replies (their -D timestamps), less the
// interval, or the lost requests × interval if that is longer (a loss at
// the end, or ping slowed down by load).
func (s *pingStream) wait(t *testing.T) (sent, received int, gap time.Duration) {
	t.Helper()
	sent, replies := s.result(t)
	last, longest := 0, 0
	var gapAt time.Duration
	for i, r := range replies {
		longest = max(longest, r.seq-last-1)
		if i > 0 {
			gapAt = max(gapAt, r.at.Sub(replies[i-1].at)-s.interval)
		}
		last = r.seq
	}
	longest = max(longest, sent-last)
	return sent, len(replies), max(gapAt, time.Duration(longest)*s.interval).Round(time.Millisecond)
}

// lossRun is a run of consecutive unanswered requests, first..last, and
// when the replies around it came (zero at either end of the stream).
type lossRun struct {
	first, last   int
	before, after time.Time
}

func (r lossRun) String() string {
	return fmt.Sprintf("icmp_seq %d-%d (replies around it at %s and %s)", r.first, r.last, r.before.Format("15:04:05.000"), r.after.Format("15:04:05.000"))
}

// losses waits for ping to end and returns its runs of unanswered
// requests and the longest round trip of the answered ones.
func (s *pingStream) losses(t *testing.T) (runs []lossRun, maxRTT time.Duration) {
	t.Helper()
	sent, replies := s.result(t)
	last, lastAt := 0, time.Time{}
	for _, r := range replies {
		if r.seq > last+1 {
			runs = append(runs, lossRun{first: last + 1, last: r.seq - 1, before: lastAt, after: r.at})
		}
		last, lastAt, maxRTT = r.seq, r.at, max(maxRTT, r.rtt)
	}
	if sent > last {
		runs = append(runs, lossRun{first: last + 1, last: sent, before: lastAt})
	}
	return runs, maxRTT
}

var logTime = regexp.MustCompile(`^time=(\S+) `)

// routedAt is when n's daemon logged routing the site to gateway node
// (its "site routed" line after since): the moment the move was applied.
func routedAt(t *testing.T, n *harness.Node, gateway string, since time.Time) time.Time {
	t.Helper()
	var at time.Time
	// The line follows the device change the caller saw by a moment.
	err := harness.WaitFor(5*time.Second, n.Name+"'s log line \"site routed\" to "+gateway, func() (bool, error) {
		for _, l := range n.LogLines(`msg="site routed"`) {
			m := logTime.FindStringSubmatch(l)
			if m == nil || !strings.Contains(l, "gateway_node="+gateway) {
				continue
			}
			if a, err := time.Parse(time.RFC3339Nano, m[1]); err == nil && a.After(since) {
				at = a
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return at
}
