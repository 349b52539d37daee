package liveness

import (
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

const never = time.Duration(-1)

// step is one event at t0+at: an observation, a probe sent, or a probe
// outcome; want (if set) is checked against the observation's verdict.
type step struct {
	at time.Duration
	// observation
	hs      time.Duration // handshake at t0+hs; never: no handshake
	rx, tx  int64
	missing bool
	drift   []string
	// probe events instead of an observation
	sent    bool
	done    bool
	sentAt  time.Duration
	ok      bool
	want    *want
	comment string
}

type want struct {
	state   State
	reason  string // substring
	probe   bool
	repairs []RepairKind
	attempt int // of the first repair, if non-zero
	changed *bool
}

func obs(at, hs time.Duration, rx, tx int64) step { return step{at: at, hs: hs, rx: rx, tx: tx} }

func (s step) expect(w want) step { s.want = &w; return s }

func sent(at time.Duration) step { return step{at: at, sent: true} }

func done(at, sentAt time.Duration, ok bool) step {
	return step{at: at, done: true, sentAt: sentAt, ok: ok}
}

func yes() *bool { b := true; return &b }
func no() *bool  { b := false; return &b }

func run(t *testing.T, steps []step) {
	t.Helper()
	p := New(Config{}, t0)
	for i, s := range steps {
		now := t0.Add(s.at)
		switch {
		case s.sent:
			p.ProbeSent(now)
			continue
		case s.done:
			p.ProbeDone(t0.Add(s.sentAt), s.ok)
			continue
		}
		o := Observation{Now: now, Present: !s.missing, RxBytes: s.rx, TxBytes: s.tx, Drift: s.drift}
		if s.hs != never {
			o.LastHandshake = t0.Add(s.hs)
		}
		v := p.Observe(o)
		if s.want == nil {
			continue
		}
		w := s.want
		var kinds []RepairKind
		for _, r := range v.Repairs {
			kinds = append(kinds, r.Kind)
		}
		if v.State != w.state || v.Probe != w.probe || !slices.Equal(kinds, w.repairs) || !strings.Contains(v.Reason, w.reason) {
			t.Fatalf("step %d (t+%s): got state %s reason %q probe %v repairs %v; want state %s reason ~%q probe %v repairs %v",
				i, s.at, v.State, v.Reason, v.Probe, kinds, w.state, w.reason, w.probe, w.repairs)
		}
		if w.attempt != 0 && v.Repairs[0].Attempt != w.attempt {
			t.Fatalf("step %d: repair attempt %d, want %d", i, v.Repairs[0].Attempt, w.attempt)
		}
		if w.changed != nil && v.Changed != *w.changed {
			t.Fatalf("step %d: changed %v, want %v", i, v.Changed, *w.changed)
		}
	}
}

const s = time.Second

func TestTransitions(t *testing.T) {
	stuck := []RepairKind{ReReadEndpoint, Reinitiate}
	// A one-way peer has a session: only re-creating the entry on the
	// lower-key side starts a fresh handshake, and it cannot cross.
	oneWay := []RepairKind{ReReadEndpoint, BreakCrossed}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"new peer is pending and probed at once", []step{
			obs(0, never, 0, 0).expect(want{state: Pending, reason: "no handshake yet", probe: true, changed: no()}),
			sent(0),
			obs(5*s, never, 0, 148).expect(want{state: Pending}),
		}},
		{"no handshake after the grace: re-read the record once, re-initiate with the next probe", []step{
			obs(0, never, 0, 0), sent(0),
			obs(5*s, never, 0, 148),
			done(6*s, 0, false),
			obs(15*s, never, 0, 296).expect(want{state: NoHandshake, reason: "probe through the tunnel went unanswered",
				repairs: stuck, attempt: 1, changed: yes()}),
			obs(16*s, never, 0, 296).expect(want{state: NoHandshake}),              // backoff: nothing
			obs(20*s, never, 0, 296).expect(want{state: NoHandshake, probe: true}), // verification probe
			sent(20 * s),
			// The peer is dead (a probe lost): WireGuard retries the
			// initiation for 90 s by itself, so the next re-initiation
			// comes with the next probe, 2 min after the last one.
			obs(25*s, never, 0, 444).expect(want{state: NoHandshake}),
			obs(35*s, never, 0, 444).expect(want{state: NoHandshake}), // the probe timed out
			obs(139*s, never, 0, 592).expect(want{state: NoHandshake}),
			obs(140*s, never, 0, 592).expect(want{state: NoHandshake, repairs: []RepairKind{Reinitiate}, attempt: 2, probe: true}), // the record was re-read
		}},
		{"a keepalive expects no answer: not one-way", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(10*s, 0, 600, 600).expect(want{state: Up, reason: "traffic both ways"}),
			obs(20*s, 0, 600, 632), // our passive keepalive 10 s after the peer's data
			obs(40*s, 0, 600, 632).expect(want{state: Up, reason: "probe answered"}),
			obs(60*s, 0, 600, 664).expect(want{state: Up, probe: true}), // a persistent keepalive
			obs(79*s, 0, 600, 664).expect(want{state: Up, probe: true}), // 19 s after the keepalive: still up
		}},
		{"nothing ever sent is no evidence: pending, nothing to repair", []step{
			obs(0, never, 0, 0),
			obs(20*s, never, 0, 0).expect(want{state: Pending, reason: "nothing sent to it yet", probe: true}),
		}},
		{"first handshake clears no-handshake", []step{
			obs(0, never, 0, 0), sent(0),
			obs(20*s, never, 0, 148).expect(want{state: NoHandshake, reason: "initiations go unanswered", repairs: stuck}),
			// The repair's handshake came: it is verified at once.
			obs(22*s, 21*s, 92, 148).expect(want{state: Up, reason: "traffic both ways", probe: true, changed: yes()}),
		}},
		{"receiving only is up", []step{
			obs(0, 0, 0, 0), sent(0), done(0, 0, true),
			obs(30*s, 0, 0, 0),
			obs(35*s, 0, 500, 0).expect(want{state: Up, reason: "receiving"}),
		}},
		{"traffic both ways is up and needs no probe", []step{
			obs(0, 0, 0, 0).expect(want{state: Up, reason: "idle; handshake", probe: true}),
			sent(0), done(0, 0, true),
			obs(5*s, 0, 1000, 1000).expect(want{state: Up, reason: "traffic both ways"}),
			obs(70*s, 60*s, 90000, 90000).expect(want{state: Up, reason: "traffic both ways"}),
		}},
		{"idle link: one probe per interval", []step{
			obs(0, 0, 100, 100).expect(want{state: Up, probe: true}),
			sent(0), done(0, 0, true),
			obs(30*s, 0, 100, 100).expect(want{state: Up, reason: "probe answered"}),
			obs(61*s, 0, 100, 100).expect(want{state: Up, probe: true}),
		}},
		{"idle past a session's life keeps the verdict until the probe ends", []step{
			obs(0, 0, 0, 0), sent(0), done(0, 0, true),
			obs(100*s, 0, 0, 0).expect(want{state: Up, probe: true}),
			sent(100 * s), done(100*s, 100*s, true),
			obs(250*s, 0, 0, 0).expect(want{state: Up, reason: "awaiting the probe", probe: true, changed: no()}),
		}},
		{"idle with an old handshake: failed probe is stale, answered probe is up", []step{
			obs(0, 0, 0, 0), sent(0), done(1*s, 0, true),
			obs(200*s, 0, 0, 0).expect(want{state: Up, probe: true}),
			sent(200 * s), done(202*s, 200*s, false),
			obs(205*s, 0, 0, 148).expect(want{state: Stale, reason: "went unanswered", repairs: stuck, changed: yes()}),
			obs(210*s, 0, 0, 148).expect(want{state: Stale, probe: true}), // verification 5 s after the repair
			sent(210 * s), done(210*s, 210*s, true),
			obs(211*s, 210*s, 92, 148).expect(want{state: Up, reason: "traffic both ways", changed: yes()}),
		}},
		{"sending with nothing back for the silence period is one-way", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(60*s, 50*s, 900, 900),
			obs(65*s, 50*s, 900, 1500).expect(want{state: Up}),
			obs(75*s, 50*s, 900, 2500).expect(want{state: Up, probe: true}), // 10 s: the peer's keepalive may still come
			obs(80*s, 50*s, 900, 3500).expect(want{state: OneWay, reason: "sending for 15s with nothing received",
				repairs: oneWay, probe: true, changed: yes()}),
			obs(81*s, 50*s, 932, 3500).expect(want{state: Up, reason: "traffic both ways", changed: yes()}),
		}},
		{"sending with nothing back and an old handshake is stale", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(190*s, 0, 500, 500),
			obs(195*s, 0, 500, 700),
			obs(210*s, 0, 500, 900).expect(want{state: Stale, reason: "not renewed: sending for 15s", repairs: stuck, probe: true}),
		}},
		{"handshakes renewed every few seconds while traffic flows: probe, then break the crossed initiations", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(50*s, 50*s, 592, 648).expect(want{state: Up, reason: "traffic both ways"}),
			obs(55*s, 55*s, 684, 796).expect(want{state: Up, reason: "traffic both ways", probe: true}), // churn
			sent(55 * s), done(57*s, 55*s, false),
			obs(60*s, 60*s, 776, 944).expect(want{state: OneWay, reason: "handshakes complete", repairs: []RepairKind{BreakCrossed}}),
			obs(65*s, 65*s, 868, 1092).expect(want{state: OneWay, probe: true}), // verification
			sent(65 * s), done(65*s, 65*s, true),
			obs(66*s, 65*s, 1868, 2092).expect(want{state: Up, reason: "traffic both ways", changed: yes()}),
		}},
		{"a session re-made while handshakes churn is probed at once, not a silence period later", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(40*s, 40*s, 592, 648).expect(want{state: Up, reason: "traffic both ways"}),
			obs(42*s, 40*s, 684, 796).expect(want{state: Up}),
			sent(42 * s), done(42*s, 42*s, true),
			// Crossed initiations: a new session 8 s after the last, 6 s
			// after the last probe.
			obs(48*s, 48*s, 776, 944).expect(want{state: Up, reason: "traffic both ways", probe: true}),
			sent(48 * s), done(50*s, 48*s, false),
			obs(50*s, 48*s, 868, 1092).expect(want{state: OneWay, reason: "handshakes complete", repairs: []RepairKind{BreakCrossed}, changed: yes()}),
			// The same session is not probed again before the silence
			// period, only verified after the repair.
			obs(52*s, 48*s, 868, 1092).expect(want{state: OneWay}),
		}},
		{"one fresh handshake and a failed probe is one-way: the lower key re-creates, no initiation from both ends", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(60*s, 0, 500, 500).expect(want{state: Up, probe: true}),
			sent(60 * s), done(62*s, 60*s, false),
			obs(63*s, 62*s, 592, 648).expect(want{state: OneWay, reason: "handshake 1s ago but the probe",
				repairs: oneWay, changed: yes()}),
		}},
		{"packets arriving after a failed probe make a probe due every silence period, not every minute", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(60*s, 0, 500, 500).expect(want{state: Up, probe: true}),
			sent(60 * s), done(62*s, 60*s, false),
			obs(63*s, 62*s, 592, 648).expect(want{state: OneWay, repairs: oneWay, changed: yes()}),
			obs(68*s, 62*s, 592, 700).expect(want{state: OneWay, probe: true}), // verification
			sent(68 * s), done(70*s, 68*s, false),
			// A probe failing is stronger than packets arriving.
			obs(75*s, 62*s, 700, 800).expect(want{state: OneWay, repairs: []RepairKind{BreakCrossed}}),
			obs(80*s, 62*s, 700, 800).expect(want{state: OneWay, probe: true}), // verification
			sent(80 * s), done(82*s, 80*s, false),
			obs(90*s, 62*s, 800, 900).expect(want{state: OneWay}),
			obs(96*s, 62*s, 900, 1000).expect(want{state: OneWay, probe: true, repairs: []RepairKind{BreakCrossed}}),
			sent(96 * s), done(96*s, 96*s, true),
			obs(97*s, 62*s, 1000, 1100).expect(want{state: Up, reason: "traffic both ways", changed: yes()}),
		}},
		{"a crossed stall back right after its repair is repaired at once, not after the first one's back-off", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(20*s, 20*s, 592, 648).expect(want{state: Up, probe: true}), // churn
			sent(20 * s), done(22*s, 20*s, false),
			obs(22*s, 21*s, 684, 796).expect(want{state: OneWay, repairs: []RepairKind{BreakCrossed}, attempt: 1}),
			// The re-created entry's handshake: verified now, not 5 s on.
			obs(24*s, 23*s, 92, 148).expect(want{state: OneWay, probe: true}),
			sent(24 * s), done(24*s, 24*s, true),
			// Crossed again at 25 s, before any observation read up.
			obs(26*s, 25*s, 200, 300).expect(want{state: Up}),
			obs(29*s, 25*s, 200, 400).expect(want{state: Up, probe: true}),
			sent(29 * s), done(30*s, 29*s, false),
			obs(30*s, 25*s, 200, 500).expect(want{state: OneWay, repairs: []RepairKind{BreakCrossed}, attempt: 1}),
		}},
		{"a normal rekey every two minutes is no churn", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(5*s, 0, 1000, 1000),
			obs(120*s, 120*s, 9000, 9000).expect(want{state: Up, reason: "traffic both ways"}),
			obs(240*s, 240*s, 19000, 19000).expect(want{state: Up, reason: "traffic both ways"}),
		}},
		{"missing entry is re-applied and not probed", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			{at: 5 * s, missing: true, want: &want{state: NoHandshake, reason: "no entry", repairs: []RepairKind{Reapply}, changed: yes()}},
			{at: 6 * s, missing: true, want: &want{state: NoHandshake}},
			// New counters: a baseline. The re-made session came 6 s
			// after the last: churn, so it is probed once.
			obs(7*s, 6*s, 0, 148).expect(want{state: Up, reason: "idle", probe: true, changed: yes()}),
			sent(7 * s), done(7*s, 7*s, true),
			obs(8*s, 6*s, 92, 148).expect(want{state: Up, reason: "receiving"}),
		}},
		{"a re-created entry starts a new count: nothing pending from the old one", []step{
			obs(0, 0, 500, 500), sent(0), done(0, 0, true),
			obs(60*s, 50*s, 500, 900),
			{at: 65 * s, missing: true},
			obs(76*s, 50*s, 0, 100),
			obs(80*s, 50*s, 0, 100).expect(want{state: Up, reason: "idle", probe: true}),
		}},
		{"drift is re-applied once per backoff step, and reset when gone or another fault", []step{
			obs(0, 0, 0, 0), sent(0), done(0, 0, true),
			{at: 1 * s, hs: 0, drift: []string{"endpoint"}, want: &want{state: Up, reason: "idle",
				repairs: []RepairKind{Reapply}, attempt: 1}},
			{at: 2 * s, hs: 0, drift: []string{"endpoint"}, want: &want{state: Up}},
			{at: 11 * s, hs: 0, drift: []string{"endpoint"}, want: &want{state: Up,
				repairs: []RepairKind{Reapply}, attempt: 2, probe: true}},
			obs(12*s, 0, 0, 0).expect(want{state: Up, probe: true}), // the verification probe is still due
			{at: 13 * s, hs: 0, drift: []string{"keepalive"}, want: &want{state: Up, repairs: []RepairKind{Reapply}, attempt: 1, probe: true}},
			{at: 14 * s, hs: 0, drift: []string{"allowed-ips"}, want: &want{state: Up, repairs: []RepairKind{Reapply}, attempt: 1, probe: true}},
		}},
		{"counters going down are a new baseline, not traffic", []step{
			obs(0, 0, 5000, 5000), sent(0), done(0, 0, true),
			obs(60*s, 0, 5000, 5000),
			obs(65*s, 0, 0, 100),
			obs(75*s, 0, 0, 100),
			obs(85*s, 0, 0, 100).expect(want{state: Up, reason: "probe answered", probe: true}),
		}},
	} {
		t.Run(c.name, func(t *testing.T) { run(t, c.steps) })
	}
}

// The drift cause names the fields, and a missing entry says so.
func TestRepairCause(t *testing.T) {
	p := New(Config{}, t0)
	v := p.Observe(Observation{Now: t0, Present: true, Drift: []string{"endpoint", "keepalive"}})
	if len(v.Repairs) != 1 || !strings.Contains(v.Repairs[0].Cause, "endpoint, keepalive") {
		t.Fatalf("repairs %+v", v.Repairs)
	}
	p = New(Config{}, t0)
	v = p.Observe(Observation{Now: t0})
	if len(v.Repairs) != 1 || v.Repairs[0].Cause != "entry missing from the device" {
		t.Fatalf("repairs %+v", v.Repairs)
	}
}

// The backoff doubles up to its cap.
func TestRepairBackoffCap(t *testing.T) {
	p := New(Config{RepairBackoff: time.Second, RepairBackoffMax: 4 * time.Second}, t0)
	var at []time.Duration
	for d := time.Duration(0); d <= 20*s; d += s {
		v := p.Observe(Observation{Now: t0.Add(d), Present: true, LastHandshake: t0, Drift: []string{"endpoint"}})
		if len(v.Repairs) > 0 {
			at = append(at, d)
		}
	}
	want := []time.Duration{0, 1 * s, 3 * s, 7 * s, 11 * s, 15 * s, 19 * s}
	if !slices.Equal(at, want) {
		t.Fatalf("repairs at %v, want %v", at, want)
	}
}

// An answered probe ends a repair's episode, whatever state the
// observations read meanwhile (a fault back before any reads up, e.g. the
// entry re-created again and pending): the next fault gets a first
// repair at once, not the old one's back-off.
func TestAnsweredProbeEndsTheEpisode(t *testing.T) {
	for _, answered := range []bool{true, false} {
		p := New(Config{}, t0)
		p.Observe(Observation{Now: t0, Present: true, LastHandshake: t0, RxBytes: 500, TxBytes: 500})
		p.ProbeSent(t0.Add(5 * s))
		p.ProbeDone(t0.Add(5*s), false)
		v := p.Observe(Observation{Now: t0.Add(6 * s), Present: true, LastHandshake: t0.Add(5 * s), RxBytes: 500, TxBytes: 800})
		if v.State != OneWay || len(v.Repairs) == 0 || v.Repairs[len(v.Repairs)-1].Kind != BreakCrossed {
			t.Fatalf("first fault: %s %v", v.State, v.Repairs)
		}
		// The verification probe, then the fault is back: the next probe is lost.
		p.ProbeSent(t0.Add(7 * s))
		p.ProbeDone(t0.Add(7*s), answered)
		p.ProbeSent(t0.Add(8 * s))
		p.ProbeDone(t0.Add(8*s), false)
		v = p.Observe(Observation{Now: t0.Add(9 * s), Present: true, LastHandshake: t0.Add(8 * s), RxBytes: 500, TxBytes: 900})
		var kinds []RepairKind
		for _, r := range v.Repairs {
			kinds = append(kinds, r.Kind)
		}
		// Answered: a new episode, repaired at once; lost: the same one,
		// on its back-off (10 s from the first repair).
		want := []RepairKind(nil)
		if answered {
			want = []RepairKind{BreakCrossed}
		}
		if v.State != OneWay || !slices.Equal(kinds, want) {
			t.Fatalf("verification answered=%v, fault back: %s %v, want one-way %v", answered, v.State, kinds, want)
		}
	}
}

// The caller observes on a fixed tick and reads the clock a hair early or
// late: a back-off of whole ticks ends at the tick it falls on, not one
// tick later (10 s after a repair read 1 ms late is the fifth tick).
func TestBackoffEndsAtTheTickItFallsOn(t *testing.T) {
	p := New(Config{}, t0)
	drift := Observation{Present: true, LastHandshake: t0, Drift: []string{"endpoint"}}
	var at []time.Duration
	for _, d := range []time.Duration{time.Millisecond, 2 * s, 4 * s, 6 * s, 8 * s, 10 * s} {
		o := drift
		o.Now = t0.Add(d)
		if v := p.Observe(o); len(v.Repairs) > 0 {
			at = append(at, d)
		}
	}
	if want := []time.Duration{time.Millisecond, 10 * s}; !slices.Equal(at, want) {
		t.Fatalf("repairs at %v, want %v", at, want)
	}
}

// Probe budget: over ten minutes observed every 5 s, a link with traffic
// both ways gets only the start-up probe, an idle one one per minute.
func TestProbeBudget(t *testing.T) {
	for _, c := range []struct {
		name    string
		traffic bool
		want    int
	}{{"active", true, 1}, {"idle", false, 10}} {
		t.Run(c.name, func(t *testing.T) {
			p := New(Config{}, t0)
			probes := 0
			var rx, tx int64
			for d := time.Duration(0); d < 10*time.Minute; d += 5 * s {
				now := t0.Add(d)
				if c.traffic {
					rx, tx = rx+1000, tx+1000
				}
				v := p.Observe(Observation{Now: now, Present: true, LastHandshake: now.Add(-30 * s), RxBytes: rx, TxBytes: tx})
				if v.State != Up {
					t.Fatalf("t+%s: state %s (%s)", d, v.State, v.Reason)
				}
				if v.Probe {
					probes++
					p.ProbeSent(now)
					p.ProbeDone(now, true)
				}
			}
			if probes != c.want {
				t.Fatalf("%d probes in 10 min, want %d", probes, c.want)
			}
		})
	}
}

// A peer whose node is off (every probe lost, never a handshake) is probed
// less and less often, not once a minute for ever: over 30 minutes the
// interval probes back off to 5 min, besides one verification probe after
// each (backed-off) repair.
// A dead peer (every probe lost, never a handshake) is reported at the
// first lost probe, then attempted (probe, with a re-initiation) after 2,
// 4, 8, then every 15 min. Each attempt makes WireGuard retry the
// handshake for 90 s, so what the device pays is the time covered by those
// retries; a handshake from the peer ends the back-off at once.
func TestDeadPeerProbesBackOff(t *testing.T) {
	p := New(Config{}, t0)
	var attempts []time.Duration // probes and re-initiations: each starts 90 s of WireGuard retries
	var reported time.Duration = -1
	var tx int64
	tick := func(d time.Duration, hs time.Time, rx int64) Verdict {
		now := t0.Add(d)
		v := p.Observe(Observation{Now: now, Present: true, TxBytes: tx, RxBytes: rx, LastHandshake: hs})
		sent := v.Probe
		for _, r := range v.Repairs {
			sent = sent || r.Kind == Reinitiate
		}
		if sent {
			attempts = append(attempts, d)
		}
		if v.Probe {
			tx += 148
			p.ProbeSent(now)
			p.ProbeDone(now, false)
		}
		return v
	}
	for d := time.Duration(0); d < 60*time.Minute; d += 2 * s {
		v := tick(d, time.Time{}, 0)
		if v.State == NoHandshake && reported < 0 {
			reported = d
		}
		if d > DefaultConfig().Grace && v.State != NoHandshake {
			t.Fatalf("t+%s: state %s (%s)", d, v.State, v.Reason)
		}
	}
	// The first report is not delayed by the back-off: the grace, then
	// the next tick.
	if reported < 0 || reported > DefaultConfig().Grace+2*s {
		t.Fatalf("reported no-handshake at t+%s, want within the %s grace and one tick", reported, DefaultConfig().Grace)
	}
	// Time WireGuard spends retrying: the union of [attempt, attempt+90s].
	retrying := func(from, to time.Duration) time.Duration {
		var sum, end time.Duration
		for _, a := range attempts {
			lo, hi := max(a, end, from), min(a+RekeyAttemptTime, to)
			if hi > lo {
				sum += hi - lo
			}
			end = max(end, a+RekeyAttemptTime)
		}
		return sum
	}
	// In the first 60 min: the start-up probe, its verification after the
	// first repair, then attempts at about +2, +4, +8 min and every 15.
	if len(attempts) > 9 {
		t.Fatalf("%d attempts to a dead peer in 60 min (%v), want at most 9", len(attempts), attempts)
	}
	// Once settled, at most one 90 s retry run per 15 min (10 %; it was
	// 100 % with a probe every minute).
	if r := retrying(30*time.Minute, 60*time.Minute); r > 2*(RekeyAttemptTime+5*s) {
		t.Fatalf("WireGuard retried for %s of the last 30 min (attempts %v), want at most %s", r, attempts, 2*(RekeyAttemptTime+5*s))
	}
	t.Logf("attempts at %v; WireGuard retrying %s of the first 10 min, %s of the last 30",
		attempts, retrying(0, 10*time.Minute), retrying(30*time.Minute, 60*time.Minute))

	// The peer comes back: its daemon probes us, its handshake reaches our
	// device. That alone (no probe of ours is answered) makes it up and
	// ends the back-off: the next loss is probed after 1 min, not 15.
	back := 60*time.Minute + 1*s
	v := p.Observe(Observation{Now: t0.Add(back), Present: true, TxBytes: tx, RxBytes: 92, LastHandshake: t0.Add(back)})
	if v.State != Up {
		t.Fatalf("after the peer's handshake: state %s (%s), want up", v.State, v.Reason)
	}
	if p.lostInRow != 0 || p.deadInterval() != DefaultConfig().ProbeInterval {
		t.Fatalf("back-off not reset by the handshake: %d lost in a row, interval %s", p.lostInRow, p.deadInterval())
	}
}

// A probe whose outcome is never reported blocks new ones only until the
// probe timeout: here the verification probe after a repair.
func TestUnreportedProbe(t *testing.T) {
	p := New(Config{}, t0)
	if !p.Observe(Observation{Now: t0, Present: true, LastHandshake: t0}).Probe {
		t.Fatal("first probe not due")
	}
	p.ProbeSent(t0)
	v := p.Observe(Observation{Now: t0.Add(1 * s), Present: true, LastHandshake: t0, Drift: []string{"endpoint"}})
	if len(v.Repairs) != 1 || v.Probe {
		t.Fatalf("t+1s: %+v", v)
	}
	if p.Observe(Observation{Now: t0.Add(6 * s), Present: true, LastHandshake: t0}).Probe {
		t.Fatal("t+6s: verification probe due while the first is in flight")
	}
	if !p.Observe(Observation{Now: t0.Add(10 * s), Present: true, LastHandshake: t0}).Probe {
		t.Fatal("t+10s: verification probe not due after the probe timeout")
	}
}

func TestInitiates(t *testing.T) {
	a, b := [32]byte{1, 2}, [32]byte{1, 3}
	if !Initiates(a, b) || Initiates(b, a) || Initiates(a, a) {
		t.Fatal("the lower key, and only it, initiates")
	}
}

// A dead peer's lost probe is followed by one Quiesce (WireGuard's retries
// of that attempt end), not repeated on later ticks, never with a
// persistent keepalive, and not while the peer answers.
func TestDeadPeerRetriesQuiesced(t *testing.T) {
	for _, keepalive := range []bool{false, true} {
		p := New(Config{}, t0)
		var tx int64
		quiesces := 0
		var probes []time.Duration
		for d := time.Duration(0); d < 20*time.Minute; d += 2 * s {
			now := t0.Add(d)
			v := p.Observe(Observation{Now: now, Present: true, TxBytes: tx, Keepalive: keepalive})
			for _, r := range v.Repairs {
				if r.Kind == Quiesce {
					quiesces++
				}
			}
			if v.Probe {
				tx += 148
				probes = append(probes, d)
				p.ProbeSent(now)
				p.ProbeDone(now, false)
			}
		}
		switch {
		case keepalive && quiesces != 0:
			t.Fatalf("with a persistent keepalive: %d quiesces, want none", quiesces)
		case !keepalive && (quiesces == 0 || quiesces > len(probes)):
			t.Fatalf("%d quiesces for %d lost probes (%v), want one per lost probe at most, and some", quiesces, len(probes), probes)
		}
	}
	// A peer that answers is not dead: nothing to quiesce.
	p := New(Config{}, t0)
	for d := time.Duration(0); d < 5*time.Minute; d += 2 * s {
		now := t0.Add(d)
		v := p.Observe(Observation{Now: now, Present: true, LastHandshake: now.Add(-s), RxBytes: int64(d), TxBytes: int64(d)})
		for _, r := range v.Repairs {
			if r.Kind == Quiesce {
				t.Fatalf("t+%s: quiesce on a live peer (%s)", d, v.State)
			}
		}
		if v.Probe {
			p.ProbeSent(now)
			p.ProbeDone(now, true)
		}
	}
}

// A one-way peer (its handshakes complete, its probes are lost) is not a
// dead peer: it is repaired on the repairs' own back-off (10 s, 20 s …),
// by the lower key re-creating its entry, never quiesced, and not held to
// the dead back-off of minutes. A fresh initiation from both ends at the
// same tick is what crosses (TestSimultaneousInitiation).
func TestOneWayPeerIsNotDead(t *testing.T) {
	p := New(Config{}, t0)
	hs := t0.Add(50 * s) // the session stays younger than RejectAfterTime
	var tx int64
	var breaks []time.Duration
	for d := 50 * s; d < 170*s; d += 2 * s {
		now := t0.Add(d)
		v := p.Observe(Observation{Now: now, Present: true, LastHandshake: hs, RxBytes: 92, TxBytes: tx})
		if d > 60*s && v.State != OneWay {
			t.Fatalf("t+%s: state %s (%s), want one-way", d, v.State, v.Reason)
		}
		for _, r := range v.Repairs {
			switch r.Kind {
			case BreakCrossed:
				breaks = append(breaks, d)
			case Quiesce, Reinitiate:
				t.Fatalf("t+%s: %s on a one-way peer", d, r.Kind)
			}
		}
		if v.Probe {
			tx += 148
			p.ProbeSent(now)
			p.ProbeDone(now, false)
		}
	}
	// First lost probe at once, then 10 s, 20 s, 40 s later.
	if len(breaks) < 4 || breaks[0] > 56*s {
		t.Fatalf("re-creations at %v, want the first at the first lost probe and 4 within 2 min", breaks)
	}
}
