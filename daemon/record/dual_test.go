package record

import (
	"net/netip"
	"strings"
	"testing"
)

func dualTestCluster(t *testing.T) Cluster {
	c, err := testCluster.WithV6("fd00:244::/48", 64)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDualConfigRoundTrip(t *testing.T) {
	c := dualTestCluster(t)
	b := EncodeConfig(c)
	if !strings.Contains(string(b), `"clusterCIDRv6":"fd00:244::/48","nodePrefixLenV6":64`) {
		t.Fatalf("encoded %s", b)
	}
	got, err := DecodeConfig("/wgcni/config", b)
	if err != nil || got != c {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := DecodeConfig("/wgcni/config", []byte(`{"clusterCIDR":"10.244.0.0/16","nodePrefixLen":24,"clusterCIDRv6":"10.0.0.0/8","nodePrefixLenV6":16}`)); err == nil || !strings.Contains(err.Error(), "not an IPv6 CIDR") {
		t.Fatalf("v4 CIDR as clusterCIDRv6: %v", err)
	}
	if _, err := DecodeConfig("/wgcni/config", []byte(`{"clusterCIDR":"fd01::/48","nodePrefixLen":64,"clusterCIDRv6":"fd00::/48","nodePrefixLenV6":64}`)); err == nil || !strings.Contains(err.Error(), "not IPv4") {
		t.Fatalf("two v6 CIDRs: %v", err)
	}
}

func TestDualSubnetRecord(t *testing.T) {
	c := dualTestCluster(t)
	key := "/wgcni/subnets/10.244.3.0-24"
	base := `{"node":"n1","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":51820,"keepalive":0`
	l, err := DecodeSubnet("/wgcni", key, []byte(base+`,"podCIDRv6":"fd00:244:0:3::/64"}`), c)
	if err != nil || l.CIDR6 != netip.MustParsePrefix("fd00:244:0:3::/64") {
		t.Fatalf("%+v %v", l, err)
	}
	if l2, err := DecodeSubnet("/wgcni", key, l.Encode(), c); err != nil || l2 != l {
		t.Fatalf("round trip %+v %v", l2, err)
	}
	// Without podCIDRv6 (a node of an older daemon): accepted, IPv4 only.
	if l, err := DecodeSubnet("/wgcni", key, []byte(base+`}`), c); err != nil || l.CIDR6.IsValid() {
		t.Fatalf("v4-only record in dual cluster: %+v %v", l, err)
	}
	for _, bad := range []struct{ v6, want string }{
		{"fd00:244:0:3::/80", "node prefix length /64"},
		{"fd00:245:0:3::/64", "outside IPv6 cluster CIDR"},
		{"fd00:244:0:3::1/64", "host bits"},
		{"10.1.0.0/24", "not an IPv6 CIDR"},
	} {
		_, err := DecodeSubnet("/wgcni", key, []byte(base+`,"podCIDRv6":"`+bad.v6+`"}`), c)
		if err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "podCIDRv6") {
			t.Errorf("podCIDRv6 %s: %v", bad.v6, err)
		}
	}
	// A single-family cluster refuses a podCIDRv6.
	if _, err := DecodeSubnet("/wgcni", key, []byte(base+`,"podCIDRv6":"fd00:244:0:3::/64"}`), testCluster); err == nil || !strings.Contains(err.Error(), "no IPv6 CIDR") {
		t.Fatalf("v6 in v4-only cluster: %v", err)
	}
	// Guard keys parse onto the IPv6 grid only.
	if p, err := ParseSubnet6Key("/wgcni", Subnet6Key("/wgcni", l.CIDR6), c); err != nil || p != l.CIDR6 {
		t.Fatalf("guard key: %v %v", p, err)
	}
	if _, err := ParseSubnet6Key("/wgcni", "/wgcni/subnets6/fd00:244:0:3::-80", c); err == nil {
		t.Fatal("guard key of the wrong length accepted")
	}
}
