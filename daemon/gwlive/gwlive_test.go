package gwlive

import (
	"net/netip"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/gateway"
	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/liveness"
)

// The judge skips a gateway only after DeadAfter in a dead state, never
// for pending or a blip, and takes it back only after UpAfter up.
func TestJudgeHolds(t *testing.T) {
	t0 := time.Unix(1000, 0)
	now := t0
	rechecks := 0
	j := New(func() { rechecks++ })
	j.now = func() time.Time { return now }
	defer j.Close()
	g1 := gateway.Candidate{Node: "g1", Record: netip.MustParsePrefix("10.244.1.0/24")}
	other := gateway.Candidate{Node: "g9", Record: netip.MustParsePrefix("10.244.9.0/24")}
	st := func(s liveness.State, since time.Time) []heal.PeerStatus {
		return []heal.PeerStatus{{Node: "g1", CIDR: g1.Record.String(), State: s, Since: since}}
	}
	for _, step := range []struct {
		what     string
		at       time.Duration
		state    liveness.State
		since    time.Duration
		usable   bool
		rechecks int
	}{
		{"pending long", 0, liveness.Pending, 0, true, 0},
		{"pending after a minute", time.Minute, liveness.Pending, 0, true, 0},
		{"up", 61 * time.Second, liveness.Up, 61 * time.Second, true, 0},
		{"one-way: a blip so far", 70 * time.Second, liveness.OneWay, 70 * time.Second, true, 0},
		{"blip cleared before DeadAfter", 70*time.Second + DeadAfter - time.Second, liveness.Up, 79 * time.Second, true, 0},
		{"stale just now", 100 * time.Second, liveness.Stale, 100 * time.Second, true, 0},
		{"stale for DeadAfter", 100*time.Second + DeadAfter, liveness.Stale, 100 * time.Second, false, 1},
		{"up again: held", 120 * time.Second, liveness.Up, 120 * time.Second, false, 1},
		{"dead again: still skipped", 130 * time.Second, liveness.NoHandshake, 130 * time.Second, false, 1},
		{"up, held", 140 * time.Second, liveness.Up, 140 * time.Second, false, 1},
		{"up for UpAfter", 140*time.Second + UpAfter, liveness.Up, 140 * time.Second, true, 2},
	} {
		now = t0.Add(step.at)
		j.Update(st(step.state, t0.Add(step.since)))
		if got := j.Usable(g1); got != step.usable || rechecks != step.rechecks {
			t.Fatalf("%s: usable %v, rechecks %d; want %v, %d", step.what, got, rechecks, step.usable, step.rechecks)
		}
		if !j.Usable(other) {
			t.Fatalf("%s: a gateway without a peer status is skipped", step.what)
		}
	}
	now = now.Add(time.Hour)
	j.Update(st(liveness.OneWay, now.Add(-DeadAfter)))
	if j.Why(g1) != "tunnel one-way" {
		t.Fatalf("why %q", j.Why(g1))
	}
	j.Update(nil) // the peer is gone: nothing to skip
	if !j.Usable(g1) || rechecks != 4 {
		t.Fatalf("peer gone: usable %v rechecks %d", j.Usable(g1), rechecks)
	}
}
