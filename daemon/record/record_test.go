package record

import (
	"encoding/base64"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

var testCluster = Cluster{Grids: []Grid{{CIDR: netip.MustParsePrefix("10.244.0.0/16"), NodePrefixLen: 24}}}

const testKey = "nH4tzAkJ3bx6Ed1w/kTDMCcz3jJ2Y4Zj1Pv8A1GQHz8="

func TestDecodeSubnetGood(t *testing.T) {
	key := "/wgcni/subnets/10.244.3.0-24"
	v := `{"node":"n1","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":51820,"keepalive":25,"future":1}`
	l, err := DecodeSubnet("/wgcni", key, []byte(v), testCluster)
	if err != nil {
		t.Fatal(err)
	}
	if l.Primary() != netip.MustParsePrefix("10.244.3.0/24") || l.Node != "n1" || l.Endpoint.String() != "10.99.0.1:51820" || l.Keepalive != 25 {
		t.Fatalf("decoded %+v", l)
	}
	// Round trip through Encode.
	l2, err := DecodeSubnet("/wgcni", SubnetKey("/wgcni", l.Primary()), l.Encode(), testCluster)
	if err != nil || !reflect.DeepEqual(l2, l) {
		t.Fatalf("round trip: %+v %v", l2, err)
	}
	if g := Gateway(l.Primary()); g.String() != "10.244.3.1" {
		t.Fatalf("gateway %s", g)
	}
}

func TestDecodeSubnetBad(t *testing.T) {
	good := `{"node":"n1","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":51820}`
	cases := []struct {
		name, key, value, want string
	}{
		{"bad json", "/wgcni/subnets/10.244.3.0-24", `{"node":`, "decode"},
		{"trailing", "/wgcni/subnets/10.244.3.0-24", good + "}", "trailing"},
		{"outside cluster", "/wgcni/subnets/10.245.3.0-24", good, "outside cluster CIDR"},
		{"wrong len", "/wgcni/subnets/10.244.2.0-23", good, "node prefix length"},
		{"host bits", "/wgcni/subnets/10.244.3.7-24", good, "host bits"},
		{"no dash", "/wgcni/subnets/10.244.3.0", good, "<ip>-<prefixlen>"},
		{"bad ip", "/wgcni/subnets/10.244.x.0-24", good, "bad address"},
		{"bad len", "/wgcni/subnets/10.244.3.0-024", good, "bad prefix length"},
		{"other prefix", "/other/subnets/10.244.3.0-24", good, "not under"},
		{"no node", "/wgcni/subnets/10.244.3.0-24", `{"publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":1}`, "field node"},
		{"bad node", "/wgcni/subnets/10.244.3.0-24", `{"node":"a b","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":1}`, "field node"},
		{"bad key", "/wgcni/subnets/10.244.3.0-24", `{"node":"n","publicKey":"abc","endpoint":"10.99.0.1","port":1}`, "field publicKey"},
		{"short key", "/wgcni/subnets/10.244.3.0-24", `{"node":"n","publicKey":"` + base64.StdEncoding.EncodeToString(make([]byte, 16)) + `","endpoint":"10.99.0.1","port":1}`, "want 32"},
		{"zero key", "/wgcni/subnets/10.244.3.0-24", `{"node":"n","publicKey":"` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `","endpoint":"10.99.0.1","port":1}`, "all-zero"},
		{"bad endpoint", "/wgcni/subnets/10.244.3.0-24", `{"node":"n","publicKey":"` + testKey + `","endpoint":"host","port":1}`, "field endpoint"},
		{"zero endpoint", "/wgcni/subnets/10.244.3.0-24", `{"node":"n","publicKey":"` + testKey + `","endpoint":"0.0.0.0","port":1}`, "field endpoint"},
		{"endpoint in cluster", "/wgcni/subnets/10.244.3.0-24", `{"node":"n","publicKey":"` + testKey + `","endpoint":"10.244.9.9","port":1}`, "inside cluster CIDR"},
		{"bad port", "/wgcni/subnets/10.244.3.0-24", `{"node":"n","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":70000}`, "field port"},
		{"neg keepalive", "/wgcni/subnets/10.244.3.0-24", `{"node":"n","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":1,"keepalive":-1}`, "field keepalive"},
		{"wrong type", "/wgcni/subnets/10.244.3.0-24", `{"node":1}`, "decode"},
		{"oversized", "/wgcni/subnets/10.244.3.0-24", `{"node":"` + strings.Repeat("a", MaxValueSize) + `"}`, "exceeds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeSubnet("/wgcni", c.key, []byte(c.value), testCluster)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.key) {
				t.Fatalf("error %q does not name %q and the key", err, c.want)
			}
		})
	}
}

func TestNewCluster(t *testing.T) {
	for _, c := range []struct {
		cidr string
		n    int
		ok   bool
	}{
		{"10.244.0.0/16", 24, true},
		{"fd00::/48", 64, true},
		{"10.244.0.0/16", 16, false},
		{"10.244.0.0/16", 31, false},
		{"10.244.0.1/16", 24, false},
		{"10.0.0.0/8", 30, false},
		{"bogus", 24, false},
	} {
		_, err := NewCluster(c.cidr, c.n)
		if (err == nil) != c.ok {
			t.Errorf("NewCluster(%s, %d) = %v", c.cidr, c.n, err)
		}
	}
}

// The config and a node's record round-trip in every family setting, with
// the exact wire form older daemons read: a single-family cluster has no
// dual-stack fields; a dual one keeps its IPv4 grid in the original fields
// and keys records by the IPv4 CIDR.
func TestRoundTripFamilies(t *testing.T) {
	v4 := Grid{CIDR: netip.MustParsePrefix("10.244.0.0/16"), NodePrefixLen: 24}
	v6 := Grid{CIDR: netip.MustParsePrefix("fd00:244::/48"), NodePrefixLen: 64}
	for _, tc := range []struct {
		name    string
		grids   []Grid
		config  string
		cidrs   []string
		key     string
		podCIDR string // the record's podCIDRv6 field
	}{
		{"v4", []Grid{v4}, `{"clusterCIDR":"10.244.0.0/16","nodePrefixLen":24}`, []string{"10.244.3.0/24"}, "/wgcni/subnets/10.244.3.0-24", ""},
		{"v6", []Grid{v6}, `{"clusterCIDR":"fd00:244::/48","nodePrefixLen":64}`, []string{"fd00:244:0:3::/64"}, "/wgcni/subnets/fd00:244:0:3::-64", ""},
		{"dual", []Grid{v4, v6}, `{"clusterCIDR":"10.244.0.0/16","nodePrefixLen":24,"clusterCIDRv6":"fd00:244::/48","nodePrefixLenV6":64}`,
			[]string{"10.244.3.0/24", "fd00:244:0:3::/64"}, "/wgcni/subnets/10.244.3.0-24", `,"podCIDRv6":"fd00:244:0:3::/64"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Join(tc.grids...)
			if err != nil {
				t.Fatal(err)
			}
			if b := EncodeConfig(c); string(b) != tc.config {
				t.Fatalf("config encodes as %s, want %s", b, tc.config)
			}
			got, err := DecodeConfig("/wgcni/config", []byte(tc.config))
			if err != nil || !got.Equal(c) {
				t.Fatalf("config decodes as %v %v", got, err)
			}
			var cidrs []netip.Prefix
			for _, s := range tc.cidrs {
				cidrs = append(cidrs, netip.MustParsePrefix(s))
			}
			key, _ := ParseKey(testKey)
			l := Lease{CIDRs: cidrs, Node: "n1", PublicKey: key, Endpoint: netip.MustParseAddrPort("10.99.0.1:51820")}
			want := `{"node":"n1","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":51820,"keepalive":0` + tc.podCIDR + `}`
			if SubnetKey("/wgcni", l.Primary()) != tc.key || string(l.Encode()) != want {
				t.Fatalf("record %s = %s, want %s = %s", SubnetKey("/wgcni", l.Primary()), l.Encode(), tc.key, want)
			}
			l2, err := DecodeSubnet("/wgcni", tc.key, []byte(want), c)
			if err != nil || !reflect.DeepEqual(l2, l) {
				t.Fatalf("record decodes as %+v %v", l2, err)
			}
			for i, p := range cidrs {
				if !c.Grids[i].Holds(p) {
					t.Fatalf("%s not on grid %s", p, c.Grids[i])
				}
			}
		})
	}
	if _, err := DecodeConfig("/wgcni/config", []byte(`{"clusterCIDR":16}`)); err == nil || !strings.Contains(err.Error(), "/wgcni/config") {
		t.Fatalf("wrong-typed config accepted or unnamed: %v", err)
	}
}

func FuzzDecodeSubnet(f *testing.F) {
	f.Add("/wgcni/subnets/10.244.3.0-24", []byte(`{"node":"n1","publicKey":"`+testKey+`","endpoint":"10.99.0.1","port":51820}`))
	f.Add("/wgcni/subnets/fd00::-64", []byte(`{}`))
	f.Add("/wgcni/subnets/10.244.3.0-24", []byte(`null`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		l, err := DecodeSubnet("/wgcni", key, value, testCluster)
		if err != nil {
			return
		}
		// Anything accepted must be a node CIDR of the cluster and survive
		// a round trip unchanged.
		if !testCluster.Primary().Holds(l.Primary()) {
			t.Fatalf("accepted CIDR %s", l.Primary())
		}
		l2, err := DecodeSubnet("/wgcni", SubnetKey("/wgcni", l.Primary()), l.Encode(), testCluster)
		if err != nil || !reflect.DeepEqual(l2, l) {
			t.Fatalf("round trip of %+v: %+v, %v", l, l2, err)
		}
	})
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add([]byte(`{"clusterCIDR":"10.244.0.0/16","nodePrefixLen":24}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		c, err := DecodeConfig("/wgcni/config", value)
		if err != nil {
			return
		}
		if _, err := DecodeConfig("/wgcni/config", EncodeConfig(c)); err != nil {
			t.Fatalf("accepted invalid %v: %v", c, err)
		}
	})
}

// hostEncryption and unreachable are compatible fields: present only when
// on, kept by a round trip, and absent from records of nodes without them.
func TestCompatibleBoolFields(t *testing.T) {
	for _, f := range []struct {
		name string
		get  func(Lease) bool
		off  func(*Lease)
	}{
		{"hostEncryption", func(l Lease) bool { return l.UnderlayEncryption }, func(l *Lease) { l.UnderlayEncryption = false }},
		{"unreachable", func(l Lease) bool { return l.Unreachable }, func(l *Lease) { l.Unreachable = false }},
		{"noRelay", func(l Lease) bool { return l.NoRelay }, func(l *Lease) { l.NoRelay = false }},
	} {
		key := "/wgcni/subnets/10.244.3.0-24"
		v := `{"node":"n1","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":51820,"keepalive":0,"` + f.name + `":true}`
		l, err := DecodeSubnet("/wgcni", key, []byte(v), testCluster)
		if err != nil || !f.get(l) {
			t.Fatalf("%s: decoded %+v, %v", f.name, l, err)
		}
		if !strings.Contains(string(l.Encode()), `"`+f.name+`":true`) {
			t.Fatalf("%s: encode lost the field: %s", f.name, l.Encode())
		}
		f.off(&l)
		if strings.Contains(string(l.Encode()), f.name) {
			t.Fatalf("%s: off must be omitted (byte-identical to older daemons): %s", f.name, l.Encode())
		}
		if _, err := DecodeSubnet("/wgcni", key, []byte(strings.Replace(v, "true", `"yes"`, 1)), testCluster); err == nil {
			t.Fatalf("%s of the wrong type accepted", f.name)
		}
	}
}

func dualTestCluster(t *testing.T) Cluster {
	c, err := Join(testCluster.Grids[0], Grid{CIDR: netip.MustParsePrefix("fd00:244::/48"), NodePrefixLen: 64})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBadDualConfig(t *testing.T) {
	if _, err := DecodeConfig("/wgcni/config", []byte(`{"clusterCIDR":"10.244.0.0/16","nodePrefixLen":24,"clusterCIDRv6":"10.0.0.0/8","nodePrefixLenV6":16}`)); err == nil || !strings.Contains(err.Error(), "not an IPv6 CIDR") {
		t.Fatalf("v4 CIDR as clusterCIDRv6: %v", err)
	}
	if _, err := DecodeConfig("/wgcni/config", []byte(`{"clusterCIDR":"fd01::/48","nodePrefixLen":64,"clusterCIDRv6":"fd00::/48","nodePrefixLenV6":64}`)); err == nil || !strings.Contains(err.Error(), "at most one CIDR per family") {
		t.Fatalf("two v6 CIDRs: %v", err)
	}
}

func TestDualSubnetRecord(t *testing.T) {
	c := dualTestCluster(t)
	key := "/wgcni/subnets/10.244.3.0-24"
	base := `{"node":"n1","publicKey":"` + testKey + `","endpoint":"10.99.0.1","port":51820,"keepalive":0`
	l, err := DecodeSubnet("/wgcni", key, []byte(base+`,"podCIDRv6":"fd00:244:0:3::/64"}`), c)
	if err != nil || len(l.CIDRs) != 2 || l.CIDRs[1] != netip.MustParsePrefix("fd00:244:0:3::/64") {
		t.Fatalf("%+v %v", l, err)
	}
	if l2, err := DecodeSubnet("/wgcni", key, l.Encode(), c); err != nil || !reflect.DeepEqual(l2, l) {
		t.Fatalf("round trip %+v %v", l2, err)
	}
	// Without podCIDRv6 (a node of an older daemon): accepted, IPv4 only.
	if l, err := DecodeSubnet("/wgcni", key, []byte(base+`}`), c); err != nil || len(l.CIDRs) != 1 {
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
	if p, err := ParseGuardKey("/wgcni", GuardKey("/wgcni", l.CIDRs[1]), c); err != nil || p != l.CIDRs[1] {
		t.Fatalf("guard key: %v %v", p, err)
	}
	if _, err := ParseGuardKey("/wgcni", "/wgcni/subnets6/fd00:244:0:3::-80", c); err == nil {
		t.Fatal("guard key of the wrong length accepted")
	}
}

// TestRelayAddr: the last address that is not a broadcast address, in
// both families and at the sizes the IPAM accepts.
func TestRelayAddr(t *testing.T) {
	for cidr, want := range map[string]string{
		"10.244.7.0/24":      "10.244.7.254",
		"10.244.7.0/29":      "10.244.7.6",
		"10.244.0.0/16":      "10.244.255.254",
		"10.244.7.77/24":     "10.244.7.254", // not masked: the CIDR's, still
		"fd00:10:244:7::/64": "fd00:10:244:7:ffff:ffff:ffff:ffff",
		"fd00:10:244::/120":  "fd00:10:244::ff",
		"10.244.7.0/30":      "invalid IP", // too small to spare one
		"10.244.7.7/32":      "invalid IP", // a host-only node's
	} {
		if got := RelayAddr(netip.MustParsePrefix(cidr)); got.String() != want {
			t.Errorf("RelayAddr(%s) = %s, want %s", cidr, got, want)
		}
	}
}
