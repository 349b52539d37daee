package route

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Host-to-host encryption (docs/hosts.md). Routes to peers' underlay
// addresses go through the WireGuard device, but WireGuard's own UDP to
// those very addresses must not: it carries FirewallMark (set on the
// device), and the routes live in HostTable, which only unmarked packets
// consult ("not fwmark 0x1767 lookup 22375"). A rule in front of main,
// rather than routes in main, keeps the exception to the tunnel marked
// packets out of every other table lookup too.
const (
	// FirewallMark is set on the WireGuard device (its UDP socket). It
	// keeps clear of the bits kube-proxy gives meaning on every node of a
	// cluster (0x4000 masquerade, 0x8000 drop): with 0x4000 set, its
	// POSTROUTING chain would masquerade WireGuard's own UDP (conntrack
	// and a random source port on every packet).
	FirewallMark = 0x1767
	// LegacyFirewallMark is the mark of wgcnid before 0x1767 (it had
	// kube-proxy's 0x4000 bit): its rule and device mark are replaced.
	LegacyFirewallMark = 0x5767
	// HostTable holds the routes to peers' underlay addresses.
	HostTable = 0x5767
	// RulePriority puts the rule before main (32766) and after local (0).
	RulePriority = 5767
)

// HostRoute is the route for a peer's underlay address addr through the
// device link, with this node's underlay address src as source (the peer
// accepts it: it is in our AllowedIPs there).
func HostRoute(addr netip.Addr, link int, src netip.Addr) Peer {
	return Peer{Dst: netip.PrefixFrom(addr, addr.BitLen()), LinkIndex: link, Src: src, Table: HostTable}
}

func hostRule(fam int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = fam
	r.Table = HostTable
	r.Mark = FirewallMark
	r.Mask = new(uint32)
	*r.Mask = 0xffffffff
	r.Invert = true
	r.Priority = RulePriority
	return r
}

// EnsureHostRule installs "not fwmark 0x1767 lookup 22375" for the
// family of the underlay (fam); an existing identical rule is kept, and
// one of ours with another mark (an earlier version's) is replaced: it
// would send WireGuard's own, newly marked, UDP into the tunnel.
func EnsureHostRule(fam int) error {
	rules, err := netlink.RuleListFiltered(fam, &netlink.Rule{Table: HostTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list ip rules for table %d: %w", HostTable, err)
	}
	have := false
	for _, r := range rules {
		switch {
		case r.Priority != RulePriority || !r.Invert:
		case r.Mark == FirewallMark:
			have = true
		default:
			if err := netlink.RuleDel(&r); err != nil && !isNotFound(err) {
				return fmt.Errorf("delete stale ip rule \"not fwmark %#x lookup %d\": %w", r.Mark, HostTable, err)
			}
		}
	}
	if have {
		return nil
	}
	if err := netlink.RuleAdd(hostRule(fam)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add ip rule \"not fwmark %#x lookup %d\" (priority %d): %w", FirewallMark, HostTable, RulePriority, err)
	}
	return nil
}

// RemoveHost deletes the rule (whatever its mark) and every route of
// ours in HostTable, for both families; missing is fine.
func RemoveHost() error {
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := netlink.RuleListFiltered(fam, &netlink.Rule{Table: HostTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, fmt.Errorf("list ip rules for table %d: %w", HostTable, err))
		}
		for _, r := range rules {
			if r.Priority != RulePriority || !r.Invert {
				continue
			}
			if err := netlink.RuleDel(&r); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete ip rule for table %d: %w", HostTable, err))
			}
		}
		routes, err := OursTable(fam, HostTable)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range routes {
			if err := DeletePeer(r); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// OursTable lists our routes in table, by destination.
func OursTable(fam, table int) (map[netip.Prefix]Peer, error) {
	routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Protocol: Protocol, Table: table},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes with protocol %d in table %d: %w", Protocol, table, err)
	}
	out := make(map[netip.Prefix]Peer, len(routes))
	for _, r := range routes {
		if r.Dst == nil || r.Type != unix.RTN_UNICAST {
			continue
		}
		dst, ok := toPrefix(r.Dst)
		if !ok {
			continue
		}
		src, _ := netip.AddrFromSlice(r.Src)
		out[dst] = Peer{Dst: dst, LinkIndex: r.LinkIndex, Src: src.Unmap(), Table: table, MTU: r.MTU}
	}
	return out, nil
}
