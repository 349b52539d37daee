package nat

import (
	"context"
	"encoding/json"
	"fmt"
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
	// PunchKeepalive (default 2 s) is the keepalive towards punched
	// peers and the interval of the punches; a punched peer not heard for
	// 3 intervals + 1 s is back on the relay.
	Keepalive, PunchKeepalive int
	// SelfCIDR is this node's record CIDR (its relay address's).
	SelfCIDR func() netip.Prefix
	// DeviceMTU is the WireGuard device's (Inputs.DeviceMTU).
	DeviceMTU int
	Log       *slog.Logger
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
	heard       map[string]bool   // peers whose punch reaches us (Inputs.Heard)
	published   map[string]string // node -> observation we published
	publishedOn clientv3.LeaseID
}

// heardSeen is a punched endpoint's counter and when it last grew.
type heardSeen struct {
	packets uint64
	at      time.Time
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
		obs: Observations{}, heard: map[string]bool{}, published: map[string]string{}}
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
	in := Inputs{Self: a.cfg.Self, SelfUnreachable: a.unreachable, Obs: a.obs, Heard: maps.Clone(a.heard), Relays: a.relays,
		Keepalive: a.cfg.Keepalive, PunchKeepalive: a.cfg.PunchKeepalive, DeviceMTU: a.cfg.DeviceMTU}
	if a.cfg.SelfCIDR != nil {
		in.SelfCIDR = a.cfg.SelfCIDR()
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

// Run publishes observations and punches until ctx ends.
func (a *Agent) Run(ctx context.Context) {
	tick := observeTick
	if a.cfg.Relay {
		go a.announceRelay(ctx)
	}
	var pn *punching
	if a.cfg.Reachable != "yes" {
		tick = planTick
		go a.watchNAT(ctx)
		p, err := NewPuncher()
		if err != nil {
			// Pairs then stay relayed (never heard); this line says why.
			a.cfg.Log.Warn("no hole punching; NATed pairs stay relayed", "err", err)
		} else {
			defer p.Close()
			pn = &punching{p: p, seen: map[netip.AddrPort]heardSeen{}, sent: map[netip.AddrPort]time.Time{}}
		}
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
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
		if pn != nil {
			a.punch(pn, uint16(dev.ListenPort), now)
		}
	}
}

// punching is the loop's punch state: the puncher, each endpoint's
// counter, when each was last punched, and the last error said.
type punching struct {
	p       *Puncher
	seen    map[netip.AddrPort]heardSeen
	sent    map[netip.AddrPort]time.Time
	lastErr string
}

// punch sends the punch packets due to every peer whose public endpoint
// the plan punches at, reads what was heard from them, and re-plans when
// a peer starts or stops being heard. A peer is heard while packets from
// its public endpoint arrived within the last 3 punch intervals + 1 s.
//
// Being heard is what makes the path safe to take: the peer's packet got
// through our NAT (which our punches opened towards it) and the peer sent
// it to ours, so the peer's NAT lets ours in. Each end then aims the
// pair's session at the other's public endpoint on its own; no instant
// has to be agreed on, since the pair's one WireGuard entry accepts its
// packets from the relay and from the direct path alike.
func (a *Agent) punch(pn *punching, port uint16, now time.Time) {
	a.mu.Lock()
	targets := map[netip.AddrPort]string{}
	punched := map[string]bool{} // the nodes punched at
	for _, path := range a.paths {
		if ap, err := netip.ParseAddrPort(path.Endpoint); err == nil {
			targets[unmapAP(ap)] = path.Node
			punched[path.Node] = true
		}
	}
	a.mu.Unlock()
	list := make([]netip.AddrPort, 0, len(targets))
	for ap := range targets {
		list = append(list, ap)
	}
	err := pn.p.Sync(port, list)
	var counts map[netip.AddrPort]uint64
	if err == nil && len(targets) > 0 { // no netlink dump for nothing to hear
		counts, err = pn.p.Heard()
	}
	every := time.Duration(a.cfg.PunchKeepalive) * time.Second
	for ap := range targets {
		if now.Sub(pn.sent[ap]) < every {
			continue
		}
		if e := pn.p.Send(port, ap); e != nil && err == nil {
			err = e
		}
		pn.sent[ap] = now
	}
	if msg := fmt.Sprint(err); err != nil && msg != pn.lastErr {
		a.cfg.Log.Warn("hole punching; retrying", "err", err)
		pn.lastErr = msg
	} else if err == nil {
		pn.lastErr = ""
	}
	dead := time.Duration(3*a.cfg.PunchKeepalive)*time.Second + time.Second
	heard := map[string]bool{} // only the peers heard
	for ap, node := range targets {
		s, ok := pn.seen[ap]
		if n, counted := counts[ap]; counted {
			// Only growth counts: a first reading may be a counter left
			// by an earlier daemon, and a re-made rule starts at 0.
			if ok && n > s.packets {
				s.at = now
			}
			s.packets = n
			pn.seen[ap] = s
		}
		if !s.at.IsZero() && now.Sub(s.at) < dead {
			heard[node] = true
		}
	}
	for ap := range pn.seen {
		if _, ok := targets[ap]; !ok {
			delete(pn.seen, ap)
			delete(pn.sent, ap)
		}
	}
	a.mu.Lock()
	changed := !maps.Equal(a.heard, heard)
	for node := range heard {
		if !a.heard[node] {
			a.cfg.Log.Info("hole punched: the peer is heard at its public endpoint; aiming the session there", "peer_node", node)
		}
	}
	for node := range a.heard {
		if !heard[node] && punched[node] {
			a.cfg.Log.Warn("punched path died; back to the relay", "peer_node", node, "silent_for", dead)
		}
	}
	a.heard = heard
	a.mu.Unlock()
	if changed {
		a.poke()
	}
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
