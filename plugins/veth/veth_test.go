package veth

import (
	"strings"
	"testing"
)

func TestHostNameAndAlias(t *testing.T) {
	a := Attachment{Network: "wgcni", ContainerID: "0123abcd", IfName: "eth0"}
	name := HostName(a)
	if len(name) != 15 || !IsHostName(name) {
		t.Fatalf("HostName %q: want 15 chars with prefix %s", name, HostPrefix)
	}
	if HostName(a) != name {
		t.Fatal("HostName is not deterministic")
	}
	for _, b := range []Attachment{
		{Network: "other", ContainerID: a.ContainerID, IfName: a.IfName},
		{Network: a.Network, ContainerID: "x", IfName: a.IfName},
		{Network: a.Network, ContainerID: a.ContainerID, IfName: "net1"},
	} {
		if HostName(b) == name {
			t.Fatalf("%+v and %+v share host name %s", a, b, name)
		}
	}
	got, ok := ParseAlias(Alias(a))
	if !ok || got != a {
		t.Fatalf("ParseAlias(Alias(%+v)) = %+v, %v", a, got, ok)
	}
	for _, bad := range []string{"", "wgcni/", "wgcni/n/eth0", "wgcni//eth0/c", "other/n/eth0/c", "wgcni/n//c"} {
		if _, ok := ParseAlias(bad); ok {
			t.Fatalf("ParseAlias(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"wgv", "wgv0123456789a", "wgv0123456789abz", "wgvzz23456789ab", "eth0"} {
		if IsHostName(bad) {
			t.Fatalf("IsHostName(%q) = true", bad)
		}
	}
}

func TestRandomMAC(t *testing.T) {
	m := RandomMAC()
	if len(m) != 6 || m[0]&0x01 != 0 || m[0]&0x02 == 0 {
		t.Fatalf("RandomMAC %s is not a locally administered unicast address", m)
	}
}

func FuzzParseAlias(f *testing.F) {
	f.Add("wgcni/wgcni/eth0/abc")
	f.Add("wgcni/a/b/c/d")
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := ParseAlias(s)
		if !ok {
			return
		}
		if a.Network == "" || a.IfName == "" || a.ContainerID == "" || strings.Contains(a.Network, "/") || strings.Contains(a.IfName, "/") {
			t.Fatalf("ParseAlias(%q) = %+v", s, a)
		}
		if Alias(a) != s {
			t.Fatalf("Alias(ParseAlias(%q)) = %q", s, Alias(a))
		}
	})
}
