package nat

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/nodefile"
)

// DeviceReader is the part of wgctrl.Client the agent uses.
type DeviceReader interface {
	Device(name string) (*wgtypes.Device, error)
}

// Config wires the agent to etcd, the device and this node.
type Config struct {
	Client *clientv3.Client
	Prefix string
	Self   string
	// Reachable is --reachable: yes (publish observations of NATed
	// peers), no (this node is behind a NAT: plan relays and punches) or
	// auto (no once reachable peers see us at another address).
	Reachable string
	Device    string
	WG        DeviceReader
	// PeerNodes names the node behind each peer of the device (mesh).
	PeerNodes func() map[wgtypes.Key]mesh.PeerInfo
	// LeaseID is this node's record lease: observations are bound to it.
	LeaseID func() clientv3.LeaseID
	// Own is this node's published endpoint; SetUnreachable publishes
	// the record's flag (auto).
	Own            func() netip.AddrPort
	SetUnreachable func(ctx context.Context, unreachable bool) error
	// Relay: this node offers to relay (reachable, forwarding pod node):
	// it keeps a key under RelaysPrefix alive with a RelayTTL lease of
	// its own, so that a relay that dies is dropped within RelayTTL
	// whatever its record's lease TTL (default 5 s).
	Relay    bool
	RelayTTL time.Duration
	// StateFile receives the paths as JSON for wgcnictl ("" = none).
	StateFile string
	// Keepalive towards peers of an unreachable node (default 25 s);
	// PunchKeepalive towards punched peers: also how fast a dead direct
	// path is noticed (3 intervals; default 2 s).
	Keepalive, PunchKeepalive int
	// FirstPSK is set with --post-quantum=required (daemon/pqpeer): since
	// when a peer has had its preshared key. A punched path then carries
	// traffic only over a session made after it (docs/nat.md).
	FirstPSK func(wgtypes.Key) (time.Time, bool)
	Log      *slog.Logger
}

// StateFileName is the paths file in the run directory.
const StateFileName = "nat-paths.json"

// StatePath is the paths file of a node whose run dir is runDir.
func StatePath(runDir string) string { return filepath.Join(runDir, StateFileName) }

// ReadPaths reads the paths file of the node whose run dir is runDir, by
// peer node; empty when there is none (a reachable node: all direct).
func ReadPaths(runDir string) map[string]Path {
	out := map[string]Path{}
	b, err := os.ReadFile(StatePath(runDir))
	if err != nil {
		return out
	}
	var ps []Path
	if json.Unmarshal(b, &ps) == nil {
		for _, p := range ps {
			out[p.Node] = p
		}
	}
	return out
}

// How often the device is read: on a node that plans (punched paths
// coming up or dying, observations of itself), and on a reachable node
// (observations to publish; it costs every node one read a second).
const (
	planTick    = 200 * time.Millisecond
	observeTick = time.Second
)

// Agent publishes observations and plans this node's paths; it is the
// mesh's Paths.
type Agent struct {
	cfg     Config
	changed chan struct{}

	mu          sync.Mutex
	unreachable bool
	obs         Observations
	relays      map[string]bool            // announced relays (relays.go); nil until listed
	active      map[netip.Prefix]mesh.Peer // last seen by Rewrite
	paths       []Path
	up          map[string]bool      // punched paths carrying their CIDRs
	switchAt    map[string]time.Time // punched paths waiting for their switch time
	died        map[string]time.Time // when a punched path last died
	rx          map[wgtypes.Key]rxSeen
	published   map[string]string // node -> observation we published
	publishedOn clientv3.LeaseID
}

type rxSeen struct {
	bytes int64
	at    time.Time
}

// New returns an agent; call Run. Unreachable starts as --reachable=no.
func New(cfg Config) *Agent {
	if cfg.Keepalive == 0 {
		cfg.Keepalive = 25
	}
	if cfg.PunchKeepalive == 0 {
		cfg.PunchKeepalive = 2
	}
	if cfg.RelayTTL == 0 {
		cfg.RelayTTL = 5 * time.Second
	}
	return &Agent{cfg: cfg, changed: make(chan struct{}, 1), unreachable: cfg.Reachable == "no",
		obs: Observations{}, up: map[string]bool{}, switchAt: map[string]time.Time{}, died: map[string]time.Time{}, rx: map[wgtypes.Key]rxSeen{}, published: map[string]string{}}
}

// Unreachable reports whether this node currently counts as behind a NAT.
func (a *Agent) Unreachable() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.unreachable
}

// Changed fires when the plan inputs changed (mesh.Paths).
func (a *Agent) Changed() <-chan struct{} { return a.changed }

func (a *Agent) poke() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// Rewrite is mesh.Paths: the plan for the records' peers.
func (a *Agent) Rewrite(active map[netip.Prefix]mesh.Peer) map[netip.Prefix]mesh.Peer {
	a.mu.Lock()
	in := Inputs{Self: a.cfg.Self, SelfUnreachable: a.unreachable, Obs: a.obs, Up: maps.Clone(a.up), Died: maps.Clone(a.died), Relays: a.relays,
		Keepalive: a.cfg.Keepalive, PunchKeepalive: a.cfg.PunchKeepalive}
	if a.cfg.FirstPSK != nil {
		in.RequirePSK, in.PSKSince = true, map[string]time.Time{}
		for _, p := range active {
			if at, ok := a.cfg.FirstPSK(p.PublicKey); ok {
				in.PSKSince[p.Node] = at
			}
		}
	}
	out, paths := Plan(in, active)
	a.active = maps.Clone(active) // the mesh keeps changing its map
	old := a.paths
	a.paths = paths
	a.mu.Unlock()
	if !reflect.DeepEqual(old, paths) {
		a.pathsChanged(old, paths)
	}
	return out
}

// Paths returns how each peer is reached (metrics, wgcnictl).
func (a *Agent) Paths() []Path {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.paths)
}

func (a *Agent) pathsChanged(old, cur []Path) {
	prev := map[string]Path{}
	for _, p := range old {
		prev[p.Node] = p
	}
	for _, p := range cur {
		if q, ok := prev[p.Node]; !ok || q != p {
			a.cfg.Log.Info("path to peer", "peer_node", p.Node, "mode", p.Mode, "via", p.Via, "why", p.Why, "endpoint", p.Endpoint)
		}
	}
	if a.cfg.StateFile == "" {
		return
	}
	b, _ := json.MarshalIndent(cur, "", "  ")
	if err := nodefile.WriteFileAtomic(a.cfg.StateFile, b, 0o644); err != nil {
		a.cfg.Log.Warn("write NAT paths file", "path", a.cfg.StateFile, "err", err)
	}
}

// Run publishes observations and follows punched paths until ctx ends.
func (a *Agent) Run(ctx context.Context) {
	tick := observeTick
	if a.cfg.Relay {
		go a.announceRelay(ctx)
	}
	if a.cfg.Reachable != "yes" {
		tick = planTick
		go a.watchNAT(ctx)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var sw *time.Timer
	var swC <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-swC:
		case <-t.C:
		}
		now := time.Now()
		dev, err := a.cfg.WG.Device(a.cfg.Device)
		if err != nil {
			continue // the mesh re-creates a lost device and says so
		}
		a.decideReachable(ctx)
		if !a.Unreachable() {
			a.publish(ctx, dev.Peers, now)
		}
		next := a.followPunches(dev.Peers, now)
		if sw != nil {
			sw.Stop()
			sw, swC = nil, nil
		}
		if !next.IsZero() {
			sw = time.NewTimer(max(time.Until(next), 0))
			swC = sw.C
		}
	}
}

// followPunches tracks the direct peers of pairs being punched: a fresh
// handshake schedules the switch of their CIDRs onto the direct peer; a
// direct path that stops receiving (3 keepalives) goes back to the relay.
// It returns the earliest pending switch time.
//
// Both ends must switch at nearly the same instant: WireGuard accepts a
// packet only from the peer holding its source CIDR, so while one end has
// moved and the other has not, their packets cross on different paths and
// are dropped. Each end derives the instant from its own view of the same
// handshake (a whole second plus two), with no message exchanged.
func (a *Agent) followPunches(peers []wgtypes.Peer, now time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	byKey := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range peers {
		byKey[p.PublicKey] = p
		if s, ok := a.rx[p.PublicKey]; !ok || p.ReceiveBytes != s.bytes {
			a.rx[p.PublicKey] = rxSeen{bytes: p.ReceiveBytes, at: now}
		}
	}
	punching := map[string]wgtypes.Key{}
	for _, p := range a.active {
		for _, path := range a.paths {
			if path.Node == p.Node && path.Endpoint != "" {
				punching[p.Node] = p.PublicKey
			}
		}
	}
	dead := time.Duration(3*a.cfg.PunchKeepalive)*time.Second + time.Second
	changed := false
	var next time.Time
	for node, key := range punching {
		d, ok := byKey[key]
		// A session from before the path died does not count: it must be
		// a handshake both ends see (the entry is re-created meanwhile).
		alive := ok && d.LastHandshakeTime.After(a.died[node]) && now.Sub(d.LastHandshakeTime) < 180*time.Second && now.Sub(a.rx[key].at) < dead
		if a.cfg.FirstPSK != nil && alive && !a.up[node] {
			// Required: only a handshake made with the PSK opens the
			// path (Plan drops the sessions from before it), so both
			// ends take their switch instant from that one.
			at, has := a.cfg.FirstPSK(key)
			alive = has && d.LastHandshakeTime.After(at)
		}
		switch {
		case a.up[node] && !alive:
			delete(a.up, node)
			a.died[node] = now
			changed = true
			a.cfg.Log.Warn("punched path died; back to the relay", "peer_node", node, "last_handshake", d.LastHandshakeTime)
		case !a.up[node] && alive:
			at, ok := a.switchAt[node]
			if !ok {
				at = d.LastHandshakeTime.Truncate(time.Second).Add(2 * time.Second)
				a.switchAt[node] = at
				a.cfg.Log.Info("hole punched: handshake on the direct path; moving the peer's CIDRs off the relay", "peer_node", node, "endpoint", d.Endpoint, "switch_at", at.Format(time.RFC3339Nano))
			}
			if !now.Before(at) {
				delete(a.switchAt, node)
				a.up[node] = true
				changed = true
			} else if next.IsZero() || at.Before(next) {
				next = at
			}
		case !alive:
			delete(a.switchAt, node)
		}
	}
	for node := range a.up {
		if _, ok := punching[node]; !ok {
			delete(a.up, node)
			changed = true
		}
	}
	for node := range a.died {
		if _, ok := punching[node]; !ok {
			delete(a.died, node)
		}
	}
	if changed {
		a.poke()
	}
	return next
}

// publish writes, for every peer whose traffic comes from somewhere else
// than its record says (or that says it is unreachable), where the device
// sees it: the NAT's mapping, for NATed nodes to learn. Bound to this
// node's lease; only changes are written.
func (a *Agent) publish(ctx context.Context, peers []wgtypes.Peer, now time.Time) {
	infos := a.cfg.PeerNodes()
	lease := a.cfg.LeaseID()
	want := map[string]string{}
	for _, p := range peers {
		info, ok := infos[p.PublicKey]
		if !ok || p.Endpoint == nil || p.LastHandshakeTime.IsZero() || now.Sub(p.LastHandshakeTime) > 180*time.Second {
			continue
		}
		ap := p.Endpoint.AddrPort()
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if info.Unreachable || ap.Addr() != info.Published.Addr() {
			want[info.Node] = ap.String()
		}
	}
	a.mu.Lock()
	have, haveLease := a.published, a.publishedOn
	a.mu.Unlock()
	if lease == 0 || haveLease == lease && maps.Equal(have, want) {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	done := map[string]string{}
	for node, v := range want {
		if have[node] == v && haveLease == lease {
			done[node] = v
			continue
		}
		if _, err := a.cfg.Client.Put(ctx, ObservedKey(a.cfg.Prefix, node, a.cfg.Self), v, clientv3.WithLease(lease)); err != nil {
			a.cfg.Log.Warn("publish observed endpoint; retrying", "peer_node", node, "observed", v, "err", err)
			continue
		}
		a.cfg.Log.Info("observed NATed peer's endpoint", "peer_node", node, "observed", v)
		done[node] = v
	}
	for node := range have {
		if _, ok := want[node]; ok {
			continue
		}
		if _, err := a.cfg.Client.Delete(ctx, ObservedKey(a.cfg.Prefix, node, a.cfg.Self)); err != nil {
			done[node] = have[node] // retried next tick
		}
	}
	a.mu.Lock()
	a.published, a.publishedOn = done, lease
	a.mu.Unlock()
}

// decideReachable applies --reachable=auto: this node counts as behind a
// NAT once a reachable node sees its traffic come from an address other
// than the one it publishes.
func (a *Agent) decideReachable(ctx context.Context) {
	if a.cfg.Reachable != "auto" {
		return
	}
	a.mu.Lock()
	reach := reachableNodes(a.active)
	unreachable, known := AutoUnreachable(a.cfg.Own(), a.obs[a.cfg.Self], reach)
	cur := a.unreachable
	a.mu.Unlock()
	if !known || unreachable == cur {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.cfg.SetUnreachable(ctx, unreachable); err != nil {
		a.cfg.Log.Warn("publish reachability; retrying", "unreachable", unreachable, "err", err)
		return
	}
	a.cfg.Log.Info("reachability decided from observations", "unreachable", unreachable, "observed", a.obs[a.cfg.Self])
	a.mu.Lock()
	a.unreachable = unreachable
	a.mu.Unlock()
	a.poke()
}

// AutoUnreachable decides --reachable=auto from the observations of this
// node by reachable observers: unreachable when one saw another address
// than own's. known is false without any such observation.
func AutoUnreachable(own netip.AddrPort, seen map[string]netip.AddrPort, reachable map[string]bool) (unreachable, known bool) {
	for obs, ap := range seen {
		if !reachable[obs] {
			continue
		}
		known = true
		if ap.Addr() != own.Addr() {
			unreachable = true
		}
	}
	return unreachable, known
}

func reachableNodes(active map[netip.Prefix]mesh.Peer) map[string]bool {
	out := map[string]bool{}
	for _, p := range active {
		if !p.Unreachable {
			out[p.Node] = true
		}
	}
	return out
}

// watchNAT keeps a.obs and a.relays equal to the observations and relay
// announcements in etcd: a list, then a watch from its revision; any end
// of the watch (compaction included) re-lists after a backoff.
func (a *Agent) watchNAT(ctx context.Context) {
	bo := etcdutil.Backoff{Min: 500 * time.Millisecond, Max: 5 * time.Second}
	prefix := strings.TrimRight(a.cfg.Prefix, "/") + "/nat/"
	for ctx.Err() == nil {
		kvs, rev, err := etcdutil.List(ctx, a.cfg.Client, prefix)
		if err == nil {
			v := view{obs: Observations{}, relays: map[string]bool{}}
			for _, kv := range kvs {
				a.apply(&v, string(kv.Key), kv.Value)
			}
			a.setView(v)
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for resp := range a.cfg.Client.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
				if err = resp.Err(); err != nil {
					break
				}
				bo.Reset()
				a.mu.Lock()
				v := view{obs: maps.Clone(a.obs), relays: maps.Clone(a.relays)}
				a.mu.Unlock()
				for _, ev := range resp.Events {
					val := ev.Kv.Value
					if ev.Type == clientv3.EventTypeDelete {
						val = nil
					}
					a.apply(&v, string(ev.Kv.Key), val)
				}
				a.setView(v)
			}
			cancel()
		}
		d := bo.Next()
		a.cfg.Log.Debug("NAT watch ended; re-listing", "err", err, "in", d)
		if !etcdutil.Sleep(ctx, d) {
			return
		}
	}
}

// view is what etcd says about NAT traversal: observations, live relays.
type view struct {
	obs    Observations
	relays map[string]bool
}

// apply puts one event into v (value nil: deleted); v's inner maps are
// copied before they change (Rewrite may hold the old).
func (a *Agent) apply(v *view, key string, value []byte) {
	if node, ok := ParseRelay(a.cfg.Prefix, key); ok {
		if value == nil {
			delete(v.relays, node)
		} else {
			v.relays[node] = true
		}
		return
	}
	node, observer, ap, err := ParseObserved(a.cfg.Prefix, key, value)
	if err != nil {
		a.cfg.Log.Warn("skipping bad observation", "key", key, "err", err)
		return
	}
	m := maps.Clone(v.obs[node])
	if m == nil {
		m = map[string]netip.AddrPort{}
	}
	if value == nil {
		delete(m, observer)
	} else {
		m[observer] = ap
	}
	v.obs[node] = m
}

func (a *Agent) setView(v view) {
	a.mu.Lock()
	same := reflect.DeepEqual(a.obs, v.obs) && maps.Equal(a.relays, v.relays)
	a.obs, a.relays = v.obs, v.relays
	a.mu.Unlock()
	if !same {
		a.poke()
	}
}
