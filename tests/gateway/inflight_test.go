package gateway

import (
	"testing"
	"time"
)

func TestLostOnlyInFlight(t *testing.T) {
	moved := time.Date(2026, 12, 8, 1, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return moved.Add(time.Duration(ms) * time.Millisecond) }
	const rtt, interval = 3 * time.Millisecond, 10 * time.Millisecond
	for _, tc := range []struct {
		name  string
		runs  []lossRun
		moved time.Time
		ok    bool
	}{
		{"nothing lost", nil, moved, true},
		{"nothing lost, no move", nil, time.Time{}, true},
		{"one answer in flight at the move", []lossRun{{first: 10, last: 10, before: at(-8), after: at(2)}}, moved, true},
		{"lost without a move", []lossRun{{first: 10, last: 10, before: at(-8), after: at(2)}}, time.Time{}, false},
		{"two runs", []lossRun{{first: 10, last: 10, before: at(-8), after: at(2)}, {first: 20, last: 20, before: at(90), after: at(110)}}, moved, false},
		{"run before the move", []lossRun{{first: 10, last: 10, before: at(-3000), after: at(-2000)}}, moved, false},
		{"answer before the run printed late", []lossRun{{first: 10, last: 10, before: at(40), after: at(45)}}, moved, true},
		{"run after the move", []lossRun{{first: 10, last: 10, before: at(1500), after: at(1520)}}, moved, false},
		{"more than a round trip", []lossRun{{first: 10, last: 12, before: at(-20), after: at(12)}}, moved, false},
		{"lost at the end", []lossRun{{first: 10, last: 12, before: at(-20)}}, moved, false},
	} {
		err := lostOnlyInFlight(tc.runs, tc.moved, rtt, interval)
		if (err == nil) != tc.ok {
			t.Errorf("%s: lostOnlyInFlight = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
