package registry

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/wgcni/wgcni/daemon/wgdev"
)

func TestRegistry(t *testing.T) {
	dir := t.TempDir()
	p := &Pod{ID: "wgv0123456789ab", Network: "wgcni", ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, WGIfName: "wg-eth0", PublicKey: "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=", Port: 40000}
	if err := Register(dir, p); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir, p.ID)
	if err != nil || got == nil || !reflect.DeepEqual(got, p) {
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

// TestRegistryFamilies: a pod has one address of each family it has, in
// any combination; what is not an address of its own family, or a second
// one of a family, is refused naming field ips.
func TestRegistryFamilies(t *testing.T) {
	dir := t.TempDir()
	base := Pod{ID: "wgv0123456789ab", Network: "wgcni", ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x",
		WGIfName: "wg-eth0", PublicKey: "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=", Port: 40000}
	v4, v6 := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00:244:0:1::5")
	for _, tc := range []struct {
		name string
		ips  []netip.Addr
		want []netip.Addr // as loaded: IPv4 first
		bad  string
	}{
		{name: "dual", ips: []netip.Addr{v4, v6}, want: []netip.Addr{v4, v6}},
		{name: "dual, IPv6 first", ips: []netip.Addr{v6, v4}, want: []netip.Addr{v4, v6}},
		{name: "IPv6 only", ips: []netip.Addr{v6}, want: []netip.Addr{v6}},
		{name: "IPv4 only", ips: []netip.Addr{v4}, want: []netip.Addr{v4}},
		{name: "none", bad: "field ips is empty"},
		{name: "two IPv4", ips: []netip.Addr{v4, netip.MustParseAddr("10.244.1.6")}, bad: "field ips: 10.244.1.5 and 10.244.1.6 are of the same family"},
		{name: "mapped IPv4", ips: []netip.Addr{netip.MustParseAddr("::ffff:10.244.1.5")}, bad: "field ips: ::ffff:10.244.1.5 is not"},
		{name: "invalid", ips: []netip.Addr{{}}, bad: "field ips: invalid IP is not"},
	} {
		p := base
		p.IPs = tc.ips
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
		if err != nil || got == nil || !reflect.DeepEqual(got.IPs, tc.want) {
			t.Fatalf("%s: Load = %+v, %v; want ips %v", tc.name, got, err, tc.want)
		}
	}
}

// TestRegistryLegacyFormat: registrations written before the address
// lists (one field per family) still load, into the lists, on a node
// upgraded in place; a bad legacy field is refused naming it.
func TestRegistryLegacyFormat(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	const key = `"wgIfName":"wg-eth0","publicKey":"aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=","port":4`
	for _, tc := range []struct {
		name, file string
		ips        []string
		cidrs      []string
		bad        string
	}{
		{name: "before IPv6", file: `{"id":"wgvold","ip":"10.244.1.9",` + key + `}`, ips: []string{"10.244.1.9"}},
		{name: "dual with route parameters", file: `{"id":"wgvold","ip":"10.244.1.9","ip6":"fd00::9",` + key + `,"mtu":1420,"podCIDR":"10.244.1.0/24","podCIDR6":"fd00::/64"}`,
			ips: []string{"10.244.1.9", "fd00::9"}, cidrs: []string{"10.244.1.0/24", "fd00::/64"}},
		{name: "IPv6 only", file: `{"id":"wgvold","ip6":"fd00::9",` + key + `,"podCIDR6":"fd00::/64"}`, ips: []string{"fd00::9"}, cidrs: []string{"fd00::/64"}},
		{name: "bad ip6", file: `{"id":"wgvold","ip6":"fd00::zz",` + key + `}`, bad: "field ip6"},
		{name: "bad podCIDR", file: `{"id":"wgvold","ip":"10.244.1.9",` + key + `,"podCIDR":"10.244.1.0/99"}`, bad: "field podCIDR"},
		{name: "IPv4 in ip6", file: `{"id":"wgvold","ip":"10.244.1.9","ip6":"10.244.1.10",` + key + `}`, bad: "same family"},
	} {
		if err := os.WriteFile(filepath.Join(Dir(dir), "wgvold.json"), []byte(tc.file), 0o644); err != nil {
			t.Fatal(err)
		}
		p, err := Load(dir, "wgvold")
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("%s: Load = %+v, %v; want an error naming %q", tc.name, p, err, tc.bad)
			}
			continue
		}
		if err != nil || p == nil || fmt.Sprint(p.IPs) != fmt.Sprint(tc.ips) || fmt.Sprint(p.PodCIDRs) != fmt.Sprint(tc.cidrs) {
			t.Errorf("%s: Load = %+v, %v; want ips %v podCIDRs %v", tc.name, p, err, tc.ips, tc.cidrs)
			continue
		}
		// Written back in the current format, it reads the same.
		if err := Register(dir, p); err != nil {
			t.Fatalf("%s: re-register: %v", tc.name, err)
		}
		if q, err := Load(dir, "wgvold"); err != nil || !reflect.DeepEqual(q, p) {
			t.Errorf("%s: after re-register %+v %v, want %+v", tc.name, q, err, p)
		}
	}
}

// TestRegistryDeviceFields: what re-creating a pod's device needs is kept
// (mode, route MTU, PodCIDRs) and checked.
func TestRegistryDeviceFields(t *testing.T) {
	dir := t.TempDir()
	p := &Pod{ID: "wgv0123456789ab", Network: "wgcni", ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("fd00:244:0:1::5")}, WGIfName: "wg-eth0",
		PublicKey: "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=", Port: 40000, Mode: wgdev.Kernel, MTU: 1420,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:0:1::/64")}}
	if err := Register(dir, p); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir, p.ID)
	if err != nil || got == nil || !reflect.DeepEqual(got, p) || got.DeviceMode() != wgdev.Kernel {
		t.Fatalf("Load = %+v, %v; want %+v", got, err, p)
	}
	for _, tc := range []struct {
		field string
		mod   func(q *Pod)
	}{
		{"mode", func(q *Pod) { q.Mode = "ebpf" }},
		{"mtu", func(q *Pod) { q.MTU = -1 }},
		{"podCIDRs", func(q *Pod) { q.PodCIDRs = []netip.Prefix{q.PodCIDRs[0], netip.MustParsePrefix("10.0.0.0/8")} }},
		{"podCIDRs", func(q *Pod) { q.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")} }},
		{"wgIfName", func(q *Pod) { q.WGIfName = "" }},
		{"ips", func(q *Pod) { q.IPs = nil }},
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
	f.Add([]byte(`{"id":"wgv1","ips":["10.0.0.1","fd00::1"],"wgIfName":"wg-eth0","publicKey":"k","port":2,"podCIDRs":["fd00::/64","10.0.0.0/24"]}`))
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
		if err != nil || q == nil || !reflect.DeepEqual(q, p) {
			t.Fatalf("round trip: %+v %v, want %+v", q, err, p)
		}
	})
}
