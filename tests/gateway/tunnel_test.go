package gateway

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/gwlive"
	"github.com/wgcni/wgcni/daemon/liveness"
	"github.com/wgcni/wgcni/tests/harness"
)

// tunnelTarget bounds the failover when only the tunnel dies: liveness
// needs its silence window (keepalive + one rekey timeout) of sending
// with nothing back, gwlive then DeadAfter, plus a heal tick for each,
// and load on a shared machine.
const tunnelTarget = liveness.KeepaliveTimeout + liveness.RekeyTimeout + gwlive.DeadAfter + 10*time.Second

// TestGatewayTunnelDead: the serving gateway's WireGuard UDP port is
// blocked (nftables, in its namespace) under a 100/s ping from a pod on a
// third node to the site host. Its daemon and its etcd lease stay alive,
// so the election does not move: the pod's node moves the site to the
// other gateway's peer once liveness finds the tunnel dead, and says so
// (metrics, wgcnictl gateways). Unblocked, the tunnel comes back and
// the site returns to the elected gateway once, after gwlive.UpAfter:
// the moves over 60 s are counted, no flapping, and no ping is lost but
// the answers in flight from the standby at that move.
func TestGatewayTunnelDead(t *testing.T) {
	c, site := startTag(t, "gl")
	g1, g2, f := masqueradingPair(t, c, site)
	n3, pod := f.n, f.pod
	f.pings, f.target = 100*int((tunnelTarget+15*time.Second)/time.Second), tunnelTarget
	dev, err := g1.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	const table = "glblock"
	block := fmt.Sprintf(`table inet %s {
	chain in { type filter hook input priority -10; udp dport %d drop; }
	chain out { type filter hook output priority -10; udp sport %d drop; }
}`, table, dev.ListenPort, dev.ListenPort)

	rules := filepath.Join(c.Dir, "block.nft")
	if err := os.WriteFile(rules, []byte(block), 0o644); err != nil {
		t.Fatal(err)
	}
	blocked := time.Now()
	f.failover(t, fmt.Sprintf("WireGuard port %d of serving gateway %s blocked", dev.ListenPort, g1.Name), g1, g2, func() {
		blocked = time.Now()
		if out, err := g1.Exec("nft", "-f", rules); err != nil {
			t.Fatal(out, err)
		}
	})
	// The election did not move: g1 still leads, only n3 skips it.
	r := gateways(t, c, n3)
	if len(r.Sites) != 1 || r.Sites[0].Gateway != g1.Name || r.Sites[0].Here == nil || r.Sites[0].Here.Gateway != g2.Name ||
		!strings.Contains(r.Sites[0].Here.Reason, "tunnel") {
		t.Fatalf("wgcnictl gateways on %s: %+v (here %+v), want %s elected, %s used here because of its tunnel", n3.Name, r.Sites, r.Sites[0].Here, g1.Name, g2.Name)
	}
	harness.Result(t, "wgcnictl gateways on %s: elected %s, here %s: %q (%v after the block)", n3.Name, r.Sites[0].Gateway, r.Sites[0].Here.Gateway, r.Sites[0].Here.Reason, time.Since(blocked).Round(time.Second))
	if m := string(scrape(t, n3)); !strings.Contains(m, fmt.Sprintf(`wgcni_gateway_site_substitute{elected="%s",gateway="%s"`, g1.Name, g2.Name)) {
		t.Errorf("no wgcni_gateway_site_substitute for %s -> %s in %s's metrics", g1.Name, g2.Name, n3.Name)
	}

	// Unblocked: for 60 s at most one move, back to the elected gateway.
	f.c.NoPlaintext(t, f.cls, "unblocked", func() {
		stop := make(chan struct{})
		seen := watchHolder(c, n3, stop)
		ping := startPing(t, pod.NS, siteHost, 6000, pingInterval)
		at := time.Now()
		if out, err := g1.Exec("nft", "delete", "table", "inet", table); err != nil {
			t.Fatal(out, err)
		}
		sent, recv, gap := ping.wait(t)
		close(stop)
		seq := <-seen
		back, movedBack := "", time.Time{}
		if seq[len(seq)-1] == g1.Name {
			movedBack = routedAt(t, n3, g1.Name, at)
			back = fmt.Sprintf("; back on elected %s %v after unblocking (applied, per its log)", g1.Name, movedBack.Sub(at).Round(time.Millisecond))
		}
		runs, rtt := ping.losses(t)
		harness.Result(t, "unblocked: over %v holders seen on %s %q (%d moves); ping 100/s: %d/%d lost %v, longest outage %v, longest round trip %v%s",
			time.Since(at).Round(time.Second), n3.Name, seq, len(seq)-1, sent-recv, sent, runs, gap, rtt.Round(time.Millisecond), back)
		if fmt.Sprint(seq) != fmt.Sprint([]string{g2.Name}) && fmt.Sprint(seq) != fmt.Sprint([]string{g2.Name, g1.Name}) {
			t.Errorf("after unblocking: holders %q, want %s then at most one move back to %s", seq, g2.Name, g1.Name)
		}
		if err := lostOnlyInFlight(runs, movedBack, rtt, pingInterval); err != nil {
			t.Errorf("after unblocking: %v", err)
		}
	})
	// The elected order is kept: the site does return to g1.
	waitHolder(t, c, n3, g1.Name, 90*time.Second)
	if r := gateways(t, c, n3); r.Sites[0].Here != nil {
		t.Errorf("wgcnictl gateways on %s back on %s still shows a substitute: %+v", n3.Name, g1.Name, r.Sites[0].Here)
	}
}

// lostOnlyInFlight checks the pings lost across a deliberate move of a
// site (failback): WireGuard accepts a source address only from the peer
// whose allowed IPs hold it, so answers the old gateway had already sent
// when the move was applied are dropped ("packet with disallowed source
// address") — at most the requests of one round trip, in one run that
// spans the move. Anything else (no move, two runs, a run away from the
// move, more than a round trip's worth) is a real loss.
func lostOnlyInFlight(runs []lossRun, moved time.Time, rtt, interval time.Duration) error {
	if len(runs) == 0 {
		return nil
	}
	if moved.IsZero() {
		return fmt.Errorf("pings lost %v without a move", runs)
	}
	if len(runs) > 1 {
		return fmt.Errorf("pings lost in %d runs %v, want at most one, at the move (%s)", len(runs), runs, moved.Format("15:04:05.000"))
	}
	r := runs[0]
	// The answer before the run came before the device call, the one after
	// it (through the new gateway) after; the "site routed" line follows
	// the call within moments and ping prints an answer within moments of
	// its arrival, so a second either way is slack, not a second move.
	const slack = time.Second
	if r.before.IsZero() || r.after.IsZero() || r.before.After(moved.Add(slack)) || r.after.Before(moved.Add(-slack)) {
		return fmt.Errorf("pings lost %v, not across the move at %s", r, moved.Format("15:04:05.000"))
	}
	if inFlight := int(rtt/interval) + 1; r.last-r.first+1 > inFlight {
		return fmt.Errorf("%d pings lost %v at the move, more than the %d a round trip (longest %v) can have in flight", r.last-r.first+1, r, inFlight, rtt)
	}
	return nil
}
