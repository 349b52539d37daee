package nat

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/nat"
	"github.com/wgcni/wgcni/daemon/pqpeer"
	"github.com/wgcni/wgcni/tests/harness"
)

// pskOf reads the PSK n's device holds for peer; the caller compares it
// and never prints it. All-zero: none (or no such peer).
func pskOf(t *testing.T, n *harness.Node, peer wgtypes.Key) wgtypes.Key {
	t.Helper()
	psk, _, err := n.PresharedKey(peer)
	if err != nil {
		t.Fatal(err)
	}
	return psk
}

// waitSamePSK waits until a and b hold the same non-zero PSK for each
// other and returns how long that took.
func waitSamePSK(t *testing.T, a, b *harness.Node, timeout time.Duration) time.Duration {
	t.Helper()
	ka, kb := a.MustPublicKey(t), b.MustPublicKey(t)
	start := time.Now()
	err := harness.WaitFor(timeout, fmt.Sprintf("the same PSK on %s and %s", a.Name, b.Name), func() (bool, error) {
		x, y := pskOf(t, a, kb), pskOf(t, b, ka)
		return x != (wgtypes.Key{}) && x == y, nil
	})
	if err != nil {
		t.Fatalf("%v (%s has one: %v, %s has one: %v); pq status of %s: %s", err, a.Name, pskOf(t, a, kb) != (wgtypes.Key{}),
			b.Name, pskOf(t, b, ka) != (wgtypes.Key{}), a.Name, pqSummary(a, b.Name))
	}
	return time.Since(start)
}

// pqSummary is a's post-quantum state for peer node (public data only).
func pqSummary(a *harness.Node, peer string) string {
	s, err := pqpeer.ReadStatus(a.RunDir)
	if err != nil {
		return err.Error()
	}
	for _, p := range s.Peers {
		if p.Node == peer {
			return fmt.Sprintf("%s %s exchanges=%d failures=%d last_error=%q", p.Role, p.State, p.Exchanges, p.Failures, p.LastError)
		}
	}
	return "no such peer"
}

// TestNATWithPostQuantum runs NAT traversal with --post-quantum=on on
// every node (docs/nat.md, docs/post-quantum.md): reachable r1, r2; a1
// behind an endpoint-independent router, c1 behind another, b1 behind a
// symmetric one. A NATed node and a reachable one hold the same PSK (the
// exchange runs over the tunnel: the NATed node has no endpoint to send
// to) and their pods talk; the punched pair a1 <-> c1 gets its PSK and
// talks over the direct path; the relayed pair a1 <-> b1 still talks
// (its own session rides the relay's two tunnels, each with a PSK, and
// has a PSK of its own).
//
// With required, each end also holds its peers until their PSK: the
// exchange with a NATed peer runs over the few addresses a held tunnel
// still carries. The relayed and the punched pair have their own session
// (relayed: through the relay, WireGuard in WireGuard), held for its own
// PSK on whatever path it takes.
func TestNATWithPostQuantum(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		harness.Missing(t, "nft (the home routers' NAT; make deps installs nftables)")
	}
	for _, mode := range []string{"on", "required"} {
		t.Run(mode, func(t *testing.T) { natWithPostQuantum(t, mode) })
	}
}

func natWithPostQuantum(t *testing.T, mode string) {
	pqArgs := []string{"--post-quantum", mode, "--pq-interval", "10s"}
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, Tag: "nq"}, 0)
	var nodes []*harness.Node
	reach := func() *harness.Node {
		n, err := c.AddNode(pqArgs...)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
		return n
	}
	router := func(m harness.NATMapping) *harness.Router {
		r, err := c.AddRouter(m)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	behind := func(r *harness.Router) *harness.Node {
		n, err := r.AddNode(append([]string{"--reachable=no"}, pqArgs...)...)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
		return n
	}
	start := time.Now()
	r1, r2 := reach(), reach()
	rtA, rtC, rtB := router(harness.EndpointIndependent), router(harness.EndpointIndependent), router(harness.Symmetric)
	a1, c1, b1 := behind(rtA), behind(rtC), behind(rtB)
	pod := map[*harness.Node]*harness.Pod{}
	for _, n := range nodes {
		pod[n] = n.MustAddPod(t)
	}
	caps := startCaptures(t, c, []*harness.Router{rtA, rtB, rtC})
	var res []string

	t.Run("NATed and reachable share a PSK", func(t *testing.T) {
		for _, r := range []*harness.Node{r1, r2} {
			d := waitSamePSK(t, a1, r, 30*time.Second)
			harness.Connect(t, pod[a1].NS, pod[r].IP, "pod a1 -> pod "+r.Name, 3)
			harness.Connect(t, pod[r].NS, pod[a1].IP, "pod "+r.Name+" -> pod a1", 3)
			t.Logf("FIGURE a1 <-> %s: same PSK %v after the pods were up (%v after the first daemon started); a1: %s",
				r.Name, d.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), pqSummary(a1, r.Name))
			res = append(res, "a1-"+r.Name+"=psk,ping")
		}
	})

	t.Run("punched pair gets its PSK", func(t *testing.T) {
		waitPath(t, a1, c1, nat.Punched, 30*time.Second)
		waitPath(t, c1, a1, nat.Punched, 10*time.Second)
		d := waitSamePSK(t, a1, c1, 30*time.Second)
		harness.Connect(t, pod[a1].NS, pod[c1].IP, "pod a1 -> pod c1 (punched)", 3)
		harness.Connect(t, pod[c1].NS, pod[a1].IP, "pod c1 -> pod a1 (punched)", 3)
		if p := paths(a1)[c1.Name]; p.Mode != nat.Punched {
			t.Errorf("a1 -> c1 left the punched path: %+v", p)
		}
		t.Logf("FIGURE a1 <-> c1 punched, same PSK (waited %v more); a1: %s", d.Round(time.Millisecond), pqSummary(a1, c1.Name))
		res = append(res, "a1-c1=punched,psk,ping")
	})

	t.Run("relayed pair still talks", func(t *testing.T) {
		pa := waitPath(t, a1, b1, nat.Relayed, 30*time.Second)
		pb := waitPath(t, b1, a1, nat.Relayed, 10*time.Second)
		if pa.Via != pb.Via || pa.Via == "" {
			t.Fatalf("a1 and b1 chose different relays: %+v / %+v", pa, pb)
		}
		harness.Connect(t, pod[a1].NS, pod[b1].IP, "pod a1 -> pod b1 (relayed)", 3)
		harness.Connect(t, pod[b1].NS, pod[a1].IP, "pod b1 -> pod a1 (relayed)", 3)
		// Both legs through the relay are protected by their own PSKs.
		relay := r1
		if pa.Via == r2.Name {
			relay = r2
		}
		waitSamePSK(t, b1, relay, 30*time.Second)
		waitSamePSK(t, a1, relay, 5*time.Second)
		// And so is the pair's own session, which rides the relay's
		// tunnels end to end (WireGuard in WireGuard): with required its
		// pods talked only once this PSK was there.
		waitSamePSK(t, a1, b1, 5*time.Second)
		t.Logf("FIGURE a1 <-> b1 relayed via %s (%s); both legs and the pair's own session hold a PSK; a1's own exchange with b1 (over the relay): %s",
			pa.Via, pa.Why, pqSummary(a1, b1.Name))
		res = append(res, "a1-b1=relayed via "+pa.Via+",legs and pair psk,ping")
	})
	// The exchanges ran inside the tunnels: every segment (the underlay,
	// each router's LAN and WAN) carries WireGuard and no plaintext pod
	// packet.
	t.Run("only WireGuard on every segment", func(t *testing.T) { caps.check(t) })

	// Every exchange went to an address that works at once: never to an
	// unreachable node's unset endpoint, never a NATed node's underlay
	// message the peer cannot tie to it (dropped, then ~4 s of retries).
	// One exception is allowed and counted: a single unanswered first
	// attempt of the relayed pair's own exchange. That exchange starts as
	// soon as this node's leg to the relay is released, while the relay
	// and the other end may still be re-creating their entries for their
	// own first PSKs; a fresh-clone run met it once (retried and done 3 s
	// later), cause not proven (docs/nat.md). A wrong address choice fails
	// every attempt to that peer, for every peer it concerns.
	t.Run("no exchange attempt wasted", func(t *testing.T) {
		var failed []string
		for _, n := range nodes {
			for _, l := range n.LogLines("pq exchange attempt failed") {
				failed = append(failed, n.Name+": "+l)
			}
		}
		pairKeys := []string{a1.MustPublicKey(t).String(), b1.MustPublicKey(t).String()}
		pairRetry := len(failed) == 1 && strings.Contains(failed[0], "attempt=1 ") && strings.Contains(failed[0], "no response") &&
			(strings.HasPrefix(failed[0], a1.Name+": ") && strings.Contains(failed[0], pairKeys[1]) ||
				strings.HasPrefix(failed[0], b1.Name+": ") && strings.Contains(failed[0], pairKeys[0]))
		if !pairRetry {
			for _, l := range failed {
				t.Errorf("%s", l)
			}
		}
		res = append(res, fmt.Sprintf("failed exchange attempts=%d (relayed pair's first attempt retried: %v)", len(failed), pairRetry))
	})
	harness.Result(t, "nat+post-quantum=%s: %s (failed=%v)", mode, strings.Join(res, "; "), t.Failed())
}
