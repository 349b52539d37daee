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
	"slices"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
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
	SelfKey   wgtypes.Key
	OwnCIDR   netip.Prefix // this node's PodCIDR
	Gateway   netip.Addr   // source address of routes into the tunnel
	Device    string
	LinkIndex int
	WG        *wgctrl.Client
	Resync    time.Duration
	Log       *slog.Logger
	// OwnRecordChanged is called when the watch sees this node's record
	// deleted or rewritten, so the lease keeper can check it.
	OwnRecordChanged func()
}

// Stats are counters for operators and metrics.
type Stats struct {
	BadRecords    atomic.Int64 // records skipped as invalid or conflicting
	Applied       atomic.Int64 // per-PodCIDR changes applied
	ApplyErrors   atomic.Int64
	FullResyncs   atomic.Int64 // etcd re-lists (start, compaction)
	WatchRestarts atomic.Int64
}

// Reconciler keeps the device and routes equal to the records in etcd.
// All its maps are owned by the Run goroutine.
type Reconciler struct {
	cfg   Config
	Stats Stats

	records    map[netip.Prefix]record.Lease // valid records of other nodes
	active     map[netip.Prefix]Peer         // desired peers after conflict resolution
	keyOwner   map[wgtypes.Key]netip.Prefix  // which PodCIDR uses a public key
	conflicted map[netip.Prefix]bool         // valid records waiting for their key to be free
	applied    map[netip.Prefix]Peer         // what is on the device and in the routes
	dirty      map[netip.Prefix]bool         // failed applies to retry
	synced     chan struct{}
}

// New returns a reconciler; call Run.
func New(cfg Config) *Reconciler {
	if cfg.Resync <= 0 {
		cfg.Resync = time.Minute
	}
	return &Reconciler{cfg: cfg, synced: make(chan struct{})}
}

// Synced is closed after the first full sync was applied.
func (r *Reconciler) Synced() <-chan struct{} { return r.synced }

func (r *Reconciler) reset() {
	r.records = map[netip.Prefix]record.Lease{}
	r.active = map[netip.Prefix]Peer{}
	r.keyOwner = map[wgtypes.Key]netip.Prefix{}
	r.conflicted = map[netip.Prefix]bool{}
	r.dirty = map[netip.Prefix]bool{}
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
	return r.loop(ctx, rev, &bo)
}

// loop watches from rev+1 until ctx ends, re-watching with backoff and
// re-listing after compaction.
func (r *Reconciler) loop(ctx context.Context, rev int64, bo *etcdutil.Backoff) error {
	log := r.cfg.Log
	var err error
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	for ctx.Err() == nil {
		// WithRequireLeader: a member cut off from the quorum ends the
		// watch instead of silently sending nothing.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := r.cfg.Client.Watch(wctx, record.SubnetsPrefix(r.cfg.Prefix), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		rev, err = r.watchLoop(ctx, wch, rev, resync.C, retry.C, bo)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		r.Stats.WatchRestarts.Add(1)
		if errors.Is(err, rpctypes.ErrCompacted) {
			log.Warn("watch fell behind etcd compaction; re-listing", "rev", rev)
			if rev, err = r.fullSyncRetry(ctx, bo); err != nil {
				return err
			}
			continue
		}
		d := bo.Next()
		log.Warn("etcd watch ended; re-watching", "err", err, "from_rev", rev+1, "in", d.Round(time.Millisecond))
		if !etcdutil.Sleep(ctx, d) {
			return nil
		}
	}
	return nil
}

// watchLoop handles one watch stream; it returns the last revision seen
// and why the stream ended.
func (r *Reconciler) watchLoop(ctx context.Context, wch clientv3.WatchChan, rev int64, resync, retry <-chan time.Time, bo *etcdutil.Backoff) (int64, error) {
	for {
		select {
		case <-ctx.Done():
			return rev, ctx.Err()
		case resp, ok := <-wch:
			if !ok {
				return rev, errors.New("watch channel closed")
			}
			if resp.CompactRevision != 0 {
				return rev, rpctypes.ErrCompacted
			}
			if err := resp.Err(); err != nil {
				return rev, err
			}
			bo.Reset()
			for _, ev := range resp.Events {
				r.handle(ev)
				rev = ev.Kv.ModRevision
			}
		case <-resync:
			r.kernelResync()
		case <-retry:
			for cidr := range r.dirty {
				delete(r.dirty, cidr)
				r.apply(cidr)
			}
		}
	}
}

func (r *Reconciler) fullSyncRetry(ctx context.Context, bo *etcdutil.Backoff) (int64, error) {
	for {
		rev, err := r.fullSync(ctx)
		if err == nil {
			bo.Reset()
			return rev, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		d := bo.Next()
		r.cfg.Log.Warn("full sync failed; retrying (existing peers are kept)", "err", err, "in", d.Round(time.Millisecond))
		if !etcdutil.Sleep(ctx, d) {
			return 0, ctx.Err()
		}
	}
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
	if err := r.kernelResync(); err != nil {
		return 0, err
	}
	r.cfg.Log.Info("full sync done", "records", len(kvs), "peers", len(r.active), "rev", rev)
	return rev, nil
}

// kernelResync reads the device and our routes and repairs any drift from
// the desired state (someone removed a route, the device lost a peer).
func (r *Reconciler) kernelResync() error {
	dev, err := r.cfg.WG.Device(r.cfg.Device)
	if err != nil {
		return fmt.Errorf("read WireGuard device %s: %w", r.cfg.Device, err)
	}
	fam := netlink.FAMILY_V4
	if r.cfg.Cluster.CIDR.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	routes, _, err := route.Ours(fam)
	if err != nil {
		return err
	}
	// Only routes through our device are ours to manage here; the strict
	// route is listed separately.
	for dst, rt := range routes {
		if rt.LinkIndex != r.cfg.LinkIndex {
			delete(routes, dst)
		}
	}
	plan := Diff(r.active, dev.Peers, routes, r.cfg.LinkIndex, r.cfg.Gateway)
	if !plan.Empty() {
		r.cfg.Log.Info("resync: repairing device/routes", "peer_changes", len(plan.Peers), "route_adds", len(plan.RouteAdd), "route_dels", len(plan.RouteDel))
	}
	if err := r.execute(plan); err != nil {
		r.Stats.ApplyErrors.Add(1)
		return err
	}
	r.applied = make(map[netip.Prefix]Peer, len(r.active))
	for c, p := range r.active {
		r.applied[c] = p
	}
	return nil
}

// handle applies one watch event incrementally.
func (r *Reconciler) handle(ev *clientv3.Event) {
	switch ev.Type {
	case clientv3.EventTypePut:
		r.put(ev.Kv, true)
	case clientv3.EventTypeDelete:
		key := string(ev.Kv.Key)
		cidr, err := record.ParseSubnetKey(r.cfg.Prefix, key, r.cfg.Cluster)
		if err != nil {
			return // a key we never accepted
		}
		if cidr == r.cfg.OwnCIDR {
			r.ownChanged()
			return
		}
		if _, ok := r.records[cidr]; ok {
			r.cfg.Log.Info("node record gone", "key", key, "node", r.records[cidr].Node)
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
	cidr, kerr := record.ParseSubnetKey(r.cfg.Prefix, key, r.cfg.Cluster)
	l, err := record.DecodeSubnet(r.cfg.Prefix, key, kv.Value, r.cfg.Cluster)
	switch {
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
	r.records[cidr] = l
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

// resolve recomputes the desired peer for cidr, enforcing one PodCIDR per
// public key (WireGuard keys identify peers; two records with one key would
// fight over its AllowedIPs), then applies it if asked.
func (r *Reconciler) resolve(cidr netip.Prefix, apply bool) {
	prev, hadPrev := r.active[cidr]
	if hadPrev && r.keyOwner[prev.PublicKey] == cidr {
		delete(r.keyOwner, prev.PublicKey)
	}
	delete(r.active, cidr)
	delete(r.conflicted, cidr)
	if l, ok := r.records[cidr]; ok {
		want := Peer{CIDR: cidr, Node: l.Node, PublicKey: l.PublicKey, Endpoint: l.Endpoint, Keepalive: l.Keepalive}
		if owner, taken := r.keyOwner[want.PublicKey]; taken && owner != cidr {
			r.conflicted[cidr] = true
			r.skip(record.SubnetKey(r.cfg.Prefix, cidr), fmt.Errorf("public key %s is already used by the record for %s", want.PublicKey, owner))
		} else {
			r.active[cidr] = want
			r.keyOwner[want.PublicKey] = cidr
		}
	}
	if apply {
		r.apply(cidr)
	}
	// A key freed up: a record that was waiting for it may take it now.
	if hadPrev && (r.active[cidr].PublicKey != prev.PublicKey) {
		for c := range r.conflicted {
			if r.records[c].PublicKey == prev.PublicKey {
				r.resolve(c, apply)
				break
			}
		}
	}
}

// apply makes the device and routes match the desired state for one CIDR.
func (r *Reconciler) apply(cidr netip.Prefix) {
	var have, want *Peer
	if p, ok := r.applied[cidr]; ok {
		have = &p
	}
	if p, ok := r.active[cidr]; ok {
		want = &p
	}
	plan := DiffOne(have, want, r.cfg.LinkIndex, r.cfg.Gateway)
	if plan.Empty() {
		return
	}
	if err := r.execute(plan); err != nil {
		r.Stats.ApplyErrors.Add(1)
		r.dirty[cidr] = true
		r.cfg.Log.Error("apply peer change failed; will retry", "cidr", cidr, "err", err)
		return
	}
	r.Stats.Applied.Add(1)
	if want == nil {
		delete(r.applied, cidr)
		r.cfg.Log.Info("peer removed", "cidr", cidr, "node", have.Node, "public_key", have.PublicKey)
		return
	}
	r.applied[cidr] = *want
	r.cfg.Log.Info("peer configured", "cidr", cidr, "node", want.Node, "endpoint", want.Endpoint, "public_key", want.PublicKey)
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
