package mesh

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
)

// Dual-stack peers: a record keyed by its IPv4 PodCIDR may name an IPv6
// PodCIDR. Honest nodes cannot share one (the lease's guard key), but a
// record is untrusted input, so the mesh enforces it too: the IPv6 CIDR
// belongs to the first record that claimed it, a later one waits as
// conflicted, like a record reusing a public key.

// claim6 records that primary uses cidr6, or says who already does.
func (r *Reconciler) claim6(primary, cidr6 netip.Prefix) error {
	if !cidr6.IsValid() {
		return nil
	}
	if owner, ok := r.owner6[cidr6]; ok && owner != primary {
		return fmt.Errorf("IPv6 PodCIDR %s is already used by the record for %s", cidr6, owner)
	}
	r.owner6[cidr6] = primary
	return nil
}

// release6 frees the IPv6 CIDR the previous desired peer of primary used.
func (r *Reconciler) release6(primary netip.Prefix, prev Peer) {
	if prev.CIDR6.IsValid() && r.owner6[prev.CIDR6] == primary {
		delete(r.owner6, prev.CIDR6)
	}
}

// retry6 lets a record that waited for an IPv6 CIDR take it once freed.
func (r *Reconciler) retry6(primary netip.Prefix, prev Peer, hadPrev, apply bool) {
	if !hadPrev || !prev.CIDR6.IsValid() || r.active[primary].CIDR6 == prev.CIDR6 {
		return
	}
	for c := range r.conflicted {
		if r.records[c].CIDR6 == prev.CIDR6 {
			r.resolve(c, apply)
			return
		}
	}
}

// oursAllFamilies lists our peer routes of every family the cluster has.
func oursAllFamilies(c record.Cluster) (map[netip.Prefix]route.Peer, error) {
	all := map[netip.Prefix]route.Peer{}
	for _, p := range c.Prefixes() {
		fam := netlink.FAMILY_V4
		if p.Addr().Is6() {
			fam = netlink.FAMILY_V6
		}
		routes, _, err := route.Ours(fam)
		if err != nil {
			return nil, err
		}
		for d, rt := range routes {
			all[d] = rt
		}
	}
	return all, nil
}
