// Package samenode tests same-node encryption end to end in the namespace
// cluster, over every address family: pods on one node talk only through
// WireGuard (nothing in clear on the bridge or on their host veths), the
// same capture sees plain text with the option off, cross-node and host ->
// pod traffic still work between nodes with and without the option, and
// the hub's peers and routes follow CHECK, DEL, GC and the daemon's repair.
package samenode

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	wgPort  = 51820
	hubPort = wgPort + 1

	v4CIDR   = "10.244.0.0/22"
	v6CIDR   = "fd00:247::/56"
	dualCIDR = v4CIDR + ",fd00:246::/56"
)

// clusters are the address families same-node encryption runs over: one
// test body checks each, over an IPv4 underlay.
var clusters = []struct {
	name string
	cfg  harness.Config
}{
	{"v4", harness.Config{ClusterCIDR: v4CIDR}},
	{"v6", harness.Config{ClusterCIDR: v6CIDR, NodePrefixLenV6: 64}},
	{"dual", harness.Config{ClusterCIDR: dualCIDR, NodePrefixLenV6: 64}},
}

// TestSameNodeEncryption runs, for every cluster family, a node with
// same-node encryption (on) and one without (off, the control):
//   - node files, pods with one address per family;
//   - the hub holds exactly each pod's /32 and /128, the node routes each
//     into the hub (proto 88, from its gateway of the family), the pod
//     routes everything of each family into its device and nothing into
//     its veth;
//   - on: same-node and node -> pod traffic of every family is WireGuard
//     only on the bridge and the host veths, and WireGuard on loopback;
//   - off: the same capture sees plaintext of every family;
//   - cross-node pod -> pod and node -> pod between the two nodes;
//   - CHECK names a lost route, the daemon restores routes and peers, DEL
//     removes peer, routes and registration; an orphaned registration's
//     peer comes and goes with it; GC detaches a pod not in
//     valid-attachments.
func TestSameNodeEncryption(t *testing.T) {
	for _, cl := range clusters {
		t.Run(cl.name, func(t *testing.T) {
			cfg := cl.cfg
			cfg.Tag, cfg.ListenPort, cfg.ResyncInterval = "wgq", wgPort, 3*time.Second
			testSameNode(t, cfg)
		})
	}
}

func testSameNode(t *testing.T, cfg harness.Config) {
	c, on, off := startOnOff(t, cfg)
	fams := c.Families()
	nfOn, nfOff := on.MustNodeFile(t), off.MustNodeFile(t)
	if !nfOn.SameNodeEncryption || nfOff.SameNodeEncryption {
		t.Fatalf("node files: %s sameNodeEncryption=%v, %s sameNodeEncryption=%v", on.Name, nfOn.SameNodeEncryption, off.Name, nfOff.SameNodeEncryption)
	}
	if len(nfOn.Gateways) != len(fams) || len(nfOn.PodCIDRs) != len(fams) {
		t.Fatalf("node file of %s: gateways %v podCIDRs %v, want one per family of %v", on.Name, nfOn.Gateways, nfOn.PodCIDRs, c.ClusterCIDRs())
	}
	var pods [4]*harness.Pod
	for i, n := range []*harness.Node{on, on, off, off} {
		p, err := n.AddPod()
		if err != nil {
			t.Fatalf("ADD on %s (%s, same-node encryption %v): %v", n.Name, cfg.ClusterCIDR, n == on, err)
		}
		ok := len(p.IPs) == len(fams)
		for _, f := range fams {
			ok = ok && f.Cluster.Contains(f.Addr(p))
		}
		if !ok {
			t.Fatalf("pod %s got %v, want one address of each family of %v", p.Name, p.IPs, c.ClusterCIDRs())
		}
		pods[i] = p
	}
	a, b, x, y := pods[0], pods[1], pods[2], pods[3]
	hubDev := hub.DeviceName(on.Device)
	cls := c.Classifier(hubPort)

	t.Run("hub, node and pod state", func(t *testing.T) {
		for _, p := range []*harness.Pod{a, b} {
			if got, want := hubPeerOf(t, on, p), strings.Join(hostPrefixes(p), " "); got != want {
				t.Errorf("hub AllowedIPs of %s = %q, want exactly %q", p.Name, got, want)
			}
			for _, f := range fams {
				gw := nfOn.Gateways[f.Index]
				if r := hubRoutes(t, on, f); !strings.Contains(r, f.Addr(p).String()+" ") || !strings.Contains(r, "src "+gw) {
					t.Errorf("node: no route %s dev %s src %s proto 88:\n%s", f.Host(p), hubDev, gw, r)
				}
				routes, _ := p.Exec("ip", f.IPFlag, "route", "show")
				addrs, _ := p.Exec("ip", f.IPFlag, "addr", "show", "dev", "eth0")
				t.Logf("pod %s %s routes:\n%s", p.Name, f.Name, routes)
				if !strings.Contains(routes, "default dev wg-eth0") || !strings.Contains(routes, nfOn.PodCIDRs[f.Index]+" dev wg-eth0") {
					t.Errorf("pod %s: want default and %s dev wg-eth0:\n%s", p.Name, nfOn.PodCIDRs[f.Index], routes)
				}
				for _, line := range strings.Split(routes, "\n") {
					if strings.Contains(line, "dev eth0") && !strings.HasPrefix(line, "fe80::") {
						t.Errorf("pod %s: %s route on the veth: %s", p.Name, f.Name, line)
					}
				}
				// The address stays on the veth without its prefix route;
				// an IPv6 one re-added without duplicate address detection.
				if !strings.Contains(addrs, "noprefixroute") || (f.Cluster.Addr().Is6() && !strings.Contains(addrs, "nodad")) {
					t.Errorf("pod %s eth0 %s address without noprefixroute (and nodad for IPv6):\n%s", p.Name, f.Name, addrs)
				}
			}
		}
		regs, _ := registry.List(on.RunDir)
		if len(regs) != 2 {
			t.Fatalf("registry: %+v", regs)
		}
		for _, r := range regs {
			if !slices.Equal(r.IPs, podAddrs(a)) && !slices.Equal(r.IPs, podAddrs(b)) {
				t.Errorf("registration %s records %v, want a pod's addresses (%v or %v)", r.ID, r.IPs, podAddrs(a), podAddrs(b))
			}
		}
	})

	t.Run("on: only WireGuard on bridge and veths", func(t *testing.T) {
		wire, lo := sniff(t, cls, on, a, b, func() {
			traffic(t, fams,
				ping(a.NS, b, "same-node a->b (option on)"),
				ping(b.NS, a, "same-node b->a (option on)"),
				tcp(a.NS, b, "same-node a->b (option on)"),
				tcp(b.NS, a, "same-node b->a (option on)"),
				// Host -> pod crosses the bridge device itself when in clear.
				ping(on.NS, a, "node -> its pod a (option on)"),
				ping(on.NS, b, "node -> its pod b (option on)"),
				tcp(on.NS, a, "node -> its pod a (option on)"))
		})
		encryptedOnly(t, "option on", fams, netip.MustParseAddr(nfOn.Gateway), wire, lo)
	})

	t.Run("off: the same capture sees the plaintext", func(t *testing.T) {
		wire, _ := sniff(t, cls, off, x, y, func() {
			traffic(t, fams,
				ping(x.NS, y, "same-node x->y (option off)"),
				tcp(x.NS, y, "same-node x->y (option off)"),
				ping(off.NS, x, "node -> its pod (option off)"))
		})
		gw := netip.MustParseAddr(nfOff.Gateway)
		for _, w := range wire {
			pkts, _ := plaintext(w.rep, gw)
			for _, f := range fams {
				if len(ofFamily(pkts, f)) == 0 {
					t.Errorf("capture on %s saw no %s plaintext pod packets with the option off: the capture is blind", w.where, f.Name)
				}
			}
		}
	})

	t.Run("cross-node pod and node to pod, between nodes with and without the option", func(t *testing.T) {
		traffic(t, fams,
			ping(a.NS, x, "on-node pod -> off-node pod"),
			ping(y.NS, b, "off-node pod -> on-node pod"),
			ping(a.NS, y, "on-node pod -> other off-node pod"),
			tcp(a.NS, x, "on-node pod -> off-node pod"),
			tcp(x.NS, a, "off-node pod -> on-node pod"),
			// (Node -> its own pod: "on" above.)
			ping(off.NS, a, "other node -> pod a (option on)"),
			ping(off.NS, b, "other node -> pod b (option on)"))
	})

	t.Run("CHECK, daemon repair, DEL", func(t *testing.T) {
		if out, err := a.CNI("check"); err != nil {
			t.Fatalf("CHECK: %v %s", err, out)
		}
		// The node loses the pod's host route: CHECK names it, the
		// daemon's re-check restores it.
		for _, f := range fams {
			if out, err := on.Exec("ip", f.IPFlag, "route", "del", f.Host(a).String(), "dev", hubDev); err != nil {
				t.Fatalf("delete route %s: %v %s", f.Host(a), err, out)
			}
			if out, err := a.CNI("check"); err == nil || !strings.Contains(out+err.Error(), f.Addr(a).String()) {
				t.Errorf("CHECK without the %s route passed or does not name %s: %v %s", f.Host(a), f.Addr(a), err, out)
			}
			if err := harness.WaitFor(20*time.Second, "daemon restores the route "+f.Host(a).String(), func() (bool, error) {
				return strings.Contains(hubRoutes(t, on, f), f.Addr(a).String()+" "), nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		// The hub loses the pod's peer: the daemon re-adds it with every
		// address.
		regs, _ := registry.List(on.RunDir)
		for _, r := range regs {
			if slices.Equal(r.IPs, podAddrs(a)) {
				if out, err := on.Exec("wg", "set", hubDev, "peer", r.PublicKey, "remove"); err != nil {
					t.Fatalf("remove peer: %v %s", err, out)
				}
			}
		}
		want := strings.Join(hostPrefixes(a), " ")
		if err := harness.WaitFor(20*time.Second, "daemon re-adds the peer with "+want, func() (bool, error) {
			return hubPeerOf(t, on, a) == want, nil
		}); err != nil {
			t.Fatal(err)
		}
		if out, err := a.CNI("check"); err != nil {
			t.Fatalf("CHECK after repair: %v %s", err, out)
		}
		traffic(t, fams, ping(a.NS, b, "same-node a->b after repair"))

		if got := len(hubPeers(t, on)); got != 2 {
			t.Fatalf("hub %s has %d peers, want 2 (one per pod)", hubDev, got)
		}
		if err := b.Delete(); err != nil {
			t.Fatal(err)
		}
		if got := len(hubPeers(t, on)); got != 1 {
			t.Errorf("after DEL hub has %d peers, want 1", got)
		}
		if got := hubPeerOf(t, on, b); got != "" {
			t.Errorf("after DEL the hub still allows %s", got)
		}
		for _, f := range fams {
			if r := hubRoutes(t, on, f); strings.Contains(r, f.Addr(b).String()+" ") {
				t.Errorf("after DEL the node still routes %s into the hub:\n%s", f.Addr(b), r)
			}
		}
		if regs, _ := registry.List(on.RunDir); len(regs) != 1 || !slices.Equal(regs[0].IPs, podAddrs(a)) {
			t.Errorf("registry after DEL: %+v", regs)
		}
	})

	t.Run("orphaned registration: the daemon adds and removes its peer", func(t *testing.T) {
		// An orphan: a registration whose pod is gone without DEL (the
		// runtime lost it). The daemon's reconciler removes the peer and
		// routes once the registration is collected.
		regs, _ := registry.List(on.RunDir)
		if len(regs) != 1 {
			t.Fatalf("registry: %+v", regs)
		}
		orphan := *regs[0]
		orphan.ID, orphan.IPs, orphan.PublicKey, orphan.Port = "wgvorphan", nil, "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=", 40000
		var want []string
		for _, f := range fams {
			// Far above what the pods of this test were given.
			addr := netip.MustParsePrefix(nfOn.PodCIDRs[f.Index]).Addr()
			for range 250 {
				addr = addr.Next()
			}
			orphan.IPs = append(orphan.IPs, addr)
			want = append(want, netip.PrefixFrom(addr, addr.BitLen()).String())
		}
		sort.Strings(want)
		if err := registry.Register(on.RunDir, &orphan); err != nil {
			t.Fatal(err)
		}
		if err := harness.WaitFor(20*time.Second, "daemon adds the registered peer", func() (bool, error) {
			peers := hubPeers(t, on)
			return len(peers) == 2 && peers[orphan.PublicKey] == strings.Join(want, " "), nil
		}); err != nil {
			t.Fatalf("%v: hub peers %v", err, hubPeers(t, on))
		}
		os.Remove(filepath.Join(registry.Dir(on.RunDir), "wgvorphan.json"))
		if err := harness.WaitFor(20*time.Second, "daemon removes the orphaned peer", func() (bool, error) { return len(hubPeers(t, on)) == 1, nil }); err != nil {
			t.Fatal(err)
		}
		traffic(t, fams, ping(a.NS, x, "remaining pod still reaches the other node"))
	})

	t.Run("GC detaches a pod not in valid-attachments", func(t *testing.T) {
		d := on.MustAddPod(t)
		var keep *registry.Pod
		regs, _ := registry.List(on.RunDir)
		for _, r := range regs {
			if slices.Equal(r.IPs, podAddrs(a)) {
				keep = r
			}
		}
		if len(regs) != 2 || keep == nil || hubPeerOf(t, on, d) == "" {
			t.Fatalf("registry before GC: %+v", regs)
		}
		if out, err := gc(t, c, on, keep.ContainerID, keep.IfName); err != nil {
			t.Fatalf("GC: %v %s", err, out)
		}
		if got := hubPeerOf(t, on, d); got != "" {
			t.Errorf("after GC the hub still allows %s", got)
		}
		for _, f := range fams {
			if r := hubRoutes(t, on, f); strings.Contains(r, f.Addr(d).String()+" ") {
				t.Errorf("after GC the node still routes %s into the hub:\n%s", f.Addr(d), r)
			}
		}
		if regs, _ := registry.List(on.RunDir); len(regs) != 1 || regs[0].ID != keep.ID {
			t.Errorf("registry after GC: %+v", regs)
		}
		traffic(t, fams, ping(a.NS, x, "kept pod still reaches the other node"))
	})
}

// hop is one traffic check: from a namespace to a pod, by ping (10 of 10
// replies) or by a verified 4 MiB TCP transfer.
type hop struct {
	from harness.NS
	to   *harness.Pod
	tcp  bool
	what string
}

func ping(from harness.NS, to *harness.Pod, what string) hop {
	return hop{from, to, false, "ping " + what}
}
func tcp(from harness.NS, to *harness.Pod, what string) hop {
	return hop{from, to, true, "TCP " + what}
}

// traffic runs every hop to the pod's address of each family, family by
// family; a failed one fails the test.
func traffic(t *testing.T, fams []harness.Family, hops ...hop) {
	t.Helper()
	for _, f := range fams {
		for _, h := range hops {
			if h.tcp {
				harness.Transfer(t, h.from, h.to.NS, f.Addr(h.to), 4<<20, f.Name+" "+h.what)
			} else {
				harness.Connect(t, h.from, f.Addr(h.to), f.Name+" "+h.what, 10)
			}
		}
	}
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

// sniffed is what one capture of sniff saw, and where.
type sniffed struct {
	where string
	rep   *capture.Report
}

// sniff captures on the node's bridge, the two pods' host veths and the
// node's loopback while traffic runs, and returns the reports of the three
// wire interfaces and of loopback.
func sniff(t *testing.T, cls *capture.Classifier, n *harness.Node, a, b *harness.Pod, traffic func()) (wire []sniffed, lo *capture.Report) {
	t.Helper()
	ifs := []string{n.MustNodeFile(t).Bridge, a.MustHostVeth(t), b.MustHostVeth(t), "lo"}
	where := []string{"the bridge", a.Name + "'s host veth", b.Name + "'s host veth", "loopback"}
	var caps []*capture.Capture
	for _, ifn := range ifs {
		c, err := capture.Start(n.Path(), ifn, cls, capture.Options{})
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
		t.Logf("capture %s on %s (%s): %s", n.Name, ifs[i], where[i], rep)
		if ifs[i] == "lo" {
			lo = rep
		} else {
			wire = append(wire, sniffed{where[i], rep})
		}
	}
	return wire, lo
}

// plaintext returns the plaintext pod packets of a capture (every one is
// kept, up to the capture's cap) and how many more there were beyond the
// cap. The one exemption: IGMP from the node's own IPv4 gateway address gw
// to 224.0.0.0/24 (the bridge's multicast membership reports, sent by the
// node's stack a few times after the bridge gets its address): they carry
// no pod data and never come from or go to a pod.
func plaintext(rep *capture.Report, gw netip.Addr) (pkts []capture.Packet, beyond int) {
	for _, p := range rep.Plain {
		d := p.Data
		if len(d) >= 34 && d[12] == 0x08 && d[13] == 0x00 && d[14+9] == 2 {
			src, _ := netip.AddrFromSlice(d[26:30])
			dst, _ := netip.AddrFromSlice(d[30:34])
			if src == gw && netip.MustParsePrefix("224.0.0.0/24").Contains(dst) {
				continue
			}
		}
		pkts = append(pkts, p)
	}
	return pkts, rep.PlainPod() - len(rep.Plain)
}

// ofFamily are the packets of pkts of family f (by ethertype).
func ofFamily(pkts []capture.Packet, f harness.Family) []capture.Packet {
	want := uint16(0x0800)
	if f.Cluster.Addr().Is6() {
		want = 0x86dd
	}
	var out []capture.Packet
	for _, p := range pkts {
		if len(p.Data) >= 14 && binary.BigEndian.Uint16(p.Data[12:14]) == want {
			out = append(out, p)
		}
	}
	return out
}

// encryptedOnly fails the test on a plaintext pod packet (but the
// exemption of plaintext) or a dropped frame in any wire capture, and
// unless loopback carried WireGuard data and no plaintext: the pods'
// traffic flowed, and as WireGuard between the pod devices and the hub.
func encryptedOnly(t *testing.T, what string, fams []harness.Family, gw netip.Addr, wire []sniffed, lo *capture.Report) {
	t.Helper()
	for _, w := range wire {
		pkts, beyond := plaintext(w.rep, gw)
		var perFam []string
		for _, f := range fams {
			perFam = append(perFam, f.Name+" "+strconv.Itoa(len(ofFamily(pkts, f))))
		}
		t.Logf("%s: %s: plaintext pod packets: %d (%s; exempted node IGMP reports: %d)", what, w.where, len(pkts)+beyond, strings.Join(perFam, ", "), w.rep.PlainPod()-len(pkts)-beyond)
		if len(pkts)+beyond != 0 {
			var lines []string
			for _, p := range pkts {
				lines = append(lines, p.String())
			}
			if beyond > 0 {
				lines = append(lines, "(and "+strconv.Itoa(beyond)+" plaintext packets beyond the kept ones)")
			}
			t.Errorf("%s: %d plaintext pod packets on %s:\n%s", what, len(pkts)+beyond, w.where, strings.Join(lines, "\n"))
		}
		if w.rep.Drops != 0 {
			t.Errorf("%s: capture on %s dropped %d frames: it may have missed plaintext", what, w.where, w.rep.Drops)
		}
	}
	if lo.WGTypes[capture.WGTransportData] == 0 || lo.PlainPod() != 0 {
		t.Errorf("%s: loopback: want WireGuard transport data and no plaintext, got %s", what, lo)
	}
}

// podAddrs are the pod's addresses, in the order of its CNI result.
func podAddrs(p *harness.Pod) []netip.Addr {
	var out []netip.Addr
	for _, a := range p.IPs {
		out = append(out, a.Addr())
	}
	return out
}

// hostPrefixes are the pod's addresses as host prefixes (/32, /128),
// sorted as hubPeers sorts AllowedIPs.
func hostPrefixes(p *harness.Pod) []string {
	var out []string
	for _, a := range p.IPs {
		out = append(out, netip.PrefixFrom(a.Addr(), a.Addr().BitLen()).String())
	}
	sort.Strings(out)
	return out
}

// hubPeerOf is the AllowedIPs (sorted, space-separated) of the hub peer
// allowing any of the pod's addresses, "" if none does.
func hubPeerOf(t *testing.T, n *harness.Node, p *harness.Pod) string {
	t.Helper()
	hosts := hostPrefixes(p)
	for _, ips := range hubPeers(t, n) {
		for _, ip := range strings.Fields(ips) {
			if slices.Contains(hosts, ip) {
				return ips
			}
		}
	}
	return ""
}

// hubRoutes is the node's routes of family f into the hub (proto 88).
func hubRoutes(t *testing.T, n *harness.Node, f harness.Family) string {
	t.Helper()
	out, err := n.Exec("ip", f.IPFlag, "route", "show", "dev", hub.DeviceName(n.Device), "proto", "88")
	if err != nil {
		t.Fatalf("ip %s route: %v %s", f.IPFlag, err, out)
	}
	return out
}

// gc runs the plugin's CNI GC on node n, as a runtime would, with one
// valid attachment.
func gc(t *testing.T, c *harness.Cluster, n *harness.Node, containerID, ifName string) (string, error) {
	t.Helper()
	name, conf, err := n.PluginConf()
	if err != nil {
		t.Fatal(err)
	}
	conf["name"], conf["cniVersion"] = name, "1.1.0"
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
