package pq

import (
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

// keepaliveMax is the largest underlay frame a WireGuard keepalive makes
// (Ethernet or cooked header, IPv6, UDP, 32-byte empty data message); the
// smallest data message carrying an IP packet is longer (>= 106 bytes).
const keepaliveMax = 100

// podFrames counts the WireGuard data messages in rep that carry a packet
// (not keepalives). Only the pod CIDRs are routed into the tunnel here, so
// each is a pod packet. rep must hold every WireGuard frame as a sample.
func podFrames(t *testing.T, rep *capture.Report, samples int) int {
	t.Helper()
	if rep.WireGuard() > samples {
		t.Fatalf("capture: %d WireGuard frames, more than the %d kept as samples: cannot tell pod packets from keepalives", rep.WireGuard(), samples)
	}
	n := 0
	for _, p := range rep.Samples {
		if p.Result.Kind == capture.KindWireGuard && p.Result.WGType == capture.WGTransportData && p.Len > keepaliveMax {
			n++
		}
	}
	return n
}

// heldOn reports whether n holds its (only) peer: no AllowedIPs, so its
// PodCIDR is neither routed into the tunnel nor accepted from it.
func heldOn(t *testing.T, n *harness.Node) bool {
	t.Helper()
	for _, p := range mustDev(t, n).Peers {
		if len(p.AllowedIPs) != 0 {
			return false
		}
	}
	return true
}

// TestRequiredHoldsAgainAfterMaxAge: in required mode a PSK counts only
// while it is current. With the first PSK established and traffic flowing
// (longer than --pq-max-age, so a healthy rotation never holds), the
// exchange is blocked the way TestRequiredHoldsUntilPSK blocks it (n2
// restarted on another --pq-port); each end holds the peer within
// max-age plus a check tick of its last PSK, after which the underlay
// carries no pod packet (no plaintext, no WireGuard data but keepalives).
// Unblocked, a fresh PSK releases the peer and traffic resumes.
func TestRequiredHoldsAgainAfterMaxAge(t *testing.T) {
	const every = 2 * time.Second
	const maxAge = 3 * every // the --pq-max-age default
	c, nodes, pods := startModes(t, every, "required", "required")
	n1, n2, p1, p2 := nodes[0], nodes[1], pods[0], pods[1]
	first := sharedPSK(t, n1, n2, 30*time.Second)
	connect(t, p1, p2)
	connect(t, p2, p1)

	// Healthy: 100/s both ways for longer than max-age, nothing lost.
	healthy := maxAge + 4*time.Second
	wait := pingBoth(t, p1, p2, int(healthy/pingGap))
	sent, lost, _ := wait()
	if lost != [2]int{} {
		t.Fatalf("healthy rotations under required with max-age %v: lost %v of %v", maxAge, lost, sent)
	}

	// Block: n2 listens on another port than n1 sends to, and sends to
	// one n1 does not listen on.
	tBlock := time.Now()
	n2.StopDaemon(syscall.SIGTERM)
	args := append([]string(nil), n2.ExtraArgs...)
	n2.ExtraArgs = append(append([]string(nil), args...), "--pq-port", strconv.Itoa(c.Cfg.ListenPort+7))
	if err := n2.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	tRestart := time.Now()
	var held [2]time.Duration
	err := harness.WaitFor(maxAge+15*time.Second, "both ends hold the peer after max-age", func() (bool, error) {
		for i, n := range []*harness.Node{n1, n2} {
			if held[i] == 0 && heldOn(t, n) {
				held[i] = time.Since(tBlock)
			}
		}
		return held[0] != 0 && held[1] != 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// n1's last PSK is from before the block; n2 adopted its PSK at its
	// restart (a restart does not know the PSK's age). Each holds within
	// max-age + the 1 s check tick (+1 s for a loaded machine).
	const slack = 2 * time.Second
	if held[0] > maxAge+slack {
		t.Fatalf("n1 held its peer %v after the block, want <= max-age %v + %v", held[0], maxAge, slack)
	}
	if held[1] > tRestart.Sub(tBlock)+maxAge+slack {
		t.Fatalf("n2 held its peer %v after the block (%v after its restart), want <= max-age %v + %v after the restart", held[1], held[1]-tRestart.Sub(tBlock), maxAge, slack)
	}
	if held[0] < maxAge-2*every {
		t.Fatalf("n1 held its peer %v after the block: sooner than max-age %v allows (its last PSK is at most about an interval older)", held[0], maxAge)
	}

	const samples = 200 // harness captureUnderlay's Samples
	var stopped [2]harness.PingResult
	rep := c.NoPlaintext(t, c.Classifier(), "PSK older than max-age", func() {
		for i, pair := range [][2]*harness.Pod{{p1, p2}, {p2, p1}} {
			r, err := pair[0].NS.Ping(pair[1].IP, 20, 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			stopped[i] = r
		}
	})
	for i, r := range stopped {
		if r.Received != 0 {
			t.Fatalf("required, PSK older than max-age: %d of %d pings answered (direction %d)", r.Received, r.Sent, i)
		}
	}
	if n := podFrames(t, rep, samples); n != 0 {
		t.Fatalf("required, PSK older than max-age: %d WireGuard data frames carrying packets on the underlay: %s", n, rep)
	}

	// Unblock: n2 back on the port n1 sends to.
	n2.StopDaemon(syscall.SIGTERM)
	n2.ExtraArgs = args
	if err := n2.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	tUnblock := time.Now()
	err = harness.WaitFor(30*time.Second, "a fresh PSK on both ends", func() (bool, error) {
		pa, pb := pskOf(t, n1, n2.MustPublicKey(t)), pskOf(t, n2, n1.MustPublicKey(t))
		return pa == pb && fingerprint(pa) != first && !heldOn(t, n1) && !heldOn(t, n2), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	connect(t, p1, p2)
	connect(t, p2, p1)
	resumed := time.Since(tUnblock)
	var r harness.PingResult
	after := c.EncryptedOnly(t, c.Classifier(), "after a fresh PSK", func() {
		r, err = p1.NS.Ping(p2.IP, 50, 20*time.Millisecond)
	})
	if err != nil || r.Loss() != 0 {
		t.Fatalf("after a fresh PSK: %+v %v", r, err)
	}
	harness.Result(t, "--pq-interval %v, max-age %v: healthy %d+%d pings at %v intervals, lost %d+%d; exchange blocked: n1 held its peer after %v, n2 after %v (%v after its restart); then pings %d/%d and %d/%d answered, underlay: %d pod data frames (%s); unblocked: fresh PSK, released, traffic in %v, then %d/%d, capture: %s",
		every, maxAge, sent[0], sent[1], pingGap, lost[0], lost[1], held[0].Round(100*time.Millisecond), held[1].Round(100*time.Millisecond), (held[1] - tRestart.Sub(tBlock)).Round(100*time.Millisecond),
		stopped[0].Received, stopped[0].Sent, stopped[1].Received, stopped[1].Sent, podFrames(t, rep, samples), rep, resumed.Round(100*time.Millisecond), r.Received, r.Sent, after)
}
