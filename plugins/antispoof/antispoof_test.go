package antispoof

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
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

// dummyPort creates a link (a bridge: always built in) named name to stand in for a pod's host veth.
func dummyPort(t *testing.T, name string) Port {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("add %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return Port{Name: name, Index: l.Attrs().Index}
}

func TestAllowRevokeSweep(t *testing.T) {
	inNetns(t, func() {
		ports := map[int]Port{}
		for i := 0; i < 20; i++ {
			p := dummyPort(t, fmt.Sprintf("wgv%012x", i))
			ports[i] = p
			mac := net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}
			if err := Allow(p, mac, []net.IP{net.IPv4(10, 244, 1, byte(2+i))}); err != nil {
				t.Fatalf("Allow %s: %v", p, err)
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
		if err := Revoke(ports[3].Index); err != nil {
			t.Fatal(err)
		}
		if err := Revoke(ports[3].Index); err != nil { // idempotent
			t.Fatal(err)
		}
		// Ports 16..19 go (DEL leaves their elements): Sweep takes
		// exactly those, and a second Sweep has nothing to do.
		for i := 16; i < 20; i++ {
			if err := netlink.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Index: ports[i].Index}}); err != nil {
				t.Fatal(err)
			}
		}
		got, _ = Allowed()
		if !containsLine(got, fmt.Sprintf("#%d 02:00:00:00:00:13 10.244.1.21", ports[19].Index)) {
			t.Fatalf("a gone port's element is listed by index: %v", got)
		}
		if n, err := Sweep(); err != nil || n != 4 {
			t.Fatalf("Sweep removed %d (%v), want 4", n, err)
		}
		if n, err := Sweep(); err != nil || n != 0 {
			t.Fatalf("second Sweep removed %d (%v), want 0", n, err)
		}
		got, _ = Allowed()
		if len(got) != 15 || containsLine(got, "wgv000000000003 02:00:00:00:00:03 10.244.1.5") {
			t.Fatalf("after Revoke and Sweep: %v", got)
		}
		// A dual-stack pod: one element in each set; Revoke takes both.
		x := dummyPort(t, "wgv00000000000x")
		if err := Allow(x, net.HardwareAddr{2, 0, 0, 0, 0, 1}, []net.IP{net.ParseIP("10.244.1.200"), net.ParseIP("fd00::1")}); err != nil {
			t.Fatalf("dual-stack pod: %v", err)
		}
		got, _ = Allowed()
		if !containsLine(got, "wgv00000000000x 02:00:00:00:00:01 fd00::1") || !containsLine(got, "wgv00000000000x 02:00:00:00:00:01 10.244.1.200") {
			t.Fatalf("dual-stack elements: %v", got)
		}
		if err := Revoke(x.Index); err != nil {
			t.Fatal(err)
		}
		if got, _ = Allowed(); len(got) != 15 {
			t.Fatalf("after revoking the dual-stack pod: %v", got)
		}
		if err := Allow(x, net.HardwareAddr{2, 0, 0, 0, 0, 1}, nil); err == nil || !strings.Contains(err.Error(), "no IP address") {
			t.Fatalf("no address: %v", err)
		}
		if err := Allow(Port{Name: "wgvnoindex"}, net.HardwareAddr{2, 0, 0, 0, 0, 1}, []net.IP{net.ParseIP("10.244.1.9")}); err == nil || !strings.Contains(err.Error(), "wgvnoindex") {
			t.Fatalf("a port without index must be refused by name: %v", err)
		}
		if err := Remove(); err != nil {
			t.Fatal(err)
		}
		if err := Revoke(ports[1].Index); err != nil {
			t.Fatalf("Revoke without table: %v", err)
		}
		if n, err := Sweep(); err != nil || n != 0 {
			t.Fatalf("Sweep without table: %d, %v", n, err)
		}
	})
}

// TestUpgradeFromNameKeyedSets: a node running the plugin of ruleTag v2
// (sets keyed by port name) is upgraded by the first ADD of the new one;
// every live pod keeps its element, a gone port's element is dropped, and
// the old sets are gone.
func TestUpgradeFromNameKeyedSets(t *testing.T) {
	inNetns(t, func() {
		live := dummyPort(t, "wgv0000000000aa")
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		c.AddTable(table)
		old := &nftables.Set{Table: table, Name: "pods", Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)}
		v2key := func(port string, last, ip byte) []byte {
			k := make([]byte, 28)
			copy(k, port)
			copy(k[16:], []byte{2, 0, 0, 0, 0, last})
			copy(k[24:], []byte{10, 244, 1, ip})
			return k
		}
		if err := c.AddSet(old, []nftables.SetElement{{Key: v2key(live.Name, 0xaa, 10)}, {Key: v2key("wgv0000000000bb", 0xbb, 11)}}); err != nil {
			t.Fatal(err)
		}
		policy := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: Chain, Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityFilter, Policy: &policy})
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
			// v2's key: iifname (register 1), MAC (2), IPv4 source (14).
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Payload{DestRegister: 2, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
			&expr.Payload{DestRegister: 14, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: old.Name, SetID: old.ID, Invert: true},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
		if err := c.Flush(); err != nil {
			t.Fatalf("build a v2 table: %v", err)
		}

		next := dummyPort(t, "wgv0000000000cc")
		if err := Allow(next, net.HardwareAddr{2, 0, 0, 0, 0, 0xcc}, []net.IP{net.ParseIP("10.244.1.12")}); err != nil {
			t.Fatalf("first ADD after the upgrade: %v", err)
		}
		got, err := Allowed()
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"wgv0000000000aa 02:00:00:00:00:aa 10.244.1.10", "wgv0000000000cc 02:00:00:00:00:cc 10.244.1.12"}
		if len(got) != len(want) || !containsLine(got, want[0]) || !containsLine(got, want[1]) {
			t.Fatalf("after the upgrade: got %v, want %v", got, want)
		}
		if _, err := c.GetSetByName(table, "pods"); err == nil {
			t.Fatal("the name-keyed set is still there")
		}
		rules, err := c.GetRules(table, &nftables.Chain{Name: Chain, Table: table})
		if err != nil || len(rules) != 4 {
			t.Fatalf("want 4 rules, got %d (%v)", len(rules), err)
		}
		for _, r := range rules {
			if string(r.UserData) != ruleTag {
				t.Fatalf("rule not rewritten: %q", r.UserData)
			}
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
