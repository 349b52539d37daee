package record

import (
	"fmt"
	"net/netip"
	"slices"
)

// Grid is one address family of the cluster: its CIDR and the prefix
// length of the node CIDRs cut out of it. Node CIDRs are aligned blocks of
// that length, so two of them never overlap.
type Grid struct {
	CIDR          netip.Prefix
	NodePrefixLen int
}

// NewGrid validates one family's cluster CIDR and node prefix length; the
// one rule for every family.
func NewGrid(cidr netip.Prefix, nodePrefixLen int) (Grid, error) {
	if cidr.Addr().Is4In6() || cidr.Addr().Zone() != "" {
		return Grid{}, fmt.Errorf("cluster CIDR %s is not a plain IPv4 or IPv6 CIDR", cidr)
	}
	if cidr.Masked() != cidr {
		return Grid{}, fmt.Errorf("cluster CIDR %s has host bits set (did you mean %s?)", cidr, cidr.Masked())
	}
	// A node CIDR must hold at least a gateway and one pod besides the
	// network (and for IPv4 the broadcast) address.
	maxLen := cidr.Addr().BitLen() - 2
	if nodePrefixLen <= cidr.Bits() || nodePrefixLen > maxLen {
		return Grid{}, fmt.Errorf("node prefix length %d must be longer than cluster CIDR %s's /%d and at most /%d (room for pods)", nodePrefixLen, cidr, cidr.Bits(), maxLen)
	}
	// Acquisition enumerates the grid; keep it bounded.
	if nodePrefixLen-cidr.Bits() > 20 {
		return Grid{}, fmt.Errorf("node prefix length %d splits cluster CIDR %s into 2^%d node CIDRs, more than 2^20 (use at most /%d, or a larger cluster CIDR)",
			nodePrefixLen, cidr, nodePrefixLen-cidr.Bits(), cidr.Bits()+20)
	}
	return Grid{CIDR: cidr, NodePrefixLen: nodePrefixLen}, nil
}

// NodeCount is how many node CIDRs fit into the grid, saturated at 1<<30.
func (g Grid) NodeCount() int {
	bits := g.NodePrefixLen - g.CIDR.Bits()
	if bits >= 30 {
		return 1 << 30
	}
	return 1 << bits
}

// Holds reports whether p is a node CIDR of g: inside, of the node prefix
// length, aligned.
func (g Grid) Holds(p netip.Prefix) bool {
	return p.IsValid() && p.Bits() == g.NodePrefixLen && p.Masked() == p && g.CIDR.Contains(p.Addr())
}

// Family names g's address family for messages.
func (g Grid) Family() string {
	if g.CIDR.Addr().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func (g Grid) String() string { return fmt.Sprintf("%s (node CIDRs /%d)", g.CIDR, g.NodePrefixLen) }

// Cluster is the validated cluster config: one grid per address family.
// The first grid is the primary: its node CIDRs key the records (an IPv4
// one in a dual-stack cluster, for the records older daemons read).
type Cluster struct {
	Grids []Grid
}

// NewCluster validates a single-family cluster.
func NewCluster(cidr string, nodePrefixLen int) (Cluster, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Cluster{}, fmt.Errorf("cluster CIDR %q: %w", cidr, err)
	}
	g, err := NewGrid(p, nodePrefixLen)
	if err != nil {
		return Cluster{}, err
	}
	return Cluster{Grids: []Grid{g}}, nil
}

// Join makes a cluster of validated grids, primary first: at most one per
// family, and with two the primary is the IPv4 one (the wire format keys
// records by it).
func Join(grids ...Grid) (Cluster, error) {
	switch {
	case len(grids) == 0:
		return Cluster{}, fmt.Errorf("no cluster CIDR")
	case len(grids) > 2 || len(grids) == 2 && grids[0].Family() == grids[1].Family():
		return Cluster{}, fmt.Errorf("cluster CIDRs %v: give at most one CIDR per family", grids)
	case len(grids) == 2 && !grids[0].CIDR.Addr().Is4():
		return Cluster{}, fmt.Errorf("cluster CIDRs %v: a dual-stack cluster's primary CIDR must be the IPv4 one", grids)
	}
	return Cluster{Grids: slices.Clone(grids)}, nil
}

// Primary is the grid whose node CIDRs key the records.
func (c Cluster) Primary() Grid {
	if len(c.Grids) == 0 {
		return Grid{}
	}
	return c.Grids[0]
}

// Prefixes returns the cluster CIDRs, primary first.
func (c Cluster) Prefixes() []netip.Prefix {
	out := make([]netip.Prefix, len(c.Grids))
	for i, g := range c.Grids {
		out[i] = g.CIDR
	}
	return out
}

// Contains reports whether addr lies in any of the cluster CIDRs.
func (c Cluster) Contains(addr netip.Addr) bool {
	for _, g := range c.Grids {
		if g.CIDR.Contains(addr) {
			return true
		}
	}
	return false
}

// Equal reports whether c and o are the same cluster.
func (c Cluster) Equal(o Cluster) bool { return slices.Equal(c.Grids, o.Grids) }

// String renders c the way error messages quote it: as its wire fields.
func (c Cluster) String() string {
	cc := c.Record()
	if cc.ClusterCIDRv6 == "" {
		return fmt.Sprintf("clusterCIDR=%s nodePrefixLen=%d", cc.ClusterCIDR, cc.NodePrefixLen)
	}
	return fmt.Sprintf("clusterCIDR=%s nodePrefixLen=%d clusterCIDRv6=%s nodePrefixLenV6=%d", cc.ClusterCIDR, cc.NodePrefixLen, cc.ClusterCIDRv6, cc.NodePrefixLenV6)
}
