package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/wgcni/wgcni/daemon/lease"
)

func TestPodNodeDeviceAddrs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		held   lease.Held
		natted bool
		want   []string
	}{
		{"IPv4", lease.Held{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")}}, false, []string{"10.244.7.0/32"}},
		{"IPv4 behind a NAT: the relay address after", lease.Held{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")}}, true,
			[]string{"10.244.7.0/32", "10.244.7.254/32"}},
		{"IPv6 only", lease.Held{CIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:7::/64")}}, false, []string{"fd00:10:244:7::/128"}},
		{"dual-stack", lease.Held{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/26"), netip.MustParsePrefix("fd00:10:244:7::/64")}},
			false, []string{"10.244.7.0/32", "fd00:10:244:7::/128"}},
		{"dual-stack behind a NAT: the primary family's relay address", lease.Held{CIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:7::/64"), netip.MustParsePrefix("10.244.7.0/26")}}, true,
			[]string{"fd00:10:244:7::/128", "10.244.7.0/32", "fd00:10:244:7:ffff:ffff:ffff:ffff/128"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, p := range podNodeDeviceAddrs(tc.held, tc.natted) {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
