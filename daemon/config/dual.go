package config

import (
	"fmt"
	"net/netip"

	"github.com/wgcni/wgcni/daemon/record"
)

// clusterFromFlags turns --cluster-cidr (one CIDR of either family, or one
// IPv4 and one IPv6 CIDR in either order) and the per-family node prefix
// lengths into a record.Cluster. In a dual-stack cluster the IPv4 CIDR is
// the primary, which keys the records (docs/ipv6.md).
func clusterFromFlags(list string, len4, len6 int) (record.Cluster, error) {
	parts := splitList(list)
	if len(parts) == 0 || len(parts) > 2 {
		return record.Cluster{}, fmt.Errorf("--cluster-cidr: %q must be one CIDR, or one IPv4 and one IPv6 CIDR separated by a comma", list)
	}
	var v4, v6 netip.Prefix
	for _, s := range parts {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return record.Cluster{}, fmt.Errorf("--cluster-cidr: %q: %w", s, err)
		}
		if p.Addr().Is4In6() {
			return record.Cluster{}, fmt.Errorf("--cluster-cidr: %q is an IPv4-mapped IPv6 CIDR; write the IPv4 CIDR", s)
		}
		slot, fam := &v4, "IPv4"
		if p.Addr().Is6() {
			slot, fam = &v6, "IPv6"
		}
		if slot.IsValid() {
			return record.Cluster{}, fmt.Errorf("--cluster-cidr: %s and %s are both %s; give at most one CIDR per family", *slot, p, fam)
		}
		*slot = p
	}
	switch {
	case v4.IsValid():
		cl, err := record.NewCluster(v4.String(), len4)
		if err != nil {
			return record.Cluster{}, fmt.Errorf("--cluster-cidr/--node-prefix-len: %w", err)
		}
		if v6.IsValid() {
			if cl, err = cl.WithV6(v6.String(), len6); err != nil {
				return record.Cluster{}, fmt.Errorf("--cluster-cidr/--node-prefix-len-v6: %w", err)
			}
		}
		return cl, nil
	default:
		cl, err := record.NewClusterV6(v6.String(), len6)
		if err != nil {
			return record.Cluster{}, fmt.Errorf("--cluster-cidr/--node-prefix-len-v6: %w", err)
		}
		return cl, nil
	}
}
