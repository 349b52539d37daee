package config

import (
	"fmt"
	"net/netip"

	"github.com/wgcni/wgcni/daemon/record"
)

// validateHosts checks --host-cidr and derives HostRange. The range must be
// one node-sized block of the cluster CIDR: inside it, the strict route
// covers host addresses too and no masquerade rule ever rewrites traffic
// to them, and on the grid, a reservation record keeps nodes out of it.
func (c *Config) validateHosts() error {
	if c.UnderlayEncryption && c.HostOnly {
		// A host-only peer has no PodCIDR lease to advertise it in, and
		// nodes never tunnel a host's underlay address.
		return fmt.Errorf("--host-encryption: not available with --host-only")
	}
	if c.HostCIDR == "" {
		if c.HostOnly {
			c.HostRange = record.DefaultHostRange(c.Cluster)
		}
		return nil
	}
	p, err := netip.ParsePrefix(c.HostCIDR)
	if err != nil {
		return fmt.Errorf("--host-cidr: %q: %w", c.HostCIDR, err)
	}
	if err := record.ValidHostRange(c.Cluster, p); err != nil {
		return fmt.Errorf("--host-cidr: %w", err)
	}
	c.HostRange = p
	return nil
}
