// Package pq proves issue 17 end to end in the namespace cluster
// (tests/harness, real etcd, real userspace WireGuard devices): wgcnid's
// post-quantum preshared keys agree on both ends (read back through
// wgctrl, compared, never printed), change every interval, are really used
// by WireGuard, rotate under traffic without a lost packet (also across
// daemon restarts), leave nodes with --post-quantum=off working, and in
// required mode hold a peer's pod traffic until the first PSK and again
// once its PSK is older than --pq-max-age. Every test
// prints a "RESULT" line with its figures.
package pq

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/liveness"
	"github.com/wgcni/wgcni/tests/harness"
)

// tag prefixes every namespace, device and temp dir of this suite.
const tag = "pq"

// interval is the test clusters' --pq-interval: short, so that a test
// sees many rotations.
const interval = 3 * time.Second

// leaseTTL outlasts a stopped daemon in these tests: its peers keep it.
const leaseTTL = time.Minute

func start(t *testing.T, nodes int, args ...string) *harness.Cluster {
	t.Helper()
	return harness.Start(t, harness.Config{Tag: tag, LeaseTTL: leaseTTL, DaemonArgs: args}, nodes)
}

func pqArgs(mode string) []string {
	return []string{"--post-quantum", mode, "--pq-interval", interval.String()}
}

// startModes starts one node per mode (--post-quantum), with --pq-interval
// every, waits for the mesh, and gives each node a pod.
func startModes(t *testing.T, every time.Duration, modes ...string) (*harness.Cluster, []*harness.Node, []*harness.Pod) {
	t.Helper()
	c := harness.Start(t, harness.Config{Tag: tag, LeaseTTL: leaseTTL}, 0)
	var nodes []*harness.Node
	for _, mode := range modes {
		n, err := c.AddNode("--post-quantum", mode, "--pq-interval", every.String())
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	harness.WaitMesh(t, nodes, 30*time.Second)
	var pods []*harness.Pod
	for _, n := range nodes {
		pods = append(pods, n.MustAddPod(t))
	}
	return c, nodes, pods
}

// pskOf reads the PSK n's device holds for peer. The caller compares it
// and never prints it; all-zero means none.
func pskOf(t *testing.T, n *harness.Node, peer wgtypes.Key) wgtypes.Key {
	t.Helper()
	psk, found, err := n.PresharedKey(peer)
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("%s has no peer %s", n.Name, peer)
	}
	return psk
}

// fingerprint names a PSK in memory (to count distinct ones) without
// keeping or printing the key itself.
func fingerprint(k wgtypes.Key) [32]byte { return sha256.Sum256(k[:]) }

// sharedPSK waits until a and b hold the same non-zero PSK for each other
// and returns its fingerprint.
func sharedPSK(t *testing.T, a, b *harness.Node, timeout time.Duration) [32]byte {
	t.Helper()
	ka, kb := a.MustPublicKey(t), b.MustPublicKey(t)
	var fp [32]byte
	err := harness.WaitFor(timeout, "same PSK on "+a.Name+" and "+b.Name, func() (bool, error) {
		pa, pb := pskOf(t, a, kb), pskOf(t, b, ka)
		if pa == (wgtypes.Key{}) || pa != pb {
			return false, nil
		}
		fp = fingerprint(pa)
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func connect(t *testing.T, from, to *harness.Pod) {
	t.Helper()
	harness.Connect(t, from.NS, to.IP, from.Name+" -> "+to.Name, 3)
}

// twoNodes starts two nodes with --post-quantum=on, a pod on each, and
// waits until the pods reach each other both ways.
func twoNodes(t *testing.T) (n1, n2 *harness.Node, p1, p2 *harness.Pod) {
	t.Helper()
	c := start(t, 2, pqArgs("on")...)
	n1, n2 = c.Nodes()[0], c.Nodes()[1]
	harness.WaitMesh(t, c.Nodes(), 30*time.Second)
	p1, p2 = n1.MustAddPod(t), n2.MustAddPod(t)
	connect(t, p1, p2)
	connect(t, p2, p1)
	return n1, n2, p1, p2
}

// TestPSKAgreesRotatesAndIsUsed: both ends hold the same PSK, it changes
// every interval, and a wrong PSK on one end stops the handshake until the
// right one is back.
func TestPSKAgreesRotatesAndIsUsed(t *testing.T) {
	n1, n2, p1, p2 := twoNodes(t)

	// Agreement and rotation: sample for 6 intervals; every sample where
	// both ends agree adds the PSK's fingerprint.
	seen := map[[32]byte]bool{sharedPSK(t, n1, n2, 20*time.Second): true}
	k1, k2 := n1.MustPublicKey(t), n2.MustPublicKey(t)
	agree, differ := 0, 0
	for end := time.Now().Add(6 * interval); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		a, b := pskOf(t, n1, k2), pskOf(t, n2, k1)
		if a == (wgtypes.Key{}) {
			t.Fatal("PSK vanished from n1's device")
		}
		if a != b {
			differ++ // one round trip between the two installs
			continue
		}
		agree++
		seen[fingerprint(a)] = true
	}
	if len(seen) < 4 {
		t.Fatalf("%d distinct PSKs in %v at --pq-interval %v, want at least 4", len(seen), 6*interval, interval)
	}
	if differ > agree/4 {
		t.Fatalf("ends disagreed in %d of %d samples", differ, agree+differ)
	}
	if r, err := p1.NS.Ping(p2.IP, 5, 100*time.Millisecond); err != nil || r.Loss() != 0 {
		t.Fatalf("ping after rotations: %+v %v", r, err)
	}

	// In use: with n2's daemon stopped (its device keeps running and no
	// exchange changes anything), give n2's entry for n1 a wrong PSK and
	// re-create it so that it has no session: its handshake must fail.
	n2.StopDaemon(syscall.SIGTERM)
	var peer wgtypes.Peer
	dev, err := n2.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dev.Peers {
		if p.PublicKey == k1 {
			peer = p
		}
	}
	var wrong wgtypes.Key
	rand.Read(wrong[:])
	hsBefore := peer.LastHandshakeTime
	if err := n2.ConfigureDevice(wgtypes.PeerConfig{PublicKey: k1, Remove: true}); err != nil {
		t.Fatal(err)
	}
	if err := n2.ConfigureDevice(wgtypes.PeerConfig{PublicKey: k1, Endpoint: peer.Endpoint, AllowedIPs: peer.AllowedIPs, ReplaceAllowedIPs: true,
		PersistentKeepaliveInterval: &peer.PersistentKeepaliveInterval, PresharedKey: &wrong}); err != nil {
		t.Fatal(err)
	}
	r, err := p2.NS.Ping(p1.IP, 8, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Received != 0 {
		t.Fatalf("with a wrong PSK on n2, %d of %d pings got through: the PSK is not in use", r.Received, r.Sent)
	}
	// The right PSK (n1's, copied device to device) brings it back.
	right := pskOf(t, n1, k2)
	if err := n2.ConfigureDevice(wgtypes.PeerConfig{PublicKey: k1, UpdateOnly: true, PresharedKey: &right}); err != nil {
		t.Fatal(err)
	}
	connect(t, p2, p1)
	hs := time.Time{}
	for _, p := range mustDev(t, n2).Peers {
		if p.PublicKey == k1 {
			hs = p.LastHandshakeTime
		}
	}
	if !hs.After(hsBefore) {
		t.Fatalf("no new handshake after the PSK was corrected")
	}
	if err := n2.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	fp := sharedPSK(t, n1, n2, 20*time.Second)
	seen[fp] = true
	harness.Result(t, "same PSK on both ends in %d of %d samples (%d in the install window), %d distinct PSKs in %v at --pq-interval %v; wrong PSK on one end: %d/%d pings, handshake failed; corrected: handshake and ping back",
		agree, agree+differ, differ, len(seen)-1, 6*interval, interval, r.Received, r.Sent)
}

func mustDev(t *testing.T, n *harness.Node) *wgtypes.Device {
	t.Helper()
	d, err := n.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// pingGap is ping's -i: ping -i 0.01 manages only ~60/s on this loaded
// 2-core machine; 6 ms gives at least 100/s (the rate is measured and
// printed).
const pingGap = 6 * time.Millisecond

// pingBoth pings a→b and b→a for count packets each; the returned wait
// gives sent, lost and the measured rate per direction.
func pingBoth(t *testing.T, a, b *harness.Pod, count int) func() (sent, lost [2]int, rate [2]float64) {
	t.Helper()
	type res struct {
		r   harness.PingResult
		err error
		d   time.Duration
	}
	ch := [2]chan res{make(chan res, 1), make(chan res, 1)}
	for i, pair := range [][2]*harness.Pod{{a, b}, {b, a}} {
		go func() {
			t0 := time.Now()
			r, err := pair[0].NS.Ping(pair[1].IP, count, pingGap)
			ch[i] <- res{r, err, time.Since(t0)}
		}()
	}
	return func() (sent, lost [2]int, rate [2]float64) {
		for i := range ch {
			x := <-ch[i]
			if x.err != nil {
				t.Fatal(x.err)
			}
			sent[i], lost[i], rate[i] = x.r.Sent, x.r.Loss(), float64(x.r.Sent)/x.d.Seconds()
		}
		return
	}
}

// rotations counts the distinct shared PSKs seen while f runs.
func rotations(t *testing.T, a, b *harness.Node, done <-chan struct{}) int {
	ka, kb := a.MustPublicKey(t), b.MustPublicKey(t)
	seen := map[[32]byte]bool{}
	for {
		select {
		case <-done:
			return len(seen) - 1
		case <-time.After(200 * time.Millisecond):
		}
		// A stopped daemon leaves its device: reading it still works.
		pa, err1 := a.WGDevice()
		pb, err2 := b.WGDevice()
		if err1 != nil || err2 != nil {
			continue
		}
		var x, y wgtypes.Key
		for _, p := range pa.Peers {
			if p.PublicKey == kb {
				x = p.PresharedKey
			}
		}
		for _, p := range pb.Peers {
			if p.PublicKey == ka {
				y = p.PresharedKey
			}
		}
		if x != (wgtypes.Key{}) && x == y {
			seen[fingerprint(x)] = true
		}
	}
}

// lastHandshake is n's latest handshake with peer.
func lastHandshake(t *testing.T, n *harness.Node, peer wgtypes.Key) time.Time {
	t.Helper()
	for _, p := range mustDev(t, n).Peers {
		if p.PublicKey == peer {
			return p.LastHandshakeTime
		}
	}
	t.Fatalf("%s has no peer %s", n.Name, peer)
	return time.Time{}
}

// renewalAt is WireGuard's REKEY_AFTER_TIME: a sender renews a session
// this old. A rotated PSK is used from that handshake on.
const renewalAt = 120 * time.Second

// TestRotationsLoseNothing: 10+ rotations under a 100/s ping in both
// directions lose no packet, and the window spans WireGuard's session
// renewal, which must succeed with the rotated PSK (a mismatch would fail
// it: no new handshake); then the same while each daemon is killed and
// restarted in the middle of the schedule.
func TestRotationsLoseNothing(t *testing.T) {
	n1, n2, p1, p2 := twoNodes(t)
	sharedPSK(t, n1, n2, 20*time.Second)
	k1, k2 := n1.MustPublicKey(t), n2.MustPublicKey(t)
	// Let the start-up handshakes settle, then start the traffic some
	// 15 s before the session is due for renewal.
	time.Sleep(6 * time.Second)
	// The session to be renewed is the one current when the traffic
	// starts: a handshake while we wait (WireGuard starts one 15 s after
	// data that drew no answer, e.g. early in the start-up) moves the
	// renewal, so the wait is re-computed from it.
	var hs0 time.Time
	for i := 0; i < 3; i++ {
		hs := lastHandshake(t, n1, k2)
		if hs.Equal(hs0) {
			break
		}
		if !hs0.IsZero() {
			t.Logf("a handshake at %v while waiting: the renewal is 2 min after it", hs.Format(time.TimeOnly))
		}
		hs0 = hs
		if d := time.Until(hs0.Add(renewalAt - 15*time.Second)); d > 0 {
			t.Logf("waiting %v for the window around WireGuard's renewal (session from %v)", d.Round(time.Second), hs0.Format(time.TimeOnly))
			time.Sleep(d)
		}
	}

	for _, restart := range []bool{false, true} {
		count := int((11*interval)/pingGap) + 100
		wait := pingBoth(t, p1, p2, count)
		done := make(chan struct{})
		got := make(chan int, 1)
		go func() { got <- rotations(t, n1, n2, done) }()
		restarts := 0
		if restart {
			// Kill each daemon once, a third of an interval after a
			// rotation would start: in or near the exchange.
			for _, n := range []*harness.Node{n1, n2, n1, n2} {
				time.Sleep(interval + interval/3)
				if err := n.RestartDaemon(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				restarts++
			}
		}
		sent, lost, rate := wait()
		close(done)
		n := <-got
		what := "rotations"
		if restart {
			what = fmt.Sprintf("rotations with %d wgcnid SIGKILL restarts", restarts)
		}
		t.Logf("%s: %d rotations; p1->p2 %d sent %d lost (%.0f/s), p2->p1 %d sent %d lost (%.0f/s)", what, n, sent[0], lost[0], rate[0], sent[1], lost[1], rate[1])
		if n < 10 {
			t.Errorf("%s: %d rotations seen, want at least 10", what, n)
		}
		if lost[0]+lost[1] != 0 {
			t.Errorf("%s: %d packets lost", what, lost[0]+lost[1])
		}
		renewed := ""
		if !restart {
			h1, h2 := lastHandshake(t, n1, k2), lastHandshake(t, n2, k1)
			if !h1.After(hs0) || !h2.After(hs0) {
				t.Errorf("no WireGuard renewal with a rotated PSK in the window (handshakes %v, %v; session from %v)", h1, h2, hs0)
			}
			// Under traffic the session's initiator renews at once when
			// it is 120 s old. An attempt that meets the two ends in
			// the commit window (R installed, I's Ack in flight) fails
			// and is retried RekeyTimeout later, with no loss: the
			// session carries on until RejectAfterTime (180 s), so the
			// retries have 60 s (docs/post-quantum.md, "The window").
			// Fresh-clone runs met a failed first attempt in 2 of 5
			// (renewal at 125.1 and 125.2 s) and two in a row once
			// (130.3 s), cause not proven. What must hold is a renewal
			// with the rotated PSK well before the session expires:
			// PSKs that stay mismatched fail every attempt, and the
			// ping window (up to ~140 s) sees none.
			d := h1.Sub(hs0)
			if d > liveness.RejectAfterTime-30*time.Second {
				t.Errorf("renewal %v after the session began: too close to its expiry at %v (PSKs mismatched beyond the commit window?)", d.Round(100*time.Millisecond), liveness.RejectAfterTime)
			}
			attempt := "first attempt"
			if failed := int((d - renewalAt) / liveness.RekeyTimeout); failed > 0 {
				attempt = fmt.Sprintf("attempt %d: %d failed before it, cause not proven (docs/post-quantum.md, \"The window\")", failed+1, failed)
			}
			renewed = fmt.Sprintf(", session renewed with a rotated PSK %v after the previous handshake (%s)", d.Round(100*time.Millisecond), attempt)
		}
		harness.Result(t, "%s under ping both ways (%.0f/s, %.0f/s measured): %d rotations, %d+%d sent, %d lost%s", what, rate[0], rate[1], n, sent[0], sent[1], lost[0]+lost[1], renewed)
	}
}

// TestMixedClusterWithOff: a node with --post-quantum=off (like a node of
// an older daemon: no key in its record) keeps full connectivity with
// nodes running on; those two use a PSK, the off node none.
func TestMixedClusterWithOff(t *testing.T) {
	_, nodes, pods := startModes(t, interval, "on", "on", "off")
	sharedPSK(t, nodes[0], nodes[1], 20*time.Second)
	time.Sleep(2 * interval)
	for _, pair := range [][2]int{{0, 2}, {1, 2}} {
		a, b := nodes[pair[0]], nodes[pair[1]]
		if pskOf(t, a, b.MustPublicKey(t)) != (wgtypes.Key{}) || pskOf(t, b, a.MustPublicKey(t)) != (wgtypes.Key{}) {
			t.Errorf("%s and %s (off) hold a PSK for each other", a.Name, b.Name)
		}
	}
	pings := 0
	for i := range pods {
		for j := range pods {
			if i == j {
				continue
			}
			connect(t, pods[i], pods[j])
			r, err := pods[i].NS.Ping(pods[j].IP, 20, 20*time.Millisecond)
			if err != nil || r.Loss() != 0 {
				t.Errorf("%s -> %s: %+v %v", pods[i].Name, pods[j].Name, r, err)
			}
			pings += r.Received
		}
	}
	// Downgrade: n2 restarts with off. It clears its device's PSKs; n1
	// sees n2's record without a key and clears its own; they still talk.
	n2 := nodes[1]
	n2.StopDaemon(syscall.SIGTERM)
	n2.ExtraArgs = pqArgs("off")
	if err := n2.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	k1, k2 := nodes[0].MustPublicKey(t), n2.MustPublicKey(t)
	err := harness.WaitFor(20*time.Second, "no PSK between n1 and n2 (off)", func() (bool, error) {
		return pskOf(t, nodes[0], k2) == (wgtypes.Key{}) && pskOf(t, n2, k1) == (wgtypes.Key{}), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	connect(t, pods[0], pods[1])
	connect(t, pods[1], pods[0])
	harness.Result(t, "n1,n2 on (shared PSK), n3 off (no PSK with either): all 6 directions answer, %d pings; n2 restarted with off: PSKs cleared on both ends, n1<->n2 answer", pings)
}

// TestRequiredHoldsUntilPSK: in required mode, pod traffic to a peer with
// which no exchange has succeeded is dropped (its PodCIDR is not routed
// into the tunnel nor allowed on the peer); it flows once an exchange works.
// The exchange is blocked by giving n2 another --pq-port than n1 sends to.
func TestRequiredHoldsUntilPSK(t *testing.T) {
	c := harness.Start(t, harness.Config{Tag: tag, LeaseTTL: leaseTTL}, 0)
	n1, err := c.AddNode(pqArgs("required")...)
	if err != nil {
		t.Fatal(err)
	}
	n2, err := c.AddNode(append(pqArgs("required"), "--pq-port", strconv.Itoa(c.Cfg.ListenPort+7))...)
	if err != nil {
		t.Fatal(err)
	}
	// The peers are configured, held: no AllowedIPs for the PodCIDRs.
	err = harness.WaitFor(20*time.Second, "peers configured", func() (bool, error) {
		d1, err := n1.WGDevice()
		if err != nil {
			return false, err
		}
		d2, err := n2.WGDevice()
		return err == nil && len(d1.Peers) == 1 && len(d2.Peers) == 1, err
	})
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := n1.MustAddPod(t), n2.MustAddPod(t)
	time.Sleep(3 * interval) // several exchange attempts fail meanwhile
	for _, n := range []*harness.Node{n1, n2} {
		for _, p := range mustDev(t, n).Peers {
			if len(p.AllowedIPs) != 0 || p.PresharedKey != (wgtypes.Key{}) {
				t.Fatalf("%s: held peer has AllowedIPs %v / a PSK", n.Name, p.AllowedIPs)
			}
		}
	}
	// Captured on the underlay: no plaintext pod packet (NoPlaintext
	// fails on one) and no WireGuard packet at all, so nothing
	// classical-only either.
	held := [2]harness.PingResult{}
	rep := c.NoPlaintext(t, c.Classifier(), "held peers", func() {
		for i, pair := range [][2]*harness.Pod{{p1, p2}, {p2, p1}} {
			r, err := pair[0].NS.Ping(pair[1].IP, 5, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if r.Received != 0 {
				t.Fatalf("required, no PSK: %d of %d pings %s -> %s answered", r.Received, r.Sent, pair[0].Name, pair[1].Name)
			}
			held[i] = r
		}
	})
	if rep.WireGuard() != 0 {
		t.Fatalf("held peers: WireGuard packets on the underlay: %s", rep)
	}
	// Unblock: n2 on the port n1 sends to.
	n2.StopDaemon(syscall.SIGTERM)
	n2.ExtraArgs = pqArgs("required")
	if err := n2.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	sharedPSK(t, n1, n2, 30*time.Second)
	connect(t, p1, p2)
	connect(t, p2, p1)
	took := time.Since(t0)
	var r harness.PingResult
	after := c.EncryptedOnly(t, c.Classifier(), "after the first PSK", func() {
		r, err = p1.NS.Ping(p2.IP, 50, 20*time.Millisecond)
	})
	if err != nil || r.Loss() != 0 {
		t.Fatalf("after the first PSK: %+v %v", r, err)
	}
	harness.Result(t, "exchange blocked: held peers (no AllowedIPs, no PSK), pings %d/%d and %d/%d answered, underlay capture: %s; unblocked: PSK and traffic in %v, then %d/%d, capture: %s",
		held[0].Received, held[0].Sent, held[1].Received, held[1].Sent, rep, took.Round(100*time.Millisecond), r.Received, r.Sent, after)
}
