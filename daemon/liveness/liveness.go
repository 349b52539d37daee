// Package liveness decides, for one WireGuard peer at a time, whether the
// tunnel to it works, why not, when to send an active probe through it and
// which repair is due. It is pure: the caller feeds it what it read from
// the device (handshake time, byte counters, drift from the etcd record)
// and the outcome of the probes it sent, each stamped with the time it was
// read, and acts on the Verdict. No clock, no I/O, no goroutines: every
// decision is a function of the inputs, so the tests drive it with a
// hand-made clock.
//
// The evidence, strongest first:
//   - the entry is missing from the device: nothing can work;
//   - a probe sent through the tunnel (to the peer's gateway address) was
//     answered or not;
//   - the receive counter grew: the peer's packets decrypt here, so the
//     session exists both ways;
//   - the transmit counter grew and nothing came back for longer than
//     WireGuard's passive keepalive (10 s) plus one handshake retry (5 s):
//     our packets, or the peer's answers, are lost;
//   - the handshake age: WireGuard renews a used session every 2 min and
//     drops one after 3 min, so an old handshake on an idle link proves
//     nothing, and a probe is due instead.
package liveness

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// WireGuard's protocol timers (whitepaper, section 6.1); the thresholds
// below are derived from them rather than tuned.
const (
	RekeyTimeout     = 5 * time.Second   // retry interval of an unanswered initiation
	KeepaliveTimeout = 10 * time.Second  // passive keepalive after receiving data
	RekeyAfterTime   = 120 * time.Second // a used session is renewed after this
	RejectAfterTime  = 180 * time.Second // a session older than this is dead
	// RekeyAttemptTime is how long WireGuard keeps retrying an initiation
	// (every RekeyTimeout) after a packet found no session: any packet
	// to a peer without one, a probe or a re-initiation, costs up to 18
	// initiations.
	RekeyAttemptTime = 90 * time.Second
)

// State is a peer's liveness.
type State string

const (
	// Pending: configured too recently, or no evidence either way yet.
	Pending State = "pending"
	// Up: the tunnel carries packets both ways.
	Up State = "up"
	// NoHandshake: the peer never completed a handshake (or has no entry).
	NoHandshake State = "no-handshake"
	// Stale: the last handshake is older than a session lives and nothing
	// renews it although we send (or probed).
	Stale State = "stale"
	// OneWay: a session exists but packets do not come back.
	OneWay State = "one-way"
)

// States lists every state, for metrics that export one series per state.
var States = []State{Pending, Up, NoHandshake, Stale, OneWay}

// Sessionless reports whether a peer in state s has no live WireGuard
// session (never a handshake, or one older than a session lives): its pod
// traffic is dropped, strict mode never sends it in clear.
func Sessionless(s State) bool { return s == NoHandshake || s == Stale }

// RepairKind is an action the daemon can take on a peer.
type RepairKind string

const (
	// Reapply writes the peer's etcd record (key, endpoint, allowed IPs,
	// keepalive) to the device again: its entry is missing or drifted.
	Reapply RepairKind = "reapply-config"
	// ReReadEndpoint reads the peer's record from etcd again, in case the
	// watch missed an endpoint change, before a fresh initiation.
	ReReadEndpoint RepairKind = "reread-endpoint"
	// Reinitiate makes the device send a fresh handshake initiation now.
	Reinitiate RepairKind = "reinitiate"
	// BreakCrossed re-creates the peer's entry (dropping its session and
	// its initiation rate limit) and lets only one side initiate (Initiates
	// decides which): a session exists (handshakes complete) but data does
	// not flow, a crossed-initiation stall or any other one-way link.
	BreakCrossed RepairKind = "break-crossed-initiation"
	// Quiesce re-creates a dead peer's entry, without initiating, once its
	// probe was lost: WireGuard would otherwise go on retrying that
	// attempt's handshake every 5 s for 90 s (about 18 initiations, each
	// ~0.2 ms of CPU), which at a thousand dead peers is most of what
	// probing costs. The lost probe already told what the attempt could;
	// the peer's next attempt comes with its next probe (deadInterval),
	// and a peer that comes back reaches us with its own initiation.
	Quiesce RepairKind = "quiesce-retries"
)

// Repairs lists every repair kind, for metrics.
var Repairs = []RepairKind{Reapply, ReReadEndpoint, Reinitiate, BreakCrossed, Quiesce}

// Config holds the thresholds. Zero fields take the defaults.
type Config struct {
	// Grace is how long a newly configured peer may go without a first
	// handshake: three initiation attempts.
	Grace time.Duration
	// Silence is how long we may send without receiving anything before
	// the link is one-way: the peer's passive keepalive plus one retry.
	Silence time.Duration
	// ProbeInterval is the least time between two probes to one peer
	// (outside the verification probe after a repair).
	ProbeInterval time.Duration
	// ProbeValidity is how long a probe's outcome counts as evidence.
	ProbeValidity time.Duration
	// ProbeTimeout is how long a probe may stay unreported before another
	// is allowed (a caller that lost track of one must not stop probing).
	ProbeTimeout time.Duration
	// VerifyAfter is how soon after a repair a verification probe is due.
	VerifyAfter time.Duration
	// RepairBackoff is the wait before repeating the same repair on the
	// same peer; it doubles per attempt up to RepairBackoffMax and resets
	// when the peer is up (or its drift is gone, for Reapply).
	RepairBackoff    time.Duration
	RepairBackoffMax time.Duration
	// DeadBackoffMax caps the wait between two attempts (a probe, with a
	// re-initiation when one is due) to a peer whose probes keep getting
	// lost; the wait starts at twice ProbeInterval and doubles per lost
	// probe (see deadInterval).
	DeadBackoffMax time.Duration
}

// DefaultConfig returns the default thresholds.
func DefaultConfig() Config {
	return Config{
		Grace:            3 * RekeyTimeout,
		Silence:          KeepaliveTimeout + RekeyTimeout,
		ProbeInterval:    time.Minute,
		ProbeValidity:    2 * time.Minute,
		ProbeTimeout:     2 * RekeyTimeout,
		VerifyAfter:      RekeyTimeout,
		RepairBackoff:    2 * RekeyTimeout,
		RepairBackoffMax: 5 * time.Minute,
		DeadBackoffMax:   15 * time.Minute,
	}
}

// ProbeIntervalOrDefault is ProbeInterval, or its default when unset.
func (c Config) ProbeIntervalOrDefault() time.Duration { return c.withDefaults().ProbeInterval }

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	for _, f := range []struct{ v, def *time.Duration }{
		{&c.Grace, &d.Grace}, {&c.Silence, &d.Silence}, {&c.ProbeInterval, &d.ProbeInterval},
		{&c.ProbeValidity, &d.ProbeValidity}, {&c.ProbeTimeout, &d.ProbeTimeout}, {&c.VerifyAfter, &d.VerifyAfter},
		{&c.RepairBackoff, &d.RepairBackoff}, {&c.RepairBackoffMax, &d.RepairBackoffMax},
		{&c.DeadBackoffMax, &d.DeadBackoffMax},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return c
}

// Observation is one reading of the peer's device entry.
type Observation struct {
	Now time.Time
	// Present is false when the device has no entry for the peer's key.
	Present       bool
	LastHandshake time.Time // zero: never
	RxBytes       int64
	TxBytes       int64
	// Drift names the fields of the device entry that differ from the
	// peer's etcd record ("endpoint", "allowed-ips", "keepalive"); the
	// caller computes it with the reconciler's own diff.
	Drift []string
	// Keepalive is set when the entry has a persistent keepalive: its
	// WireGuard initiates on every keepalive anyway, so a dead peer's
	// retries are not quiesced (it would only churn the entry).
	Keepalive bool
}

// Repair is one repair due now, with the cause to log and the attempt
// number (1 for the first).
type Repair struct {
	Kind    RepairKind
	Cause   string
	Attempt int
}

// Verdict is the outcome of one observation.
type Verdict struct {
	State  State
	Reason string
	// Changed is true when State differs from the previous verdict: log
	// the transition once.
	Changed bool
	// Probe is true when a probe is due now; report it with ProbeSent.
	Probe bool
	// Repairs are due now, in the order to run them; each is returned once
	// per attempt, so log and count every one.
	Repairs []Repair
}

// Peer follows one peer. Create it with New when the peer is configured
// and drop it when the peer is removed (or re-keyed: a new key is a new
// peer to WireGuard).
type Peer struct {
	cfg   Config
	since time.Time // when the peer was configured

	seen       bool
	rx, tx     int64
	rxAt       time.Time // last time the receive counter grew
	txAt       time.Time // last time the transmit counter grew
	unanswered time.Time // first tx growth after the last rx growth (zero: none pending)

	hs    time.Time     // last handshake seen
	hsGap time.Duration // between the last two handshakes seen (0: fewer than two)

	probeAt     time.Time // last probe sent
	inFlight    bool
	probeOK     time.Time // last answered probe (its send time)
	probeFailed time.Time // last unanswered probe (its send time)
	lostInRow   int       // probes lost since the last answered one
	quiesced    time.Time // the lost probe (send time) whose retries were quiesced
	verifyAt    time.Time // a verification probe is due from then (zero: none): VerifyAfter after the repair

	state        State
	repairs      map[RepairKind]*backoff
	reapplyCause string // cause of the last Reapply while the drift lasts
}

type backoff struct {
	attempts int
	next     time.Time
}

// New follows a peer configured at since.
func New(cfg Config, since time.Time) *Peer {
	return &Peer{cfg: cfg.withDefaults(), since: since, state: Pending, repairs: map[RepairKind]*backoff{}}
}

// State returns the last verdict's state.
func (p *Peer) State() State { return p.state }

// ProbeSent records that a probe went out at t.
func (p *Peer) ProbeSent(t time.Time) {
	p.probeAt = t
	p.inFlight = true
	p.verifyAt = time.Time{}
}

// ProbeDone records the outcome of the probe sent at sent.
func (p *Peer) ProbeDone(sent time.Time, answered bool) {
	if sent.Equal(p.probeAt) {
		p.inFlight = false
	}
	if answered {
		if sent.After(p.probeOK) {
			p.probeOK = sent
		}
		p.lostInRow = 0
		if !sent.Before(p.probeFailed) {
			// The tunnel carried the probe both ways: whatever was
			// repaired works, and a fault after it is a new one, repaired
			// at once. Waiting for the state to read up is not enough: a
			// fault that comes back before the next observation (the
			// next crossed initiation a few seconds on) is never seen
			// up, and its repair would wait behind the old one's back-off.
			p.episodeOver()
		}
	} else if sent.After(p.probeFailed) {
		p.probeFailed = sent
		p.lostInRow++
	}
}

// Observe takes one reading and returns the verdict.
func (p *Peer) Observe(o Observation) Verdict {
	now := o.Now
	p.count(o)
	state, reason, fix := p.classify(o)
	v := Verdict{State: state, Reason: reason, Changed: state != p.state}
	p.state = state

	if len(o.Drift) > 0 || !o.Present {
		cause := "entry missing from the device"
		if o.Present {
			cause = "device entry differs from the etcd record: " + strings.Join(o.Drift, ", ")
		}
		if cause != p.reapplyCause {
			// Another fault than the one last repaired: no backoff, which
			// is for a fault that keeps coming back.
			delete(p.repairs, Reapply)
			p.reapplyCause = cause
		}
		v.Repairs = append(v.Repairs, p.due(Reapply, cause, now)...)
	} else {
		delete(p.repairs, Reapply)
		p.reapplyCause = ""
	}
	if state == Up {
		p.episodeOver()
	}
	for _, k := range fix {
		if k == Reinitiate && p.dead(state) {
			v.Repairs = append(v.Repairs, p.reinitiateDead(reason, now)...)
			continue
		}
		v.Repairs = append(v.Repairs, p.due(k, reason, now)...)
	}
	if len(v.Repairs) > 0 && o.Present && p.verifyAt.IsZero() {
		p.verifyAt = now.Add(p.cfg.VerifyAfter)
	}
	// After the verification rule above: quiescing ends an attempt, it
	// does not repair anything to verify. A re-initiation due in the same
	// tick is a new attempt, which supersedes it. Only without a session
	// (no-handshake, stale): a one-way peer's handshakes complete, and
	// re-creating its entry would undo a crossed-initiation repair under
	// way (the peer re-creating its own entry and initiating); dead
	// implies that.
	if p.dead(state) && o.Present && !o.Keepalive && !p.inFlight && p.probeFailed.After(p.quiesced) {
		p.quiesced = p.probeFailed
		if !slices.ContainsFunc(v.Repairs, func(r Repair) bool { return r.Kind == Reinitiate }) {
			v.Repairs = append(v.Repairs, Repair{Kind: Quiesce, Attempt: p.lostInRow,
				Cause: "probe lost: end WireGuard's handshake retries until the next attempt"})
		}
	}
	v.Probe = p.probeDue(o, state)
	return v
}

// count updates the counters' history. A counter that went down belongs to
// a re-created entry: it is a new baseline, not traffic.
func (p *Peer) count(o Observation) {
	if !o.Present {
		p.seen = false
		return
	}
	if !o.LastHandshake.IsZero() && o.LastHandshake.After(p.hs) {
		if !p.hs.IsZero() {
			p.hsGap = o.LastHandshake.Sub(p.hs)
		}
		p.hs = o.LastHandshake
		// A handshake completed: the peer answers, its back-off ends.
		p.lostInRow = 0
	}
	if !p.seen {
		// A new entry (or the first reading): its counters are a new
		// baseline, and what was pending on the old one is void.
		p.seen = true
		p.rx, p.tx = o.RxBytes, o.TxBytes
		p.unanswered = time.Time{}
		return
	}
	if o.RxBytes > p.rx {
		p.rxAt = o.Now
		p.unanswered = time.Time{}
		// The peer's packets decrypt here: whatever made its probes get
		// lost, the peer is back, so the dead peer's back-off ends.
		p.lostInRow = 0
	}
	// A lone keepalive (32 bytes: WireGuard's passive one after receiving
	// data, or a persistent one) expects no answer: it is not sending.
	if o.TxBytes > p.tx && o.TxBytes-p.tx != keepaliveLen {
		p.txAt = o.Now
		if p.unanswered.IsZero() && !p.rxAt.Equal(o.Now) {
			p.unanswered = o.Now
		}
	}
	p.rx, p.tx = o.RxBytes, o.TxBytes
}

// classify applies the evidence in order of strength (package comment).
func (p *Peer) classify(o Observation) (State, string, []RepairKind) {
	now := o.Now
	if !o.Present {
		return NoHandshake, "no entry for the peer on the device", nil
	}
	stuck := []RepairKind{ReReadEndpoint, Reinitiate}
	hsAge := now.Sub(o.LastHandshake)
	failed := !p.probeFailed.IsZero() && p.probeFailed.After(p.probeOK) && now.Sub(p.probeFailed) < p.cfg.ProbeValidity
	silent := !p.unanswered.IsZero() && now.Sub(p.unanswered) >= p.cfg.Silence

	if o.LastHandshake.IsZero() {
		if now.Sub(p.since) < p.cfg.Grace {
			return Pending, fmt.Sprintf("configured %s ago, no handshake yet", age(now, p.since)), nil
		}
		var why string
		switch {
		case failed:
			why = "the probe through the tunnel went unanswered"
		case !p.txAt.IsZero():
			why = "initiations go unanswered"
		default:
			// Nothing was ever sent (probes off, or not yet this
			// peer's turn): no evidence either way, nothing to repair.
			return Pending, fmt.Sprintf("configured %s ago, nothing sent to it yet", age(now, p.since)), nil
		}
		return NoHandshake, fmt.Sprintf("no handshake in %s since configured: %s", age(now, p.since), why), stuck
	}
	if failed || silent {
		what := fmt.Sprintf("sending for %s with nothing received", age(now, p.unanswered))
		if failed {
			what = fmt.Sprintf("the probe through the tunnel %s ago went unanswered", age(now, p.probeFailed))
		}
		if hsAge >= RejectAfterTime {
			return Stale, fmt.Sprintf("last handshake %s ago and not renewed: %s", age(now, o.LastHandshake), what), stuck
		}
		// Handshakes that keep completing while data is lost are the
		// crossed-initiation stall: a fresh initiation from this side
		// would only cross again.
		if p.churning(now) {
			return OneWay, fmt.Sprintf("handshakes complete (last %s ago) but data does not flow: %s", age(now, o.LastHandshake), what),
				[]RepairKind{BreakCrossed}
		}
		// A session exists, so Reinitiate could only send a keepalive on
		// it (wgdev.Initiate): no new handshake until WireGuard's own
		// retry 15 s after unanswered data. Both ends see the same
		// one-way link at about the same tick, and two fresh initiations
		// at once are how crossed initiations start, so only the lower
		// key re-creates its entry and initiates (BreakCrossed); the
		// other waits for it. A crossed stall seen with one handshake
		// (no churn yet) is repaired at once this way too.
		return OneWay, fmt.Sprintf("handshake %s ago but %s", age(now, o.LastHandshake), what), []RepairKind{ReReadEndpoint, BreakCrossed}
	}
	if !p.rxAt.IsZero() && now.Sub(p.rxAt) < p.cfg.Silence {
		if !p.txAt.IsZero() && now.Sub(p.txAt) < p.cfg.Silence {
			return Up, "traffic both ways", nil
		}
		return Up, "receiving", nil
	}
	if !p.probeOK.IsZero() && !p.probeOK.Before(p.probeFailed) && now.Sub(p.probeOK) < p.cfg.ProbeValidity {
		return Up, fmt.Sprintf("idle; probe answered %s ago", age(now, p.probeOK)), nil
	}
	if hsAge < RejectAfterTime {
		return Up, fmt.Sprintf("idle; handshake %s ago", age(now, o.LastHandshake)), nil
	}
	// Idle past a session's life, and no probe outcome yet: no new
	// evidence, so the last verdict stands until the probe (due now) ends.
	return p.state, fmt.Sprintf("idle, handshake %s ago; awaiting the probe", age(now, o.LastHandshake)), nil
}

// episodeOver ends a fault's episode: the repairs of a tunnel that does
// not carry packets start again at their first attempt.
func (p *Peer) episodeOver() {
	for _, k := range []RepairKind{ReReadEndpoint, Reinitiate, BreakCrossed} {
		delete(p.repairs, k)
	}
}

// tickSlack: the caller observes on a fixed tick but reads the clock a
// little early or late each time, so a back-off of whole ticks ends a
// hair after the observation meant to take it (10 s after a repair read
// 1 ms late is 1 ms after the fifth tick) and would slip a whole tick
// (2 s). A back-off ending within tickSlack of an observation ends at it.
const tickSlack = 250 * time.Millisecond

// due returns the repair if its backoff allows it now, and advances it.
func (p *Peer) due(k RepairKind, cause string, now time.Time) []Repair {
	b := p.repairs[k]
	if b == nil {
		b = &backoff{}
		p.repairs[k] = b
	}
	if now.Add(tickSlack).Before(b.next) || k == ReReadEndpoint && b.attempts > 0 {
		// A record is re-read once per episode (until the peer is up):
		// what was read then is what the watch delivers since.
		return nil
	}
	wait := p.cfg.RepairBackoff << min(b.attempts, 16)
	b.attempts++
	b.next = now.Add(min(wait, p.cfg.RepairBackoffMax))
	return []Repair{{Kind: k, Cause: cause, Attempt: b.attempts}}
}

// probeDue: at most one per ProbeInterval, none while traffic flows both
// ways, plus one verification probe after a repair. The byte counters also
// count handshake messages, so "both ways" can be handshakes alone: when
// handshakes come faster than WireGuard renews a used session (churn, the
// mark of crossed initiations), a probe is due after each new handshake
// (5 s after the last probe at the soonest) and every Silence, even while
// the counters move.
func (p *Peer) probeDue(o Observation, state State) bool {
	now := o.Now
	if !o.Present {
		return false
	}
	if p.inFlight && now.Sub(p.probeAt) < p.cfg.ProbeTimeout {
		return false
	}
	if !p.verifyAt.IsZero() && (!now.Before(p.verifyAt) || p.hs.After(p.verifyAt.Add(-p.cfg.VerifyAfter))) {
		// Due VerifyAfter after the repair, or as soon as a handshake
		// completed since it (the re-initiation or re-created entry did
		// its part): the sooner an answered probe ends the episode, the
		// sooner a fault that comes back gets a first repair, not a
		// backed-off one.
		return true
	}
	recent := func(t time.Time) bool { return !t.IsZero() && now.Sub(t) < p.cfg.Silence }
	since := now.Sub(p.probeAt)
	if p.probeAt.IsZero() {
		since = p.cfg.ProbeInterval
	}
	if p.churning(now) {
		// Each session re-made while handshakes churn may be a crossed
		// one: probe it once, as soon as the initiation rate limit would
		// let a repair's handshake out anyway, rather than up to a silence
		// period later (the stall lasts until a probe fails). A repair
		// this episode has its own verification probe instead.
		if p.probeAt.Before(p.hs) && p.verifyAt.IsZero() {
			return since >= RekeyTimeout
		}
		return since >= p.cfg.Silence
	}
	// Packets arrive again after a failed probe: the link may be back
	// (a firewall opened), or only one way. Only a probe tells, so one is
	// due every Silence rather than every ProbeInterval.
	if state != Up && !p.probeFailed.IsZero() && p.rxAt.After(p.probeFailed) {
		return since >= p.cfg.Silence
	}
	if recent(p.rxAt) && recent(p.txAt) && state == Up {
		return false
	}
	if p.dead(state) {
		return since >= p.deadInterval()
	}
	return since >= p.cfg.ProbeInterval
}

// deadInterval is the least time between two probes: ProbeInterval, and
// for a peer whose probes keep getting lost (its node is off, its port
// blocked) twice as long per lost probe in a row, up to DeadBackoffMax:
// 2, 4, 8, then every 15 min by default. The back-off ends (lostInRow is
// reset) at the first answered probe, received packet or new handshake.
//
// Why probing a dead peer seldom loses nothing:
//   - its state is reported at the first lost probe (no-handshake, stale
//     or one-way, with the reason); later probes could only confirm it;
//   - every probe to a peer without a session makes WireGuard retry the
//     handshake every 5 s for 90 s (RekeyAttemptTime): at 1000 dead peers
//     probed every minute that is ~200 initiations a second, 2 % of a core
//     in the device, spent on peers already known dead;
//   - a peer that comes back is noticed without our probe, because
//     liveness is symmetric: its daemon probes us (a peer it has not
//     heard from is due a probe at once), its handshake reaches our
//     device, and the new handshake ends the back-off at the next tick.
//     Pod traffic to it makes WireGuard initiate on demand anyway. Only an
//     idle link whose two ends were both cut off waits for the next
//     attempt of either side: at most DeadBackoffMax.
func (p *Peer) deadInterval() time.Duration {
	return min(p.cfg.ProbeInterval<<min(p.lostInRow, 8), max(p.cfg.DeadBackoffMax, p.cfg.ProbeInterval))
}

// dead reports whether the peer has no session and its probes keep
// getting lost (its node is off, its port blocked): its attempts follow
// deadInterval. A one-way peer is not dead: its handshakes complete, and
// its repair must not wait minutes behind a dead peer's back-off.
func (p *Peer) dead(state State) bool {
	return Sessionless(state) && p.lostInRow > 0
}

// reinitiateDead returns the re-initiation of a dead peer. The first one
// of an episode comes at once (a new fault is repaired at once); the
// following ones only with the peer's next probe (deadInterval), not on the
// repairs' own 10 s..5 min back-off: WireGuard retries each initiation for
// 90 s by itself, so a re-initiation between two probes would only restart
// those retries, and one together with the probe costs no more than the
// probe alone.
func (p *Peer) reinitiateDead(cause string, now time.Time) []Repair {
	b := p.repairs[Reinitiate]
	if b != nil && b.attempts > 0 {
		inFlight := p.inFlight && now.Sub(p.probeAt) < p.cfg.ProbeTimeout
		if inFlight || p.probeAt.IsZero() || now.Sub(p.probeAt) < p.deadInterval() {
			return nil
		}
		b.next = time.Time{}
	}
	return p.due(Reinitiate, cause, now)
}

// keepaliveLen is the size of a WireGuard keepalive as the transmit
// counter counts it: a transport header (16) and an empty payload's tag
// (16). Every data packet is longer (its payload is padded to 16).
const keepaliveLen = 32

// churnGap: two handshakes closer than this are not WireGuard renewing a
// used session (every RekeyAfterTime) but sessions being re-made.
const churnGap = RekeyAfterTime / 4

// churning reports whether handshakes are coming faster than WireGuard
// renews a used session, the latest within the silence period.
func (p *Peer) churning(now time.Time) bool {
	return p.hsGap > 0 && p.hsGap < churnGap && now.Sub(p.hs) < p.cfg.Silence
}

// Initiates reports whether this side (local public key) is the one to
// initiate after BreakCrossed: the lower key, so the two nodes agree
// without talking.
func Initiates(local, remote [32]byte) bool {
	for i := range local {
		if local[i] != remote[i] {
			return local[i] < remote[i]
		}
	}
	return false
}

func age(now, t time.Time) time.Duration {
	return now.Sub(t).Round(time.Second)
}
