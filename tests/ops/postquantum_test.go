package ops

import (
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/ctl"
	"github.com/wgcni/wgcni/daemon/pqpeer"
	"github.com/wgcni/wgcni/tests/harness"
)

// TestPostQuantumOperatorView: with --post-quantum=on the operator sees,
// per peer, the PSK's age and the exchanges in the metrics, and the state
// in wgcnictl status (table and JSON); a node with off shows "off".
func TestPostQuantumOperatorView(t *testing.T) {
	c := harness.Start(t, harness.Config{LeaseTTL: leaseTTL, DaemonArgs: []string{"--metrics-addr", metricsAddr}}, 0)
	var nodes []*harness.Node
	for _, mode := range []string{"on", "on", "off"} {
		n, err := c.AddNode("--post-quantum", mode, "--pq-interval", "2s")
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	harness.WaitMesh(t, nodes, 30*time.Second)
	dev2, err := n2.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	peer := map[string]string{"peer_node": n2.Name, "public_key": dev2.PublicKey.String()}
	// A few rotations.
	err = harness.WaitFor(30*time.Second, "3 exchanges with n2 in n1's metrics", func() (bool, error) {
		v, ok := scrapeNode(t, n1).value("wgcni_pq_exchanges_total", peer)
		return ok && v >= 3, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s := scrapeNode(t, n1)
	age := s.must(t, n1.Name, "wgcni_pq_psk_age_seconds", peer)
	if age < 0 || age > 5 {
		t.Errorf("PSK age %v s at --pq-interval 2s", age)
	}
	if v := s.must(t, n1.Name, "wgcni_pq_peer_has_psk", peer); v != 1 {
		t.Errorf("wgcni_pq_peer_has_psk %v", v)
	}
	if v := s.must(t, n1.Name, "wgcni_pq_exchange_failures_total", peer); v != 0 {
		t.Errorf("%v exchange failures", v)
	}
	n3peer := map[string]string{"peer_node": n3.Name}
	if v := s.must(t, n1.Name, "wgcni_pq_peer_has_psk", n3peer); v != 0 {
		t.Errorf("PSK with n3 (off): %v", v)
	}

	st := decode[ctl.StatusReport](t, wgcnictl(t, c, n1, "status", true))
	states := map[string]string{}
	for _, p := range st.Peers {
		if p.PostQuantum == nil {
			t.Fatalf("n1 status: no postQuantum for %s", p.Node)
		}
		states[p.Node] = p.PostQuantum.State
	}
	if states[n2.Name] != pqpeer.StatePSK || states[n3.Name] != pqpeer.StateUnsupported {
		t.Errorf("n1 status post-quantum states %v", states)
	}
	table := wgcnictl(t, c, n1, "status", false)
	if !strings.Contains(table, "PQ") || !strings.Contains(table, " psk ") || !strings.Contains(table, "unsupported") {
		t.Errorf("n1 status table lacks the PQ state:\n%s", table)
	}
	off := wgcnictl(t, c, n3, "status", false)
	if strings.Contains(off, " psk ") || !strings.Contains(off, " off ") {
		t.Errorf("n3 (off) status table:\n%s", off)
	}
	t.Logf("n1 status:\n%s", table)
}
