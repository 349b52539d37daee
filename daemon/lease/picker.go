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

// One allocator for every grid: a picker per grid hands out its free node
// CIDRs; a node takes one of each in one transaction. The primary's is the
// record's key; each further one (record/guard.go) is named in the record
// and gets a guard key created in the same transaction (Version==0 on
// every key), bound to the same lease, so a node holds all its CIDRs or
// none, and two nodes never share one.

// picker hands out free node CIDRs of one grid: the preferred one first,
// then in random order (racing nodes rarely collide).
type picker struct {
	grid      record.Grid
	under     string // where its keys live, for errors
	preferred netip.Prefix
	free      []netip.Prefix
}

// pickers are the pickers of every grid of the cluster, primary first.
type pickers []*picker

// pickers makes a picker for every grid: the primary's without the
// CIDRs in taken (the records), the others' without those whose guard key
// exists.
func (a *Acquirer) pickers(ctx context.Context, taken map[netip.Prefix]bool, preferred []netip.Prefix) (pickers, error) {
	if len(a.Cluster.Grids) > 1 {
		kvs, _, err := etcdutil.List(ctx, a.Client, record.GuardsPrefix(a.Prefix))
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			if p, err := record.ParseGuardKey(a.Prefix, string(kv.Key), a.Cluster); err == nil {
				taken[p] = true
			}
		}
	}
	var ps pickers
	for i, g := range a.Cluster.Grids {
		p := &picker{grid: g, under: record.SubnetsPrefix(a.Prefix), free: freeCIDRs(g, taken)}
		if i > 0 {
			p.under = record.GuardsPrefix(a.Prefix)
		}
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

// createPicked creates the record with a free CIDR of every grid, trying
// others in place of whichever was taken, until one grid runs out.
func (a *Acquirer) createPicked(ctx context.Context, ps pickers, self record.Lease, leaseID clientv3.LeaseID) (Held, error) {
	for {
		if full := ps.full(); full != nil {
			g := full.grid
			return Held{}, fmt.Errorf("%w: all %d %s node CIDRs (/%d) of %s are leased; enlarge the %s --cluster-cidr or remove stale keys under %s",
				ErrClusterFull, g.NodeCount(), g.Family(), g.NodePrefixLen, g.CIDR, g.Family(), full.under)
		}
		cidrs := make([]netip.Prefix, len(ps))
		for i, p := range ps {
			cidrs[i] = p.pick()
		}
		h, won, takenAt, err := a.create(ctx, cidrs, self, leaseID)
		if err != nil || won {
			return h, err
		}
		ps[takenAt].drop(cidrs[takenAt])
	}
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
