// Package samenode tests same-node encryption end to end in the namespace
// cluster: pods on one node talk only through WireGuard (nothing in clear
// on the bridge or on their host veths), the same capture sees plain text
// with the option off, and cross-node and host -> pod traffic still work
// between nodes with and without the option.
package samenode

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	clusterCIDR = "10.244.0.0/22"
	wgPort      = 51820
	hubPort     = wgPort + 1
)

func classifier() *capture.Classifier {
	return &capture.Classifier{
		PodNets: []netip.Prefix{netip.MustParsePrefix(clusterCIDR)},
		WGPorts: []uint16{wgPort, hubPort},
	}
}

// hostVeth is the host end of the pod's veth, from the CNI result.
func hostVeth(t *testing.T, p *harness.Pod) string {
	t.Helper()
	var res struct {
		Interfaces []struct {
			Name    string `json:"name"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
	}
	if err := json.Unmarshal([]byte(p.Result), &res); err != nil {
		t.Fatal(err)
	}
	for _, i := range res.Interfaces {
		if i.Sandbox == "" && strings.HasPrefix(i.Name, "wgv") {
			return i.Name
		}
	}
	t.Fatalf("no host veth in result of %s: %s", p.Name, p.Result)
	return ""
}

func transfer(t *testing.T, from, to harness.NS, addr netip.Addr, what string) {
	t.Helper()
	r, err := harness.TCPTransfer(from, to, addr, 5201, 4<<20, 30*time.Second)
	if err != nil {
		t.Fatalf("%s: TCP transfer: %v", what, err)
	}
	t.Logf("%s: %d bytes verified in %v (%.0f Mbit/s)", what, r.Bytes, r.Duration.Round(time.Millisecond), r.Mbps())
}

// sniff captures on the node's bridge, the two pods' host veths and the
// node's loopback while traffic runs, and returns the reports of the three
// wire interfaces and of loopback.
func sniff(t *testing.T, cls *capture.Classifier, n *harness.Node, a, b *harness.Pod, traffic func()) (wire []*capture.Report, lo *capture.Report) {
	t.Helper()
	nf, err := n.NodeFile()
	if err != nil {
		t.Fatal(err)
	}
	ifs := []string{nf.Bridge, hostVeth(t, a), hostVeth(t, b), "lo"}
	var caps []*capture.Capture
	for _, ifn := range ifs {
		// Keep every plaintext packet (up to the capture's cap) so each
		// one can be judged below.
		c, err := capture.Start(n.Path(), ifn, cls, capture.Options{Samples: 1000})
		if err != nil {
			t.Fatalf("capture on %s: %v", ifn, err)
		}
		caps = append(caps, c)
	}
	traffic()
	for i, c := range caps {
		rep, err := c.Stop()
		if err != nil {
			t.Fatalf("capture on %s: %v", ifs[i], err)
		}
		t.Logf("capture %s on %s: %s", n.Name, ifs[i], rep)
		if i < 3 {
			wire = append(wire, rep)
		} else {
			lo = rep
		}
	}
	return wire, lo
}

// plaintext lists the plaintext pod-network packets of a capture. The one
// exemption: IGMP from the node's own gateway address to 224.0.0.0/24 (the
// bridge's multicast membership reports, sent by the node's stack a few
// times after the bridge gets its address): they carry no pod data and
// never come from or go to a pod. Everything else fails the test.
func plaintext(rep *capture.Report, gw netip.Addr) []string {
	var out []string
	n := 0
	for _, p := range rep.Samples {
		if p.Result.Kind != capture.KindPlainPod {
			continue
		}
		n++
		d := p.Data
		if len(d) >= 34 && d[12] == 0x08 && d[13] == 0x00 && d[14+9] == 2 {
			src, _ := netip.AddrFromSlice(d[26:30])
			dst, _ := netip.AddrFromSlice(d[30:34])
			if src == gw && netip.MustParsePrefix("224.0.0.0/24").Contains(dst) {
				continue
			}
		}
		out = append(out, p.String())
	}
	// Packets beyond the kept samples are all counted as failures.
	for i := n; i < rep.PlainPod(); i++ {
		out = append(out, "(plaintext packet beyond the kept samples)")
	}
	return out
}

func TestSameNodeEncryption(t *testing.T) {
	_, on, off := startOnOff(t, harness.Config{ClusterCIDR: clusterCIDR, ListenPort: wgPort, ResyncInterval: 5 * time.Second})
	var err error
	nfOn, _ := on.NodeFile()
	nfOff, _ := off.NodeFile()
	if !nfOn.SameNodeEncryption || nfOff.SameNodeEncryption {
		t.Fatalf("node files: %s sameNodeEncryption=%v, %s sameNodeEncryption=%v", on.Name, nfOn.SameNodeEncryption, off.Name, nfOff.SameNodeEncryption)
	}
	var pods [4]*harness.Pod
	for i, n := range []*harness.Node{on, on, off, off} {
		if pods[i], err = n.AddPod(); err != nil {
			t.Fatal(err)
		}
	}
	a, b, x, y := pods[0], pods[1], pods[2], pods[3]

	t.Run("on: only WireGuard on bridge and veths", func(t *testing.T) {
		wire, lo := sniff(t, classifier(), on, a, b, func() {
			harness.Connect(t, a.NS, b.IP, "same-node ping a->b (option on)", 10)
			harness.Connect(t, b.NS, a.IP, "same-node ping b->a (option on)", 10)
			transfer(t, a.NS, b.NS, b.IP, "same-node TCP a->b (option on)")
			// Host -> pod crosses the bridge device itself when in clear.
			harness.Connect(t, on.NS, a.IP, "node -> its pod (option on)", 10)
			transfer(t, on.NS, a.NS, a.IP, "node -> its pod TCP (option on)")
		})
		gw := netip.MustParseAddr(nfOn.Gateway)
		for _, rep := range wire {
			bad := plaintext(rep, gw)
			t.Logf("plaintext pod packets: %d (exempted node IGMP reports: %d)", len(bad), rep.PlainPod()-len(bad))
			if len(bad) != 0 {
				t.Errorf("%d plaintext pod packets with same-node encryption on:\n%s", len(bad), strings.Join(bad, "\n"))
			}
		}
		// The traffic did flow, and as WireGuard: transport data between
		// the pod devices and the hub on the node's loopback.
		if lo.WGTypes[capture.WGTransportData] == 0 || lo.PlainPod() != 0 {
			t.Errorf("loopback: want WireGuard transport data and no plaintext, got %s", lo)
		}
	})

	t.Run("off: the same capture sees the plaintext", func(t *testing.T) {
		wire, _ := sniff(t, classifier(), off, x, y, func() {
			harness.Connect(t, x.NS, y.IP, "same-node ping x->y (option off)", 10)
			transfer(t, x.NS, y.NS, y.IP, "same-node TCP x->y (option off)")
			harness.Connect(t, off.NS, x.IP, "node -> its pod (option off)", 10)
		})
		gw := netip.MustParseAddr(nfOff.Gateway)
		for i, rep := range wire {
			if len(plaintext(rep, gw)) == 0 {
				t.Errorf("capture %d saw no plaintext pod packets with the option off: the capture is blind", i)
			}
		}
	})

	t.Run("cross-node between nodes with and without the option", func(t *testing.T) {
		harness.Connect(t, a.NS, x.IP, "ping on-node pod -> off-node pod", 10)
		harness.Connect(t, y.NS, b.IP, "ping off-node pod -> on-node pod", 10)
		transfer(t, a.NS, x.NS, x.IP, "TCP on-node pod -> off-node pod")
		transfer(t, x.NS, a.NS, a.IP, "TCP off-node pod -> on-node pod")
	})

	t.Run("host to pod", func(t *testing.T) {
		harness.Connect(t, on.NS, a.IP, "ping node -> its own pod (option on)", 10)
		harness.Connect(t, off.NS, b.IP, "ping other node -> pod (option on)", 10)
		transfer(t, on.NS, a.NS, a.IP, "TCP node -> its own pod")
	})

	t.Run("CHECK, DEL removes the hub peer, GC collects orphans", func(t *testing.T) {
		if out, err := a.CNI("check"); err != nil {
			t.Fatalf("CHECK: %v %s", err, out)
		}
		hubDev := hub.DeviceName(on.Device)
		peers := func() int {
			out, err := on.Exec("wg", "show", hubDev, "peers")
			if err != nil {
				t.Fatalf("wg show %s: %v %s", hubDev, err, out)
			}
			return len(strings.Fields(out))
		}
		if got := peers(); got != 2 {
			t.Fatalf("hub %s has %d peers, want 2 (one per pod)", hubDev, got)
		}
		if err := b.Delete(); err != nil {
			t.Fatal(err)
		}
		if got := peers(); got != 1 {
			t.Fatalf("after DEL hub has %d peers, want 1", got)
		}
		regs, _ := registry.List(on.RunDir)
		if len(regs) != 1 || !slices.Equal(regs[0].IPs, []netip.Addr{a.IP}) {
			t.Fatalf("registry after DEL: %+v", regs)
		}
		// An orphan: a registration whose pod is gone without DEL (the
		// runtime lost it). The daemon's reconciler removes the peer and
		// route once the registration is collected.
		orphan := *regs[0]
		orphan.ID, orphan.IPs, orphan.PublicKey, orphan.Port = "wgvorphan", []netip.Addr{netip.MustParseAddr("10.244.0.250")}, "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=", 40000
		if err := registry.Register(on.RunDir, &orphan); err != nil {
			t.Fatal(err)
		}
		if err := harness.WaitFor(20*time.Second, "daemon adds the registered peer", func() (bool, error) { return peers() == 2, nil }); err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(registry.Dir(on.RunDir), "wgvorphan.json"))
		if err := harness.WaitFor(20*time.Second, "daemon removes the orphaned peer", func() (bool, error) { return peers() == 1, nil }); err != nil {
			t.Fatal(err)
		}
		harness.Connect(t, a.NS, x.IP, "remaining pod still reaches the other node", 10)
	})
}

// startOnOff starts a cluster of two nodes: on with same-node encryption,
// off without (the control that proves the capture sees plaintext).
func startOnOff(t *testing.T, cfg harness.Config) (c *harness.Cluster, on, off *harness.Node) {
	t.Helper()
	c = harness.Start(t, cfg, 0)
	on, err := c.AddNode("--same-node-encryption")
	if err != nil {
		t.Fatal(err)
	}
	if off, err = c.AddNode(); err != nil {
		t.Fatal(err)
	}
	return c, on, off
}
