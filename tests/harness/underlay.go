package harness

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Underlay is the "physical network" of the cluster: a bridge in its own
// namespace that every node's eth0 is attached to. It has no default route
// and does not forward, so nothing reaches beyond the namespaces we made.
type Underlay struct {
	NS
	Bridge  string
	Prefix  netip.Prefix // e.g. 10.99.37.0/24
	Gateway netip.Addr   // the bridge's address: etcd listens here, nodes route via it
	MTU     int
}

const underlayBridge = Tag + "-br0"

func (c *Cluster) newUnderlay(third byte) (*Underlay, error) {
	prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, third, 0}), 24)
	if c.Cfg.UnderlayIPv6 {
		prefix = underlay6Prefix(third)
	}
	u := &Underlay{Bridge: underlayBridge, Prefix: prefix, Gateway: prefix.Addr().Next(), MTU: c.Cfg.UnderlayMTU}
	n, err := createNS(c.name("ul"))
	if err != nil {
		return nil, err
	}
	u.NS = n
	c.onClose(func() {
		if err := deleteNS(n); err != nil {
			c.Cfg.Logf("harness: %v", err)
		}
	})
	err = n.Do(func() error {
		// A fresh namespace starts with forwarding off; make it explicit,
		// this is the guarantee that the underlay routes nothing anywhere.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644); err != nil {
			return fmt.Errorf("disable forwarding: %w", err)
		}
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("0"), 0o644); err != nil {
			return fmt.Errorf("disable IPv6 forwarding: %w", err)
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: u.Bridge, MTU: u.MTU}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge %s: %w", u.Bridge, err)
		}
		// A bridge without an explicitly set MAC takes the lowest MAC of
		// its ports, so removing a node could change it and leave the
		// other nodes with a stale ARP entry for etcd's address. A fixed
		// MAC keeps the underlay stable across node loss.
		if err := netlink.LinkSetHardwareAddr(br, net.HardwareAddr{0x02, 0x99, 0, third, 0, 1}); err != nil {
			return fmt.Errorf("mac of %s: %w", u.Bridge, err)
		}
		addr := underlayAddr(u.Gateway, prefix)
		if err := netlink.AddrAdd(br, addr); err != nil {
			return fmt.Errorf("address %s on %s: %w", addr, u.Bridge, err)
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		return nil, fmt.Errorf("underlay %s: %w", n.Name, err)
	}
	return u, nil
}

// attach connects a node namespace to the underlay: a veth whose underlay
// end (named port) joins the bridge and whose node end becomes the node's
// eth0 with addr and a default route via the underlay gateway.
func (u *Underlay) attach(port string, node NS, addr netip.Addr) error {
	return attachToBridge(u.NS, u.Bridge, port, node, addr, u.Prefix, u.Gateway, u.MTU)
}

// attachToBridge connects node to the bridge br in namespace host: a veth
// whose host end (named port) joins the bridge and whose node end becomes
// the node's eth0 with addr (prefix's mask) and a default route via gw.
func attachToBridge(host NS, br string, port string, node NS, addr netip.Addr, prefix netip.Prefix, gw netip.Addr, mtu int) error {
	ulh, err := netns.GetFromPath(host.Path())
	if err != nil {
		return fmt.Errorf("open %s: %w", host.Name, err)
	}
	defer ulh.Close()
	nh, err := netns.GetFromPath(node.Path())
	if err != nil {
		return fmt.Errorf("open %s: %w", node.Name, err)
	}
	defer nh.Close()
	h, err := netlink.NewHandleAt(ulh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", host.Name, err)
	}
	defer h.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MTU: mtu},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(nh)),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s (peer eth0 in %s): %w", port, node.Name, err)
	}
	if err := bridgePort(h, port, br); err != nil {
		return err
	}
	return node.Do(func() error {
		eth, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(eth, mtu); err != nil {
			return fmt.Errorf("mtu of eth0 in %s: %w", node.Name, err)
		}
		a := underlayAddr(addr, prefix)
		if err := netlink.AddrAdd(eth, a); err != nil {
			return fmt.Errorf("address %s on eth0 in %s: %w", a, node.Name, err)
		}
		if err := netlink.LinkSetUp(eth); err != nil {
			return err
		}
		// The default route is what wgcnid's endpoint auto-detection looks
		// at, and what strict mode must keep pod traffic away from.
		def := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}
		if err := netlink.RouteAdd(def); err != nil {
			return fmt.Errorf("default route via %s in %s: %w", gw, node.Name, err)
		}
		return nil
	})
}

// bridgePort puts port on bridge and brings it up (h: their namespace).
func bridgePort(h *netlink.Handle, port, bridge string) error {
	br, err := h.LinkByName(bridge)
	if err != nil {
		return err
	}
	l, err := h.LinkByName(port)
	if err != nil {
		return err
	}
	if err := h.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("attach %s to %s: %w", port, bridge, err)
	}
	return h.LinkSetUp(l)
}
