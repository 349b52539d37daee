package harness

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// underlay6Prefix is the IPv6 underlay of a run: a ULA /64 (fd00::/8 is
// never routed beyond a site, and it only exists inside our namespaces).
func underlay6Prefix(third byte) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0x99, 0, third}), 64)
}

// nodeAddr is node idx's underlay address: .10+idx in IPv4, ::10+idx
// (hex) in IPv6.
func (u *Underlay) nodeAddr(idx int) netip.Addr {
	if u.Prefix.Addr().Is6() {
		b := u.Prefix.Addr().As16()
		b[15] = byte(0x10 + idx)
		return netip.AddrFrom16(b)
	}
	return netip.AddrFrom4([4]byte{10, 99, u.Prefix.Addr().As4()[2], byte(10 + idx)})
}

// underlayAddr is addr with the underlay's mask. IPv6 addresses skip
// duplicate address detection: they are unique by construction, and a
// tentative address would delay the first packets of every test.
func underlayAddr(addr netip.Addr, prefix netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(prefix.Bits(), addr.BitLen())}}
	if addr.Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// Addr6 returns the pod's IPv6 address (zero if it has none).
func (p *Pod) Addr6() netip.Addr {
	for _, a := range p.IPs {
		if a.Addr().Is6() {
			return a.Addr()
		}
	}
	return netip.Addr{}
}

// Addr4 returns the pod's IPv4 address (zero if it has none).
func (p *Pod) Addr4() netip.Addr {
	for _, a := range p.IPs {
		if a.Addr().Is4() {
			return a.Addr()
		}
	}
	return netip.Addr{}
}
