package config

import (
	"errors"
	"fmt"
	"time"

	"github.com/wgcni/wgcni/daemon/record"
)

// validateGateway checks --advertise-cidrs and its companions and derives
// Sites. A site must lie outside the cluster CIDRs (pod and host addresses
// are reached through their own peers) and be of a family the cluster
// has (the mesh routes the cluster's families). Collisions with other
// nodes' sites and addresses are checked against etcd at start-up
// (gateway.Check).
func (c *Config) validateGateway() error {
	sites, err := record.ParseSites(c.AdvertiseCIDRs)
	if err != nil {
		return fmt.Errorf("--advertise-cidrs: %w", err)
	}
	for _, s := range sites {
		fam := false
		for _, g := range c.Cluster.Grids {
			if g.CIDR.Overlaps(s) {
				return fmt.Errorf("--advertise-cidrs: site CIDR %s overlaps --cluster-cidr %s: pods and hosts are reached through their own peers, a site must lie outside the cluster", s, g.CIDR)
			}
			fam = fam || g.CIDR.Addr().Is4() == s.Addr().Is4()
		}
		if !fam {
			return fmt.Errorf("--advertise-cidrs: site CIDR %s is of a family --cluster-cidr %s does not have", s, c.ClusterCIDR)
		}
		if c.Endpoint.IsValid() && s.Contains(c.Endpoint) {
			return fmt.Errorf("--advertise-cidrs: site CIDR %s contains --endpoint-ip %s: WireGuard's own packets would be routed into the tunnel", s, c.Endpoint)
		}
	}
	c.Sites = sites
	if c.GatewayMasquerade && len(sites) == 0 {
		return errors.New("--gateway-masquerade: needs --advertise-cidrs")
	}
	if c.GatewayTTL < 2*time.Second || c.GatewayTTL%time.Second != 0 {
		return fmt.Errorf("--gateway-ttl: %s must be whole seconds, at least 2s", c.GatewayTTL)
	}
	return nil
}
