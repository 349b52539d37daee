package mesh

import (
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
)

// Sites behind gateways (docs/gateways.md). Which gateway serves a site
// CIDR is decided elsewhere (package gateway, through Config.Sites); here
// the site goes onto exactly that peer's AllowedIPs and is routed into the
// device, or, with no gateway, onto no peer and into an unreachable route:
// dropped, never sent in clear.
//
// A move between gateways is one device call that adds the site to the
// new peer without replacing its AllowedIPs: WireGuard takes a prefix
// from whichever peer held it when another peer is given it, atomically,
// so at no instant is the site on no peer or on two. The route does not
// name a peer and stays as it is. Losing the last gateway goes the other
// way round: the route turns unreachable first, then the old peer's
// AllowedIPs are rewritten without the site.

// SiteTable says which gateway serves each site (gateway.Observer).
type SiteTable interface {
	// Seen tells the create revision of the record at cidr (adverts
	// take precedence in creation order).
	Seen(cidr netip.Prefix, created int64)
	// Serving returns the record CIDR of the gateway serving each site
	// (invalid: none), given the other nodes' valid records.
	Serving(records map[netip.Prefix]record.Lease) map[netip.Prefix]netip.Prefix
	// Own reports a site this node advertises itself: it is on this
	// node's LAN side and routed here by the operator, never by us.
	Own(site netip.Prefix) bool
	// Changed signals that Serving may answer differently now.
	Changed() <-chan struct{}
}

// siteState is what is applied: each known site's holder.
type siteState struct {
	owner map[netip.Prefix]netip.Prefix // site -> record CIDR of its peer (invalid: none)
	dirty bool                          // a device change failed; retried
}

func (r *Reconciler) sitesChanged() <-chan struct{} {
	if r.cfg.Sites == nil {
		return nil
	}
	return r.cfg.Sites.Changed()
}

// sitesOf lists the sites the peer of record cidr holds, sorted.
func (r *Reconciler) sitesOf(cidr netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for s, o := range r.site.owner {
		if o == cidr {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// wantSites is Serving with gateways that have no desired peer here
// (this node itself, a conflicted record) counted as none.
func (r *Reconciler) wantSites() map[netip.Prefix]netip.Prefix {
	w := r.cfg.Sites.Serving(r.records)
	for s, o := range w {
		if _, active := r.active[o]; !active {
			w[s] = netip.Prefix{}
		}
	}
	return w
}

// sitesFromScratch sets the holders from the desired state alone (a full
// sync, which then diffs the whole device).
func (r *Reconciler) sitesFromScratch() {
	if r.cfg.Sites == nil {
		return
	}
	r.site.owner = r.wantSites()
	for c, p := range r.active {
		p.Sites = r.sitesOf(c)
		r.active[c] = p
	}
}

// syncSites applies what changed in who serves which site.
func (r *Reconciler) syncSites() {
	if r.cfg.Sites == nil {
		return
	}
	if r.site.owner == nil {
		r.site.owner = map[netip.Prefix]netip.Prefix{}
	}
	want := r.wantSites()
	prev := map[netip.Prefix]netip.Prefix{}
	gains := map[netip.Prefix][]netip.Prefix{}
	for s, o := range want {
		old, known := r.site.owner[s]
		if known && old == o {
			continue
		}
		prev[s] = old
		if o.IsValid() {
			if _, onDevice := r.applied[o]; onDevice {
				gains[o] = append(gains[o], s)
			} else {
				want[s] = netip.Prefix{} // its peer is not there yet: unserved until it is
			}
		}
	}
	var gone []netip.Prefix
	for s, old := range r.site.owner {
		if _, ok := want[s]; !ok {
			gone = append(gone, s)
			prev[s] = old
		}
	}
	if len(prev) == 0 && !r.site.dirty {
		return
	}
	// 1. Gains, one device call: add-only, WireGuard moves each site
	// from its previous peer in the same step.
	if len(gains) > 0 {
		var pcs []wgtypes.PeerConfig
		for o, ss := range gains {
			var ips []net.IPNet
			for _, s := range ss {
				ips = append(ips, toIPNet(s))
			}
			pcs = append(pcs, wgtypes.PeerConfig{PublicKey: r.applied[o].PublicKey, UpdateOnly: true, AllowedIPs: ips})
		}
		if err := r.cfg.WG.ConfigureDevice(r.cfg.Device, wgtypes.Config{Peers: pcs}); err != nil {
			r.site.dirty = true
			r.Stats.ApplyErrors.Add(1)
			r.cfg.Log.Error("move site CIDRs to their gateways' peers failed; will retry", "err", err)
			return
		}
		for o, ss := range gains {
			for _, s := range ss {
				if old := prev[s]; old.IsValid() {
					if p, ok := r.applied[old]; ok {
						p.Sites = slices.DeleteFunc(slices.Clone(p.Sites), func(x netip.Prefix) bool { return x == s })
						r.applied[old] = p
					}
				}
				p := r.applied[o]
				p.Sites = append(slices.Clone(p.Sites), s)
				slices.SortFunc(p.Sites, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
				r.applied[o] = p
			}
		}
	}
	r.site.dirty = false
	// 2. Routes: into the device when served, unreachable when not;
	// a site nobody advertises any more is not ours to route.
	for s, o := range want {
		if _, changed := prev[s]; !changed {
			continue
		}
		r.site.owner[s] = o
		if err := r.siteRoute(s, o); err != nil {
			r.site.dirty = true
			r.cfg.Log.Error("site route", "site", s, "err", err)
		}
		r.cfg.Log.Info("site routed", "site", s, "gateway_record", o, "gateway_node", r.records[o].Node, "previous_record", prev[s], "rev", r.rev)
	}
	for _, s := range gone {
		delete(r.site.owner, s)
		if !r.cfg.Sites.Own(s) {
			errs := []error{route.RemoveStrict(s), route.DeletePeer(route.Peer{Dst: s, LinkIndex: r.cfg.LinkIndex, Src: srcFor(s, r.cfg.Gateways)})}
			for _, err := range errs {
				if err != nil {
					r.cfg.Log.Warn("remove route of a site no longer advertised", "site", s, "err", err)
				}
			}
		}
		r.cfg.Log.Info("site no longer advertised; route removed", "site", s)
	}
	// 3. Peers that lost a site to no one: rewrite their AllowedIPs
	// (their route turned unreachable above).
	for c, p := range r.active {
		if sites := r.sitesOf(c); !slices.Equal(sites, p.Sites) {
			p.Sites = sites
			r.active[c] = p
		}
		r.apply(c)
	}
}

// siteHoldersFirst orders a full resync's peer changes so that peers
// holding sites are configured first: giving a peer a site takes it from
// the peer that held it, whose rewrite (or removal) later in the same
// device call then no longer touches it. The other way round, the site
// would be on no peer between the two.
func siteHoldersFirst(pcs []wgtypes.PeerConfig, desired map[wgtypes.Key]Peer) {
	rank := func(pc wgtypes.PeerConfig) int {
		if p, ok := desired[pc.PublicKey]; ok && !pc.Remove && len(p.Sites) > 0 {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(pcs, func(a, b wgtypes.PeerConfig) int { return rank(a) - rank(b) })
}

// siteRoute routes site into the device (owner valid) or drops it.
func (r *Reconciler) siteRoute(s, owner netip.Prefix) error {
	if r.cfg.Sites.Own(s) {
		return nil
	}
	if owner.IsValid() {
		return route.EnsurePeer(route.Peer{Dst: s, LinkIndex: r.cfg.LinkIndex, Src: srcFor(s, r.cfg.Gateways)})
	}
	return route.EnsureStrict(s)
}

// dropSiteRoutes keeps the sites' routes out of the peer-route diff.
func (r *Reconciler) dropSiteRoutes(routes map[netip.Prefix]route.Peer) {
	for s := range r.site.owner {
		delete(routes, s)
	}
}

// ensureSiteRoutes re-asserts every site's route (resync, a re-created
// device) and removes unreachable routes of ours for sites no longer
// known (the cluster's strict routes are kept).
func (r *Reconciler) ensureSiteRoutes() {
	if r.cfg.Sites == nil {
		return
	}
	for s, o := range r.site.owner {
		if err := r.siteRoute(s, o); err != nil {
			r.cfg.Log.Error("site route", "site", s, "err", err)
		}
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		_, strict, err := route.Ours(fam)
		if err != nil {
			continue
		}
		for _, d := range strict {
			if _, site := r.site.owner[d]; site || slices.Contains(r.cfg.Cluster.Prefixes(), d) {
				continue
			}
			if err := route.RemoveStrict(d); err == nil {
				r.cfg.Log.Info("removed the unreachable route of a site no longer advertised", "site", d)
			}
		}
	}
}
