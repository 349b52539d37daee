package main

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/plugins/antispoof"
	"github.com/wgcni/wgcni/plugins/bridge"
	"github.com/wgcni/wgcni/plugins/masq"
	"github.com/wgcni/wgcni/tests/harness"
)

// barePod is a pod namespace wired by hand to a bare node, behind a plain
// WireGuard pair: what a wgcni pod's packets go through in the kernel,
// without wgcnid. It tells the cost of the pod hop apart from the cost of
// anything wgcni does.
type barePod struct {
	NS      harness.NS
	IP      netip.Addr
	HostEnd string // host-side veth
	MAC     net.HardwareAddr
}

// podPlan says how the two bare pods are attached.
type podPlan struct {
	// Bridged: veth into a bridge that carries the gateway (as wgcni's
	// node bridge does); else a routed veth (no bridge: /32 route to the
	// pod, proxy ARP for a link-local gateway, as Calico does).
	Bridged bool
	// Second is x in the pods' subnets 10.x.<node>.0/24.
	Second byte
	// Dev are the WireGuard devices on the two nodes.
	Dev [2]string
	MTU int
}

// barePods puts one pod on each of the two nodes and routes each node's
// pod subnet to the other through the WireGuard pair: route with the
// gateway as source and the whole /24 in the peer's AllowedIPs, as wgcnid
// sets them up.
func barePods(c *harness.Cluster, on [2]*harness.Node, tag string, p podPlan) ([2]barePod, error) {
	var pods [2]barePod
	subnet := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, p.Second, byte(i + 1), 0}), 24)
	}
	for i, n := range on {
		pns, err := c.NewNS(fmt.Sprintf("%s%d", tag, i+1))
		if err != nil {
			return pods, err
		}
		gw := subnet(i).Addr().Next()
		pod := barePod{NS: pns, IP: gw.Next(), HostEnd: fmt.Sprintf("%s%d", tag, i+1)}
		if p.Bridged {
			// Named like wgcni's host veths so the antispoof rules
			// (which match the wgv prefix) apply to it.
			pod.HostEnd = fmt.Sprintf("%s%s%d", antispoof.PortPrefix, tag, i+1)
		}
		if err := n.Do(func() error { return wirePod(&pod, pns, i, gw, subnet(1-i), p) }); err != nil {
			return pods, fmt.Errorf("bare pod on %s: %w", n.Name, err)
		}
		pods[i] = pod
	}
	return pods, nil
}

func wirePod(pod *barePod, pns harness.NS, i int, gw netip.Addr, peerSubnet netip.Prefix, p podPlan) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU = pod.HostEnd, p.MTU
	pf, err := netns(pns)
	if err != nil {
		return err
	}
	defer unix.Close(pf)
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(pf)}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s: %w", pod.HostEnd, err)
	}
	host, err := h.LinkByName(pod.HostEnd)
	if err != nil {
		return err
	}
	if _, err := sysctl.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	if p.Bridged {
		br, err := bridge.Ensure("wgbbr", p.MTU, &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(24, 32)})
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(host, br); err != nil {
			return err
		}
	} else {
		if _, err := sysctl.Sysctl("net/ipv4/conf/"+pod.HostEnd+"/proxy_arp", "1"); err != nil {
			return err
		}
	}
	if err := h.LinkSetUp(host); err != nil {
		return err
	}
	if !p.Bridged {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: hostNet(pod.IP), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route to pod: %w", err)
		}
	}
	dev, err := h.LinkByName(p.Dev[i])
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: dev.Attrs().Index, Dst: prefixNet(peerSubnet), Scope: netlink.SCOPE_LINK}
	if p.Bridged {
		r.Src = gw.AsSlice()
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s: %w", peerSubnet, p.Dev[i], err)
	}
	wg, err := wgctrl.New()
	if err != nil {
		return err
	}
	defer wg.Close()
	d, err := wg.Device(p.Dev[i])
	if err != nil {
		return err
	}
	if len(d.Peers) != 1 {
		return fmt.Errorf("%s: %d peers, want 1", p.Dev[i], len(d.Peers))
	}
	if err := wg.ConfigureDevice(p.Dev[i], wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: d.Peers[0].PublicKey, UpdateOnly: true, AllowedIPs: []net.IPNet{*prefixNet(peerSubnet)}}}}); err != nil {
		return err
	}

	// Inside the pod: address, MTU, default route.
	return pns.Do(func() error {
		ph, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer ph.Close()
		eth, err := ph.LinkByName("eth0")
		if err != nil {
			return err
		}
		pod.MAC = eth.Attrs().HardwareAddr
		if err := ph.LinkSetMTU(eth, p.MTU); err != nil {
			return err
		}
		bits := 24
		if !p.Bridged {
			bits = 32
		}
		if err := ph.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: pod.IP.AsSlice(), Mask: net.CIDRMask(bits, 32)}}); err != nil {
			return err
		}
		if err := ph.LinkSetUp(eth); err != nil {
			return err
		}
		via := gw
		if !p.Bridged {
			via = netip.MustParseAddr("169.254.1.1")
			if err := ph.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: hostNet(via), Scope: netlink.SCOPE_LINK}); err != nil {
				return err
			}
		}
		return ph.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: via.AsSlice()})
	})
}

// wgcniFilters adds to a bare node what wgcni's plugin adds to a node
// with pods: the masquerade rule (which turns conntrack on for every
// packet) and the antispoof table with the pod's entry, using the
// plugin's own packages. remove takes both away again.
func wgcniFilters(n *harness.Node, pod barePod, podSubnet, cluster netip.Prefix) (add, remove func() error) {
	add = func() error {
		return n.Do(func() error {
			if err := masq.Ensure(prefixNet(podSubnet), prefixNet(cluster)); err != nil {
				return err
			}
			l, err := netlink.LinkByName(pod.HostEnd)
			if err != nil {
				return fmt.Errorf("look up %s: %w", pod.HostEnd, err)
			}
			return antispoof.Allow(antispoof.Port{Name: pod.HostEnd, Index: l.Attrs().Index}, pod.MAC, []net.IP{pod.IP.AsSlice()})
		})
	}
	remove = func() error {
		return n.Do(func() error {
			if err := masq.Remove(); err != nil {
				return err
			}
			return antispoof.Remove()
		})
	}
	return add, remove
}

func netns(n harness.NS) (int, error) {
	fd, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	return fd, nil
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
