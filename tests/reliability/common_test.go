// Package reliability proves issue 6 end to end in the namespace cluster
// (tests/harness): hitless daemon restarts, etcd outages, node loss, watch
// compaction, no leaked IPs/veths/files, no duplicate IPs or CIDRs, etcd
// member loss and bad records in a live cluster. Every test prints its
// figure with t.Logf and one plain summary line starting with "RESULT"
// (grep RESULT in `go test -v` output) so the README can quote it.
//
// Heavier variants are behind environment variables:
//
//	WGCNI_ETCD_OUTAGE=60s   etcd outage length (default 20s)
//	WGCNI_LEAK_CYCLES=1000  ADD/DEL cycles of the leak test (default 200)
package reliability

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// tag prefixes every namespace, device and temp dir of this suite.
const tag = "wgr"

func start(t *testing.T, cfg harness.Config, nodes int) *harness.Cluster {
	t.Helper()
	cfg.Tag = tag
	return harness.Start(t, cfg, nodes)
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// connect waits until a ping gets through (the first may wait for a
// WireGuard handshake).
func connect(t *testing.T, from harness.NS, to netip.Addr) {
	t.Helper()
	err := harness.WaitFor(20*time.Second, "ping "+to.String()+" from "+from.Name, func() (bool, error) {
		r, err := from.Ping(to, 1, 200*time.Millisecond)
		return err == nil && r.Received == 1, err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// PingStream is a background ping at a fixed rate with a fixed count, so
// it ends by itself and waits for the last reply: nothing in flight is
// counted as lost.
type PingStream struct {
	cmd   *exec.Cmd
	out   strings.Builder
	done  chan struct{}
	count int
}

// startPing sends count echo requests every interval from ns to dst.
func startPing(t *testing.T, from harness.NS, dst netip.Addr, count int, interval time.Duration) *PingStream {
	t.Helper()
	s := &PingStream{done: make(chan struct{}), count: count}
	dur := time.Duration(count) * interval
	ctx, cancel := context.WithTimeout(context.Background(), dur+60*time.Second)
	s.cmd = from.Command(ctx, "ping", "-n", "-q", "-c", strconv.Itoa(count),
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "2", dst.String())
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	if err := s.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start ping stream: %v", err)
	}
	go func() { _ = s.cmd.Wait(); cancel(); close(s.done) }()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.done
		}
	})
	return s
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (packets )?received`)

// Wait waits for the stream to end and returns sent and received counts.
func (s *PingStream) Wait(t *testing.T) (sent, received int) {
	t.Helper()
	<-s.done
	m := pingSummary.FindStringSubmatch(s.out.String())
	if m == nil {
		t.Fatalf("ping stream: no summary: %s", s.out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received
}

// countLog counts lines of the node's wgcnid log containing substr.
func countLog(t *testing.T, n *harness.Node, substr string) int {
	t.Helper()
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), substr)
}

// refusedNode starts a new node whose wgcnid must refuse to run: it waits
// until the daemon has exited with a log line containing substr, logs the
// exit with what and that line, and returns the node.
func refusedNode(t *testing.T, c *harness.Cluster, what, substr string, timeout time.Duration) *harness.Node {
	t.Helper()
	n, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	var line string
	err = harness.WaitFor(timeout, fmt.Sprintf("wgcnid on %s to exit saying %q", n.Name, substr), func() (bool, error) {
		if n.Daemon().Running() {
			return false, nil
		}
		ls := n.LogLines(substr)
		if len(ls) == 0 {
			return false, fmt.Errorf("wgcnid exited without saying %q", substr)
		}
		line = ls[len(ls)-1]
		return true, nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, c.DumpLogs(20))
	}
	t.Logf("%s: wgcnid on %s exited (%v): %s", what, n.Name, n.Daemon().Err(), line)
	return n
}

// waitLogCount waits until the node's log has more than n lines with substr.
func waitLogCount(t *testing.T, n *harness.Node, substr string, more int, timeout time.Duration) {
	t.Helper()
	err := harness.WaitFor(timeout, fmt.Sprintf("%q in the log of %s", substr, n.Name), func() (bool, error) {
		return countLog(t, n, substr) > more, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// peerState is what must not change across a hitless event: per peer
// CIDR, its public key, endpoint and last handshake.
type peerState struct {
	Key       string
	Endpoint  string
	Handshake time.Time
}

func peers(t *testing.T, n *harness.Node) map[string]peerState {
	t.Helper()
	dev, err := n.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]peerState{}
	for _, p := range dev.Peers {
		var cidr string
		for _, a := range p.AllowedIPs {
			cidr = a.String()
		}
		ep := ""
		if p.Endpoint != nil {
			ep = p.Endpoint.String()
		}
		out[cidr] = peerState{Key: p.PublicKey.String(), Endpoint: ep, Handshake: p.LastHandshakeTime}
	}
	return out
}

// peersEqual compares everything but the handshake times.
func peersEqual(a, b map[string]peerState) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || w.Key != v.Key || w.Endpoint != v.Endpoint {
			return false
		}
	}
	return true
}

// handshakesEqual says whether every peer of a has the same last handshake
// in b.
func handshakesEqual(a, b map[string]peerState) bool {
	for k, v := range a {
		if w, ok := b[k]; !ok || !w.Handshake.Equal(v.Handshake) {
			return false
		}
	}
	return len(a) == len(b)
}
