package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/record"
)

// Observer follows every site's election (one watch on the elections
// prefix, re-listed after compaction) and, given the records the mesh
// holds, says which gateway serves each site. It is the mesh's SiteTable.
type Observer struct {
	Client  *clientv3.Client
	Prefix  string
	Cluster record.Cluster
	// Self is this node's own advert (its sites, record and endpoint);
	// the mesh never sees its own record.
	Self Advert
	// Usable, if set, excludes a candidate this node cannot reach (the
	// hook for per-peer tunnel liveness): the next in election order
	// serves here instead. Call Recheck when its answer changes.
	Usable func(Candidate) bool
	Log    *slog.Logger

	changed chan struct{}
	synced  chan struct{}

	mu        sync.Mutex
	cands     map[string]Candidate          // by election key
	created   map[netip.Prefix]int64        // records' create revisions
	serving   map[netip.Prefix]netip.Prefix // last answer: site -> record (invalid: none)
	failovers map[netip.Prefix]int64        // per site
	refused   map[string]bool               // refusals already logged
	view      View                          // last view, for status
}

// NewObserver returns an observer; call Run.
func NewObserver(cli *clientv3.Client, prefix string, cluster record.Cluster, self Advert, log *slog.Logger) *Observer {
	return &Observer{Client: cli, Prefix: prefix, Cluster: cluster, Self: self, Log: log,
		changed: make(chan struct{}, 1), synced: make(chan struct{}),
		cands: map[string]Candidate{}, created: map[netip.Prefix]int64{}, serving: map[netip.Prefix]netip.Prefix{},
		failovers: map[netip.Prefix]int64{}, refused: map[string]bool{}}
}

// Changed is signalled when the candidates changed: the mesh asks Serving
// again.
func (o *Observer) Changed() <-chan struct{} { return o.changed }

// Synced is closed once the elections were listed.
func (o *Observer) Synced() <-chan struct{} { return o.synced }

// Recheck makes the mesh ask again (e.g. Usable changed its answer).
func (o *Observer) Recheck() {
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

// Own reports whether this node advertises site itself: it is on this
// node's LAN side, so the mesh routes nothing for it here.
func (o *Observer) Own(site netip.Prefix) bool { return slices.Contains(o.Self.Sites, site) }

// Seen records the create revision of the record at cidr: adverts take
// precedence in creation order.
func (o *Observer) Seen(cidr netip.Prefix, created int64) {
	o.mu.Lock()
	o.created[cidr] = created
	o.mu.Unlock()
}

// Serving returns the record CIDR of the gateway serving each accepted
// site (invalid: none), given the other nodes' valid records. Changes
// are logged, failovers counted, refusals logged once.
func (o *Observer) Serving(records map[netip.Prefix]record.Lease) map[netip.Prefix]netip.Prefix {
	o.mu.Lock()
	defer o.mu.Unlock()
	adverts := make([]Advert, 0, len(records)+1)
	for c, l := range records {
		adverts = append(adverts, AdvertOf(c, l))
	}
	for c := range o.created {
		if _, ok := records[c]; !ok {
			delete(o.created, c)
		}
	}
	slices.SortFunc(adverts, func(a, b Advert) int {
		if d := o.created[a.Record] - o.created[b.Record]; d != 0 {
			return int(d)
		}
		return a.Record.Addr().Compare(b.Record.Addr())
	})
	// Our own sites passed the start-up check: they come first here.
	adverts = append([]Advert{o.Self}, adverts...)
	cands := make([]Candidate, 0, len(o.cands))
	for _, c := range o.cands {
		cands = append(cands, c)
	}
	v := Resolve(o.Cluster, adverts, cands, o.Usable)
	o.view = v
	o.logRefusals(v.Refused)
	out := make(map[netip.Prefix]netip.Prefix, len(v.Sites))
	for s, site := range v.Sites {
		var rec netip.Prefix
		gw := ""
		if site.Serving != nil {
			rec, gw = site.Serving.Record, site.Serving.Node
		}
		out[s] = rec
		old, known := o.serving[s]
		switch {
		case known && old == rec:
			continue
		case known && old.IsValid():
			o.failovers[s]++
			o.Log.Warn("site gateway changed", "site", s, "gateway", gw, "record", rec, "previous_record", old, "failovers", o.failovers[s])
		default:
			o.Log.Info("site gateway", "site", s, "gateway", gw, "record", rec, "candidates", len(site.Candidates))
		}
	}
	for s := range o.serving {
		if _, ok := out[s]; !ok {
			o.Log.Info("site no longer advertised", "site", s)
		}
	}
	o.serving = out
	return out
}

func (o *Observer) logRefusals(rs []Refusal) {
	seen := map[string]bool{}
	for _, r := range rs {
		msg := r.Err.Error()
		seen[msg] = true
		if !o.refused[msg] {
			o.Log.Error("site advertisement refused", "node", r.Node, "site", r.Site, "err", r.Err)
		}
	}
	o.refused = seen
}

// Run follows the elections until ctx ends.
func (o *Observer) Run(ctx context.Context) {
	bo := etcdutil.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}
	rev := o.listRetry(ctx, &bo)
	close(o.synced)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := o.Client.Watch(wctx, record.ElectionsPrefix(o.Prefix), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		var err error
		rev, err = o.watch(wch, rev, &bo)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			o.Log.Warn("gateway elections watch fell behind compaction; re-listing", "rev", rev)
			rev = o.listRetry(ctx, &bo)
			continue
		}
		d := bo.Next()
		o.Log.Warn("gateway elections watch ended; re-watching", "err", err, "in", d.Round(time.Millisecond))
		if !etcdutil.Sleep(ctx, d) {
			return
		}
	}
}

func (o *Observer) watch(wch clientv3.WatchChan, rev int64, bo *etcdutil.Backoff) (int64, error) {
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return rev, rpctypes.ErrCompacted
		}
		if err := resp.Err(); err != nil {
			return rev, err
		}
		bo.Reset()
		o.mu.Lock()
		for _, ev := range resp.Events {
			rev = ev.Kv.ModRevision
			key := string(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				delete(o.cands, key)
				continue
			}
			o.put(ev.Kv)
		}
		o.mu.Unlock()
		o.Recheck()
	}
	return rev, errors.New("watch channel closed")
}

func (o *Observer) put(kv *mvccpb.KeyValue) {
	c, err := DecodeCandidate(o.Prefix, kv)
	if err != nil {
		delete(o.cands, string(kv.Key))
		o.Log.Warn("skipping bad gateway election key", "key", string(kv.Key), "err", err)
		return
	}
	o.cands[c.Key] = c
}

func (o *Observer) listRetry(ctx context.Context, bo *etcdutil.Backoff) int64 {
	for {
		kvs, rev, err := etcdutil.List(ctx, o.Client, record.ElectionsPrefix(o.Prefix))
		if err == nil {
			bo.Reset()
			o.mu.Lock()
			o.cands = map[string]Candidate{}
			for _, kv := range kvs {
				o.put(kv)
			}
			o.mu.Unlock()
			o.Recheck()
			return rev
		}
		d := bo.Next()
		o.Log.Warn("list gateway elections failed; retrying", "err", err, "in", d.Round(time.Millisecond))
		if !etcdutil.Sleep(ctx, d) {
			return 0
		}
	}
}

// SiteStatus is one site as this node sees it (metrics).
type SiteStatus struct {
	CIDR       netip.Prefix
	Gateway    string // serving node; "" none
	Candidates int
	Failovers  int64
	Own        bool // this node advertises it
	Serving    bool // this node serves it
}

// Status returns every accepted site and the number of refused adverts.
func (o *Observer) Status() ([]SiteStatus, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []SiteStatus
	for _, s := range o.view.Sorted() {
		st := SiteStatus{CIDR: s.CIDR, Candidates: len(s.Candidates), Failovers: o.failovers[s.CIDR], Own: slices.Contains(o.Self.Sites, s.CIDR)}
		if s.Serving != nil {
			st.Gateway = s.Serving.Node
			st.Serving = s.Serving.Node == o.Self.Node
		}
		out = append(out, st)
	}
	return out, len(o.view.Refused)
}
