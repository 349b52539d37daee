package lease

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/record"
)

// Dual-stack leases (record/dual.go): the node's record is keyed by its
// IPv4 PodCIDR and names its IPv6 PodCIDR; the IPv6 guard key is created in
// the same transaction (Version==0 on both keys), bound to the same lease,
// so a node holds both families or neither, and two nodes never share an
// IPv6 PodCIDR.

// listTaken6 returns the IPv6 node CIDRs whose guard keys exist.
func (a *Acquirer) listTaken6(ctx context.Context) (map[netip.Prefix]bool, error) {
	if !a.Cluster.Dual() {
		return nil, nil
	}
	kvs, _, err := etcdutil.List(ctx, a.Client, record.Subnets6Prefix(a.Prefix))
	if err != nil {
		return nil, err
	}
	taken := make(map[netip.Prefix]bool, len(kvs))
	for _, kv := range kvs {
		if p, err := record.ParseSubnet6Key(a.Prefix, string(kv.Key), a.Cluster); err == nil {
			taken[p] = true
		}
	}
	return taken, nil
}

// picker6 hands out free IPv6 node CIDRs: the preferred one first, then
// in random order (racing nodes rarely collide).
type picker6 struct {
	dual      bool
	preferred netip.Prefix
	free      []netip.Prefix
}

func (a *Acquirer) newPicker6(taken map[netip.Prefix]bool) *picker6 {
	if !a.Cluster.Dual() {
		return &picker6{}
	}
	grid := &Acquirer{Cluster: a.Cluster.V6Grid()}
	p := &picker6{dual: true, free: grid.freeCIDRs(taken)}
	if a.Preferred6.IsValid() && !taken[a.Preferred6] && a.Preferred6.Bits() == a.Cluster.NodePrefixLen6 && a.Cluster.CIDR6.Contains(a.Preferred6.Addr()) {
		p.preferred = a.Preferred6
	}
	return p
}

// pick returns a free IPv6 node CIDR (invalid in a single-family cluster).
func (p *picker6) pick() netip.Prefix {
	if !p.dual {
		return netip.Prefix{}
	}
	if p.preferred.IsValid() {
		return p.preferred
	}
	if len(p.free) == 0 {
		return netip.Prefix{}
	}
	return p.free[rand.N(len(p.free))]
}

// drop marks cidr6 as taken.
func (p *picker6) drop(cidr6 netip.Prefix) {
	if p.preferred == cidr6 {
		p.preferred = netip.Prefix{}
	}
	for i, c := range p.free {
		if c == cidr6 {
			p.free[i] = p.free[len(p.free)-1]
			p.free = p.free[:len(p.free)-1]
			return
		}
	}
}

// full reports that no IPv6 node CIDR is left.
func (p *picker6) full() bool { return p.dual && !p.preferred.IsValid() && len(p.free) == 0 }

// createPicked creates the record at cidr together with a free IPv6 CIDR,
// trying further IPv6 CIDRs while only the IPv6 one was taken.
func (a *Acquirer) createPicked(ctx context.Context, cidr netip.Prefix, p *picker6, self record.Lease, leaseID clientv3.LeaseID) (Held, bool, error) {
	for {
		cidr6 := p.pick()
		if p.dual && !cidr6.IsValid() {
			return Held{}, false, nil
		}
		h, won, taken6, err := a.create(ctx, cidr, cidr6, self, leaseID)
		if err != nil || won {
			return h, won, err
		}
		if !taken6 {
			return Held{}, false, nil
		}
		p.drop(cidr6)
	}
}

// guard6Put is the operation writing the guard of cidr6 for primary.
func (a *Acquirer) guard6Put(cidr6, primary netip.Prefix, leaseID clientv3.LeaseID) clientv3.Op {
	return clientv3.OpPut(record.Subnet6Key(a.Prefix, cidr6), string(record.EncodeGuard6(a.Node, primary)), clientv3.WithLease(leaseID))
}

// guard6Compare reads the guard of cidr6 and returns the comparison that
// keeps it unchanged until our transaction (nil when there is no cidr6);
// a guard held by another node is a *TakenError.
func (a *Acquirer) guard6Compare(ctx context.Context, cidr6 netip.Prefix) (*clientv3.Cmp, error) {
	if !cidr6.IsValid() {
		return nil, nil
	}
	key6 := record.Subnet6Key(a.Prefix, cidr6)
	resp, err := a.Client.Get(ctx, key6)
	if err != nil {
		return nil, fmt.Errorf("read IPv6 guard %s: %w", key6, err)
	}
	var rev int64
	if len(resp.Kvs) > 0 {
		g, err := record.DecodeGuard6(key6, resp.Kvs[0].Value)
		if err != nil {
			return nil, &TakenError{CIDR: cidr6, By: "(unreadable guard: " + err.Error() + ")"}
		}
		if g.Node != a.Node {
			return nil, &TakenError{CIDR: cidr6, By: g.Node}
		}
		rev = resp.Kvs[0].ModRevision
	}
	cmp := clientv3.Compare(clientv3.ModRevision(key6), "=", rev)
	return &cmp, nil
}

// check6Free prepares retaking cidr6: a guard of another node is a
// *TakenError; a leftover guard of our own (its record was deleted but the
// lease lives on) is removed so the create transaction can write it anew.
func (a *Acquirer) check6Free(ctx context.Context, cidr6 netip.Prefix) error {
	cmp, err := a.guard6Compare(ctx, cidr6)
	if err != nil || cmp == nil {
		return err
	}
	key6 := record.Subnet6Key(a.Prefix, cidr6)
	if _, err := a.Client.Txn(ctx).If(*cmp).Then(clientv3.OpDelete(key6)).Commit(); err != nil {
		return fmt.Errorf("delete own stale IPv6 guard %s: %w", key6, err)
	}
	return nil
}

// RememberFile6 keeps the last IPv6 PodCIDR of a dual-stack node.
const RememberFile6 = "podcidr6"

// LoadRemembered6 returns the remembered IPv6 PodCIDR (invalid if none).
func LoadRemembered6(stateDir string) netip.Prefix { return loadPrefix(stateDir, RememberFile6) }

// Remember6 stores the IPv6 PodCIDR in stateDir (no-op when invalid).
func Remember6(stateDir string, cidr6 netip.Prefix) error {
	if !cidr6.IsValid() {
		return nil
	}
	return storePrefix(stateDir, RememberFile6, cidr6)
}
