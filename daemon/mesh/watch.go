package mesh

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/record"
)

// The etcd side of the loop: one watch on the subnets prefix, re-watched
// with backoff, and a full re-list after compaction.

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
				r.rev = ev.Kv.ModRevision
				r.handle(ev)
				rev = ev.Kv.ModRevision
			}
			r.syncSites()
		case <-r.sitesChanged():
			r.syncSites()
		case <-resync:
			r.kernelResync()
		case <-r.cfg.DeviceEvents:
			if r.deviceLost {
				// The device is being made again (an external host
				// restarted): try at once and soon after.
				r.deviceBackoff.Reset()
			}
			r.recreateDevice("device link deleted")
		case <-r.deviceRetryC():
			r.recreateDevice("retry")
		case a := <-r.cfg.UnderlaySrcChanges:
			r.setUnderlaySrc(a)
		case <-retry:
			for cidr := range r.dirty {
				delete(r.dirty, cidr)
				r.apply(cidr)
			}
			r.syncSites()
		case <-r.pathsChanged():
			r.kernelResync()
		case <-r.cfg.PQ.HoldChanged:
			r.reHold()
		case <-r.rekeyC():
			r.checkRekeys(time.Now())
		case now := <-r.healC:
			r.healTick(now)
		case rr := <-r.rereads:
			r.rereadDone(rr, rev)
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
