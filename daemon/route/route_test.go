package route

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
)

func TestRoutesInNetns(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	cluster := netip.MustParsePrefix("10.244.0.0/16")
	err := n.Do(func(ns.NetNS) error {
		// Strict route goes in first, before any link exists.
		if err := EnsureStrict(cluster); err != nil {
			return err
		}
		if err := EnsureStrict(cluster); err != nil {
			return fmt.Errorf("idempotent: %w", err)
		}
		// Stand-ins for the pod bridge (with the gateway) and the tunnel.
		br := mkBridge(t, "wgd-br0")
		netlink.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.244.1.1"), Mask: net.CIDRMask(24, 32)}})
		tunl := mkBridge(t, "wgd-tun0")
		gw := netip.MustParseAddr("10.244.1.1")
		p := Peer{Dst: netip.MustParsePrefix("10.244.2.0/24"), LinkIndex: tunl.Attrs().Index, Src: gw}
		if err := EnsurePeer(p); err != nil {
			return err
		}
		if err := EnsurePeer(p); err != nil {
			return fmt.Errorf("idempotent: %w", err)
		}
		// A foreign route must not be listed as ours.
		foreign := &netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("10.244.3.0"), Mask: net.CIDRMask(24, 32)}, LinkIndex: tunl.Attrs().Index, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(foreign); err != nil {
			return err
		}
		peers, strict, err := Ours(netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(peers) != 1 || peers[p.Dst] != p {
			return fmt.Errorf("peers %+v", peers)
		}
		if len(strict) != 1 || strict[0] != cluster {
			return fmt.Errorf("strict %v", strict)
		}
		// The kernel picks our gateway as source towards the peer, and
		// an unknown pod CIDR is unreachable (not the default route).
		rs, err := netlink.RouteGet(net.ParseIP("10.244.2.9"))
		if err != nil || len(rs) == 0 || !rs[0].Src.Equal(net.ParseIP("10.244.1.1")) || rs[0].LinkIndex != tunl.Attrs().Index {
			return fmt.Errorf("route get peer: %+v %v", rs, err)
		}
		if _, err := netlink.RouteGet(net.ParseIP("10.244.9.9")); err == nil {
			return fmt.Errorf("unknown pod CIDR is routable")
		}
		all, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("10.244.0.0"), Mask: net.CIDRMask(16, 32)}}, netlink.RT_FILTER_DST)
		if len(all) != 1 || all[0].Type != unix.RTN_UNREACHABLE {
			return fmt.Errorf("strict route %+v", all)
		}
		if err := DeletePeer(p); err != nil {
			return err
		}
		if err := DeletePeer(p); err != nil {
			return fmt.Errorf("delete twice: %w", err)
		}
		if err := RemoveStrict(cluster); err != nil {
			return err
		}
		if err := RemoveStrict(cluster); err != nil {
			return fmt.Errorf("remove strict twice: %w", err)
		}
		peers, strict, _ = Ours(netlink.FAMILY_V4)
		if len(peers) != 0 || len(strict) != 0 {
			return fmt.Errorf("left: %v %v", peers, strict)
		}
		if err := EnableForwarding(cluster); err != nil {
			return err
		}
		b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if b[0] != '1' {
			return fmt.Errorf("ip_forward %q", b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mkBridge(t *testing.T, name string) netlink.Link {
	la := netlink.NewLinkAttrs()
	la.Name = name
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
		t.Fatal(err)
	}
	l, _ := netlink.LinkByName(name)
	netlink.LinkSetUp(l)
	return l
}

func TestAdvMSS(t *testing.T) {
	for _, c := range []struct {
		dst  string
		mtu  int
		want int
	}{{"10.1.0.0/24", 1400, 1360}, {"fd00:1::/64", 1400, 1340}} {
		if got := AdvMSS(netip.MustParsePrefix(c.dst), c.mtu); got != c.want {
			t.Errorf("AdvMSS(%s, %d) = %d, want %d", c.dst, c.mtu, got, c.want)
		}
	}
}
