package lease

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/record"
)

// ErrCorruptConfig means the config record exists but cannot be decoded;
// retrying cannot fix it and overwriting it could split the cluster.
var ErrCorruptConfig = errors.New("cluster config record in etcd is corrupt")

// MismatchError says the cluster config in etcd differs from this node's
// flags. It names both values so the operator can fix the right side.
type MismatchError struct {
	Key         string
	Stored, Own record.Cluster
}

func (e *MismatchError) Error() string {
	flags := ""
	for i, g := range e.Own.Grids {
		if i == 0 {
			flags = fmt.Sprintf("--cluster-cidr=%s --node-prefix-len=%d", g.CIDR, g.NodePrefixLen)
		} else {
			flags = fmt.Sprintf("--cluster-cidr=%s,%s --node-prefix-len=%d --node-prefix-len-v6=%d", e.Own.Grids[0].CIDR, g.CIDR, e.Own.Grids[0].NodePrefixLen, g.NodePrefixLen)
		}
	}
	return fmt.Sprintf("cluster config in etcd key %s is %s but this node's flags say %s (%s); refusing to start",
		e.Key, e.Stored, e.Own, flags)
}

// EnsureConfig writes want as the cluster config record if there is none
// (first writer wins, in one transaction) and otherwise checks that the
// stored config equals want.
func EnsureConfig(ctx context.Context, kv clientv3.KV, prefix string, want record.Cluster) (created bool, err error) {
	key := record.ConfigKey(prefix)
	resp, err := kv.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, string(record.EncodeConfig(want)))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("write cluster config %s: %w", key, err)
	}
	if resp.Succeeded {
		return true, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		// Deleted between compare and get: cannot happen inside one Txn.
		return false, fmt.Errorf("cluster config %s vanished during transaction", key)
	}
	stored, err := record.DecodeConfig(key, kvs[0].Value)
	if err != nil {
		return false, fmt.Errorf("%w (fix or delete it): %w", ErrCorruptConfig, err)
	}
	if !stored.Equal(want) {
		return false, &MismatchError{Key: key, Stored: stored, Own: want}
	}
	return false, nil
}
