package hub

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/wgcni/wgcni/daemon/samenode/registry"
)

func TestDeviceName(t *testing.T) {
	if got := DeviceName("wgcni-wg"); got != "wgcni-wg-sn" {
		t.Errorf("DeviceName = %q", got)
	}
	if got := DeviceName("abcdefghijklmno"); len(got) > 15 {
		t.Errorf("DeviceName too long: %q", got)
	}
}

// TestFamilies: the hub accepts exactly a pod's addresses as host
// prefixes, and routes each with the gateway of its family as source; a
// pod address of a family the node has no gateway of is an error naming
// it.
func TestFamilies(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00:244:0:1::5")
	gw4, gw6 := netip.MustParseAddr("10.244.1.1"), netip.MustParseAddr("fd00:244:0:1::1")
	for _, tc := range []struct {
		name     string
		ips      []netip.Addr
		gateways []netip.Addr
		allowed  string
		sources  []netip.Addr
		bad      string
	}{
		{name: "dual", ips: []netip.Addr{v4, v6}, gateways: []netip.Addr{gw4, gw6}, allowed: "[10.244.1.5/32 fd00:244:0:1::5/128]", sources: []netip.Addr{gw4, gw6}},
		{name: "IPv6 only", ips: []netip.Addr{v6}, gateways: []netip.Addr{gw6}, allowed: "[fd00:244:0:1::5/128]", sources: []netip.Addr{gw6}},
		{name: "IPv4 only, gateways IPv6 first", ips: []netip.Addr{v4}, gateways: []netip.Addr{gw6, gw4}, allowed: "[10.244.1.5/32]", sources: []netip.Addr{gw4}},
		{name: "IPv6 pod, IPv4 node", ips: []netip.Addr{v6}, gateways: []netip.Addr{gw4}, allowed: "[fd00:244:0:1::5/128]", bad: "no gateway of fd00:244:0:1::5's family"},
	} {
		p := &registry.Pod{ID: "wgvtest", IPs: tc.ips}
		var nets []string
		for _, n := range AllowedIPs(p) {
			nets = append(nets, (&net.IPNet{IP: n.IP, Mask: n.Mask}).String())
		}
		if got := fmt.Sprint(nets); got != tc.allowed {
			t.Errorf("%s: AllowedIPs = %s, want %s", tc.name, got, tc.allowed)
		}
		h := Hub{Name: "wgt-sn", Gateways: tc.gateways}
		for i, a := range tc.ips {
			gw, err := h.gateway(a)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Errorf("%s: gateway(%s) = %s, %v; want error %q", tc.name, a, gw, err, tc.bad)
				}
				continue
			}
			if err != nil || gw != tc.sources[i] {
				t.Errorf("%s: gateway(%s) = %s, %v; want %s", tc.name, a, gw, err, tc.sources[i])
			}
		}
	}
}
