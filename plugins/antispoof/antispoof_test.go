package antispoof

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// inNetns runs f on a locked thread inside a fresh network namespace.
func inNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespace)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		h, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer h.Close()
		f()
		_ = netns.Set(orig)
	}()
	<-done
}

func TestAllowRevokeGC(t *testing.T) {
	inNetns(t, func() {
		for i := 0; i < 20; i++ {
			port := fmt.Sprintf("wgv%012x", i)
			mac := net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}
			if err := Allow(port, mac, []net.IP{net.IPv4(10, 244, 1, byte(2+i))}); err != nil {
				t.Fatalf("Allow %s: %v", port, err)
			}
		}
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		rules, err := c.GetRules(table, &nftables.Chain{Name: Chain, Table: table})
		if err != nil || len(rules) != 4 {
			t.Fatalf("want 4 rules, got %d (%v)", len(rules), err)
		}
		got, err := Allowed()
		if err != nil || len(got) != 20 {
			t.Fatalf("want 20 elements, got %d: %v", len(got), err)
		}
		if !containsLine(got, "wgv000000000003 02:00:00:00:00:03 10.244.1.5") {
			t.Fatalf("element encoding: %v", got)
		}
		if err := Revoke("wgv000000000003"); err != nil {
			t.Fatal(err)
		}
		if err := Revoke("wgv000000000003"); err != nil { // idempotent
			t.Fatal(err)
		}
		if err := GC(func(p string) bool { return p < "wgv000000000010" }); err != nil {
			t.Fatal(err)
		}
		got, _ = Allowed()
		if len(got) != 15 || containsLine(got, "wgv000000000003 02:00:00:00:00:03 10.244.1.5") {
			t.Fatalf("after Revoke and GC: %v", got)
		}
		// A dual-stack pod: one element in each set; Revoke takes both.
		if err := Allow("wgv00000000000x", net.HardwareAddr{2, 0, 0, 0, 0, 1}, []net.IP{net.ParseIP("10.244.1.200"), net.ParseIP("fd00::1")}); err != nil {
			t.Fatalf("dual-stack pod: %v", err)
		}
		got, _ = Allowed()
		if !containsLine(got, "wgv00000000000x 02:00:00:00:00:01 fd00::1") || !containsLine(got, "wgv00000000000x 02:00:00:00:00:01 10.244.1.200") {
			t.Fatalf("dual-stack elements: %v", got)
		}
		if err := Revoke("wgv00000000000x"); err != nil {
			t.Fatal(err)
		}
		if got, _ = Allowed(); len(got) != 15 {
			t.Fatalf("after revoking the dual-stack pod: %v", got)
		}
		// DEL's path: one connection, several requests, closed last; a
		// port without elements is no error.
		c2, err := Open()
		if err != nil {
			t.Fatal(err)
		}
		for _, port := range []string{"wgv000000000001", "wgv000000000002", "wgv0000000000zz"} {
			if err := c2.Revoke(port); err != nil {
				t.Fatalf("Conn.Revoke %s: %v", port, err)
			}
		}
		if err := c2.Close(); err != nil {
			t.Fatal(err)
		}
		if got, _ = Allowed(); len(got) != 13 || containsLine(got, "wgv000000000002 02:00:00:00:00:02 10.244.1.4") {
			t.Fatalf("after Conn.Revoke of two ports: %v", got)
		}
		if err := Allow("wgv00000000000y", net.HardwareAddr{2, 0, 0, 0, 0, 1}, nil); err == nil || !strings.Contains(err.Error(), "no IP address") {
			t.Fatalf("no address: %v", err)
		}
		if err := Remove(); err != nil {
			t.Fatal(err)
		}
		if err := Revoke("wgv000000000001"); err != nil {
			t.Fatalf("Revoke without table: %v", err)
		}
	})
}

func containsLine(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}
