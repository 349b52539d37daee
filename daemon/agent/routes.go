package agent

import (
	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
)

// ensureStrict installs the strict-mode unreachable route for every
// cluster CIDR (both families in a dual-stack cluster), before anything
// else: no plaintext window for either family. A node that routes for pods
// (forward) also gets forwarding of each family switched on.
func ensureStrict(c record.Cluster, forward bool) error {
	for _, p := range c.Prefixes() {
		if err := route.EnsureStrict(p); err != nil {
			return err
		}
		if !forward {
			continue
		}
		if err := route.EnableForwarding(p); err != nil {
			return err
		}
	}
	return nil
}

// removeRoutes deletes our peer routes and strict routes of every
// family of the cluster (for `wgcnid cleanup`).
func removeRoutes(c record.Cluster) []error {
	var errs []error
	peers, err := mesh.OurRoutes(c)
	if err != nil {
		errs = append(errs, err)
	}
	for _, pr := range peers {
		if err := route.DeletePeer(pr); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range c.Prefixes() {
		if err := route.RemoveStrict(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}
