package route

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Same-node encryption (docs/same-node.md): the node's routes of its pods'
// addresses into the hub device, and the pod's own routes into its
// WireGuard device.

// SameNodeProtocol tags the hub's pod routes ("proto 88"), apart from the
// mesh's (Protocol).
const SameNodeProtocol netlink.RouteProtocol = 88

// hostPrefix is addr as a host prefix (/32, /128).
func hostPrefix(addr netip.Addr) *net.IPNet {
	return ipnet(netip.PrefixFrom(addr, addr.BitLen()))
}

// EnsureSameNode routes pod address addr into the hub device link, with
// src (this node's gateway of addr's family) as source of host -> pod
// packets.
func EnsureSameNode(link netlink.Link, addr, src netip.Addr) error {
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostPrefix(addr), Src: src.AsSlice(), Scope: netlink.SCOPE_LINK, Protocol: SameNodeProtocol}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s dev %s: %w", addr, link.Attrs().Name, err)
	}
	return nil
}

// DeleteSameNode removes the route of pod address addr into the hub
// device link; missing is fine.
func DeleteSameNode(link netlink.Link, addr netip.Addr) error {
	// The scope must be the one installed: IPv4 deletes match on it, and
	// a mismatch is ESRCH, silently leaving the route behind.
	err := netlink.RouteDel(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostPrefix(addr), Scope: netlink.SCOPE_LINK, Protocol: SameNodeProtocol})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete route %s dev %s: %w", addr, link.Attrs().Name, err)
	}
	return nil
}

// SameNodeRoutes lists the pod addresses routed into the hub device link
// (host prefixes of both families, ours only).
func SameNodeRoutes(link netlink.Link) ([]netip.Addr, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: SameNodeProtocol}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", link.Attrs().Name, err)
	}
	var out []netip.Addr
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		p, ok := toPrefix(r.Dst)
		if !ok || !p.IsSingleIP() {
			continue
		}
		out = append(out, p.Addr())
	}
	return out, nil
}

// SetIPv6Enabled turns IPv6 on or off for interface name in the calling thread's
// netns. A new interface may inherit disable_ipv6=1 (on: the hub, a pod's
// device once routed). Off is for a new pod device before it comes up:
// otherwise bringing it up makes the kernel send MLD reports and router
// solicitations into it at once, and the device starts a handshake of its
// own before the hub knows its key (dropped, retried only after 5 s) or
// crossing the hub's (both fail). PodViaDevice turns it on again, once hub
// and device share a session, for pods that have IPv6.
func SetIPv6Enabled(name string, on bool) error {
	disable := "1"
	if on {
		disable = "0"
	}
	if _, err := sysctl.Sysctl("net/ipv6/conf/"+name+"/disable_ipv6", disable); err != nil {
		return fmt.Errorf("set IPv6 %v on %s: %w", on, name, err)
	}
	return nil
}

// PodViaDevice runs in a pod's netns: it removes every route of ip's
// family through the veth (the connected PodCIDR route included: pod-to-pod
// must not take the bridge) and sends everything of that family into the
// pod's WireGuard device wgIf instead (default route at MTU mtu, towards
// other nodes; podCIDR, if valid, at the device's own MTU). With the
// device gone the pod has no route at all: it fails closed, never in
// clear. IPv6 is turned on on wgIf for an IPv6 ip (SetIPv6Enabled).
func PodViaDevice(vethName, wgIf string, ip netip.Addr, podCIDR netip.Prefix, mtu int) error {
	family, bits, zero := netlink.FAMILY_V4, 32, net.IPv4zero.To4()
	if ip.Is6() {
		family, bits, zero = netlink.FAMILY_V6, 128, net.IPv6zero
	}
	if ip.Is6() {
		if err := SetIPv6Enabled(wgIf, true); err != nil {
			return err
		}
	}
	veth, err := netlink.LinkByName(vethName)
	if err != nil {
		return err
	}
	wgl, err := netlink.LinkByName(wgIf)
	if err != nil {
		return err
	}
	// Keep the address on the veth (the pod's identity, what runtimes and
	// CHECK look at) but without its prefix route.
	addrs, err := netlink.AddrList(veth, family)
	if err != nil {
		return err
	}
	for _, ad := range addrs {
		if ad.Flags&unix.IFA_F_NOPREFIXROUTE != 0 || !ad.IP.IsGlobalUnicast() {
			continue // done already, or link-local (never pod traffic)
		}
		repl := ad
		repl.Flags |= unix.IFA_F_NOPREFIXROUTE
		if ip.Is6() {
			// Re-added addresses would go through DAD again and stay
			// tentative (unusable as source) for a while.
			repl.Flags |= unix.IFA_F_NODAD
		}
		repl.Label = ""
		if err := netlink.AddrDel(veth, &ad); err != nil {
			return fmt.Errorf("re-add %s without prefix route: %w", ad.IPNet, err)
		}
		if err := netlink.AddrAdd(veth, &repl); err != nil {
			return fmt.Errorf("re-add %s without prefix route: %w", ad.IPNet, err)
		}
	}
	rs, err := netlink.RouteList(veth, family)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() {
			continue // fe80::/64: link-local, no pod address is in it
		}
		if err := netlink.RouteDel(&r); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete route %s on %s: %w", r.Dst, vethName, err)
		}
	}
	def := &net.IPNet{IP: zero, Mask: net.CIDRMask(0, bits)}
	src := net.IP(ip.AsSlice())
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: wgl.Attrs().Index, Dst: def, Src: src, Scope: netlink.SCOPE_LINK, MTU: mtu}); err != nil {
		return fmt.Errorf("default route dev %s: %w", wgIf, err)
	}
	if podCIDR.IsValid() {
		local := &net.IPNet{IP: net.IP(podCIDR.Addr().AsSlice()), Mask: net.CIDRMask(podCIDR.Bits(), bits)}
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: wgl.Attrs().Index, Dst: local, Src: src, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route %s dev %s: %w", podCIDR, wgIf, err)
		}
	}
	return nil
}
