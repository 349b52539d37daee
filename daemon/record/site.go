package record

import (
	"fmt"
	"net/netip"
	"strings"
)

// Site CIDRs (docs/gateways.md): networks without WireGuard that a node
// or host-only peer offers to route into the mesh. A record lists them in
// siteCIDRs; which of the advertisers serves a site at a time is decided
// by an etcd election under ElectionsPrefix (package gateway).

// MaxSites bounds the site CIDRs of one record (each becomes an AllowedIP
// and a route on every node).
const MaxSites = 32

// ParseSites validates a list of site CIDRs as written in a record or on
// the command line: each a plain, masked prefix, no duplicates. Whether
// they collide with the cluster or other sites is decided with the other
// records in view (gateway.Resolve).
func ParseSites(list []string) ([]netip.Prefix, error) {
	if len(list) > MaxSites {
		return nil, fmt.Errorf("%d site CIDRs, at most %d", len(list), MaxSites)
	}
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR", s)
		}
		switch {
		case p.Addr().Zone() != "" || p.Addr().Is4In6():
			return nil, fmt.Errorf("%s is not a plain IPv4 or IPv6 CIDR", p)
		case p.Masked() != p:
			return nil, fmt.Errorf("%s has host bits set (did you mean %s?)", p, p.Masked())
		case p.Bits() == 0:
			return nil, fmt.Errorf("%s is a default route, not a site", p)
		}
		for _, q := range out {
			if q.Overlaps(p) {
				return nil, fmt.Errorf("%s and %s overlap", q, p)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// ElectionsPrefix is where gateways campaign for their sites: one
// concurrency.Election per site CIDR under ElectionPrefix.
func ElectionsPrefix(prefix string) string { return strings.TrimRight(prefix, "/") + "/gateways/" }

// ElectionPrefix is the election of one site CIDR, without the trailing
// slash concurrency.NewElection adds.
func ElectionPrefix(prefix string, site netip.Prefix) string {
	return ElectionsPrefix(prefix) + cidrKey(site)
}

// ParseElectionKey returns the site CIDR of an election candidate's key
// <prefix>/gateways/<ip>-<len>/<lease id>.
func ParseElectionKey(prefix, key string) (netip.Prefix, error) {
	rest, ok := strings.CutPrefix(key, ElectionsPrefix(prefix))
	if !ok {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: not under %s", key, ElectionsPrefix(prefix))
	}
	site, _, ok := strings.Cut(rest, "/")
	ip, bits, ok2 := strings.Cut(site, "-")
	if !ok || !ok2 {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: want <ip>-<len>/<lease>", key)
	}
	p, err := netip.ParsePrefix(ip + "/" + bits)
	if err != nil || p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: bad site CIDR %q", key, site)
	}
	return p, nil
}
