package security

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/plugins/antispoof"
	"github.com/wgcni/wgcni/tests/harness"
)

var nftPackets = regexp.MustCompile(`counter packets (\d+)`)

// spoofDrops sums the packet counters of the node's anti-spoofing rules.
func spoofDrops(t *testing.T, n *harness.Node) (int, string) {
	t.Helper()
	out, err := n.Exec("nft", "list", "table", "bridge", "wgcni")
	if err != nil {
		t.Fatalf("anti-spoofing table missing on %s: %v", n.Name, err)
	}
	sum := 0
	for _, m := range nftPackets.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		sum += v
	}
	return sum, out
}

// TestAntiSpoofing forges packets for real, from raw sockets inside the
// namespaces, and captures at the destination:
//   - same node: a pod sending with another pod's source IP, with a foreign
//     MAC, or an ARP reply claiming another pod's IP, is dropped on its
//     bridge port (nftables bridge table, one set element per pod);
//   - cross node: a packet whose inner source is not in the sending peer's
//     AllowedIPs is dropped by the receiving WireGuard device, even though
//     it left the sender through the tunnel.
//
// Each forged case has a control sent the same way with the true source,
// which must arrive, so a capture that sees nothing proves nothing.
// allowed lists n's anti-spoofing elements ("port mac ip"; "#index" for a
// port that is gone).
func allowed(t *testing.T, n *harness.Node) []string {
	t.Helper()
	var out []string
	if err := n.Do(func() error {
		var err error
		out, err = antispoof.Allowed()
		return err
	}); err != nil {
		t.Fatalf("list anti-spoofing elements on %s: %v", n.Name, err)
	}
	return out
}

func TestAntiSpoofing(t *testing.T) {
	const resync = 2 * time.Second // wgcnid sweeps gone pods' elements on each
	conf := cfg()
	conf.ResyncInterval = resync
	c := harness.Start(t, conf, 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	a, b, cc := n1.MustAddPod(t), n1.MustAddPod(t), n1.MustAddPod(t)
	d, e := n2.MustAddPod(t), n2.MustAddPod(t)
	harness.Connect(t, a.NS, cc.IP, "a -> c (same node)", 3)
	harness.Connect(t, a.NS, d.IP, "a -> d (cross node)", 3)
	harness.Connect(t, n1.NS, d.IP, "n1 host -> d", 3)

	// The plugin's anti-spoofing entries: one per pod, by its host veth.
	elems := allowed(t, n1)
	for _, p := range []*harness.Pod{a, b, cc} {
		if !slices.ContainsFunc(elems, func(e string) bool {
			port, rest, _ := strings.Cut(e, " ")
			return port == p.MustHostVeth(t) && strings.HasSuffix(rest, " "+p.IP.String())
		}) {
			t.Fatalf("no anti-spoofing element for %s (%s %s): %v", p.Name, p.MustHostVeth(t), p.IP, elems)
		}
	}
	if out, err := n1.Exec("nft", "list", "set", "bridge", "wgcni", "pod-ports"); err != nil || !strings.Contains(out, a.MustHostVeth(t)) {
		t.Errorf("operators read the elements with nft list set bridge wgcni pod-ports; it shows no port name: %v\n%s", err, out)
	}
	before, _ := spoofDrops(t, n1)

	// deliver sends with send() while sniffing for marker on the
	// destination interface and returns how many copies arrived.
	deliver := func(dst harness.NS, ifname, marker string, send func() error) int {
		t.Helper()
		s, err := sniff(dst, ifname, contains(marker))
		if err != nil {
			t.Fatal(err)
		}
		if err := send(); err != nil {
			s.Stop()
			t.Fatal(err)
		}
		return s.Stop()
	}
	const copies = 5
	results := map[string]int{}

	t.Run("same node", func(t *testing.T) {
		aMAC, err := macOf(a.NS, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		bMAC, _ := macOf(b.NS, "eth0")
		cMAC, _ := macOf(cc.NS, "eth0")
		cases := []struct {
			name    string
			forged  bool
			marker  string
			send    func(marker string) error
			arpFrom func() bool
		}{
			{"raw IP, own source (control)", false, "", func(m string) error { return sendRawIP(a.NS, icmpEcho(a.IP, cc.IP, m), copies) }, nil},
			{"raw IP, source of pod b", true, "", func(m string) error { return sendRawIP(a.NS, icmpEcho(b.IP, cc.IP, m), copies) }, nil},
			{"raw IP, source of pod d on another node", true, "", func(m string) error { return sendRawIP(a.NS, icmpEcho(d.IP, cc.IP, m), copies) }, nil},
			{"frame, own MAC and IP (control)", false, "", func(m string) error {
				return sendFrame(a.NS, "eth0", ethFrame(cMAC, aMAC, 0x0800, icmpEcho(a.IP, cc.IP, m)), copies)
			}, nil},
			{"frame, MAC of pod b, own IP", true, "", func(m string) error {
				return sendFrame(a.NS, "eth0", ethFrame(cMAC, bMAC, 0x0800, icmpEcho(a.IP, cc.IP, m)), copies)
			}, nil},
			{"frame, made-up MAC, own IP", true, "", func(m string) error {
				return sendFrame(a.NS, "eth0", ethFrame(cMAC, net.HardwareAddr{0x02, 0x57, 0x47, 0x53, 0, 1}, 0x0800, icmpEcho(a.IP, cc.IP, m)), copies)
			}, nil},
			{"IPv6 ethertype frame", true, "", func(m string) error {
				return sendFrame(a.NS, "eth0", ethFrame(cMAC, aMAC, 0x86dd, append(make([]byte, 40), m...)), copies)
			}, nil},
		}
		for i, tc := range cases {
			marker := fmt.Sprintf("WGS-SPOOF-%d-%d", i, time.Now().UnixNano())
			got := deliver(cc.NS, "eth0", marker, func() error { return tc.send(marker) })
			results["same node: "+tc.name] = got
			t.Logf("%-45s forged=%-5v arrived %d/%d", tc.name, tc.forged, got, copies)
			if tc.forged && got != 0 {
				t.Errorf("%s: %d forged packets reached pod c", tc.name, got)
			}
			if !tc.forged && got == 0 {
				t.Errorf("%s: the control did not arrive: the capture or the sending is broken", tc.name)
			}
		}
		// ARP: a claims b's IP (would redirect c's traffic for b to a).
		arp := func(senderIP []byte) func([]byte) bool {
			return func(f []byte) bool {
				return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && string(f[28:32]) == string(senderIP)
			}
		}
		for _, tc := range []struct {
			name   string
			forged bool
			ip     []byte
		}{{"ARP reply for own IP (control)", false, a.IP.AsSlice()}, {"ARP reply claiming pod b's IP", true, b.IP.AsSlice()}} {
			s, err := sniff(cc.NS, "eth0", arp(tc.ip))
			if err != nil {
				t.Fatal(err)
			}
			sip := a.IP
			if tc.forged {
				sip = b.IP
			}
			if err := sendFrame(a.NS, "eth0", ethFrame(cMAC, aMAC, 0x0806, arpReply(aMAC, sip, cMAC, cc.IP)), copies); err != nil {
				t.Fatal(err)
			}
			got := s.Stop()
			results["same node: "+tc.name] = got
			t.Logf("%-45s forged=%-5v arrived %d/%d", tc.name, tc.forged, got, copies)
			if tc.forged && got != 0 {
				t.Errorf("%s: %d forged ARP replies reached pod c", tc.name, got)
			}
			if !tc.forged && got == 0 {
				t.Errorf("%s: control ARP did not arrive", tc.name)
			}
		}
		after, table := spoofDrops(t, n1)
		t.Logf("anti-spoofing drop counters on %s: %d -> %d", n1.Name, before, after)
		if after-before < 5*copies {
			t.Errorf("drop counters rose by %d, want at least %d (operators read them with nft list table bridge wgcni):\n%s", after-before, 5*copies, table)
		}
		// Legit traffic still flows after all that.
		harness.Connect(t, a.NS, cc.IP, "a -> c after spoofing attempts", 3)
	})

	// CNI DEL leaves a pod's elements (they are keyed by the host veth's
	// interface index, which no later port gets). The case that makes this
	// matter: the same attachment added again (same container ID and
	// ifname, so the same host veth name; podman restarts do this) gets a
	// new MAC and address, and must not be able to send from its old ones,
	// which IPAM may have given to another pod.
	t.Run("same attachment re-added: old MAC and address refused", func(t *testing.T) {
		oldMAC, err := macOf(b.NS, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		oldIP, oldVeth := b.IP, b.MustHostVeth(t)
		cMAC, _ := macOf(cc.NS, "eth0")
		if out, err := b.CNI("del"); err != nil {
			t.Fatalf("DEL: %v %s", err, out)
		}
		if !slices.ContainsFunc(allowed(t, n1), func(e string) bool { return strings.HasPrefix(e, "#") && strings.HasSuffix(e, " "+oldIP.String()) }) {
			t.Fatalf("DEL was expected to leave the element of the gone port: %v", allowed(t, n1))
		}
		// The re-ADD is given a different address: hold the old one so
		// the forged frame is a real forgery, then let it go again.
		out, err := b.CNI("add")
		if err != nil {
			t.Fatalf("re-ADD: %v %s", err, out)
		}
		var res struct {
			IPs []struct {
				Address string `json:"address"`
			} `json:"ips"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
			t.Fatalf("re-ADD result: %v %s", err, out)
		}
		newIP := netip.MustParsePrefix(res.IPs[0].Address).Addr()
		newMAC, _ := macOf(b.NS, "eth0")
		if b.MustHostVeth(t) != oldVeth {
			t.Fatalf("re-ADD gave host veth %s, want the same name %s", b.MustHostVeth(t), oldVeth)
		}
		t.Logf("re-added %s on %s: %s %s -> %s %s", b.Name, oldVeth, oldMAC, oldIP, newMAC, newIP)
		for i, tc := range []struct {
			name   string
			forged bool
			mac    net.HardwareAddr
			ip     netip.Addr
		}{{"new MAC and address (control)", false, newMAC, newIP}, {"old MAC and address", true, oldMAC, oldIP}, {"new MAC, old address", true, newMAC, oldIP}} {
			if tc.forged && tc.ip == newIP && bytes.Equal(tc.mac, newMAC) {
				continue
			}
			marker := fmt.Sprintf("WGS-READD-%d-%d", i, time.Now().UnixNano())
			got := deliver(cc.NS, "eth0", marker, func() error {
				return sendFrame(b.NS, "eth0", ethFrame(cMAC, tc.mac, 0x0800, icmpEcho(tc.ip, cc.IP, marker)), copies)
			})
			results["re-added: "+tc.name] = got
			t.Logf("%-45s forged=%-5v arrived %d/%d", tc.name, tc.forged, got, copies)
			if tc.forged && got != 0 {
				t.Errorf("re-added attachment: %s: %d forged packets reached pod c", tc.name, got)
			}
			if !tc.forged && got == 0 {
				t.Errorf("re-added attachment: the control did not arrive")
			}
		}
		// wgcnid's resync sweeps the gone port's element.
		gone := func() bool {
			return !slices.ContainsFunc(allowed(t, n1), func(e string) bool { return strings.HasPrefix(e, "#") })
		}
		deadline := time.Now().Add(resync + 10*time.Second)
		for !gone() && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if !gone() {
			t.Errorf("wgcnid did not sweep the elements of gone ports within its resync interval (%v) + 10 s: %v", resync, allowed(t, n1))
		}
	})

	t.Run("cross node: WireGuard AllowedIPs", func(t *testing.T) {
		// From n1's host namespace, below the bridge filter: a packet to
		// pod d with the source of pod e (which lives on n2 itself), and a
		// control with pod a's source (inside n1's PodCIDR). Both leave n1
		// through its WireGuard device; only the control may arrive.
		for _, tc := range []struct {
			name   string
			forged bool
			src    string
		}{{"source in sender's PodCIDR (control)", false, a.IP.String()}, {"source of pod e on the receiving node", true, e.IP.String()}, {"source outside the cluster", true, "192.0.2.77"}} {
			marker := fmt.Sprintf("WGS-XNODE-%d", time.Now().UnixNano())
			tun, err := sniff(n1.NS, n1.Device, contains(marker))
			if err != nil {
				t.Fatal(err)
			}
			src := mustAddr(t, tc.src)
			got := deliver(d.NS, "eth0", marker, func() error { return sendRawIP(n1.NS, icmpEcho(src, d.IP, marker), copies) })
			sent := tun.Stop()
			results["cross node: "+tc.name] = got
			t.Logf("%-45s forged=%-5v into n1's tunnel %d, arrived at d %d/%d", tc.name, tc.forged, sent, got, copies)
			if sent == 0 {
				t.Fatalf("%s: the packet never entered n1's WireGuard device; the test proves nothing", tc.name)
			}
			if tc.forged && got != 0 {
				t.Errorf("%s: %d forged packets reached pod d", tc.name, got)
			}
			if !tc.forged && got == 0 {
				t.Errorf("%s: control did not arrive", tc.name)
			}
		}
	})
	fmt.Printf("ANTI-SPOOFING (arrived of %d sent each): %v\n", copies, results)

	t.Run("DEL, then wgcnid's sweep: the entry is gone", func(t *testing.T) {
		ip := b.IP.String()
		if err := b.Delete(); err != nil {
			t.Fatal(err)
		}
		has := func() bool {
			return slices.ContainsFunc(allowed(t, n1), func(e string) bool { return strings.HasSuffix(e, " "+ip) })
		}
		deadline := time.Now().Add(resync + 10*time.Second)
		for has() && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if has() {
			t.Fatalf("pod b's element is still there after DEL and wgcnid's sweep: %v", allowed(t, n1))
		}
	})
}
