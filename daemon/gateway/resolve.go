// Package gateway lets sites without WireGuard reach the pod network
// through gateway nodes (docs/gateways.md). A node or host-only peer
// advertises site CIDRs in its record (--advertise-cidrs); for each site
// its advertisers campaign in an etcd election (concurrency.Election, one
// per site CIDR, on one session per daemon), and the leader serves it.
// Every other node reads the candidates (Observer) and the records (fed
// by the mesh), decides with Resolve which gateway serves each site, and
// the mesh puts the site CIDR on exactly that peer's AllowedIPs.
//
// Resolve is pure and shared by the daemon, its start-up check and
// wgcnictl, so all of them agree on who serves and what is refused.
package gateway

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/wgcni/wgcni/daemon/record"
)

// Advert is one record as far as sites are concerned: who it is, its
// addresses (a site may not contain them) and the sites it advertises.
type Advert struct {
	Record   netip.Prefix   // the record's key CIDR (a PodCIDR or a host's address)
	CIDRs    []netip.Prefix // every CIDR of the record, the key's first
	Node     string
	Endpoint netip.Addr // underlay address
	Sites    []netip.Prefix
}

// AdvertOf is the advert of a decoded record at cidr.
func AdvertOf(cidr netip.Prefix, l record.Lease) Advert {
	return Advert{Record: cidr, CIDRs: l.CIDRs, Node: l.Node, Endpoint: l.Endpoint.Addr(), Sites: l.Sites}
}

// Candidate is one gateway's key in a site's election.
type Candidate struct {
	Site    netip.Prefix
	Node    string
	Record  netip.Prefix // the candidate's record key CIDR
	Key     string       // its election key
	Created int64        // the key's create revision: the election's order
}

// Refusal is an advertised site CIDR that no node routes, and why.
type Refusal struct {
	Node string
	Site netip.Prefix
	Err  error
}

// Site is one accepted site CIDR.
type Site struct {
	CIDR netip.Prefix
	// Advertisers are the nodes advertising it, in precedence order.
	Advertisers []string
	// Candidates are the live election candidates that advertise it,
	// in election order (the first usable one serves).
	Candidates []Candidate
	// Serving is the candidate serving the site; nil: none (its traffic
	// is dropped on every node, never sent in clear).
	Serving *Candidate
}

// View is the outcome of Resolve.
type View struct {
	Sites   map[netip.Prefix]*Site
	Refused []Refusal
}

// Resolve decides which site CIDRs are accepted and who serves each.
// adverts are every record (with or without sites), in precedence order:
// oldest first, so a later advertisement that collides is the one refused.
// A site CIDR is refused when it overlaps a cluster CIDR (naming the
// PodCIDR or host address it hits, if any), contains a record's endpoint,
// or overlaps another site's CIDR without being equal to it (equal CIDRs
// are one site with several gateways). usable, if set, excludes
// candidates this node cannot use (the hook for a dead tunnel): the next
// one in election order serves instead.
func Resolve(cluster record.Cluster, adverts []Advert, cands []Candidate, usable func(Candidate) bool) View {
	v := View{Sites: map[netip.Prefix]*Site{}}
	byRecord := map[netip.Prefix]Advert{}
	for _, a := range adverts {
		byRecord[a.Record] = a
	}
	for _, a := range adverts {
		for _, s := range a.Sites {
			if err := collision(cluster, adverts, v.Sites, a, s); err != nil {
				v.Refused = append(v.Refused, Refusal{Node: a.Node, Site: s, Err: err})
				continue
			}
			site := v.Sites[s]
			if site == nil {
				site = &Site{CIDR: s}
				v.Sites[s] = site
			}
			site.Advertisers = append(site.Advertisers, a.Node)
		}
	}
	sorted := slices.Clone(cands)
	slices.SortFunc(sorted, func(a, b Candidate) int { return int(a.Created - b.Created) })
	for _, c := range sorted {
		site := v.Sites[c.Site]
		a, ok := byRecord[c.Record]
		// A candidate counts only while its record advertises the site
		// and was accepted for it.
		if site == nil || !ok || a.Node != c.Node || !slices.Contains(a.Sites, c.Site) || !slices.Contains(site.Advertisers, c.Node) {
			continue
		}
		site.Candidates = append(site.Candidates, c)
		if site.Serving == nil && (usable == nil || usable(c)) {
			cc := c
			site.Serving = &cc
		}
	}
	return v
}

// collision names what site s of advert a collides with, or nil.
func collision(cluster record.Cluster, adverts []Advert, accepted map[netip.Prefix]*Site, a Advert, s netip.Prefix) error {
	for _, g := range cluster.Grids {
		if !g.CIDR.Overlaps(s) {
			continue
		}
		for _, o := range adverts {
			for _, c := range o.CIDRs {
				if c.Overlaps(s) {
					return fmt.Errorf("site CIDR %s of node %s overlaps %s of node %s (inside cluster CIDR %s)", s, a.Node, c, o.Node, g.CIDR)
				}
			}
		}
		return fmt.Errorf("site CIDR %s of node %s overlaps cluster CIDR %s", s, a.Node, g.CIDR)
	}
	for _, o := range adverts {
		if o.Endpoint.IsValid() && s.Contains(o.Endpoint) {
			return fmt.Errorf("site CIDR %s of node %s contains the endpoint %s of node %s: its WireGuard packets would be routed into the tunnel", s, a.Node, o.Endpoint, o.Node)
		}
	}
	for _, t := range sortedSites(accepted) {
		if t.CIDR != s && t.CIDR.Overlaps(s) {
			return fmt.Errorf("site CIDR %s of node %s overlaps site CIDR %s advertised by node %s", s, a.Node, t.CIDR, t.Advertisers[0])
		}
	}
	return nil
}

func sortedSites(m map[netip.Prefix]*Site) []*Site {
	out := make([]*Site, 0, len(m))
	for _, s := range m {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *Site) int {
		if c := a.CIDR.Addr().Compare(b.CIDR.Addr()); c != 0 {
			return c
		}
		return a.CIDR.Bits() - b.CIDR.Bits()
	})
	return out
}

// Sorted returns the view's sites in address order.
func (v View) Sorted() []*Site { return sortedSites(v.Sites) }
