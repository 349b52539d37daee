package reliability

import (
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestHitlessRestart restarts both nodes' daemons with SIGKILL and SIGTERM
// while a pod on n1 pings a pod on n2 at 100/s (userspace WireGuard: the
// device lives in its own process, which the daemon adopts). Figure:
// packets lost (must be 0); CIDR, key and WireGuard sessions unchanged.
func TestHitlessRestart(t *testing.T) {
	c := start(t, harness.Config{LeaseTTL: 6 * time.Second}, 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	harness.WaitMesh(t, c.Nodes(), 20*time.Second)
	p1 := n1.MustAddPod(t)
	p2 := n2.MustAddPod(t)
	connect(t, p1.NS, p2.IP)

	type snap struct {
		cidr, pub string
		peers     map[string]peerState
	}
	take := func(n *harness.Node) snap {
		dev, err := n.WGDevice()
		if err != nil {
			t.Fatal(err)
		}
		return snap{cidr: n.MustPodCIDR(t), pub: dev.PublicKey.String(), peers: peers(t, n)}
	}
	// Both daemons initiate when they configure each other; the side that
	// sent first was refused (its peer did not know it yet), and WireGuard
	// retries that initiation once after 5 s, which is a second handshake
	// but not a reset. Snapshot only once the handshakes have settled, so
	// the comparison below sees the restarts alone.
	var before map[string]snap
	for try := 0; ; try++ {
		before = map[string]snap{n1.Name: take(n1), n2.Name: take(n2)}
		time.Sleep(6 * time.Second)
		if handshakesEqual(before[n1.Name].peers, peers(t, n1)) && handshakesEqual(before[n2.Name].peers, peers(t, n2)) {
			break
		}
		if try == 3 {
			t.Fatal("WireGuard handshakes keep changing without any restart")
		}
	}
	leaseBefore := map[string]string{}
	for _, n := range c.Nodes() {
		l, err := c.LeaseOf(n.Name)
		if err != nil || l == nil {
			t.Fatalf("lease of %s: %v", n.Name, err)
		}
		leaseBefore[n.Name] = l.CIDR + " " + l.PublicKey
	}

	churnBase := map[string]int{}
	for _, n := range c.Nodes() {
		churnBase[n.Name] = countLog(t, n, "peer removed") + countLog(t, n, "resync: repairing")
	}
	// 4 restarts, ~2 s apart; 1500 pings at 100/s cover them with margin.
	stream := startPing(t, p1.NS, p2.IP, 1500, 10*time.Millisecond)
	steps := []struct {
		n   *harness.Node
		sig syscall.Signal
	}{{n1, syscall.SIGKILL}, {n2, syscall.SIGKILL}, {n1, syscall.SIGTERM}, {n2, syscall.SIGTERM}}
	time.Sleep(2 * time.Second)
	for _, s := range steps {
		syncs := countLog(t, s.n, "full sync done")
		t0 := time.Now()
		if err := s.n.RestartDaemon(s.sig); err != nil {
			t.Fatal(err)
		}
		waitLogCount(t, s.n, "full sync done", syncs, 30*time.Second)
		t.Logf("%s: wgcnid restarted after %v, synced again in %v", s.n.Name, s.sig, time.Since(t0).Round(time.Millisecond))
		time.Sleep(2 * time.Second)
	}
	sent, recv := stream.Wait(t)
	lost := sent - recv

	churn := 0
	for _, n := range []*harness.Node{n1, n2} {
		after := take(n)
		b := before[n.Name]
		if after.cidr != b.cidr || after.pub != b.pub {
			t.Errorf("%s: CIDR/key changed: %s %s -> %s %s", n.Name, b.cidr, b.pub, after.cidr, after.pub)
		}
		if !peersEqual(b.peers, after.peers) {
			t.Errorf("%s: peers changed: %v -> %v", n.Name, b.peers, after.peers)
		}
		for cidr, p := range after.peers {
			// A new handshake inside the window means the session was reset
			// (WireGuard itself rekeys only every 2 minutes).
			if !p.Handshake.Equal(b.peers[cidr].Handshake) {
				churn++
				t.Errorf("%s: peer %s handshake changed %v -> %v (session reset)", n.Name, cidr, b.peers[cidr].Handshake, p.Handshake)
			}
		}
		if got := countLog(t, n, "peer removed") + countLog(t, n, "resync: repairing") - churnBase[n.Name]; got != 0 {
			churn += got
			t.Errorf("%s: %d peer removals/repairs in the log", n.Name, got)
		}
		l, err := c.LeaseOf(n.Name)
		if err != nil || l == nil || l.CIDR+" "+l.PublicKey != leaseBefore[n.Name] {
			t.Errorf("%s: etcd record changed: %v -> %+v (%v)", n.Name, leaseBefore[n.Name], l, err)
		}
	}
	t.Logf("ping stream %s -> %s during 4 daemon restarts (2x SIGKILL, 2x SIGTERM): %d sent, %d received, %d lost", p1.Name, p2.Name, sent, recv, lost)
	if lost != 0 {
		t.Errorf("%d packets lost across daemon restarts", lost)
	}
	harness.Result(t, "4 wgcnid restarts (SIGKILL+SIGTERM, both nodes) under 100/s ping: %d/%d lost, CIDR+key unchanged, %d handshake resets/peer churn", lost, sent, churn)
}
