package samenode

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const dualV6 = "fd00:246::/56"

// plain6 counts the IPv6 plaintext pod packets of a capture.
func plain6(rep *capture.Report) int {
	n := 0
	for _, p := range rep.Samples {
		if p.Result.Kind == capture.KindPlainPod && len(p.Data) > 14 && p.Data[12] == 0x86 && p.Data[13] == 0xdd {
			n++
		}
	}
	return n
}

// TestSameNodeEncryptionDualStack: dual-stack pods on a node with same-node
// encryption talk IPv4 and IPv6 only through WireGuard; the hub holds
// exactly each pod's /32 and /128; routes, registry, CHECK, the daemon's
// repair and DEL cover both families.
func TestSameNodeEncryptionDualStack(t *testing.T) {
	c, on, off := startOnOff(t, harness.Config{Tag: "wgq", ClusterCIDR: clusterCIDR + "," + dualV6, NodePrefixLenV6: 64, ListenPort: wgPort, ResyncInterval: 3 * time.Second})
	var err error
	nfOn, _ := on.NodeFile()
	if !nfOn.SameNodeEncryption || len(nfOn.Gateways) != 2 {
		t.Fatalf("node file of %s: sameNodeEncryption=%v gateways %v", on.Name, nfOn.SameNodeEncryption, nfOn.Gateways)
	}
	var pods [4]*harness.Pod
	for i, n := range []*harness.Node{on, on, off, off} {
		if pods[i], err = n.AddPod(); err != nil {
			t.Fatalf("ADD on %s (dual-stack, same-node encryption %v): %v", n.Name, n == on, err)
		}
		if !pods[i].Addr4().IsValid() || !pods[i].Addr6().IsValid() {
			t.Fatalf("pod %s got %v, want both families", pods[i].Name, pods[i].IPs)
		}
	}
	a, b, x, y := pods[0], pods[1], pods[2], pods[3]
	hubDev := hub.DeviceName(on.Device)
	cls := &capture.Classifier{PodNets: []netip.Prefix{netip.MustParsePrefix(clusterCIDR), netip.MustParsePrefix(dualV6)}, WGPorts: []uint16{wgPort, hubPort}}
	gw6On := netip.MustParseAddr(nfOn.Gateways[1])

	allowed := func(p *harness.Pod) []string {
		t.Helper()
		out, err := on.Exec("wg", "show", hubDev, "allowed-ips")
		if err != nil {
			t.Fatalf("wg show %s: %v %s", hubDev, err, out)
		}
		want := []string{p.Addr4().String() + "/32", p.Addr6().String() + "/128"}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			got := append([]string(nil), f[1:]...)
			sort.Strings(got)
			for _, g := range got {
				if g == want[0] || g == want[1] {
					return got
				}
			}
		}
		return nil
	}
	hubRoutes6 := func() string {
		out, err := on.Exec("ip", "-6", "route", "show", "dev", hubDev, "proto", "88")
		if err != nil {
			t.Fatalf("ip -6 route: %v %s", err, out)
		}
		return out
	}

	t.Run("hub, node and pod state", func(t *testing.T) {
		for _, p := range []*harness.Pod{a, b} {
			want := []string{p.Addr4().String() + "/32", p.Addr6().String() + "/128"}
			sort.Strings(want)
			if got := allowed(p); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("hub AllowedIPs of %s = %v, want exactly %v", p.Name, got, want)
			}
			if r := hubRoutes6(); !strings.Contains(r, p.Addr6().String()+" ") || !strings.Contains(r, "src "+gw6On.String()) {
				t.Errorf("node: no route %s/128 dev %s src %s proto 88:\n%s", p.Addr6(), hubDev, gw6On, r)
			}
			r6, _ := p.Exec("ip", "-6", "route", "show")
			addr6, _ := p.Exec("ip", "-6", "addr", "show", "dev", "eth0")
			t.Logf("pod %s IPv6 routes:\n%s", p.Name, r6)
			if !strings.Contains(r6, "default dev wg-eth0") || !strings.Contains(r6, nfOn.PodCIDRs[1]+" dev wg-eth0") {
				t.Errorf("pod %s: want default and %s dev wg-eth0:\n%s", p.Name, nfOn.PodCIDRs[1], r6)
			}
			for _, line := range strings.Split(r6, "\n") {
				if strings.Contains(line, "dev eth0") && !strings.HasPrefix(line, "fe80::") {
					t.Errorf("pod %s: IPv6 route on the veth: %s", p.Name, line)
				}
			}
			if !strings.Contains(addr6, "noprefixroute") || !strings.Contains(addr6, "nodad") {
				t.Errorf("pod %s eth0 IPv6 address without noprefixroute/nodad:\n%s", p.Name, addr6)
			}
		}
		regs, _ := registry.List(on.RunDir)
		if len(regs) != 2 {
			t.Fatalf("registry: %+v", regs)
		}
		for _, r := range regs {
			if !slices.Equal(r.IPs, []netip.Addr{a.Addr4(), a.Addr6()}) && !slices.Equal(r.IPs, []netip.Addr{b.Addr4(), b.Addr6()}) {
				t.Errorf("registration %s records %v, want a pod's two addresses", r.ID, r.IPs)
			}
		}
	})

	t.Run("on: only WireGuard on bridge and veths, both families", func(t *testing.T) {
		wire, lo := sniff(t, cls, on, a, b, func() {
			harness.Connect(t, a.NS, b.Addr6(), "same-node ping6 a->b (option on)", 10)
			harness.Connect(t, b.NS, a.Addr6(), "same-node ping6 b->a (option on)", 10)
			transfer(t, a.NS, b.NS, b.Addr6(), "same-node TCP over IPv6 a->b (option on)")
			harness.Connect(t, a.NS, b.Addr4(), "same-node ping a->b (option on)", 10)
			transfer(t, b.NS, a.NS, a.Addr4(), "same-node TCP over IPv4 b->a (option on)")
			harness.Connect(t, on.NS, a.Addr6(), "node -> its pod over IPv6 (option on)", 10)
		})
		gw := netip.MustParseAddr(nfOn.Gateway)
		for _, rep := range wire {
			bad := plaintext(rep, gw)
			t.Logf("plaintext pod packets: %d (IPv6: %d)", len(bad), plain6(rep))
			if len(bad) != 0 {
				t.Errorf("%d plaintext pod packets with same-node encryption on:\n%s", len(bad), strings.Join(bad, "\n"))
			}
		}
		if lo.WGTypes[capture.WGTransportData] == 0 || lo.PlainPod() != 0 {
			t.Errorf("loopback: want WireGuard transport data and no plaintext, got %s", lo)
		}
	})

	t.Run("off: the same capture sees IPv6 plaintext", func(t *testing.T) {
		wire, _ := sniff(t, cls, off, x, y, func() {
			harness.Connect(t, x.NS, y.Addr6(), "same-node ping6 x->y (option off)", 10)
			transfer(t, x.NS, y.NS, y.Addr6(), "same-node TCP over IPv6 x->y (option off)")
		})
		for i, rep := range wire {
			if plain6(rep) == 0 {
				t.Errorf("capture %d saw no IPv6 plaintext pod packets with the option off: the capture is blind", i)
			}
		}
	})

	t.Run("cross-node IPv6 from and to same-node-encrypted pods", func(t *testing.T) {
		harness.Connect(t, a.NS, x.Addr6(), "ping6 on-node pod -> off-node pod", 10)
		harness.Connect(t, y.NS, b.Addr6(), "ping6 off-node pod -> on-node pod", 10)
		transfer(t, a.NS, x.NS, x.Addr6(), "TCP6 on-node pod -> off-node pod")
		transfer(t, x.NS, a.NS, a.Addr6(), "TCP6 off-node pod -> on-node pod")
		harness.Connect(t, off.NS, a.Addr6(), "ping6 other node -> pod (option on)", 10)
		harness.Connect(t, a.NS, y.Addr4(), "ping on-node pod -> off-node pod (IPv4 still)", 10)
	})

	t.Run("CHECK, daemon repair, DEL: both families", func(t *testing.T) {
		if out, err := a.CNI("check"); err != nil {
			t.Fatalf("CHECK: %v %s", err, out)
		}
		// The node loses the pod's /128 route: CHECK names it, the daemon's
		// re-check restores it.
		if out, err := on.Exec("ip", "-6", "route", "del", a.Addr6().String()+"/128", "dev", hubDev); err != nil {
			t.Fatalf("delete route: %v %s", err, out)
		}
		if out, err := a.CNI("check"); err == nil || !strings.Contains(out+err.Error(), a.Addr6().String()) {
			t.Errorf("CHECK without the /128 route passed or does not name %s: %v %s", a.Addr6(), err, out)
		}
		if err := harness.WaitFor(20*time.Second, "daemon restores the /128 route", func() (bool, error) {
			return strings.Contains(hubRoutes6(), a.Addr6().String()+" "), nil
		}); err != nil {
			t.Fatal(err)
		}
		// The hub loses the pod's peer: the daemon re-adds it with both.
		regs, _ := registry.List(on.RunDir)
		for _, r := range regs {
			if slices.Contains(r.IPs, a.Addr6()) {
				if out, err := on.Exec("wg", "set", hubDev, "peer", r.PublicKey, "remove"); err != nil {
					t.Fatalf("remove peer: %v %s", err, out)
				}
			}
		}
		if err := harness.WaitFor(20*time.Second, "daemon re-adds the peer with /32 and /128", func() (bool, error) {
			return len(allowed(a)) == 2, nil
		}); err != nil {
			t.Fatal(err)
		}
		if out, err := a.CNI("check"); err != nil {
			t.Fatalf("CHECK after repair: %v %s", err, out)
		}
		harness.Connect(t, a.NS, b.Addr6(), "same-node ping6 after repair", 10)

		if err := b.Delete(); err != nil {
			t.Fatal(err)
		}
		if got := allowed(b); got != nil {
			t.Errorf("after DEL the hub still allows %v", got)
		}
		if r := hubRoutes6(); strings.Contains(r, b.Addr6().String()+" ") {
			t.Errorf("after DEL the node still routes %s into the hub:\n%s", b.Addr6(), r)
		}
		if out, _ := on.Exec("ip", "-4", "route", "show", "dev", hubDev, "proto", "88"); strings.Contains(out, b.Addr4().String()+" ") {
			t.Errorf("after DEL the node still routes %s into the hub:\n%s", b.Addr4(), out)
		}
		if regs, _ := registry.List(on.RunDir); len(regs) != 1 {
			t.Errorf("registry after DEL: %+v", regs)
		}
	})

	t.Run("GC detaches a pod not in valid-attachments: both families", func(t *testing.T) {
		d, err := on.AddPod()
		if err != nil {
			t.Fatal(err)
		}
		var keep *registry.Pod
		regs, _ := registry.List(on.RunDir)
		for _, r := range regs {
			if slices.Contains(r.IPs, a.Addr6()) {
				keep = r
			}
		}
		if len(regs) != 2 || keep == nil || allowed(d) == nil {
			t.Fatalf("registry before GC: %+v", regs)
		}
		if out, err := gc(t, c, on, keep.ContainerID, keep.IfName); err != nil {
			t.Fatalf("GC: %v %s", err, out)
		}
		if got := allowed(d); got != nil {
			t.Errorf("after GC the hub still allows %v", got)
		}
		if r := hubRoutes6(); strings.Contains(r, d.Addr6().String()+" ") {
			t.Errorf("after GC the node still routes %s into the hub:\n%s", d.Addr6(), r)
		}
		if out, _ := on.Exec("ip", "-4", "route", "show", "dev", hubDev, "proto", "88"); strings.Contains(out, d.Addr4().String()+" ") {
			t.Errorf("after GC the node still routes %s into the hub:\n%s", d.Addr4(), out)
		}
		if regs, _ := registry.List(on.RunDir); len(regs) != 1 || regs[0].ID != keep.ID {
			t.Errorf("registry after GC: %+v", regs)
		}
		harness.Connect(t, a.NS, x.Addr6(), "kept pod still reaches the other node over IPv6", 10)
	})
}

// gc runs the plugin's CNI GC on node n, as a runtime would, with one
// valid attachment.
func gc(t *testing.T, c *harness.Cluster, n *harness.Node, containerID, ifName string) (string, error) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(n.ConfDir, "10-wgcni.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	for _, p := range list.Plugins {
		if p["type"] == "wgcni" {
			conf = p
		}
	}
	conf["name"], conf["cniVersion"] = list.Name, "1.1.0"
	conf["cni.dev/valid-attachments"] = []map[string]string{{"containerID": containerID, "ifname": ifName}}
	stdin, _ := json.Marshal(conf)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := n.Command(ctx, c.Bin("wgcni"))
	cmd.Env = append(os.Environ(), "CNI_COMMAND=GC", "CNI_PATH="+c.CNIPath())
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestSameNodeEncryptionIPv6Only: IPv6-only pods (no IPv4 at all) on a node
// with same-node encryption: ADD succeeds, the hub holds each pod's /128
// only, same-node IPv6 is WireGuard only, and CHECK/DEL work.
func TestSameNodeEncryptionIPv6Only(t *testing.T) {
	const v6only = "fd00:247::/56"
	c := harness.Start(t, harness.Config{Tag: "wgq", ClusterCIDR: v6only, NodePrefixLenV6: 64, ListenPort: wgPort}, 0)
	on, err := c.AddNode("--same-node-encryption")
	if err != nil {
		t.Fatal(err)
	}
	a, err := on.AddPod()
	if err != nil {
		t.Fatalf("ADD of an IPv6-only pod with same-node encryption: %v", err)
	}
	b, err := on.AddPod()
	if err != nil {
		t.Fatal(err)
	}
	if a.Addr4().IsValid() || !a.Addr6().IsValid() {
		t.Fatalf("pod %s got %v, want IPv6 only", a.Name, a.IPs)
	}
	hubDev := hub.DeviceName(on.Device)
	out, err := on.Exec("wg", "show", hubDev, "allowed-ips")
	if err != nil || !strings.Contains(out, a.Addr6().String()+"/128") || strings.Contains(out, "/32") {
		t.Fatalf("hub AllowedIPs: %v\n%s", err, out)
	}
	cls := &capture.Classifier{PodNets: []netip.Prefix{netip.MustParsePrefix(v6only)}, WGPorts: []uint16{wgPort, hubPort}}
	wire, lo := sniff(t, cls, on, a, b, func() {
		harness.Connect(t, a.NS, b.Addr6(), "same-node ping6 a->b (IPv6 only)", 10)
		transfer(t, b.NS, a.NS, a.Addr6(), "same-node TCP b->a (IPv6 only)")
		harness.Connect(t, on.NS, b.Addr6(), "node -> its pod (IPv6 only)", 10)
	})
	for _, rep := range wire {
		if rep.PlainPod() != 0 {
			t.Errorf("%d plaintext pod packets with same-node encryption on (IPv6 only): %s", rep.PlainPod(), rep)
		}
	}
	if lo.WGTypes[capture.WGTransportData] == 0 {
		t.Errorf("loopback: no WireGuard transport data: %s", lo)
	}
	if out, err := a.CNI("check"); err != nil {
		t.Fatalf("CHECK: %v %s", err, out)
	}
	if err := b.Delete(); err != nil {
		t.Fatal(err)
	}
	if out, _ := on.Exec("wg", "show", hubDev, "allowed-ips"); strings.Contains(out, b.Addr6().String()) {
		t.Errorf("after DEL the hub still allows %s:\n%s", b.Addr6(), out)
	}
	if out, _ := on.Exec("ip", "-6", "route", "show", "dev", hubDev, "proto", "88"); strings.Contains(out, b.Addr6().String()+" ") {
		t.Errorf("after DEL the node still routes %s into the hub:\n%s", b.Addr6(), out)
	}
}
