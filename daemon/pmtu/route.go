package pmtu

import (
	"fmt"
	"net/netip"

	"github.com/wgcni/wgcni/daemon/route"
)

// minMTU is the least MTU a family's links may have (RFC 791, RFC 8200).
func minMTU(dst netip.Prefix) int {
	if dst.Addr().Is4() {
		return 576
	}
	return 1280
}

// PeerRoute is the route to a peer's PodCIDR through the WireGuard device
// link, carrying the path MTU measured to that peer: the kernel then sizes
// locally sent packets to it (route MTU), forwarded ones too (a pod's
// packet larger than it, with don't-fragment, gets its "fragmentation
// needed" from this node), and TCP peers on both sides segment to it
// (advmss, as announced in our SYN and SYN-ACK), so nothing between pods
// on those two nodes exceeds what the path carries. It is route.Peer's
// route with route.Peer.MTU set; the reconciler keeps it that way.
func PeerRoute(dst netip.Prefix, link int, src netip.Addr, mtu int) (route.Peer, error) {
	if !dst.IsValid() {
		return route.Peer{}, fmt.Errorf("route with path MTU: invalid destination")
	}
	if lo := minMTU(dst); mtu < lo || mtu > 65535 {
		return route.Peer{}, fmt.Errorf("route %s: path MTU %d out of range [%d, 65535]", dst, mtu, lo)
	}
	return route.Peer{Dst: dst.Masked(), LinkIndex: link, Src: src, MTU: mtu}, nil
}

// EnsurePeerRoute installs (or replaces) PeerRoute in the current network
// namespace.
func EnsurePeerRoute(dst netip.Prefix, link int, src netip.Addr, mtu int) error {
	r, err := PeerRoute(dst, link, src, mtu)
	if err != nil {
		return err
	}
	return route.EnsurePeer(r)
}
