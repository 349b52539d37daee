package lease

import (
	"context"

	"github.com/wgcni/wgcni/daemon/record"
)

// Update changes this node's published record under the keeper's lock and
// publishes it, so two independent changes (a new underlay endpoint, a key
// rotation) never undo each other by publishing stale copies. If the
// publish fails because the record is gone, the next retake writes the
// updated record anyway.
func (k *Keeper) Update(ctx context.Context, change func(*record.Lease)) (record.Lease, error) {
	k.mu.Lock()
	self := k.Self
	change(&self)
	k.Self = self
	h := k.held
	k.mu.Unlock()
	return self, k.A.Publish(ctx, h, self)
}

// Record returns this node's record as last published (or to be).
func (k *Keeper) Record() record.Lease {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.Self
}
