package pmtu

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/daemon/route"
)

// AdvMSS is the TCP maximum segment size to advertise on a route of path
// MTU mtu: the MTU less the IP (20, IPv6 40) and TCP (20) headers.
func AdvMSS(dst netip.Prefix, mtu int) int {
	if dst.Addr().Is4() {
		return mtu - 40
	}
	return mtu - 60
}

// minMTU is the least MTU a family's links may have (RFC 791, RFC 8200).
func minMTU(dst netip.Prefix) int {
	if dst.Addr().Is4() {
		return 576
	}
	return 1280
}

// PeerRoute is the route to a peer's PodCIDR through the WireGuard device
// link, carrying the path MTU measured to that peer: the kernel then sizes
// locally sent packets to it (route MTU) and TCP peers on both sides
// segment to it (advmss, as announced in our SYN and SYN-ACK), so nothing
// between pods on those two nodes exceeds what the path carries. It has
// the attributes of route.Peer's route (same protocol, table, scope) plus
// the two metrics.
func PeerRoute(dst netip.Prefix, link int, src netip.Addr, mtu int) (*netlink.Route, error) {
	if !dst.IsValid() {
		return nil, fmt.Errorf("route with path MTU: invalid destination")
	}
	if lo := minMTU(dst); mtu < lo || mtu > 65535 {
		return nil, fmt.Errorf("route %s: path MTU %d out of range [%d, 65535]", dst, mtu, lo)
	}
	fam := netlink.FAMILY_V6
	if dst.Addr().Is4() {
		fam = netlink.FAMILY_V4
	}
	r := &netlink.Route{
		Dst:       &net.IPNet{IP: dst.Masked().Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		LinkIndex: link,
		Scope:     netlink.SCOPE_LINK,
		Protocol:  route.Protocol,
		Table:     unix.RT_TABLE_MAIN,
		Family:    fam,
		MTU:       mtu,
		AdvMSS:    AdvMSS(dst, mtu),
	}
	if src.IsValid() {
		r.Src = src.AsSlice()
	}
	return r, nil
}

// EnsurePeerRoute installs (or replaces) PeerRoute in the current network
// namespace.
func EnsurePeerRoute(dst netip.Prefix, link int, src netip.Addr, mtu int) error {
	r, err := PeerRoute(dst, link, src, mtu)
	if err != nil {
		return err
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s with path MTU %d (advmss %d): %w", dst, mtu, r.AdvMSS, err)
	}
	return nil
}
