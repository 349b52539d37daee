package nat

import (
	"context"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/record"
)

// A relay announces itself with a key on a short lease of its own: a node
// record's lease can live for an hour (--lease-ttl), far too long for the
// pairs a dead relay carried; etcd expires this one within RelayTTL.

// RelaysPrefix is the etcd prefix of relay announcements.
func RelaysPrefix(prefix string) string { return strings.TrimRight(prefix, "/") + "/nat/relays/" }

// ParseRelay returns the node of a relay announcement key.
func ParseRelay(prefix, key string) (string, bool) {
	node, ok := strings.CutPrefix(key, RelaysPrefix(prefix))
	return node, ok && record.ValidNodeName(node) == nil
}

// announceRelay keeps this node's relay key alive until ctx ends: a lease,
// the key, the lease's keepalive; again after a backoff when any ends.
func (a *Agent) announceRelay(ctx context.Context) {
	bo := etcdutil.Backoff{Min: 500 * time.Millisecond, Max: 5 * time.Second}
	key := RelaysPrefix(a.cfg.Prefix) + a.cfg.Self
	for ctx.Err() == nil {
		err := a.announceOnce(ctx, key)
		d := bo.Next()
		a.cfg.Log.Warn("relay announcement ended; announcing again", "key", key, "err", err, "in", d)
		if !etcdutil.Sleep(ctx, d) {
			return
		}
	}
}

func (a *Agent) announceOnce(ctx context.Context, key string) error {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := a.cfg.Client.Grant(gctx, int64((a.cfg.RelayTTL+time.Second-1)/time.Second))
	if err != nil {
		return err
	}
	if _, err := a.cfg.Client.Put(gctx, key, a.cfg.Self, clientv3.WithLease(l.ID)); err != nil {
		return err
	}
	ch, err := a.cfg.Client.KeepAlive(ctx, l.ID)
	if err != nil {
		return err
	}
	for range ch {
	}
	return ctx.Err()
}
