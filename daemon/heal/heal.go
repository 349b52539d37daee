// Package heal follows every peer of the mesh: its liveness state (package
// liveness classifies), the repairs due, the active probes through the
// tunnel and the path MTU (package pmtu measures). The reconciler (package
// mesh) owns a Healer and drives it from its one select loop: on each
// liveness tick it reads the device once and calls Observe with the
// device's peers and what it applied from etcd; it runs the repairs
// Observe returns and puts the path MTUs on the peers' routes. Probes and
// path MTU searches run in short-lived goroutines of their own; their
// outcomes are queued and taken in by the next Observe, so every decision
// is made on the loop.
package heal

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/liveness"
	"github.com/wgcni/wgcni/daemon/pmtu"
)

// Tick is how often the reconciler reads the device for Observe: a
// drifted or missing entry is found within it.
const Tick = 2 * time.Second

// NarrowRecheck is how soon a path found narrower than the device is
// measured again (a full one: Config.PMTUInterval).
const NarrowRecheck = 2 * time.Minute

// Config configures a Healer. Zero durations take the defaults.
type Config struct {
	Log      *slog.Logger
	Liveness liveness.Config
	// ProbePort is the UDP port of every node's probe responder (on its
	// gateway address); 0 turns active probes and path MTU search off.
	ProbePort int
	// DeviceMTU is the WireGuard device's MTU: the ceiling of the path
	// MTU search, and a path that carries it needs no route MTU.
	DeviceMTU int
	// PMTUInterval is how often an up peer's path MTU is measured again
	// (besides on its first up and on every endpoint change).
	PMTUInterval time.Duration
	// ProbeTimeout is how long a liveness probe waits for its ack;
	// SizeTimeout how long each probe of a path MTU search waits.
	ProbeTimeout time.Duration
	SizeTimeout  time.Duration
	// StateFile is where Observe leaves the peers' states for
	// `wgcnictl peers` ("" = nowhere).
	StateFile string
	// OnChange, if set, is called on the reconciler's loop after Observe
	// published the peers' statuses when any peer changed state (a
	// gateway's tunnel judged dead or back: package gwlive).
	OnChange func([]PeerStatus)
}

func (c Config) withDefaults() Config {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.PMTUInterval <= 0 {
		c.PMTUInterval = 10 * time.Minute
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = 2 * time.Second
	}
	if c.SizeTimeout <= 0 {
		c.SizeTimeout = 400 * time.Millisecond
	}
	return c
}

// Want is what the reconciler applied for one peer from its etcd record.
type Want struct {
	Key        wgtypes.Key
	Node       string
	CIDR       netip.Prefix // the record's PodCIDR (labels, logs)
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	Keepalive  int // seconds
	// Probe is the peer's own address that its probe responder listens
	// on (its gateway): reachable only through the tunnel.
	Probe netip.Addr
}

// Repair is one repair for the reconciler to run now.
type Repair struct {
	Key     wgtypes.Key
	Kind    liveness.RepairKind
	Cause   string
	Attempt int
	// Stray is set for a device entry whose key no applied peer has: the
	// repair is to remove it.
	Stray bool
}

// Result is what one Observe asks of the reconciler.
type Result struct {
	Repairs []Repair
	// RouteMTU holds, for each peer whose measured path MTU changed, the
	// MTU to put on its routes: 0 when the path carries the device MTU
	// (no route MTU), else the path MTU.
	RouteMTU map[wgtypes.Key]int
}

// PeerStatus is one peer as the metrics and `wgcnictl peers` show it.
type PeerStatus struct {
	PublicKey      string           `json:"publicKey"`
	Node           string           `json:"node"`
	CIDR           string           `json:"cidr"`
	State          liveness.State   `json:"state"`
	Reason         string           `json:"reason"`
	Since          time.Time        `json:"since"` // when State began
	LastHandshake  time.Time        `json:"lastHandshake,omitzero"`
	PathMTU        int              `json:"pathMTU,omitempty"` // 0: not measured
	Repairs        map[string]int64 `json:"repairs,omitempty"` // by liveness.RepairKind
	ProbesAnswered int64            `json:"probesAnswered"`
	ProbesLost     int64            `json:"probesLost"`
}

type peer struct {
	lv     *liveness.Peer
	want   Want
	status PeerStatus

	mtuAt       time.Time      // last path MTU search started (zero: due)
	mtuEndpoint netip.AddrPort // endpoint the path MTU was measured over
	searching   bool
}

type outcome struct {
	key      wgtypes.Key
	sent     time.Time
	answered bool
	search   bool // a path MTU search: mtu (0: failed)
	mtu      int
	err      error
}

// Healer follows the peers. Observe and Close belong to one goroutine (the
// reconciler's loop); Status and Counts may be called from any.
type Healer struct {
	cfg   Config
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	peers map[wgtypes.Key]*peer
	stray map[wgtypes.Key]bool // strays already logged
	slots chan struct{}        // bounds the probes in flight

	written time.Time // state file last written
	dirty   bool      // a write failed: try again

	mu     sync.Mutex // guards done, status and stalls
	done   []outcome
	status []PeerStatus
	stalls int64 // times a peer became sessionless (liveness.Sessionless)
}

// maxInFlight bounds concurrent probe goroutines (and sockets).
const maxInFlight = 64

// New returns a Healer; Close it to stop its probes.
func New(cfg Config) *Healer {
	ctx, stop := context.WithCancel(context.Background())
	return &Healer{cfg: cfg.withDefaults(), ctx: ctx, stop: stop, peers: map[wgtypes.Key]*peer{},
		stray: map[wgtypes.Key]bool{}, slots: make(chan struct{}, maxInFlight)}
}

// Close stops the probes in flight and waits for them.
func (h *Healer) Close() {
	h.stop()
	h.wg.Wait()
}

// Observe takes one reading of the device's peers (dev) against what was
// applied (want) at now, and returns the repairs due and the route MTUs
// that changed.
func (h *Healer) Observe(now time.Time, dev []wgtypes.Peer, want []Want) Result {
	var res Result
	onDev := make(map[wgtypes.Key]*wgtypes.Peer, len(dev))
	for i := range dev {
		onDev[dev[i].PublicKey] = &dev[i]
	}
	wanted := make(map[wgtypes.Key]bool, len(want))
	for _, w := range want {
		wanted[w.Key] = true
		p := h.peers[w.Key]
		if p == nil {
			p = &peer{lv: liveness.New(h.cfg.Liveness, now), status: PeerStatus{State: liveness.Pending, Since: now,
				PublicKey: w.Key.String(), Repairs: map[string]int64{}}}
			h.peers[w.Key] = p
		}
		if p.want.Endpoint.IsValid() && p.want.Endpoint != w.Endpoint {
			p.mtuAt = time.Time{} // a new path: measure again
		}
		p.want = w
		p.status.Node, p.status.CIDR = w.Node, w.CIDR.String()
	}
	for k := range h.peers {
		if !wanted[k] {
			delete(h.peers, k) // removed or re-keyed: a new key is a new peer
		}
	}
	h.takeOutcomes(&res)

	changed, stateChanged := false, false
	budget := h.probeBudget()
	for _, k := range sortedKeys(h.peers) {
		p := h.peers[k]
		d := onDev[k]
		obs := liveness.Observation{Now: now, Present: d != nil}
		if d != nil {
			obs.LastHandshake, obs.RxBytes, obs.TxBytes = d.LastHandshakeTime, d.ReceiveBytes, d.TransmitBytes
			obs.Drift = Drift(*d, p.want)
			obs.Keepalive = d.PersistentKeepaliveInterval > 0
			p.status.LastHandshake = d.LastHandshakeTime
		}
		v := p.lv.Observe(obs)
		if v.Changed || v.Reason != p.status.Reason {
			changed = changed || v.Changed
			if v.Changed {
				stateChanged = true
				h.logTransition(p, v)
				p.status.Since = now
				if liveness.Sessionless(v.State) && !liveness.Sessionless(p.status.State) {
					h.mu.Lock()
					h.stalls++
					h.mu.Unlock()
				}
			}
			p.status.State, p.status.Reason = v.State, v.Reason
		}
		for _, r := range v.Repairs {
			// The first attempt is the news; the backed-off repeats of a
			// peer that stays down are counted, and logged at debug.
			level := slog.LevelWarn
			if r.Attempt > 1 {
				level = slog.LevelDebug
			}
			h.cfg.Log.Log(context.Background(), level, "repairing peer", "peer_node", p.want.Node, "cidr", p.want.CIDR, "repair", r.Kind,
				"cause", r.Cause, "attempt", r.Attempt, "public_key", k.String())
			p.status.Repairs[string(r.Kind)]++
			res.Repairs = append(res.Repairs, Repair{Key: k, Kind: r.Kind, Cause: r.Cause, Attempt: r.Attempt})
			changed = true
		}
		if h.cfg.ProbePort == 0 || !p.want.Probe.IsValid() || d == nil {
			continue
		}
		if v.Probe && budget > 0 {
			// Over the budget the probe stays due: sent on a later tick.
			budget--
			p.lv.ProbeSent(now)
			h.ping(k, p.want.Probe, now)
		}
		if v.State == liveness.Up && !p.searching && (p.mtuAt.IsZero() || now.Sub(p.mtuAt) >= h.cfg.PMTUInterval) {
			p.searching, p.mtuAt, p.mtuEndpoint = true, now, p.want.Endpoint
			h.search(k, p.want.Probe)
		}
	}
	for k := range onDev {
		if wanted[k] {
			continue
		}
		if !h.stray[k] {
			h.stray[k] = true
			h.cfg.Log.Warn("repairing device: entry with a key no applied record has", "public_key", k.String())
		}
		res.Repairs = append(res.Repairs, Repair{Key: k, Kind: liveness.Reapply, Cause: "device entry with a key no etcd record has", Attempt: 1, Stray: true})
	}
	for k := range h.stray {
		if onDev[k] == nil {
			delete(h.stray, k)
		}
	}
	st := h.publish(now, changed || len(res.RouteMTU) > 0)
	if stateChanged && h.cfg.OnChange != nil {
		h.cfg.OnChange(st)
	}
	return res
}

// probeBudget is how many probes one tick may send: enough for every peer
// once per probe interval, spread over its ticks (a thousand peers
// configured at once are not all probed in the same instant), and never
// fewer than a few.
func (h *Healer) probeBudget() int {
	ticks := int(h.cfg.Liveness.ProbeIntervalOrDefault() / Tick)
	return len(h.peers)/max(ticks, 1) + 4
}

// takeOutcomes feeds the finished probes and searches into the peers.
func (h *Healer) takeOutcomes(res *Result) {
	h.mu.Lock()
	done := h.done
	h.done = nil
	h.mu.Unlock()
	for _, o := range done {
		p := h.peers[o.key]
		if p == nil {
			continue // gone meanwhile
		}
		if !o.search {
			p.lv.ProbeDone(o.sent, o.answered)
			if o.answered {
				p.status.ProbesAnswered++
			} else {
				p.status.ProbesLost++
			}
			continue
		}
		p.searching = false
		if o.err != nil {
			h.cfg.Log.Info("path MTU search failed; trying again later", "peer_node", p.want.Node, "err", o.err)
			// Not measured: try again after a probe interval, not 10 min.
			p.mtuAt = time.Now().Add(-h.cfg.PMTUInterval + time.Minute)
			continue
		}
		if p.mtuEndpoint != p.want.Endpoint {
			p.mtuAt = time.Time{} // measured over the old path
			continue
		}
		if o.mtu < h.cfg.DeviceMTU {
			// A narrower path is measured again sooner: a size lost to a
			// passing fault (a repair, a restart) must not clamp the
			// route for long.
			p.mtuAt = time.Now().Add(-h.cfg.PMTUInterval + NarrowRecheck)
		}
		if o.mtu != p.status.PathMTU {
			level := slog.LevelInfo
			if o.mtu < h.cfg.DeviceMTU {
				level = slog.LevelWarn
			}
			h.cfg.Log.Log(context.Background(), level, "path MTU to peer measured", "peer_node", p.want.Node, "cidr", p.want.CIDR,
				"path_mtu", o.mtu, "device_mtu", h.cfg.DeviceMTU, "previous", p.status.PathMTU)
			p.status.PathMTU = o.mtu
			if res.RouteMTU == nil {
				res.RouteMTU = map[wgtypes.Key]int{}
			}
			res.RouteMTU[o.key] = RouteMTU(o.mtu, h.cfg.DeviceMTU)
		}
	}
}

// RouteMTU is the MTU to put on a peer's routes for a measured path MTU:
// none (0) when the path carries the whole device MTU.
func RouteMTU(path, device int) int {
	if path <= 0 || path >= device {
		return 0
	}
	return path
}

func (h *Healer) logTransition(p *peer, v liveness.Verdict) {
	args := []any{"peer_node", p.want.Node, "cidr", p.want.CIDR, "state", v.State, "reason", v.Reason,
		"previous", p.status.State, "public_key", p.want.Key.String()}
	switch v.State {
	case liveness.Up:
		h.cfg.Log.Info("peer up", args...)
	case liveness.Pending:
		h.cfg.Log.Info("peer pending", args...)
	default:
		h.cfg.Log.Warn("peer unhealthy: its pod traffic is dropped (strict mode, never sent in clear)", args...)
	}
}

// ping sends one liveness probe off the loop.
func (h *Healer) ping(k wgtypes.Key, addr netip.Addr, sent time.Time) {
	h.run(func() outcome {
		o := outcome{key: k, sent: sent}
		pr, err := pmtu.Dial(netip.AddrPortFrom(addr, uint16(h.cfg.ProbePort)), h.cfg.ProbeTimeout)
		if err != nil {
			return o // no route (the peer's route is gone): lost
		}
		defer pr.Close()
		ok, err := pr.Ping(h.ctx)
		// A port unreachable came back through the tunnel: the peer's
		// node answers, only its responder is not there (an older
		// wgcnid). The tunnel works both ways.
		o.answered = ok || errors.Is(err, syscall.ECONNREFUSED)
		return o
	})
}

// search measures the path MTU off the loop.
func (h *Healer) search(k wgtypes.Key, addr netip.Addr) {
	h.run(func() outcome {
		o := outcome{key: k, search: true}
		pr, err := pmtu.Dial(netip.AddrPortFrom(addr, uint16(h.cfg.ProbePort)), h.cfg.SizeTimeout)
		if err != nil {
			o.err = err
			return o
		}
		defer pr.Close()
		ctx, cancel := context.WithTimeout(h.ctx, time.Minute)
		defer cancel()
		ceiling := h.cfg.DeviceMTU
		o.mtu, o.err = pmtu.Search(ctx, pr, min(pmtu.Floor, ceiling), ceiling, 3)
		return o
	})
}

// run runs f in a goroutine when a slot is free (else the outcome is a
// lost probe, reported at once) and queues its outcome.
func (h *Healer) run(f func() outcome) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		select {
		case h.slots <- struct{}{}:
		case <-h.ctx.Done():
			return
		}
		o := f()
		<-h.slots
		h.mu.Lock()
		h.done = append(h.done, o)
		h.mu.Unlock()
	}()
}

// Status returns every peer's status, sorted by node name.
func (h *Healer) Status() []PeerStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.status)
}

// Stalls returns how many times a peer became sessionless (no-handshake
// or stale) from any other state: wgcni_peer_handshake_stalls_total.
func (h *Healer) Stalls() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stalls
}

// Counts returns how many peers are configured and how many are up or
// still pending (not known to fail).
func (h *Healer) Counts() (peers, fine int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.status {
		if s.State == liveness.Up || s.State == liveness.Pending {
			fine++
		}
	}
	return len(h.status), fine
}

// Ready is the readiness check: an error when the node has peers and
// reaches none of them.
func (h *Healer) Ready() error {
	peers, fine := h.Counts()
	if peers > 0 && fine == 0 {
		return fmt.Errorf("no peer reachable: %d configured, none up", peers)
	}
	return nil
}

// stateEvery bounds how stale the state file's reasons (which carry ages)
// may get when no state changes.
const stateEvery = 30 * time.Second

func (h *Healer) publish(now time.Time, changed bool) []PeerStatus {
	st := make([]PeerStatus, 0, len(h.peers))
	for _, p := range h.peers {
		s := p.status
		s.Repairs = make(map[string]int64, len(p.status.Repairs))
		for k, v := range p.status.Repairs {
			s.Repairs[k] = v
		}
		st = append(st, s)
	}
	slices.SortFunc(st, func(a, b PeerStatus) int {
		return cmp.Or(strings.Compare(a.Node, b.Node), strings.Compare(a.CIDR, b.CIDR), strings.Compare(a.PublicKey, b.PublicKey))
	})
	h.mu.Lock()
	h.status = st
	h.mu.Unlock()
	write := h.cfg.StateFile != "" && (changed || h.dirty || now.Sub(h.written) >= stateEvery)
	if !write {
		return st
	}
	if err := WriteState(h.cfg.StateFile, State{Updated: now, DeviceMTU: h.cfg.DeviceMTU, Peers: st}); err != nil {
		h.cfg.Log.Warn("write peer state file", "path", h.cfg.StateFile, "err", err)
		h.dirty = true
		return st
	}
	h.written, h.dirty = now, false
	return st
}

func sortedKeys(m map[wgtypes.Key]*peer) []wgtypes.Key {
	out := make([]wgtypes.Key, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	return out
}
