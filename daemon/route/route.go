// Package route keeps wgcnid's routes: one route per peer PodCIDR through
// the WireGuard device, and the strict-mode unreachable route for the whole
// cluster CIDR. Every route carries our own route protocol number, so we can
// list (and clean up) exactly ours and never touch anyone else's.
package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Protocol tags wgcnid's routes ("proto 87" in `ip route`); unused by
// iproute2's well-known protocols and by the usual routing daemons.
const Protocol netlink.RouteProtocol = 87

// Peer is a route to a peer node's PodCIDR.
type Peer struct {
	Dst       netip.Prefix
	LinkIndex int
	Src       netip.Addr
	// Table is 0 (main) for PodCIDR routes and HostTable for a peer's
	// underlay address under host encryption (host.go).
	Table int
	// MTU is the route MTU (0: none, the device's): the path MTU to a
	// peer behind a narrower path. The route then also advertises the TCP
	// MSS that fits it (AdvMSS).
	MTU int
}

// AdvMSS is the TCP maximum segment size that fits a route MTU of mtu to
// dst: the MTU less the IP (20, IPv6 40) and TCP (20) headers.
func AdvMSS(dst netip.Prefix, mtu int) int {
	if dst.Addr().Is4() {
		return mtu - 40
	}
	return mtu - 60
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func strictRoute(cluster netip.Prefix) *netlink.Route {
	return &netlink.Route{
		Dst:      ipnet(cluster),
		Type:     unix.RTN_UNREACHABLE,
		Protocol: Protocol,
		Table:    unix.RT_TABLE_MAIN,
		Family:   family(cluster),
	}
}

// EnsureStrict installs the unreachable route for the whole cluster CIDR.
// Own PodCIDR (connected route on the bridge) and peer PodCIDRs (routes via
// WireGuard) are more specific; any other pod address — a node not yet
// known, a peer not yet configured, a removed peer — is refused locally
// instead of leaking out of the default route in plain text.
func EnsureStrict(cluster netip.Prefix) error {
	if err := netlink.RouteReplace(strictRoute(cluster)); err != nil {
		return fmt.Errorf("install strict-mode unreachable route for cluster CIDR %s: %w", cluster, err)
	}
	return nil
}

// RemoveStrict deletes the strict route; missing is fine.
func RemoveStrict(cluster netip.Prefix) error {
	if err := netlink.RouteDel(strictRoute(cluster)); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete strict-mode route for %s: %w", cluster, err)
	}
	return nil
}

func (p Peer) route() *netlink.Route {
	r := &netlink.Route{
		Dst:       ipnet(p.Dst),
		LinkIndex: p.LinkIndex,
		Scope:     netlink.SCOPE_LINK,
		Protocol:  Protocol,
		Table:     unix.RT_TABLE_MAIN,
		Family:    family(p.Dst),
	}
	if p.Table != 0 {
		r.Table = p.Table
	}
	// The gateway as source: host->remote-pod packets then carry an address
	// inside our PodCIDR, which is what the peer's AllowedIPs for us
	// accept, and replies route back through the tunnel.
	if p.Src.IsValid() {
		r.Src = p.Src.AsSlice()
	}
	if p.MTU > 0 {
		r.MTU, r.AdvMSS = p.MTU, AdvMSS(p.Dst, p.MTU)
	}
	return r
}

// EnsurePeer adds or replaces the route to a peer PodCIDR.
func EnsurePeer(p Peer) error {
	if err := netlink.RouteReplace(p.route()); err != nil {
		return fmt.Errorf("route %s via WireGuard (src %s): %w", p.Dst, p.Src, err)
	}
	return nil
}

// DeletePeer removes the route to a peer PodCIDR; missing is fine.
func DeletePeer(p Peer) error {
	if err := netlink.RouteDel(p.route()); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete route %s: %w", p.Dst, err)
	}
	return nil
}

// Ours lists wgcnid's routes of one address family: peer routes by
// destination, and the strict routes' destinations.
func Ours(fam int) (peers map[netip.Prefix]Peer, strict []netip.Prefix, err error) {
	routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Protocol: Protocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, nil, fmt.Errorf("list routes with protocol %d: %w", Protocol, err)
	}
	peers = make(map[netip.Prefix]Peer, len(routes))
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dst, ok := toPrefix(r.Dst)
		if !ok {
			continue
		}
		if r.Type == unix.RTN_UNREACHABLE || r.Type == unix.RTN_BLACKHOLE {
			strict = append(strict, dst)
			continue
		}
		src, _ := netip.AddrFromSlice(r.Src)
		peers[dst] = Peer{Dst: dst, LinkIndex: r.LinkIndex, Src: src.Unmap(), MTU: r.MTU}
	}
	return peers, strict, nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// EnableForwarding turns on IP forwarding for the family of cluster, so the
// node routes between the pod bridge and the WireGuard device. Only the
// current network namespace is affected.
func EnableForwarding(cluster netip.Prefix) error {
	path := "/proc/sys/net/ipv4/ip_forward"
	if cluster.Addr().Is6() {
		path = "/proc/sys/net/ipv6/conf/all/forwarding"
	}
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable IP forwarding (%s): %w", path, err)
	}
	return nil
}

func isNotFound(err error) bool {
	return errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT)
}
