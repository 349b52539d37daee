package harness

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// NATMapping is how a Router maps its LAN's UDP flows to its WAN address.
type NATMapping string

const (
	// EndpointIndependent: one fixed public port per LAN host, whatever
	// the destination (RFC 4787 "endpoint-independent mapping"), as home
	// routers that allow hole punching do.
	EndpointIndependent NATMapping = "endpoint-independent"
	// Symmetric: a new random public port for every new destination
	// (nftables masquerade random): hole punching cannot work.
	Symmetric NATMapping = "symmetric"
)

// Router is a "home router": a namespace on the underlay (its WAN, eth0)
// with a LAN bridge behind it, masquerading the nodes on the LAN. Its
// firewall drops unsolicited traffic from the WAN (only replies to flows
// the LAN opened come in), so a node behind it is unreachable. It forwards
// only between its LAN and the underlay, which routes nowhere beyond.
type Router struct {
	NS
	Name    string // e.g. rt3
	Mapping NATMapping
	WAN     netip.Addr   // its underlay address: the nodes' public address
	LAN     netip.Prefix // e.g. 192.168.3.0/24; the router is .1
	c       *Cluster
	hosts   int
}

const routerLAN = "lan0"

// PublicPort is the fixed WAN port an EndpointIndependent router maps
// its i-th LAN host's (from 1) WireGuard port to.
func PublicPort(i int) uint16 { return uint16(40000 + i) }

// AddRouter creates a home router on the underlay.
func (c *Cluster) AddRouter(m NATMapping) (*Router, error) {
	idx, err := c.nextIndex()
	if err != nil {
		return nil, err
	}
	r := &Router{Name: "rt" + strconv.Itoa(idx), Mapping: m, WAN: c.Underlay.nodeAddr(idx),
		LAN: netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(idx), 0}), 24), c: c}
	ns, err := c.NewNS(r.Name)
	if err != nil {
		return nil, err
	}
	r.NS = ns
	if err := c.Underlay.attach(c.Cfg.Tag+"-"+r.Name, ns, r.WAN); err != nil {
		return nil, fmt.Errorf("router %s: %w", r.Name, err)
	}
	err = ns.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: routerLAN, MTU: c.Cfg.UnderlayMTU}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge %s: %w", routerLAN, err)
		}
		gw := &netlink.Addr{IPNet: &net.IPNet{IP: r.LAN.Addr().Next().AsSlice(), Mask: net.CIDRMask(24, 32)}}
		if err := netlink.AddrAdd(br, gw); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		return nil, fmt.Errorf("router %s: %w", r.Name, err)
	}
	if err := r.writeRules(); err != nil {
		return nil, err
	}
	c.Cfg.Logf("harness: router %s (%s NAT) WAN %s LAN %s", r.Name, m, r.WAN, r.LAN)
	return r, nil
}

// writeRules (re)writes the router's nftables: the NAT and the firewall.
// The firewall's drop of unsolicited WAN packets also keeps conntrack
// from confirming an entry for them, which would make a later outgoing
// flow between the same two endpoints clash and take another port.
func (r *Router) writeRules() error {
	var snat strings.Builder
	switch r.Mapping {
	case EndpointIndependent:
		for i := 1; i <= r.hosts; i++ {
			fmt.Fprintf(&snat, "    oifname \"eth0\" ip saddr %s udp sport %d snat ip to %s:%d\n",
				r.hostAddr(i), r.c.Cfg.ListenPort, r.WAN, PublicPort(i))
		}
		snat.WriteString("    oifname \"eth0\" masquerade\n")
	case Symmetric:
		snat.WriteString("    oifname \"eth0\" masquerade random\n")
	default:
		return fmt.Errorf("router %s: unknown mapping %q", r.Name, r.Mapping)
	}
	rules := fmt.Sprintf(`flush ruleset
table ip homenat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
%s  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "eth0" ct state established,related accept
    iifname "eth0" drop
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "eth0" ct state established,related accept
    iifname "eth0" drop
  }
}
`, snat.String())
	return r.nft(rules)
}

func (r *Router) hostAddr(i int) netip.Addr {
	a := r.LAN.Addr().As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

// AddNode adds a node on the router's LAN and starts its wgcnid with
// extraArgs, waiting until it is ready. Its UnderlayIP is its LAN address.
func (r *Router) AddNode(extraArgs ...string) (*Node, error) {
	idx, err := r.c.nextIndex()
	if err != nil {
		return nil, err
	}
	r.hosts++
	addr := r.hostAddr(r.hosts)
	if err := r.writeRules(); err != nil {
		return nil, err
	}
	n, err := r.c.addBareNodeAt(idx, addr, func(n *Node) error {
		return attachToBridge(r.NS, routerLAN, r.c.Cfg.Tag+"-"+n.Name, n.NS, addr, r.LAN, r.LAN.Addr().Next(), r.c.Cfg.UnderlayMTU)
	})
	if err != nil {
		return n, err
	}
	return n, n.start(extraArgs, "behind "+r.Name+", LAN")
}

// Block cuts the router off from addr in both directions (a path that
// dies: a NAT reboot, a firewall change), before conntrack sees the
// packets; Unblock lifts it.
func (r *Router) Block(addr netip.Addr) error {
	return r.nft(fmt.Sprintf(`table ip block {
  chain inbound { type filter hook prerouting priority -300; policy accept; ip saddr %s drop; }
  chain outbound { type filter hook forward priority -10; policy accept; ip daddr %s drop; }
}
`, addr, addr))
}

// Unblock removes what Block added.
func (r *Router) Unblock() error { return r.nft("delete table ip block\n") }

func (r *Router) nft(script string) error {
	cmd := r.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("router %s: nft: %w: %s", r.Name, err, out)
	}
	return nil
}
