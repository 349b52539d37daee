package lease

import (
	"context"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/record"
)

// EnsureHostRange reserves block for host-only peers: a record at the
// block's subnet key, {"kind":"hosts"}, with no etcd lease (it outlives
// every host; retiring a range is an operator's etcdctl del). Being on the
// PodCIDR grid, the key keeps every node, old daemons included, from
// leasing the block. A block already leased by a node is a *TakenError.
func EnsureHostRange(ctx context.Context, kv clientv3.KV, prefix string, cluster record.Cluster, block netip.Prefix) (created bool, err error) {
	key := record.SubnetKey(prefix, block)
	resp, err := kv.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, string(record.EncodeHostRange()))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return false, fmt.Errorf("reserve host range %s: %w", key, err)
	}
	if resp.Succeeded {
		return true, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return false, fmt.Errorf("host range %s vanished during transaction", key)
	}
	l, err := record.DecodePeer(prefix, key, kvs[0].Value, cluster)
	switch {
	case err != nil:
		return false, &TakenError{CIDR: block, By: "(unreadable record: " + err.Error() + ")"}
	case l.Kind != record.KindHostRange:
		return false, &TakenError{CIDR: block, By: l.Node}
	}
	return false, nil
}
