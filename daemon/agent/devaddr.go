package agent

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/record"
)

// podNodeDeviceAddrs are the addresses a pod node's WireGuard device
// carries: the network address (.0, which the IPAM never hands out) of
// each of its PodCIDRs, as a host prefix. Traffic the node itself sends to
// a remote pod must have a source inside its PodCIDR, the only source the
// peers' WireGuard accepts from it. The peer routes' preferred source sees
// to that for direct traffic, but not for a Service: kube-proxy DNATs the
// ClusterIP after the route to the ClusterIP (the default route) chose the
// underlay address as source, then masquerades to the out device's
// address; with none on the device the kernel takes another interface's,
// the underlay's, and the peer drops the packet.
//
// A node that may sit behind a NAT (natted) also carries its relay address
// (record.RelayAddr of its record's CIDR), after the network address so
// that it never becomes the device's primary address: only its sessions
// relayed through another node use it (docs/nat.md).
func podNodeDeviceAddrs(held lease.Held, natted bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range held.CIDRs {
		a := p.Masked().Addr()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	if natted && len(held.CIDRs) > 0 {
		if a := record.RelayAddr(held.Primary()); a.IsValid() {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// setDeviceAddrs returns the step that puts addrs on the WireGuard device;
// it is idempotent and runs again on a re-created device.
func setDeviceAddrs(device string, addrs []netip.Prefix) func() error {
	return func() error {
		l, err := netlink.LinkByName(device)
		if err != nil {
			return fmt.Errorf("look up WireGuard device %s: %w", device, err)
		}
		for _, a := range addrs {
			if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: toIPNet(a)}); err != nil {
				return fmt.Errorf("address %s on %s: %w", a, device, err)
			}
		}
		return nil
	}
}
