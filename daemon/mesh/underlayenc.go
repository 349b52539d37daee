package mesh

import (
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
)

// Host-to-host encryption (docs/hosts.md): traffic between two nodes'
// underlay addresses goes through WireGuard when both nodes advertise
// hostEncryption. One-sided it would lock the nodes out of each other (the
// other side's AllowedIPs would drop it), so both must say so.

func (p Peer) underlayPrefix() netip.Prefix { return netip.PrefixFrom(p.Underlay, p.Underlay.BitLen()) }

// underlayFor returns the underlay address to tunnel towards the node of
// record l, or the invalid address when host encryption does not apply:
// off on either side, a host-only peer, an address of another family than
// ours, an etcd endpoint (never tunneled: the control plane must stay
// reachable even if the tunnel breaks), or an address another peer
// already tunnels (two peers behind one NAT; an AllowedIP can belong to
// only one peer).
func (r *Reconciler) underlayFor(cidr netip.Prefix, l record.Lease) netip.Addr {
	a := l.Endpoint.Addr()
	switch {
	case !r.cfg.UnderlayEncryption || !l.UnderlayEncryption || l.Kind != "":
		return netip.Addr{}
	case !r.cfg.UnderlaySrc.IsValid() || a.Is4() != r.cfg.UnderlaySrc.Is4() || a == r.cfg.UnderlaySrc:
		return netip.Addr{}
	}
	for _, e := range r.cfg.NoTunnel {
		if e == a {
			r.cfg.Log.Warn("host encryption: not tunneling to an etcd endpoint's address", "peer_node", l.Node, "addr", a)
			return netip.Addr{}
		}
	}
	if owner, ok := r.owners[a]; ok && owner != cidr {
		r.cfg.Log.Warn("host encryption: underlay address already tunneled to another peer; plain towards this one", "peer_node", l.Node, "addr", a, "tunneled_for", owner)
		return netip.Addr{}
	}
	return a
}

// oursUnderlayTable lists our routes in the host table of both families (the
// underlay's family need not be the cluster's).
func oursUnderlayTable(into map[netip.Prefix]route.Peer) error {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := route.OursTable(fam, route.HostTable)
		if err != nil {
			return err
		}
		for d, rt := range rs {
			into[d] = rt
		}
	}
	return nil
}

// setUnderlaySrc follows this node's underlay address when it moves: every
// peer's host route gets the new source (the old one is no longer ours,
// and a route with it would not be used), and a peer whose address is now
// ours stops being tunneled. One event per move, so re-resolving every
// record is fine.
func (r *Reconciler) setUnderlaySrc(a netip.Addr) {
	if !r.cfg.UnderlayEncryption || !a.IsValid() || a == r.cfg.UnderlaySrc {
		return
	}
	r.cfg.Log.Info("host encryption: underlay address moved; host routes take the new source", "old", r.cfg.UnderlaySrc, "new", a)
	r.cfg.UnderlaySrc = a
	for cidr := range r.records {
		r.resolve(cidr, true)
	}
}
