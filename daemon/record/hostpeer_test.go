package record

import (
	"net/netip"
	"strings"
	"testing"
)

func TestDefaultHostRange(t *testing.T) {
	for _, tc := range []struct {
		cidr string
		bits int
		want string
	}{
		{"10.244.0.0/16", 24, "10.244.255.0/24"},
		{"10.244.0.0/22", 24, "10.244.3.0/24"},
		{"10.0.0.0/8", 20, "10.255.240.0/20"},
		{"fd00:10::/56", 64, "fd00:10:0:ff::/64"},
	} {
		c, err := NewCluster(tc.cidr, tc.bits)
		if err != nil {
			t.Fatal(err)
		}
		got := DefaultHostRange(c)
		if got.String() != tc.want {
			t.Errorf("DefaultHostRange(%s /%d) = %s, want %s", tc.cidr, tc.bits, got, tc.want)
		}
		if err := ValidHostRange(c, got); err != nil {
			t.Errorf("default %s not valid: %v", got, err)
		}
	}
}

func TestValidHostRange(t *testing.T) {
	c, _ := NewCluster("10.244.0.0/16", 24)
	for in, want := range map[string]string{
		"10.244.7.0/24": "",
		"10.244.7.1/24": "host bits",
		"10.244.7.0/25": "must be /24",
		"10.245.0.0/24": "outside cluster",
		"10.244.0.0/16": "must be /24",
	} {
		err := ValidHostRange(c, netip.MustParsePrefix(in))
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("ValidHostRange(%s) = %v, want %q", in, err, want)
		}
	}
}

func TestDecodePeer(t *testing.T) {
	c, _ := NewCluster("10.244.0.0/16", 24)
	key := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE="
	host := `{"node":"h1","publicKey":"` + key + `","endpoint":"10.99.0.5","port":51820,"keepalive":0,"kind":"host"}`
	node := `{"node":"n1","publicKey":"` + key + `","endpoint":"10.99.0.5","port":51820,"keepalive":0}`
	for _, tc := range []struct {
		key, value, kind, err string
	}{
		{"/wgcni/subnets/10.244.200.0-24", `{"kind":"hosts"}`, KindHostRange, ""},
		{"/wgcni/subnets/10.244.200.7-32", host, KindHostPeer, ""},
		{"/wgcni/subnets/10.244.3.0-24", node, "", ""},
		// A node record on a /32 key, or a host record on a grid key,
		// is refused: the kind must match the key.
		{"/wgcni/subnets/10.244.200.7-32", node, "", "field kind"},
		{"/wgcni/subnets/10.244.3.0-24", host, "", "field kind"},
		{"/wgcni/subnets/10.245.0.7-32", host, "", "outside cluster"},
		{"/wgcni/subnets/10.244.200.6-31", host, "", "prefix length"},
		{"/wgcni/subnets/10.244.200.7-32", `{"kind":"hosts"}`, "", "field node"},
		{"/wgcni/subnets/10.244.200.7-32", strings.Replace(host, "10.99.0.5", "10.244.9.9", 1), "", "inside cluster"},
	} {
		l, err := DecodePeer("/wgcni", tc.key, []byte(tc.value), c)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s %s: err %v, want %q", tc.key, tc.value, err, tc.err)
			}
			continue
		}
		if err != nil || l.Kind != tc.kind {
			t.Errorf("%s %s: %+v %v, want kind %q", tc.key, tc.value, l, err, tc.kind)
		}
	}
	// Node records keep their exact old encoding (no kind field).
	l, err := DecodeSubnet("/wgcni", "/wgcni/subnets/10.244.3.0-24", []byte(node), c)
	if err != nil {
		t.Fatal(err)
	}
	if string(l.Encode()) != node {
		t.Fatalf("node record re-encodes as %s", l.Encode())
	}
}
