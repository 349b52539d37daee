package mesh

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
)

// owners maps what only one record may hold to the record (its key's
// CIDR) holding it: a public key (WireGuard identifies peers by key; two
// records with one key would fight over its AllowedIPs), a PodCIDR beyond
// the key's (honest nodes cannot share one, the lease's guard key sees to
// that, but a record is untrusted input), and a tunneled underlay address
// (an AllowedIP belongs to one peer only; underlayenc.go). The first record to
// claim a thing holds it; a later one waits as conflicted. The keys'
// types (wgtypes.Key, netip.Prefix, netip.Addr) keep the kinds apart.
type owners map[any]netip.Prefix

// claims lists what p holds alone.
func (p Peer) claims() []any {
	out := []any{p.PublicKey}
	for _, c := range p.CIDRs[1:] {
		out = append(out, c)
	}
	if p.Underlay.IsValid() {
		out = append(out, p.Underlay)
	}
	return out
}

// conflict names the first claim of p another record holds.
func (o owners) conflict(cidr netip.Prefix, p Peer) error {
	for _, c := range p.claims() {
		if owner, ok := o[c]; ok && owner != cidr {
			return fmt.Errorf("%s %s is already used by the record for %s", claimKind(c), c, owner)
		}
	}
	return nil
}

func claimKind(c any) string {
	switch c.(type) {
	case wgtypes.Key:
		return "public key"
	case netip.Prefix:
		return "PodCIDR"
	default:
		return "underlay address"
	}
}

// take records that cidr holds p's claims.
func (o owners) take(cidr netip.Prefix, p Peer) {
	for _, c := range p.claims() {
		o[c] = cidr
	}
}

// release frees what cidr held through p and returns what was freed.
func (o owners) release(cidr netip.Prefix, p Peer) []any {
	var freed []any
	for _, c := range p.claims() {
		if o[c] == cidr {
			delete(o, c)
			freed = append(freed, c)
		}
	}
	return freed
}

// peerOf is the desired peer of record l at cidr (before conflicts).
func (r *Reconciler) peerOf(cidr netip.Prefix, l record.Lease) Peer {
	p := Peer{CIDRs: l.CIDRs, Node: l.Node, PublicKey: l.PublicKey, Endpoint: l.Endpoint, Keepalive: effectiveKeepalive(r.cfg.Keepalive, l.Keepalive),
		MTU: r.pathMTU[l.PublicKey]}
	p.NoRelay = l.NoRelay
	if l.Unreachable {
		// Its published endpoint cannot be reached (a NAT): it keeps
		// alive to us and WireGuard roams to where its packets come from.
		// NAT traversal may set an endpoint (daemon/nat).
		p.Unreachable, p.Published, p.Endpoint = true, p.Endpoint, netip.AddrPort{}
	}
	if p.Underlay = r.underlayFor(cidr, l); p.Underlay.IsValid() {
		p.UnderlaySrc = r.cfg.UnderlaySrc
	}
	r.pqPeer(&p, l)
	p.Sites = r.sitesOf(cidr)
	return p
}

// resolve recomputes the desired peer for cidr, enforcing that each claim
// has one holder, then applies it if asked. A record waiting for something
// this one just freed is resolved again.
func (r *Reconciler) resolve(cidr netip.Prefix, apply bool) {
	var freed []any
	if prev, ok := r.active[cidr]; ok {
		freed = r.owners.release(cidr, prev)
	}
	delete(r.active, cidr)
	delete(r.conflicted, cidr)
	if l, ok := r.records[cidr]; ok {
		want := r.peerOf(cidr, l)
		if err := r.owners.conflict(cidr, want); err != nil {
			r.conflicted[cidr] = true
			r.skip(record.SubnetKey(r.cfg.Prefix, cidr), err)
		} else {
			r.active[cidr] = want
			r.owners.take(cidr, want)
		}
	}
	if apply {
		r.apply(cidr)
	}
	for _, c := range freed {
		if _, taken := r.owners[c]; taken {
			continue // cidr holds it again
		}
		for w := range r.conflicted {
			if l := r.records[w]; slices.Contains((Peer{CIDRs: l.CIDRs, PublicKey: l.PublicKey}).claims(), c) {
				r.resolve(w, apply)
				break
			}
		}
	}
}

// OurRoutes lists our peer routes of every family the cluster has.
func OurRoutes(c record.Cluster) (map[netip.Prefix]route.Peer, error) {
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
