package plugin_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/tests/harness"
)

// assertNothingCreated fails if the node has any wgcni veth or allocation.
func (n *testNode) assertClean(t *testing.T, what string) {
	t.Helper()
	if got := n.hostVeths(t); len(got) != 0 {
		t.Fatalf("%s: host veths left behind: %v", what, got)
	}
	if got := n.allocations(t); len(got) != 0 {
		t.Fatalf("%s: allocations left behind: %v", what, got)
	}
}

func (n *testNode) hasBridge(t *testing.T) bool {
	t.Helper()
	found := false
	inNS(t, n.NS, func() error {
		_, err := netlink.LinkByName(n.Node.Bridge)
		found = err == nil
		return nil
	})
	return found
}

func podHasLink(t *testing.T, podNS, name string) bool {
	t.Helper()
	found := false
	inNS(t, podNS, func() error {
		_, err := netlink.LinkByName(name)
		found = err == nil
		return nil
	})
	return found
}

// TestNoNodeFile: before wgcnid holds a lease, ADD says "try again later"
// (11) and STATUS "plugin not available" (50); nothing is created.
func TestNoNodeFile(t *testing.T) {
	requireRoot(t)
	node := newNode(t, "10.244.3.0/24", "10.244.3.1")
	if err := os.Remove(filepath.Join(node.RunDir, "node.json")); err != nil {
		t.Fatal(err)
	}
	podNS := newNetns(t, "pod")
	a := cniArgs{ContainerID: "nolease", Netns: podNS, IfName: "eth0"}
	conf := node.conf("1.1.0", nil)
	node.wantCNIError(t, "ADD", a, conf, types.ErrTryAgainLater, "no lease")
	node.wantCNIError(t, "STATUS", a, conf, types.ErrPluginNotAvailable, "no PodCIDR lease")
	// wgcni-ipam on its own says the same.
	if _, cerr := node.cniCall(t, "wgcni-ipam", "ADD", a, conf); cerr == nil || cerr.Code != types.ErrTryAgainLater {
		t.Fatalf("wgcni-ipam ADD without node file: %v, want code 11", cerr)
	}
	if _, cerr := node.cniCall(t, "wgcni-ipam", "STATUS", a, conf); cerr == nil || cerr.Code != types.ErrPluginNotAvailable {
		t.Fatalf("wgcni-ipam STATUS without node file: %v, want code 50", cerr)
	}
	if node.hasBridge(t) || podHasLink(t, podNS, "eth0") {
		t.Fatal("ADD without node file created interfaces")
	}
	node.assertClean(t, "ADD without node file")
}

// TestBadConfig: malformed configs fail with the right code and a message
// naming the field, before anything is created.
func TestBadConfig(t *testing.T) {
	requireRoot(t)
	node := newNode(t, "10.244.3.0/24", "10.244.3.1")
	podNS := newNetns(t, "pod")
	a := cniArgs{ContainerID: "bad", Netns: podNS, IfName: "eth0"}
	good := func(mut func(map[string]any)) []byte {
		var c map[string]any
		_ = json.Unmarshal(node.conf("1.1.0", nil), &c)
		mut(c)
		b, _ := json.Marshal(c)
		return b
	}
	cases := []struct {
		name  string
		conf  []byte
		code  uint
		field string
	}{
		{"mtu string", good(func(c map[string]any) { c["mtu"] = "1400" }), types.ErrInvalidNetworkConfig, "mtu"},
		{"mtu range", good(func(c map[string]any) { c["mtu"] = 100 }), types.ErrInvalidNetworkConfig, "mtu"},
		{"ipMasq string", good(func(c map[string]any) { c["ipMasq"] = "yes" }), types.ErrInvalidNetworkConfig, "ipMasq"},
		{"hairpin number", good(func(c map[string]any) { c["hairpinMode"] = 1 }), types.ErrInvalidNetworkConfig, "hairpinMode"},
		{"runDir relative", good(func(c map[string]any) { c["runDir"] = "run/wgcni" }), types.ErrInvalidNetworkConfig, "runDir"},
		{"ipam missing", good(func(c map[string]any) { delete(c, "ipam") }), types.ErrInvalidNetworkConfig, "ipam"},
		{"ipam type number", good(func(c map[string]any) { c["ipam"] = map[string]any{"type": 5} }), types.ErrInvalidNetworkConfig, "ipam.type"},
		{"ipam type path", good(func(c map[string]any) { c["ipam"] = map[string]any{"type": "../x"} }), types.ErrInvalidNetworkConfig, "ipam.type"},
		{"ipam dataDir", good(func(c map[string]any) { c["ipam"] = map[string]any{"type": "wgcni-ipam", "dataDir": 3} }), types.ErrInvalidNetworkConfig, "ipam.dataDir"},
		{"name missing", good(func(c map[string]any) { delete(c, "name") }), types.ErrInvalidNetworkConfig, ""},
		{"version unknown", good(func(c map[string]any) { c["cniVersion"] = "9.9.9" }), types.ErrIncompatibleCNIVersion, ""},
		{"not json", []byte(`{"cniVersion":`), types.ErrDecodingFailure, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cerr := node.wantCNIError(t, "ADD", a, tc.conf, tc.code)
			if tc.field != "" && !containsField(cerr.Msg, tc.field) {
				t.Fatalf("message %q does not name field %s", cerr.Msg, tc.field)
			}
		})
	}
	if node.hasBridge(t) || podHasLink(t, podNS, "eth0") {
		t.Fatal("a bad config created interfaces")
	}
	node.assertClean(t, "bad configs")
}

func containsField(msg, field string) bool {
	return strings.Contains(msg, "field "+field+":") || strings.Contains(msg, "field "+field+" ")
}

// TestAddFailureRollsBack: ADDs that fail at different points leave no veth
// and no allocation behind.
func TestAddFailureRollsBack(t *testing.T) {
	requireRoot(t)

	t.Run("ipam exhausted", func(t *testing.T) {
		// A /29 has 6 host addresses; the gateway and the relay address
		// (record.RelayAddr, .6) take two: 4 pods fit.
		node := newNode(t, "10.244.7.0/29", "10.244.7.1")
		conf := node.conf("1.1.0", nil)
		var ok []cniArgs
		for i := 0; i < 4; i++ {
			a := cniArgs{ContainerID: fmt.Sprintf("fill-%d", i), Netns: newNetns(t, "pod"), IfName: "eth0"}
			node.mustCNI(t, "ADD", a, conf)
			ok = append(ok, a)
		}
		got := node.allocations(t)
		for _, ip := range []string{"10.244.7.2", "10.244.7.3", "10.244.7.4", "10.244.7.5"} {
			if _, found := got[ip]; !found {
				t.Fatalf("allocations %v lack %s", got, ip)
			}
		}
		podNS := newNetns(t, "pod")
		a := cniArgs{ContainerID: "one-too-many", Netns: podNS, IfName: "eth0"}
		node.wantCNIError(t, "ADD", a, conf, types.ErrInternal, "no IP addresses available")
		if n := len(node.hostVeths(t)); n != 4 {
			t.Fatalf("%d host veths after failed ADD, want the 4 good ones", n)
		}
		if podHasLink(t, podNS, "eth0") {
			t.Fatal("failed ADD left eth0 in the pod")
		}
		if n := len(node.allocations(t)); n != 4 {
			t.Fatalf("%d allocations after failed ADD, want 4", n)
		}
		for _, a := range ok {
			node.mustCNI(t, "DEL", a, conf)
		}
		node.assertClean(t, "after DEL of all")
	})

	t.Run("pod netns missing", func(t *testing.T) {
		node := newNode(t, "10.244.3.0/24", "10.244.3.1")
		a := cniArgs{ContainerID: "nons", Netns: "/run/netns/wgp-does-not-exist", IfName: "eth0"}
		node.wantCNIError(t, "ADD", a, node.conf("1.1.0", nil), types.ErrInvalidNetNS, "wgp-does-not-exist")
		node.assertClean(t, "ADD into a missing netns")
	})

	t.Run("ifname taken in pod", func(t *testing.T) {
		node := newNode(t, "10.244.3.0/24", "10.244.3.1")
		podNS := newNetns(t, "pod")
		inNS(t, podNS, func() error {
			return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
		})
		a := cniArgs{ContainerID: "taken", Netns: podNS, IfName: "eth0"}
		node.wantCNIError(t, "ADD", a, node.conf("1.1.0", nil), types.ErrInternal, "already exists")
		node.assertClean(t, "ADD with ifname taken")
	})

	t.Run("after IPAM", func(t *testing.T) {
		// The reference host-local hands out an address outside the
		// node's PodCIDR: wgcni refuses it after the allocation and the
		// veth exist, and must undo both.
		if _, err := os.Stat("/usr/lib/cni/host-local"); err != nil {
			harness.Missing(t, "Debian's /usr/lib/cni/host-local (containernetworking-plugins; make deps)")
		}
		node := newNode(t, "10.244.3.0/24", "10.244.3.1")
		dataDir := t.TempDir()
		hl := filepath.Join(binDir, "host-local")
		if err := os.Symlink("/usr/lib/cni/host-local", hl); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		conf := node.conf("1.0.0", map[string]any{"ipam": map[string]any{
			"type": "host-local", "dataDir": dataDir,
			"ranges": [][]map[string]string{{{"subnet": "10.99.0.0/24"}}},
		}})
		podNS := newNetns(t, "pod")
		a := cniArgs{ContainerID: "outside", Netns: podNS, IfName: "eth0"}
		node.wantCNIError(t, "ADD", a, conf, types.ErrInternal, "outside this node's podCIDR")
		if podHasLink(t, podNS, "eth0") {
			t.Fatal("failed ADD left eth0 in the pod")
		}
		node.assertClean(t, "ADD failing after IPAM")
		entries, _ := os.ReadDir(filepath.Join(dataDir, "wgcni"))
		for _, e := range entries {
			if e.Name() != "lock" && e.Name() != "last_reserved_ip.0" {
				t.Fatalf("host-local allocation %s left behind", e.Name())
			}
		}
	})
}

// TestHairpinAndMasq: hairpinMode reaches the bridge port; ipMasq leaves
// exactly one nftables rule however many pods are added.
func TestHairpinAndMasq(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		harness.Missing(t, "nft to inspect the ruleset (nftables; make deps)")
	}
	node := newNode(t, "10.244.3.0/24", "10.244.3.1")
	conf := node.conf("1.1.0", map[string]any{"hairpinMode": true})
	for i := 0; i < 3; i++ {
		node.mustCNI(t, "ADD", cniArgs{ContainerID: fmt.Sprintf("hp-%d", i), Netns: newNetns(t, "pod"), IfName: "eth0"}, conf)
	}
	for name := range node.hostVeths(t) {
		inNS(t, node.NS, func() error {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			pi, err := netlink.LinkGetProtinfo(l)
			if err != nil {
				return err
			}
			if !pi.Hairpin {
				return fmt.Errorf("hairpin off on %s", name)
			}
			return nil
		})
	}
	out, err := exec.Command("nsenter", "--net="+node.NS, "nft", "list", "table", "ip", "wgcni").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table ip wgcni: %v: %s", err, out)
	}
	rule := "ip saddr 10.244.3.0/24 ip daddr != 10.244.0.0/16 masquerade"
	if n := countLines(string(out), rule); n != 1 {
		t.Fatalf("want exactly one %q rule, got %d:\n%s", rule, n, out)
	}
}

func countLines(s, sub string) int { return strings.Count(s, sub) }
