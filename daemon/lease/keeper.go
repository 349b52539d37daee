package lease

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/record"
)

// Keeper keeps this node's record alive: one KeepAlive stream on its lease,
// and when that ends (lease expired, e.g. during a partition) or the record
// is seen deleted/overwritten, it takes the same CIDR back. It never picks a
// different CIDR while running: pods are numbered out of this one.
type Keeper struct {
	A *Acquirer

	mu   sync.Mutex
	held Held
	Self record.Lease // guarded by mu once Run started

	recheck chan struct{}

	// Counters for operators (and later metrics).
	Retakes   atomic.Int64 // own record re-created after it vanished
	Conflicts atomic.Int64 // attempts that found our CIDR held by another node

	// expiry is when the lease runs out unless renewed (unix nanoseconds,
	// 0 = unknown): each keepalive response carries the TTL etcd granted.
	expiry atomic.Int64
}

// Expiry returns when etcd expires the lease unless the next keepalive
// arrives (zero before the first keepalive response).
func (k *Keeper) Expiry() time.Time {
	if n := k.expiry.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// NewKeeper returns a keeper for h.
func NewKeeper(a *Acquirer, self record.Lease, h Held) *Keeper {
	return &Keeper{A: a, Self: self, held: h, recheck: make(chan struct{}, 1)}
}

// Held returns the current record description.
func (k *Keeper) Held() Held {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.held
}

// Recheck asks the keeper to verify the record now (the mesh calls this
// when its watch sees our key deleted or written by someone else).
func (k *Keeper) Recheck() {
	select {
	case k.recheck <- struct{}{}:
	default:
	}
}

// Run keeps the lease alive until ctx ends. It does not revoke the lease on
// exit: a restarted daemon adopts it, so peers never see us leave.
func (k *Keeper) Run(ctx context.Context) {
	log := k.A.Log
	for ctx.Err() == nil {
		h := k.Held()
		kctx, cancel := context.WithCancel(ctx)
		ch, err := k.A.Client.KeepAlive(kctx, h.LeaseID)
		if err != nil {
			cancel()
			log.Warn("lease keepalive could not start; re-checking own record", "key", h.Key, "err", err)
		} else {
			k.drain(ctx, ch, h)
			cancel()
		}
		if ctx.Err() != nil {
			return
		}
		k.retake(ctx)
	}
}

// drain consumes keepalive responses until the stream ends or a recheck
// finds the record no longer ours.
func (k *Keeper) drain(ctx context.Context, ch <-chan *clientv3.LeaseKeepAliveResponse, h Held) {
	log := k.A.Log
	for {
		select {
		case <-ctx.Done():
			return
		case resp, ok := <-ch:
			if ok && resp != nil {
				k.expiry.Store(time.Now().Add(time.Duration(resp.TTL) * time.Second).UnixNano())
			}
			if !ok {
				log.Warn("lease keepalive ended (lease expired or etcd unreachable for a whole TTL); re-checking own record",
					"key", h.Key, "lease", fmt.Sprintf("%x", int64(h.LeaseID)))
				return
			}
		case <-k.recheck:
			gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			start := time.Now()
			resp, err := k.A.Client.Get(gctx, h.Key)
			cancel()
			log.Debug("re-checked own record", "key", h.Key, "took", time.Since(start), "err", err)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				log.Warn("re-check own record", "key", h.Key, "err", err)
				continue // the keepalive stream tells us if it really expired
			}
			if len(resp.Kvs) == 0 || clientv3.LeaseID(resp.Kvs[0].Lease) != h.LeaseID {
				log.Warn("own record was deleted or rebound to another lease", "key", h.Key)
				return
			}
		}
	}
}

// retake loops until our CIDR's record is ours again, with backoff. A
// conflicting owner is logged and counted on every attempt, never resolved
// by renumbering.
func (k *Keeper) retake(ctx context.Context) {
	log := k.A.Log
	// Never sleep past a third of the TTL: once etcd is back, our lease
	// (restored by etcd with a full TTL) must be renewed before it ends,
	// or every peer drops this node.
	bo := etcdutil.Backoff{Min: 500 * time.Millisecond, Max: retakeMaxDelay(k.A.TTL)}
	cidrs := k.Held().CIDRs // retake every family as one
	cidr := cidrs[0]
	for ctx.Err() == nil {
		k.mu.Lock()
		self := k.Self
		k.mu.Unlock()
		h, err := k.A.Retake(ctx, self, cidrs)
		if err == nil {
			k.mu.Lock()
			k.held = h
			k.mu.Unlock()
			if h.How == "retaken" {
				k.Retakes.Add(1)
				log.Warn("own PodCIDR record had vanished; took it back", "cidr", cidr, "key", h.Key, "lease", fmt.Sprintf("%x", int64(h.LeaseID)))
			} else {
				log.Info("own PodCIDR record still ours; resumed keepalive", "cidr", cidr, "lease", fmt.Sprintf("%x", int64(h.LeaseID)))
			}
			return
		}
		var te *TakenError
		if errors.As(err, &te) {
			k.Conflicts.Add(1)
			log.Error("cannot take back own PodCIDR; pods keep their addresses, retrying", "cidr", cidr, "err", err, "conflicts", k.Conflicts.Load())
		} else {
			log.Warn("re-acquire own PodCIDR failed; retrying", "cidr", cidr, "err", err)
		}
		if !etcdutil.Sleep(ctx, bo.Next()) {
			return
		}
	}
}

// Publish updates the record content (endpoint, key) under our lease.
func (k *Keeper) Publish(ctx context.Context, self record.Lease) error {
	k.mu.Lock()
	h := k.held
	k.Self = self
	k.mu.Unlock()
	return k.A.Publish(ctx, h, self)
}

// retakeMaxDelay caps the retake backoff at TTL/3 (at least 500 ms, at
// most 30 s).
func retakeMaxDelay(ttl time.Duration) time.Duration {
	return min(max(ttl/3, 500*time.Millisecond), 30*time.Second)
}
