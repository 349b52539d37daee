package config

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/wgcni/wgcni/daemon/record"
)

// clusterFromFlags turns --cluster-cidr (one CIDR of either family, or one
// IPv4 and one IPv6 CIDR in either order) and the node prefix length of
// each family (--node-prefix-len, --node-prefix-len-v6) into a
// record.Cluster. In a dual-stack cluster the IPv4 CIDR is the primary,
// which keys the records (docs/ipv6.md).
func clusterFromFlags(list string, lenByFamily map[string]int) (record.Cluster, error) {
	parts := splitList(list)
	if len(parts) == 0 || len(parts) > 2 {
		return record.Cluster{}, fmt.Errorf("--cluster-cidr: %q must be one CIDR, or one IPv4 and one IPv6 CIDR separated by a comma", list)
	}
	var grids []record.Grid
	for _, s := range parts {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return record.Cluster{}, fmt.Errorf("--cluster-cidr: %q: %w", s, err)
		}
		if p.Addr().Is4In6() {
			return record.Cluster{}, fmt.Errorf("--cluster-cidr: %q is an IPv4-mapped IPv6 CIDR; write the IPv4 CIDR", s)
		}
		fam, flag := "IPv4", "--node-prefix-len"
		if p.Addr().Is6() {
			fam, flag = "IPv6", "--node-prefix-len-v6"
		}
		for _, g := range grids {
			if g.Family() == fam {
				return record.Cluster{}, fmt.Errorf("--cluster-cidr: %s and %s are both %s; give at most one CIDR per family", g.CIDR, p, fam)
			}
		}
		g, err := record.NewGrid(p, lenByFamily[fam])
		if err != nil {
			return record.Cluster{}, fmt.Errorf("--cluster-cidr/%s: %w", flag, err)
		}
		grids = append(grids, g)
	}
	// IPv4 first: the primary of a dual-stack cluster.
	slices.SortFunc(grids, func(a, b record.Grid) int { return a.CIDR.Addr().BitLen() - b.CIDR.Addr().BitLen() })
	cl, err := record.Join(grids...)
	if err != nil {
		return record.Cluster{}, fmt.Errorf("--cluster-cidr: %w", err)
	}
	return cl, nil
}
