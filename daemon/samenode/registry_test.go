package samenode

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
