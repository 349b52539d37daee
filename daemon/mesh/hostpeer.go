package mesh

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/wgcni/wgcni/daemon/record"
)

// errHostRange marks a host range reservation record: valid, but not a
// peer. put records the block and drops any peer for that key.
var errHostRange = errors.New("host range reservation")

// decode validates one subnets record of any kind. Host records (a /32 or
// /128) are accepted only inside a block reserved for hosts, so a host can
// never take an address out of some node's PodCIDR: the reservation sits
// at the block's grid key, which no node can then lease.
func (r *Reconciler) decode(key string, value []byte) (record.Lease, error) {
	l, err := record.DecodePeer(r.cfg.Prefix, key, value, r.cfg.Cluster)
	if err != nil {
		return record.Lease{}, err
	}
	switch l.Kind {
	case record.KindHostRange:
		if r.hostRanges == nil {
			r.hostRanges = map[netip.Prefix]bool{}
		}
		if !r.hostRanges[l.Primary()] {
			r.cfg.Log.Info("host range reserved", "cidr", l.Primary())
		}
		r.hostRanges[l.Primary()] = true
		return l, errHostRange
	case record.KindHostPeer:
		block := record.GridBlock(r.cfg.Cluster, l.Primary().Addr())
		if !r.hostRanges[block] {
			return record.Lease{}, fmt.Errorf("etcd key %s: host address %s is not inside a reserved host range (no {\"kind\":%q} record at %s)",
				key, l.Primary().Addr(), record.KindHostRange, record.SubnetKey(r.cfg.Prefix, block))
		}
	}
	return l, nil
}

// hostRangeGone handles the deletion of a key: if it was a host range
// reservation, the hosts inside it lose their peers too, as a full re-list
// would decide (their records no longer vouch for anything).
func (r *Reconciler) hostRangeGone(cidr netip.Prefix) {
	if !r.hostRanges[cidr] {
		return
	}
	delete(r.hostRanges, cidr)
	r.cfg.Log.Warn("host range reservation deleted; dropping its hosts", "cidr", cidr)
	for c, l := range r.records {
		if l.Kind == record.KindHostPeer && cidr.Contains(c.Addr()) {
			delete(r.records, c)
			r.resolve(c, true)
		}
	}
}

// effectiveKeepalive is the persistent keepalive towards one peer: the
// smaller non-zero of what this node asks for itself (it sits behind a NAT
// and must keep its mapping open by sending) and what the peer published
// (it sits behind a NAT and needs us to keep sending). 0 = off.
func effectiveKeepalive(own, peer int) int {
	switch {
	case own == 0:
		return peer
	case peer == 0:
		return own
	case own < peer:
		return own
	default:
		return peer
	}
}
