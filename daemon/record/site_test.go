package record

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseSites(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string // error substring; "" ok
	}{
		{[]string{"192.168.77.0/24", "fd00:77::/64"}, ""},
		{[]string{"192.168.77.1/24"}, "host bits set (did you mean 192.168.77.0/24?)"},
		{[]string{"0.0.0.0/0"}, "default route"},
		{[]string{"192.168.0.0/16", "192.168.77.0/24"}, "192.168.0.0/16 and 192.168.77.0/24 overlap"},
		{[]string{"nonsense"}, `"nonsense" is not a CIDR`},
		{[]string{"::ffff:10.0.0.0/104"}, "not a plain"},
		{slices.Repeat([]string{"10.0.0.0/8"}, MaxSites+1), "at most"},
	} {
		_, err := ParseSites(tc.in)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("ParseSites(%v) = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestSitesRoundTrip(t *testing.T) {
	c, _ := NewCluster("10.244.0.0/16", 24)
	l := Lease{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, Node: "g1", PublicKey: [32]byte{1},
		Endpoint: netip.MustParseAddrPort("10.99.0.3:51820"), Sites: []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")}}
	key := SubnetKey("/wgcni", l.CIDRs[0])
	got, err := DecodeSubnet("/wgcni", key, l.Encode(), c)
	if err != nil || !slices.Equal(got.Sites, l.Sites) {
		t.Fatalf("decoded %+v %v", got, err)
	}
	bad := strings.Replace(string(l.Encode()), "192.168.77.0/24", "192.168.77.9/24", 1)
	if _, err := DecodeSubnet("/wgcni", key, []byte(bad), c); err == nil || !strings.Contains(err.Error(), "field siteCIDRs") {
		t.Fatalf("bad site accepted: %v", err)
	}
	// No sites: the record stays byte-identical to older daemons'.
	l.Sites = nil
	if strings.Contains(string(l.Encode()), "siteCIDRs") {
		t.Fatalf("empty siteCIDRs written: %s", l.Encode())
	}
}

func TestElectionKey(t *testing.T) {
	site := netip.MustParsePrefix("192.168.77.0/24")
	k := ElectionPrefix("/wgcni", site) + "/694d8a1b2c3d4e5f"
	if got, err := ParseElectionKey("/wgcni", k); err != nil || got != site {
		t.Fatalf("%s: %v %v", k, got, err)
	}
	for _, bad := range []string{"/wgcni/gateways/192.168.77.9-24/1", "/wgcni/gateways/x/1", "/wgcni/subnets/10.0.0.0-24/1", "/wgcni/gateways/192.168.77.0-24"} {
		if _, err := ParseElectionKey("/wgcni", bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func FuzzParseElectionKey(f *testing.F) {
	f.Add("/wgcni/gateways/192.168.77.0-24/694d")
	f.Add("/wgcni/gateways/fd00::-64/1")
	f.Fuzz(func(t *testing.T, key string) {
		p, err := ParseElectionKey("/wgcni", key)
		if err == nil && (!p.IsValid() || p.Masked() != p || !strings.HasPrefix(key, ElectionsPrefix("/wgcni"))) {
			t.Fatalf("%q accepted as %v", key, p)
		}
	})
}
