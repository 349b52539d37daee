package gateway

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/record"
)

// Check refuses this node's advertisement before it is published when
// it collides with what etcd already holds: another site's CIDR, a
// node's or host's addresses (its PodCIDR, its endpoint). The error
// names both claimants. self is this node's advert (its Record may be
// unset: the record is not leased yet). Races between nodes starting at
// once are settled by every node's Observer the same way: the older
// record wins.
func Check(ctx context.Context, kv clientv3.KV, prefix string, cluster record.Cluster, self Advert) error {
	if len(self.Sites) == 0 {
		return nil
	}
	kvs, _, err := etcdutil.List(ctx, kv, record.SubnetsPrefix(prefix))
	if err != nil {
		return fmt.Errorf("--advertise-cidrs: read the other records to check for collisions: %w", err)
	}
	slices.SortFunc(kvs, func(a, b *mvccpb.KeyValue) int { return int(a.CreateRevision - b.CreateRevision) })
	var adverts []Advert
	for _, kv := range kvs {
		l, err := record.DecodePeer(prefix, string(kv.Key), kv.Value, cluster)
		if err != nil || l.Kind == record.KindHostRange || l.Node == self.Node {
			continue
		}
		adverts = append(adverts, AdvertOf(l.Primary(), l))
	}
	v := Resolve(cluster, append(adverts, self), nil, nil)
	var errs []error
	for _, r := range v.Refused {
		if r.Node == self.Node {
			errs = append(errs, r.Err)
		}
	}
	if len(errs) > 0 {
		return &RefusedError{Err: errors.Join(errs...)}
	}
	return nil
}

// RefusedError is an advertisement Check refused (permanent: retrying
// cannot help until the operator changes it or the other claimant goes).
type RefusedError struct{ Err error }

func (e *RefusedError) Error() string { return "--advertise-cidrs refused: " + e.Err.Error() }
func (e *RefusedError) Unwrap() error { return e.Err }
