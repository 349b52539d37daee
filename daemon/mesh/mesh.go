// Package mesh is wgcnid's reconciler. Desired state: the subnet records of
// every other node in etcd. Actual state: the WireGuard device's peers
// (wgctrl) and our routes (route protocol). One select loop handles watch
// events (incremental: diff and apply just the changed PodCIDR), a resync
// timer (re-diff against the kernel, no etcd list), and ctx.Done. etcd is
// listed in full only at start and after the watch fell behind compaction.
// Peers are never pruned because etcd is unreachable: only a record that is
// gone (deleted or lease expired) removes a peer.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// Config wires the reconciler to etcd, the device and this node.
type Config struct {
	Client  *clientv3.Client
	Prefix  string
	Cluster record.Cluster
	Self    string // this node's name
	// SelfKey is this node's public key: a record of another node that
	// carries it is refused (WireGuard ignores a peer with the device's
	// own key, so it would only leave a route into nowhere and a resync
	// that "repairs" it forever).
	SelfKey wgtypes.Key
	OwnCIDR netip.Prefix // the CIDR keying this node's record
	// Gateways are this node's own addresses, one per family: a route
	// into the tunnel takes the one of its family as source.
	Gateways  []netip.Addr
	Device    string
	LinkIndex int
	WG        *wgctrl.Client
	Resync    time.Duration
	Log       *slog.Logger
	// OwnRecordChanged is called when the watch sees this node's record
	// deleted or rewritten, so the lease keeper can check it.
	OwnRecordChanged func()
	// Observe, if set, is told how long each reconcile took: kind "event"
	// (one PodCIDR changed in etcd) or "resync" (the periodic re-diff
	// against the kernel), and whether it failed. Metrics use it.
	Observe func(kind string, took time.Duration, err error)
	// Keepalive (seconds) is this node's own --keepalive: it keeps
	// alive towards every peer (a node behind NAT holds its mapping
	// open); see effectiveKeepalive.
	Keepalive int
	// UnderlayEncryption: tunnel traffic to peers' underlay addresses when
	// they advertise it too (underlayenc.go), with UnderlaySrc (this node's
	// underlay address) as source; never to the NoTunnel addresses (the
	// etcd endpoints).
	UnderlayEncryption bool
	UnderlaySrc        netip.Addr
	NoTunnel           []netip.Addr
	// UnderlaySrcChanges delivers this node's new underlay address when it
	// moves (roaming): the source of the host-table routes (underlayenc.go).
	UnderlaySrcChanges <-chan netip.Addr
	// Recreate brings the device back after it was lost (its userspace
	// host process died, or the link was deleted) — created or adopted,
	// keyed, addressed, up — and returns its new link index; DeviceEvents
	// signals that the device link was deleted, created or changed
	// (wgdev.WatchLink). Both optional (device.go).
	Recreate     func() (linkIndex int, err error)
	DeviceEvents <-chan struct{}
	// FreshDevice: the device was just created, not adopted, in place of
	// one the peers still hold sessions with (a crash, a reboot, a
	// container restart): the first sync initiates to every peer
	// (device.go).
	FreshDevice bool
	// PQ: post-quantum preshared keys (postquantum.go); zero = off.
	PQ PQHooks
	// Heal, if set, follows every peer's liveness and path MTU; the loop
	// drives it every heal.Tick and runs its repairs (heal.go).
	Heal *heal.Healer
	// Sites, if set, routes the site CIDRs gateways serve
	// (docs/gateways.md, sites.go).
	Sites SiteTable
	// Paths, if set, rewrites the desired peers before they are applied
	// (NAT traversal: relays carrying other nodes' CIDRs, punched direct
	// paths; daemon/nat, paths.go). Every change is then applied by a
	// full diff, so a CIDR moving between two peers is one device update.
	Paths Paths
}

// Stats are counters for operators and metrics.
type Stats struct {
	BadRecords    atomic.Int64 // records skipped as invalid or conflicting
	Applied       atomic.Int64 // per-PodCIDR changes applied
	ApplyErrors   atomic.Int64
	FullResyncs   atomic.Int64 // etcd re-lists (start, compaction)
	WatchRestarts atomic.Int64
	// Re-created entries (a re-keyed peer, a dropped stale session) whose
	// first handshake did not come and which were re-created again to
	// initiate again (rekey.go).
	RekeyRetries atomic.Int64
	// Times the device was lost and re-created (device.go).
	DeviceRecreations atomic.Int64
}

// Reconciler keeps the device and routes equal to the records in etcd.
// All its maps are owned by the Run goroutine.
type Reconciler struct {
	cfg   Config
	Stats Stats

	records    map[netip.Prefix]record.Lease // valid records of other nodes
	active     map[netip.Prefix]Peer         // desired peers after conflict resolution
	owners     owners                        // what a record holds alone, and which record holds it (owners.go)
	conflicted map[netip.Prefix]bool         // valid records waiting for a claim to be free
	applied    map[netip.Prefix]Peer         // what is on the device and in the routes
	dirty      map[netip.Prefix]bool         // failed applies to retry
	hostRanges map[netip.Prefix]bool         // reserved host blocks (hostpeer.go)
	synced     chan struct{}
	// rev is the etcd revision of the event being handled; logged with
	// each applied change so benchmarks and operators can tie a device
	// change to the etcd write that caused it.
	rev int64

	// peerNodes maps the public key of every applied peer to its node
	// name, readable from other goroutines (metrics, at scrape time).
	peerMu    sync.Mutex
	peerNodes map[wgtypes.Key]PeerInfo

	rekeyed    map[netip.Prefix]*rekeyWatch // re-created entries until their first handshake (rekey.go)
	rekeyTimer *time.Timer                  // next check of rekeyed; nil when empty

	// The device is gone and re-creating it failed: retried on
	// deviceTimer with deviceBackoff (device.go).
	deviceLost     bool
	deviceFailures int // failed attempts since the loss
	deviceTimer    *time.Timer
	deviceBackoff  etcdutil.Backoff
	recreating     bool // recreateDevice is running (its resync must not recurse)

	// Self-healing (heal.go): the liveness tick, re-read records coming
	// back from etcd, and the route MTU of peers behind a narrower path.
	healC      <-chan time.Time
	rereads    chan reread
	rereadWant map[netip.Prefix]bool // records to re-read (flushRereads)
	rereading  bool
	rereadAt   time.Time
	pathMTU    map[wgtypes.Key]int
	site       siteState // site CIDRs behind gateways (sites.go)
}

func (r *Reconciler) observe(kind string, start time.Time, err error) {
	if r.cfg.Observe != nil {
		r.cfg.Observe(kind, time.Since(start), err)
	}
}

// New returns a reconciler; call Run.
func New(cfg Config) *Reconciler {
	if cfg.Resync <= 0 {
		cfg.Resync = time.Minute
	}
	return &Reconciler{cfg: cfg, synced: make(chan struct{}), rereads: make(chan reread, 1),
		deviceBackoff: etcdutil.Backoff{Min: 50 * time.Millisecond, Max: time.Second}}
}

// Synced is closed after the first full sync was applied.
func (r *Reconciler) Synced() <-chan struct{} { return r.synced }

func (r *Reconciler) reset() {
	r.records = map[netip.Prefix]record.Lease{}
	r.active = map[netip.Prefix]Peer{}
	r.owners = owners{}
	r.conflicted = map[netip.Prefix]bool{}
	r.dirty = map[netip.Prefix]bool{}
	r.hostRanges = map[netip.Prefix]bool{}
}

// Run reconciles until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	// Short cap: after an outage the watch must catch up within seconds
	// (the client itself reconnects at least every 2 s).
	bo := etcdutil.Backoff{Min: 500 * time.Millisecond, Max: 5 * time.Second}
	rev, err := r.fullSyncRetry(ctx, &bo)
	if err != nil {
		return err
	}
	close(r.synced)
	if r.cfg.Heal != nil {
		t := time.NewTicker(heal.Tick)
		defer t.Stop()
		r.healC = t.C
	}
	if r.cfg.FreshDevice {
		r.initiateAll()
	}
	return r.loop(ctx, rev, &bo)
}

// fullSync re-lists etcd, rebuilds the desired state and applies the
// difference to what the kernel actually has.
func (r *Reconciler) fullSync(ctx context.Context) (int64, error) {
	kvs, rev, err := etcdutil.List(ctx, r.cfg.Client, record.SubnetsPrefix(r.cfg.Prefix))
	if err != nil {
		return 0, err
	}
	r.Stats.FullResyncs.Add(1)
	r.reset()
	// Oldest record first: when two records carry one key, the older wins.
	slices.SortFunc(kvs, func(a, b *mvccpb.KeyValue) int { return int(a.CreateRevision - b.CreateRevision) })
	ownSeen := false
	for _, kv := range kvs {
		if string(kv.Key) == record.SubnetKey(r.cfg.Prefix, r.cfg.OwnCIDR) {
			ownSeen = true
		}
		r.put(kv, false)
	}
	if !ownSeen && r.cfg.OwnCIDR.IsValid() {
		// Our record vanished while we were not watching (e.g. deleted
		// during a watch gap the compaction hid): the keeper must check,
		// since its lease may still be alive without the record.
		r.cfg.Log.Warn("own record missing from the full listing; asking the lease keeper to re-check", "key", record.SubnetKey(r.cfg.Prefix, r.cfg.OwnCIDR))
		r.ownChanged()
	}
	r.sitesFromScratch()
	if err := r.kernelResync(); err != nil {
		return 0, err
	}
	r.cfg.Log.Info("full sync done", "records", len(kvs), "peers", len(r.active), "rev", rev)
	return rev, nil
}

// kernelResync reads the device and our routes and repairs any drift from
// the desired state (someone removed a route, the device lost a peer).
func (r *Reconciler) kernelResync() (err error) {
	start := time.Now()
	defer func() { r.observe("resync", start, err) }()
	dev, err := r.cfg.WG.Device(r.cfg.Device)
	if errors.Is(err, os.ErrNotExist) && r.cfg.Recreate != nil && !r.recreating {
		// Lost without the event (the watch failed): re-creating it
		// runs a resync of its own.
		r.recreateDevice("resync found no device")
		return nil
	}
	if err != nil {
		return fmt.Errorf("read WireGuard device %s: %w", r.cfg.Device, err)
	}
	routes, err := OurRoutes(r.cfg.Cluster)
	if err != nil {
		return err
	}
	if err := oursUnderlayTable(routes); err != nil {
		return err
	}
	// Only routes through our device are ours to manage here; the strict
	// route is listed separately.
	for dst, rt := range routes {
		if rt.LinkIndex != r.cfg.LinkIndex {
			delete(routes, dst)
		}
	}
	r.dropSiteRoutes(routes)
	desired := r.desired()
	plan := Diff(desired, dev.Peers, routes, r.cfg.LinkIndex, r.cfg.Gateways)
	if !plan.Empty() {
		r.cfg.Log.Info("resync: repairing device/routes", "peer_changes", len(plan.Peers), "route_adds", len(plan.RouteAdd), "route_dels", len(plan.RouteDel))
	}
	if err := r.execute(plan); err != nil {
		r.Stats.ApplyErrors.Add(1)
		return err
	}
	r.logResyncPeers(desired, plan.Peers)
	r.watchDroppedSessions(desired, dev.Peers, time.Now())
	r.applied = make(map[netip.Prefix]Peer, len(desired))
	for c, p := range desired {
		r.applied[c] = p
	}
	r.ensureSiteRoutes()
	r.publishPeers()
	return nil
}

// logResyncPeers writes one line per peer a resync added, changed or
// removed, as the per-event path does (the summary line alone would hide
// which node appeared or vanished, e.g. at start-up).
func (r *Reconciler) logResyncPeers(desired map[netip.Prefix]Peer, changes []wgtypes.PeerConfig) {
	if len(changes) == 0 {
		return
	}
	byKey := make(map[wgtypes.Key]Peer, len(desired))
	for _, p := range desired {
		byKey[p.PublicKey] = p
	}
	for _, pc := range changes {
		if pc.Remove {
			r.cfg.Log.Info("peer removed", "public_key", pc.PublicKey.String(), "why", "no record in etcd (resync)")
			continue
		}
		p := byKey[pc.PublicKey]
		r.cfg.Log.Info("peer configured", "cidr", p.primary(), "peer_node", p.Node, "endpoint", p.Endpoint, "public_key", p.PublicKey.String(), "by", "resync")
	}
}

// handle applies one watch event incrementally.
func (r *Reconciler) handle(ev *clientv3.Event) {
	switch ev.Type {
	case clientv3.EventTypePut:
		r.put(ev.Kv, true)
	case clientv3.EventTypeDelete:
		key := string(ev.Kv.Key)
		cidr, err := record.ParsePeerKey(r.cfg.Prefix, key, r.cfg.Cluster)
		if err != nil {
			return // a key we never accepted
		}
		r.hostRangeGone(cidr)
		if cidr == r.cfg.OwnCIDR {
			r.ownChanged()
			return
		}
		if _, ok := r.records[cidr]; ok {
			r.cfg.Log.Info("node record gone", "key", key, "peer_node", r.records[cidr].Node)
		}
		delete(r.records, cidr)
		r.resolve(cidr, true)
	}
}

// put validates one record and updates the desired state for its CIDR;
// apply says whether to change the device now (false during a full sync,
// which applies everything at the end).
func (r *Reconciler) put(kv *mvccpb.KeyValue, apply bool) {
	key := string(kv.Key)
	cidr, kerr := record.ParsePeerKey(r.cfg.Prefix, key, r.cfg.Cluster)
	l, err := r.decode(key, kv.Value)
	switch {
	case errors.Is(err, errHostRange):
		delete(r.records, cidr)
		r.resolve(cidr, apply)
		return
	case err != nil:
		r.skip(key, err)
		if kerr == nil && cidr != r.cfg.OwnCIDR {
			// A record that turned bad no longer vouches for its peer.
			delete(r.records, cidr)
			r.resolve(cidr, apply)
		}
		return
	case cidr == r.cfg.OwnCIDR:
		if l.Node != r.cfg.Self {
			r.skip(key, fmt.Errorf("node %q claims this node's PodCIDR %s", l.Node, cidr))
			r.ownChanged()
		} else if apply {
			r.ownChanged() // cheap check that it is still bound to our lease
		}
		return
	case l.Node == r.cfg.Self:
		r.skip(key, fmt.Errorf("record names this node (%s) but this node holds %s", r.cfg.Self, r.cfg.OwnCIDR))
		return
	case r.cfg.SelfKey != (wgtypes.Key{}) && wgtypes.Key(l.PublicKey) == r.cfg.SelfKey:
		r.skip(key, fmt.Errorf("record of node %q carries this node's own public key", l.Node))
		if kerr == nil {
			delete(r.records, cidr)
			r.resolve(cidr, apply)
		}
		return
	}
	// A PodCIDR changes owner only through deletion (lease expiry) and a
	// fresh create-if-absent, which restarts the key's version at 1. A
	// live record rewritten in place under another node's name is a
	// hijack attempt by someone with etcd write access bypassing the
	// owner-checking transactions: keep the peer we trust.
	if prev, ok := r.records[cidr]; ok && kv.Version > 1 && prev.Node != l.Node {
		r.skip(key, fmt.Errorf("record of node %q was overwritten in place with node %q (an owner changes only after the record is deleted or expires); keeping %q's peer", prev.Node, l.Node, prev.Node))
		return
	}
	r.records[cidr] = l
	if r.cfg.Sites != nil {
		r.cfg.Sites.Seen(cidr, kv.CreateRevision)
	}
	r.resolve(cidr, apply)
}

func (r *Reconciler) ownChanged() {
	if r.cfg.OwnRecordChanged != nil {
		r.cfg.OwnRecordChanged()
	}
}

func (r *Reconciler) skip(key string, err error) {
	r.Stats.BadRecords.Add(1)
	r.cfg.Log.Warn("skipping bad node record", "key", key, "err", err, "bad_records", r.Stats.BadRecords.Load())
}

// apply makes the device and routes match the desired state for one CIDR.
func (r *Reconciler) apply(cidr netip.Prefix) {
	if r.cfg.Paths != nil {
		// A change may move CIDRs between peers (paths.go).
		if err := r.kernelResync(); err != nil {
			r.dirty[cidr] = true
			r.cfg.Log.Error("apply peer change failed; will retry", "cidr", cidr, "err", err)
		}
		return
	}
	var have, want *Peer
	if p, ok := r.applied[cidr]; ok {
		have = &p
	}
	if p, ok := r.active[cidr]; ok {
		want = &p
	}
	plan := DiffOne(have, want, r.cfg.LinkIndex, r.cfg.Gateways)
	if plan.Empty() {
		return
	}
	start := time.Now()
	err := r.execute(plan)
	r.observe("event", start, err)
	if err != nil {
		r.Stats.ApplyErrors.Add(1)
		r.dirty[cidr] = true
		r.cfg.Log.Error("apply peer change failed; will retry", "cidr", cidr, "err", err)
		return
	}
	r.Stats.Applied.Add(1)
	if want == nil {
		delete(r.applied, cidr)
		delete(r.pathMTU, have.PublicKey)
		r.publishPeer(have, nil)
		r.cfg.Log.Info("peer removed", "cidr", cidr, "peer_node", have.Node, "public_key", have.PublicKey.String(), "rev", r.rev)
		return
	}
	if have != nil && have.PublicKey != want.PublicKey {
		r.cfg.Log.Info("peer key rotated", "cidr", cidr, "peer_node", want.Node, "old_public_key", have.PublicKey.String(), "public_key", want.PublicKey.String(), "rev", r.rev)
	}
	r.applied[cidr] = *want
	r.publishPeer(have, want)
	r.cfg.Log.Info("peer configured", "cidr", cidr, "peer_node", want.Node, "endpoint", want.Endpoint, "public_key", want.PublicKey.String(), "rev", r.rev)
	if want.Underlay.IsValid() && (have == nil || have.Underlay != want.Underlay) {
		r.cfg.Log.Info("host encryption on towards peer: its underlay address goes through WireGuard", "peer_node", want.Node, "addr", want.Underlay, "table", route.HostTable)
	}
	if have != nil && have.PublicKey != want.PublicKey {
		if want.Keepalive == 0 {
			r.handshakeNow(*want)
		}
		r.watchRekey(cidr, want.PublicKey, whyRekeyed, time.Now())
	}
}

// handshakeNow makes the device initiate a handshake with a peer whose key
// just changed (a key rotation), instead of waiting for our next packet to
// it. The rotating node switched its device, and made its own first
// initiation (refused: we did not know the key yet) before publishing, so
// it cannot initiate again for 5 s and ours is the one handshake: no two
// initiations cross, which would leave both sides answering and neither
// sending. A peer with keepalive configured got its keepalive, and so its
// initiation, when its entry was created.
func (r *Reconciler) handshakeNow(p Peer) {
	err := wgdev.Initiate(r.cfg.WG, r.cfg.Device, map[wgtypes.Key]time.Duration{p.PublicKey: 0})
	if err != nil {
		r.cfg.Log.Warn("could not trigger a handshake with the re-keyed peer; it happens with the next packet", "cidr", p.primary(), "err", err)
	}
}

// execute applies a plan: route deletions, peer changes, route additions.
func (r *Reconciler) execute(p Plan) error {
	var errs []error
	for _, rt := range p.RouteDel {
		if err := route.DeletePeer(rt); err != nil {
			errs = append(errs, err)
		}
	}
	if len(p.Peers) > 0 {
		r.withPresharedKeys(p.Peers)
		if err := r.cfg.WG.ConfigureDevice(r.cfg.Device, wgtypes.Config{Peers: p.Peers}); err != nil {
			// Routes for peers that failed would only blackhole; stop here.
			return errors.Join(append(errs, fmt.Errorf("configure peers on %s: %w", r.cfg.Device, err))...)
		}
	}
	for _, rt := range p.RouteAdd {
		if err := route.EnsurePeer(rt); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
