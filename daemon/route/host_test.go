package route

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
)

// The policy routing of host encryption, in a netns: an unmarked packet to
// the peer's underlay address takes the tunnel, a packet carrying the
// WireGuard device's mark takes the underlay; cleanup leaves nothing.
func TestHostRuleInNetns(t *testing.T) {
	n, _ := netnstest.New(t, "wgh")
	err := n.Do(func(ns.NetNS) error {
		under := mkBridge(t, "wgh-under")
		if err := netlink.AddrAdd(under, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.99.0.1"), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		tunl := mkBridge(t, "wgh-tun0")
		self, peer := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
		// What an earlier version left: its rule, with the old mark.
		legacy := hostRule(netlink.FAMILY_V4)
		legacy.Mark = LegacyFirewallMark
		if err := netlink.RuleAdd(legacy); err != nil {
			return err
		}
		for i := 0; i < 2; i++ {
			if err := EnsureHostRule(netlink.FAMILY_V4); err != nil {
				return err
			}
		}
		rules, _ := netlink.RuleListFiltered(netlink.FAMILY_V4, &netlink.Rule{Table: HostTable}, netlink.RT_FILTER_TABLE)
		if len(rules) != 1 || !rules[0].Invert || rules[0].Mark != FirewallMark || rules[0].Priority != RulePriority {
			return fmt.Errorf("rules after two ensures over a legacy rule: %+v", rules)
		}
		hr := HostRoute(peer, tunl.Attrs().Index, self)
		if err := EnsurePeer(hr); err != nil {
			return err
		}
		got, err := OursTable(netlink.FAMILY_V4, HostTable)
		if err != nil || len(got) != 1 || got[hr.Dst] != hr {
			return fmt.Errorf("table routes %+v %v", got, err)
		}
		if main, _, _ := Ours(netlink.FAMILY_V4); len(main) != 0 {
			return fmt.Errorf("host route leaked into main: %+v", main)
		}
		rs, err := netlink.RouteGet(net.ParseIP("10.99.0.2"))
		if err != nil || len(rs) == 0 || rs[0].LinkIndex != tunl.Attrs().Index || !rs[0].Src.Equal(net.ParseIP("10.99.0.1")) {
			return fmt.Errorf("unmarked packet to the peer's underlay address: %+v %v (want the tunnel)", rs, err)
		}
		rs, err = netlink.RouteGetWithOptions(net.ParseIP("10.99.0.2"), &netlink.RouteGetOptions{Mark: FirewallMark})
		if err != nil || len(rs) == 0 || rs[0].LinkIndex != under.Attrs().Index {
			return fmt.Errorf("marked (WireGuard's own) packet: %+v %v (want the underlay)", rs, err)
		}
		if err := netlink.RuleAdd(legacy); err != nil { // cleanup removes any mark's rule
			return err
		}
		for i := 0; i < 2; i++ {
			if err := RemoveHost(); err != nil {
				return fmt.Errorf("remove #%d: %w", i+1, err)
			}
		}
		rules, _ = netlink.RuleListFiltered(netlink.FAMILY_V4, &netlink.Rule{Table: HostTable}, netlink.RT_FILTER_TABLE)
		got, _ = OursTable(netlink.FAMILY_V4, HostTable)
		if len(rules) != 0 || len(got) != 0 {
			return fmt.Errorf("left after cleanup: rules %+v routes %+v", rules, got)
		}
		rs, err = netlink.RouteGet(net.ParseIP("10.99.0.2"))
		if err != nil || len(rs) == 0 || rs[0].LinkIndex != under.Attrs().Index {
			return fmt.Errorf("after cleanup: %+v %v (want the underlay)", rs, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
