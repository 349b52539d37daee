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

// The grids after the primary (record/guard.go): the node's record is
// keyed by its primary CIDR and names its CIDR of each further grid, whose
// guard key is created in the same transaction (Version==0 on every key),
// bound to the same lease, so a node holds all its CIDRs or none, and two
// nodes never share one.

// picker hands out free node CIDRs of one further grid: the preferred one
// first, then in random order (racing nodes rarely collide).
type picker struct {
	grid      record.Grid
	preferred netip.Prefix
	free      []netip.Prefix
}

// pickers are the pickers of every grid after the primary.
type pickers []*picker

// guardPickers lists the guard keys that exist and makes a picker for each
// further grid of the cluster.
func (a *Acquirer) guardPickers(ctx context.Context, preferred []netip.Prefix) (pickers, error) {
	if len(a.Cluster.Grids) < 2 {
		return nil, nil
	}
	kvs, _, err := etcdutil.List(ctx, a.Client, record.GuardsPrefix(a.Prefix))
	if err != nil {
		return nil, err
	}
	taken := make(map[netip.Prefix]bool, len(kvs))
	for _, kv := range kvs {
		if p, err := record.ParseGuardKey(a.Prefix, string(kv.Key), a.Cluster); err == nil {
			taken[p] = true
		}
	}
	var ps pickers
	for _, g := range a.Cluster.Grids[1:] {
		p := &picker{grid: g, free: freeCIDRs(g, taken)}
		if want := onGrid(g, preferred); want.IsValid() && !taken[want] {
			p.preferred = want
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// pick returns a free node CIDR of the grid (invalid if none is left).
func (p *picker) pick() netip.Prefix {
	if p.preferred.IsValid() {
		return p.preferred
	}
	if len(p.free) == 0 {
		return netip.Prefix{}
	}
	return p.free[rand.N(len(p.free))]
}

// drop marks cidr as taken.
func (p *picker) drop(cidr netip.Prefix) {
	if p.preferred == cidr {
		p.preferred = netip.Prefix{}
	}
	for i, c := range p.free {
		if c == cidr {
			p.free[i] = p.free[len(p.free)-1]
			p.free = p.free[:len(p.free)-1]
			return
		}
	}
}

// full returns the first picker with no node CIDR left (nil if none).
func (ps pickers) full() *picker {
	for _, p := range ps {
		if !p.preferred.IsValid() && len(p.free) == 0 {
			return p
		}
	}
	return nil
}

// createPicked creates the record at primary together with a free CIDR of
// every further grid, trying further ones while only a guard was taken.
func (a *Acquirer) createPicked(ctx context.Context, primary netip.Prefix, ps pickers, self record.Lease, leaseID clientv3.LeaseID) (Held, bool, error) {
	for ps.full() == nil {
		cidrs := []netip.Prefix{primary}
		for _, p := range ps {
			cidrs = append(cidrs, p.pick())
		}
		h, won, takenAt, err := a.create(ctx, cidrs, self, leaseID)
		if err != nil || won {
			return h, won, err
		}
		if takenAt == 0 {
			return Held{}, false, nil
		}
		ps[takenAt-1].drop(cidrs[takenAt])
	}
	return Held{}, false, nil
}

// guardPut is the operation writing the guard of cidr for primary.
func (a *Acquirer) guardPut(cidr, primary netip.Prefix, leaseID clientv3.LeaseID) clientv3.Op {
	return clientv3.OpPut(record.GuardKey(a.Prefix, cidr), string(record.EncodeGuard(a.Node, primary)), clientv3.WithLease(leaseID))
}

// guardCompares reads the guards of cidrs and returns the comparisons that
// keep them unchanged until our transaction; a guard held by another node
// is a *TakenError.
func (a *Acquirer) guardCompares(ctx context.Context, cidrs []netip.Prefix) ([]clientv3.Cmp, error) {
	var cmps []clientv3.Cmp
	for _, c := range cidrs {
		gk := record.GuardKey(a.Prefix, c)
		resp, err := a.Client.Get(ctx, gk)
		if err != nil {
			return nil, fmt.Errorf("read guard %s: %w", gk, err)
		}
		var rev int64
		if len(resp.Kvs) > 0 {
			g, err := record.DecodeGuard(gk, resp.Kvs[0].Value)
			if err != nil {
				return nil, &TakenError{CIDR: c, By: "(unreadable guard: " + err.Error() + ")"}
			}
			if g.Node != a.Node {
				return nil, &TakenError{CIDR: c, By: g.Node}
			}
			rev = resp.Kvs[0].ModRevision
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(gk), "=", rev))
	}
	return cmps, nil
}

// clearOwnGuard prepares retaking cidr: a guard of another node is a
// *TakenError; a leftover guard of our own (its record was deleted but the
// lease lives on) is removed so the create transaction can write it anew.
func (a *Acquirer) clearOwnGuard(ctx context.Context, cidr netip.Prefix) error {
	cmps, err := a.guardCompares(ctx, []netip.Prefix{cidr})
	if err != nil {
		return err
	}
	gk := record.GuardKey(a.Prefix, cidr)
	if _, err := a.Client.Txn(ctx).If(cmps...).Then(clientv3.OpDelete(gk)).Commit(); err != nil {
		return fmt.Errorf("delete own stale guard %s: %w", gk, err)
	}
	return nil
}
