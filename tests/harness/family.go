package harness

import "net/netip"

// Family is one address family of a cluster under test: tests loop over
// Cluster.Families rather than naming IPv4 and IPv6 apart.
type Family struct {
	Name    string // IPv4, IPv6
	Index   int    // in the node file's per-family lists (PodCIDRs, Gateways)
	Cluster netip.Prefix
	Bits    int    // node CIDR length
	NFT     string // nft table family: ip, ip6
	IPFlag  string // ip -4 / -6
}

// Families are the cluster's address families, one per ClusterCIDR, in
// the order of Config.ClusterCIDR (the node file's order).
func (c *Cluster) Families() []Family {
	var out []Family
	for i, cidr := range c.ClusterCIDRs() {
		f := Family{Name: "IPv4", Index: i, Cluster: cidr, Bits: c.Cfg.NodePrefixLen, NFT: "ip", IPFlag: "-4"}
		if cidr.Addr().Is6() {
			f = Family{Name: "IPv6", Index: i, Cluster: cidr, Bits: c.Cfg.NodePrefixLenV6, NFT: "ip6", IPFlag: "-6"}
		}
		out = append(out, f)
	}
	return out
}

// Addr is the pod's address of the family (zero if it has none).
func (f Family) Addr(p *Pod) netip.Addr {
	if f.Cluster.Addr().Is6() {
		return p.Addr6()
	}
	return p.Addr4()
}

// Host is the pod's address of the family as a host prefix (/32, /128).
func (f Family) Host(p *Pod) netip.Prefix {
	a := f.Addr(p)
	return netip.PrefixFrom(a, a.BitLen())
}
