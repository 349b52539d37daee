package agent

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/nodefile"
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
	for _, p := range c.Prefixes() {
		fam := netlink.FAMILY_V4
		if p.Addr().Is6() {
			fam = netlink.FAMILY_V6
		}
		peers, _, err := route.Ours(fam)
		if err != nil {
			errs = append(errs, err)
		}
		for _, pr := range peers {
			if err := route.DeletePeer(pr); err != nil {
				errs = append(errs, err)
			}
		}
		if err := route.RemoveStrict(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// gateway6 is the IPv6 gateway of a dual-stack node (zero otherwise).
func gateway6(cidr6 netip.Prefix) netip.Addr {
	if !cidr6.IsValid() {
		return netip.Addr{}
	}
	return record.Gateway(cidr6)
}

// gatewayNet6 is the IPv6 gateway with its PodCIDR's mask, for the bridge.
func gatewayNet6(cidr6 netip.Prefix) *net.IPNet {
	if !cidr6.IsValid() {
		return nil
	}
	return toIPNet(netip.PrefixFrom(record.Gateway(cidr6), cidr6.Bits()))
}

// setFamilies fills the node file's per-family lists, primary first.
func setFamilies(nf *nodefile.Node, c record.Cluster, h lease.Held) {
	nf.PodCIDRs = []string{nf.PodCIDR}
	nf.Gateways = []string{nf.Gateway}
	nf.ClusterCIDRs = []string{nf.ClusterCIDR}
	if h.CIDR6.IsValid() {
		nf.PodCIDRs = append(nf.PodCIDRs, h.CIDR6.String())
		nf.Gateways = append(nf.Gateways, record.Gateway(h.CIDR6).String())
		nf.ClusterCIDRs = append(nf.ClusterCIDRs, c.CIDR6.String())
	}
}

// prefixOrNone renders an optional prefix for logs.
func prefixOrNone(p netip.Prefix) string {
	if !p.IsValid() {
		return "none"
	}
	return p.String()
}
