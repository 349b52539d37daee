package samenode

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wgcni/wgcni/daemon/wgdev"
)

func TestRegistry(t *testing.T) {
	dir := t.TempDir()
	p := &Pod{ID: "wgv0123456789ab", Network: "wgcni", ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x",
		IP: netip.MustParseAddr("10.244.1.5"), WGIfName: "wg-eth0", PublicKey: "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=", Port: 40000}
	if err := Register(dir, p); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir, p.ID)
	if err != nil || got == nil || *got != *p {
		t.Fatalf("Load = %+v, %v; want %+v", got, err, p)
	}
	// A corrupt file is skipped with an error naming it, never fatal.
	if err := os.WriteFile(filepath.Join(Dir(dir), "bad.json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	pods, errs := List(dir)
	if len(pods) != 1 || len(errs) != 1 || !strings.Contains(errs[0].Error(), "bad.json") {
		t.Fatalf("List = %d pods, errs %v", len(pods), errs)
	}
	if err := Unregister(dir, p.ID); err != nil {
		t.Fatal(err)
	}
	if err := Unregister(dir, p.ID); err != nil {
		t.Fatalf("second Unregister: %v", err)
	}
	if got, err := Load(dir, p.ID); got != nil || err != nil {
		t.Fatalf("after Unregister: %+v %v", got, err)
	}
	for _, bad := range []string{"", "../x", "a/b", "a.b"} {
		if err := Unregister(dir, bad); err == nil {
			t.Errorf("Unregister(%q) accepted a path-like id", bad)
		}
	}
	q := *p
	q.Port = 0
	if err := Register(dir, &q); err == nil || !strings.Contains(err.Error(), "port") {
		t.Errorf("Register with port 0: %v", err)
	}
}

func TestNames(t *testing.T) {
	if got := HubName("wgcni-wg"); got != "wgcni-wg-sn" {
		t.Errorf("HubName = %q", got)
	}
	if got := HubName("abcdefghijklmno"); len(got) > 15 {
		t.Errorf("HubName too long: %q", got)
	}
	if got := WGIfName("eth0"); got != "wg-eth0" {
		t.Errorf("WGIfName = %q", got)
	}
	if got := WGIfName("averyverylongifname"); len(got) > 15 {
		t.Errorf("WGIfName too long: %q", got)
	}
}

func TestRegistryFamilies(t *testing.T) {
	dir := t.TempDir()
	base := Pod{ID: "wgv0123456789ab", Network: "wgcni", ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x",
		WGIfName: "wg-eth0", PublicKey: "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=", Port: 40000}
	v4, v6 := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00:244:0:1::5")
	for _, tc := range []struct {
		name    string
		ip, ip6 netip.Addr
		allowed []string
		bad     string
	}{
		{name: "dual", ip: v4, ip6: v6, allowed: []string{"10.244.1.5/32", "fd00:244:0:1::5/128"}},
		{name: "v6 only", ip6: v6, allowed: []string{"fd00:244:0:1::5/128"}},
		{name: "v4 only", ip: v4, allowed: []string{"10.244.1.5/32"}},
		{name: "none", bad: "both empty"},
		{name: "v6 in ip", ip: v6, bad: "field ip "},
		{name: "v4 in ip6", ip: v4, ip6: v4, bad: "field ip6"},
		{name: "mapped v4 in ip6", ip6: netip.MustParseAddr("::ffff:10.244.1.5"), bad: "field ip6"},
	} {
		p := base
		p.IP, p.IP6 = tc.ip, tc.ip6
		err := Register(dir, &p)
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("%s: Register = %v, want error naming %q", tc.name, err, tc.bad)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := Load(dir, p.ID)
		if err != nil || got == nil || *got != p {
			t.Fatalf("%s: Load = %+v, %v; want %+v", tc.name, got, err, p)
		}
		var nets []string
		for _, n := range AllowedIPs(got) {
			nets = append(nets, n.String())
		}
		if strings.Join(nets, " ") != strings.Join(tc.allowed, " ") {
			t.Errorf("%s: AllowedIPs = %v, want %v", tc.name, nets, tc.allowed)
		}
	}
	// A registration written before IPv6 support (no ip6 field) still loads.
	old := `{"id":"wgvold","network":"wgcni","containerID":"c","ifName":"eth0","netns":"/x","ip":"10.244.1.9","wgIfName":"wg-eth0","publicKey":"aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=","port":4}`
	if err := os.WriteFile(filepath.Join(Dir(dir), "wgvold.json"), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := Load(dir, "wgvold"); err != nil || p.IP6.IsValid() || len(p.Addrs()) != 1 {
		t.Fatalf("old registration: %+v %v", p, err)
	}
}

// TestRegistryDeviceFields: what re-creating a pod's device needs is kept
// (mode, route MTU, PodCIDRs) and checked.
func TestRegistryDeviceFields(t *testing.T) {
	dir := t.TempDir()
	p := &Pod{ID: "wgv0123456789ab", Network: "wgcni", ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x",
		IP: netip.MustParseAddr("10.244.1.5"), IP6: netip.MustParseAddr("fd00:244:0:1::5"), WGIfName: "wg-eth0",
		PublicKey: "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=", Port: 40000, Mode: wgdev.Kernel, MTU: 1420,
		PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), PodCIDR6: netip.MustParsePrefix("fd00:244:0:1::/64")}
	if err := Register(dir, p); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir, p.ID)
	if err != nil || got == nil || *got != *p || got.DeviceMode() != wgdev.Kernel {
		t.Fatalf("Load = %+v, %v; want %+v", got, err, p)
	}
	for _, tc := range []struct {
		field string
		mod   func(q *Pod)
	}{
		{"mode", func(q *Pod) { q.Mode = "ebpf" }},
		{"mtu", func(q *Pod) { q.MTU = -1 }},
		{"podCIDR", func(q *Pod) { q.PodCIDR = q.PodCIDR6 }},
		{"podCIDR6", func(q *Pod) { q.PodCIDR6 = netip.MustParsePrefix("10.0.0.0/8") }},
		{"wgIfName", func(q *Pod) { q.WGIfName = "" }},
		{"wgIfName", func(q *Pod) { q.WGIfName = "../../etc" }},
	} {
		q := *p
		tc.mod(&q)
		if err := Register(dir, &q); err == nil || !strings.Contains(err.Error(), "field "+tc.field) {
			t.Errorf("%s: Register = %v, want an error naming field %s", tc.field, err, tc.field)
		}
	}
	if (&Pod{}).DeviceMode() != wgdev.Userspace {
		t.Error("a registration without mode must mean userspace")
	}
}

// FuzzLoad: no registration file makes Load panic, and whatever it accepts
// is valid and survives a write and re-read unchanged.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"id":"wgv1","network":"n","containerID":"c","ifName":"eth0","netns":"/x","ip":"10.0.0.1","wgIfName":"wg-eth0","publicKey":"k","port":1}`))
	f.Add([]byte(`{"id":"wgv1","ip6":"fd00::1","wgIfName":"wg-eth0","publicKey":"k","port":65535,"mode":"kernel","mtu":1420,"podCIDR6":"fd00::/64"}`))
	f.Add([]byte(`{"id":"../x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.MkdirAll(Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(Dir(dir), "wgv1.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := Load(dir, "wgv1")
		if err != nil || p == nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Load accepted an invalid registration: %v", err)
		}
		p.ID = "wgv2"
		if err := Register(dir, p); err != nil {
			t.Fatalf("re-register: %v", err)
		}
		q, err := Load(dir, "wgv2")
		if err != nil || q == nil || *q != *p {
			t.Fatalf("round trip: %+v %v, want %+v", q, err, p)
		}
	})
}
