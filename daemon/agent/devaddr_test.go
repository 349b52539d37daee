package agent

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/wgcni/wgcni/daemon/lease"
)

func TestPodNodeDeviceAddrs(t *testing.T) {
	for _, tc := range []struct {
		name string
		held lease.Held
		want []string
	}{
		{"IPv4", lease.Held{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/24")}}, []string{"10.244.7.0/32"}},
		{"IPv6 only", lease.Held{CIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10:244:7::/64")}}, []string{"fd00:10:244:7::/128"}},
		{"dual-stack", lease.Held{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.7.0/26"), netip.MustParsePrefix("fd00:10:244:7::/64")}},
			[]string{"10.244.7.0/32", "fd00:10:244:7::/128"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, p := range podNodeDeviceAddrs(tc.held) {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
