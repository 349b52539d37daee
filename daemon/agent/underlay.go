package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Underlay returns the endpoint address peers should send to and the MTU
// of the interface carrying it. With no endpoint given, it is the first
// global address of the interface holding the default route.
func Underlay(endpoint netip.Addr) (netip.Addr, int, error) {
	if endpoint.IsValid() {
		return endpoint, mtuOfAddr(endpoint), nil
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("list default routes: %w", err)
		}
		for _, r := range routes {
			if r.LinkIndex == 0 {
				continue
			}
			link, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				continue
			}
			addrs, err := netlink.AddrList(link, fam)
			if err != nil {
				continue
			}
			for _, a := range addrs {
				ip, ok := netip.AddrFromSlice(a.IP)
				if ok && ip.Unmap().IsGlobalUnicast() {
					return ip.Unmap(), link.Attrs().MTU, nil
				}
			}
		}
	}
	return netip.Addr{}, 0, errors.New("cannot auto-detect the endpoint: no default route with a global address; set --endpoint-ip")
}

// mtuOfAddr returns the MTU of the interface holding addr, or 1500 if the
// address is not local (e.g. a NAT's public address).
func mtuOfAddr(addr netip.Addr) int {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err == nil {
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
				if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
					return l.Attrs().MTU
				}
			}
		}
	}
	return 1500
}

// WireGuardMTU is the largest inner packet that fits the underlay: WireGuard
// adds 32 bytes of its own plus UDP (8) and IP (20 for IPv4, 40 for IPv6),
// rounded up to the 60/80 that Calico and the WireGuard docs use.
func WireGuardMTU(underlay int, endpoint netip.Addr) int {
	if endpoint.Is6() {
		return underlay - 80
	}
	return underlay - 60
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
