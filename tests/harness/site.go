package harness

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Site is a network without WireGuard (docs/gateways.md): a bridge in its
// own namespace that gateway nodes join with a second interface (eth1),
// and plain hosts (namespaces with one interface) attached to it. Like
// the underlay it routes nothing anywhere.
type Site struct {
	NS
	Prefixes []netip.Prefix // one per family
	Bridge   string
	c        *Cluster
	ports    int
}

// AddSite creates the site's namespace and bridge (no address of its
// own) for the site's prefixes, one per family.
func (c *Cluster) AddSite(suffix string, prefixes ...netip.Prefix) (*Site, error) {
	n, err := c.NewNS(suffix)
	if err != nil {
		return nil, err
	}
	s := &Site{NS: n, Prefixes: prefixes, Bridge: "br-site", c: c}
	err = n.Do(func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.Bridge, MTU: c.Cfg.UnderlayMTU}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		return nil, fmt.Errorf("site %s: bridge: %w", n.Name, err)
	}
	return s, nil
}

// Join attaches a node (a gateway) to the site as eth1 with addrs.
func (s *Site) Join(n *Node, addrs ...netip.Addr) error {
	return s.attach(n.NS, "eth1", addrs)
}

// AddHost makes a plain host on the site: a namespace whose eth0 has
// addrs. It has no route to the cluster: the test adds one, or the
// gateways masquerade.
func (s *Site) AddHost(suffix string, addrs ...netip.Addr) (NS, error) {
	h, err := s.c.NewNS(suffix)
	if err != nil {
		return NS{}, err
	}
	return h, s.attach(h, "eth0", addrs)
}

// attach wires a veth from the site bridge into other as ifname.
func (s *Site) attach(other NS, ifname string, addrs []netip.Addr) error {
	sh, err := netns.GetFromPath(s.Path())
	if err != nil {
		return err
	}
	defer sh.Close()
	oh, err := netns.GetFromPath(other.Path())
	if err != nil {
		return err
	}
	defer oh.Close()
	h, err := netlink.NewHandleAt(sh)
	if err != nil {
		return err
	}
	defer h.Close()
	s.ports++
	port := fmt.Sprintf("p%d", s.ports)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MTU: s.c.Cfg.UnderlayMTU}, PeerName: ifname, PeerNamespace: netlink.NsFd(int(oh))}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("site %s: veth %s (%s in %s): %w", s.Name, port, ifname, other.Name, err)
	}
	if err := bridgePort(h, port, s.Bridge); err != nil {
		return err
	}
	return other.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		for _, addr := range addrs {
			bits := addr.BitLen()
			for _, p := range s.Prefixes {
				if p.Contains(addr) {
					bits = p.Bits()
				}
			}
			// No duplicate address detection: the address is usable at
			// once, as the underlay's are.
			a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, addr.BitLen())}, Flags: unix.IFA_F_NODAD}
			if err := netlink.AddrAdd(l, a); err != nil {
				return fmt.Errorf("address %s on %s in %s: %w", addr, ifname, other.Name, err)
			}
		}
		return netlink.LinkSetUp(l)
	})
}
