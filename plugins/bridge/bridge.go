// Package bridge keeps the per-node Linux bridge that every pod veth plugs
// into. Both wgcnid (at start, so the node's gateway address exists before
// the first pod) and the wgcni plugin (on every ADD) call Ensure; it is
// idempotent and only changes what differs.
package bridge

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Ensure makes sure a bridge called name exists, is up, has the given MTU
// (when mtu > 0) and carries every gw (the node's gateway address of each
// family with its PodCIDR's mask; nil entries are skipped). It returns the
// bridge link.
func Ensure(name string, mtu int, gws ...*net.IPNet) (*netlink.Bridge, error) {
	br, err := ensureLink(name, mtu)
	if err != nil {
		return nil, err
	}
	for _, gw := range gws {
		if gw == nil {
			continue
		}
		if err := ensureAddr(br, gw); err != nil {
			return nil, err
		}
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", name, err)
		}
	}
	return br, nil
}

func ensureLink(name string, mtu int) (*netlink.Bridge, error) {
	l, err := netlink.LinkByName(name)
	if err == nil {
		br, ok := l.(*netlink.Bridge)
		if !ok {
			return nil, fmt.Errorf("interface %s exists but is a %s, not a bridge", name, l.Type())
		}
		if mtu > 0 && br.Attrs().MTU != mtu {
			if err := netlink.LinkSetMTU(br, mtu); err != nil {
				return nil, fmt.Errorf("set bridge %s MTU %d: %w", name, mtu, err)
			}
		}
		return br, nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = name
	if mtu > 0 {
		la.MTU = mtu
	}
	la.TxQLen = -1
	// A bridge without an explicit address takes the lowest MAC of its
	// ports and changes it as pods come and go, which invalidates every
	// pod's ARP entry for the gateway. A fixed address keeps it stable.
	la.HardwareAddr = stableMAC(name)
	br := &netlink.Bridge{LinkAttrs: la}
	if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, syscall.EEXIST) {
		return nil, fmt.Errorf("create bridge %s: %w", name, err)
	}
	// Re-read: a concurrent ADD may have created it first, and we need the
	// kernel's view (index, flags) either way.
	l, err = netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up bridge %s after create: %w", name, err)
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("interface %s exists but is a %s, not a bridge", name, l.Type())
	}
	return br, nil
}

// stableMAC derives a locally administered unicast MAC from the bridge
// name, so a recreated bridge comes back with the same address.
func stableMAC(name string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("wgcni-bridge/" + name))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = (mac[0] &^ 0x01) | 0x02
	return mac
}

func ensureAddr(br netlink.Link, gw *net.IPNet) error {
	family := netlink.FAMILY_V4
	if gw.IP.To4() == nil {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(br, family)
	if err != nil {
		return fmt.Errorf("list addresses of bridge %s: %w", br.Attrs().Name, err)
	}
	for _, a := range addrs {
		if a.IPNet.IP.Equal(gw.IP) {
			if a.IPNet.String() == gw.String() {
				return nil
			}
			return fmt.Errorf("bridge %s has gateway %s with a different mask (%s)", br.Attrs().Name, gw.IP, a.IPNet)
		}
	}
	addr := &netlink.Addr{IPNet: gw}
	if family == netlink.FAMILY_V6 {
		// No duplicate address detection: the gateway is ours by lease,
		// and a tentative address would refuse pods' first packets.
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add gateway %s to bridge %s: %w", gw, br.Attrs().Name, err)
	}
	return nil
}
