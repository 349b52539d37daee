package capture

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
)

// Frame builders: just enough to make the headers the classifier reads.

func eth(etype uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:], etype)
	return append(b, payload...)
}

func vlan(inner uint16, payload []byte) []byte {
	tag := []byte{0, 5, 0, 0}
	binary.BigEndian.PutUint16(tag[2:], inner)
	return eth(0x8100, append(tag, payload...))
}

func ip4(src, dst string, proto byte, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(payload)))
	b[8] = 64
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return append(b, payload...)
}

func ip6(src, dst string, next byte, payload []byte) []byte {
	b := make([]byte, 40, 40+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6] = next
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	return append(b, payload...)
}

func udp(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

func tcp(sport, dport uint16) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 5 << 4
	return b
}

func icmpEcho() []byte { return []byte{8, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g'} }

func wg(typ byte, size int) []byte {
	b := make([]byte, size)
	b[0] = typ
	for i := 4; i < size; i++ {
		b[i] = byte(i * 7)
	}
	return b
}

func testClassifier() *Classifier {
	return &Classifier{
		PodNets: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/48")},
		WGPorts: []uint16{51820},
	}
}

func TestClassify(t *testing.T) {
	c := testClassifier()
	cases := []struct {
		name   string
		link   LinkType
		frame  []byte
		kind   Kind
		wgType byte
	}{
		{"wg handshake init", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(51820, 51820, wg(1, 148)))), KindWireGuard, 1},
		{"wg handshake response", LinkEthernet, eth(0x0800, ip4("10.99.1.12", "10.99.1.11", 17, udp(51820, 51820, wg(2, 92)))), KindWireGuard, 2},
		{"wg cookie", LinkEthernet, eth(0x0800, ip4("10.99.1.12", "10.99.1.11", 17, udp(51820, 40000, wg(3, 64)))), KindWireGuard, 3},
		{"wg data", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(40000, 51820, wg(4, 1440)))), KindWireGuard, 4},
		{"wg data over ipv6 underlay", LinkEthernet, eth(0x86dd, ip6("fd99::11", "fd99::12", 17, udp(51820, 51820, wg(4, 96)))), KindWireGuard, 4},
		{"wg data in vlan", LinkEthernet, vlan(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(51820, 51820, wg(4, 64)))), KindWireGuard, 4},
		{"wg init with wrong size is not wireguard", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(51820, 51820, wg(1, 100)))), KindOther, 0},
		{"plaintext to wg port is not wireguard", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(1234, 51820, []byte("hello world")))), KindOther, 0},
		{"etcd tcp between underlay addresses", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.1", 6, tcp(40000, 2379))), KindOther, 0},
		{"arp", LinkEthernet, eth(0x0806, make([]byte, 28)), KindOther, 0},
		{"pod icmp", LinkEthernet, eth(0x0800, ip4("10.244.1.2", "10.244.2.2", 1, icmpEcho())), KindPlainPod, 0},
		{"pod tcp to a node", LinkEthernet, eth(0x0800, ip4("10.244.1.2", "10.99.1.12", 6, tcp(40000, 5201))), KindPlainPod, 0},
		{"node to pod", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.244.2.2", 1, icmpEcho())), KindPlainPod, 0},
		{"pod udp to the wg port is still plaintext", LinkEthernet, eth(0x0800, ip4("10.244.1.2", "10.244.2.2", 17, udp(51820, 51820, wg(4, 64)))), KindPlainPod, 0},
		{"pod packet in vlan", LinkEthernet, vlan(0x0800, ip4("10.244.1.2", "10.244.2.2", 1, icmpEcho())), KindPlainPod, 0},
		{"pod packet raw ip link", LinkRawIP, ip4("10.244.1.2", "10.244.2.2", 1, icmpEcho()), KindPlainPod, 0},
		{"pod ipv6", LinkEthernet, eth(0x86dd, ip6("fd00:244:0:1::2", "fd00:244:0:2::2", 58, []byte{128, 0, 0, 0})), KindPlainPod, 0},
		{"ipv4-mapped pod address", LinkEthernet, eth(0x86dd, ip6("::ffff:10.244.1.2", "fd99::1", 6, tcp(1, 2))), KindPlainPod, 0},
		{"pod in vxlan", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(40000, 4789,
			append(make([]byte, 8), eth(0x0800, ip4("10.244.1.2", "10.244.2.2", 1, icmpEcho()))...)))), KindPlainPod, 0},
		{"pod in ipip", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 4, ip4("10.244.1.2", "10.244.2.2", 6, tcp(1, 2)))), KindPlainPod, 0},
		{"pod in gre", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 47, append([]byte{0, 0, 0x08, 0}, ip4("10.244.1.2", "10.244.2.2", 6, tcp(1, 2))...))), KindPlainPod, 0},
		{"icmp error quoting a pod packet", LinkEthernet, eth(0x0800, ip4("10.99.1.1", "10.99.1.11", 1,
			append([]byte{3, 1, 0, 0, 0, 0, 0, 0}, ip4("10.244.1.2", "10.244.9.2", 1, icmpEcho())[:28]...))), KindPlainPod, 0},
		{"icmp error quoting a wg packet", LinkEthernet, eth(0x0800, ip4("10.99.1.1", "10.99.1.11", 1,
			append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, ip4("10.99.1.11", "10.99.1.13", 17, udp(51820, 51820, wg(4, 64)))[:28]...))), KindOther, 0},
		{"non-pod vxlan", LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(40000, 4789,
			append(make([]byte, 8), eth(0x0800, ip4("192.168.1.2", "192.168.2.2", 1, icmpEcho()))...)))), KindOther, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := c.Classify(tc.link, tc.frame)
			if r.Kind != tc.kind || r.WGType != tc.wgType {
				t.Fatalf("got %v (wg type %d, %q), want %v (wg type %d)", r.Kind, r.WGType, r.Summary, tc.kind, tc.wgType)
			}
			if r.Summary == "" {
				t.Fatal("empty summary")
			}
		})
	}
}

func TestClassifyIPv6ExtensionHeaders(t *testing.T) {
	c := testClassifier()
	// hop-by-hop (8 bytes) -> destination options (16 bytes) -> UDP to the WG port
	hbh := []byte{60, 0, 0, 0, 0, 0, 0, 0}
	dst := append([]byte{17, 1}, make([]byte, 14)...)
	payload := append(append(hbh, dst...), udp(51820, 51820, wg(4, 64))...)
	r := c.Classify(LinkEthernet, eth(0x86dd, ip6("fd99::11", "fd99::12", 0, payload)))
	if r.Kind != KindWireGuard || r.WGType != WGTransportData {
		t.Fatalf("got %v %q, want wireguard data", r.Kind, r.Summary)
	}
	// A non-first fragment has no UDP header: it is not WireGuard, and
	// with non-pod addresses not plaintext pod traffic either.
	frag := []byte{17, 0, 0x01, 0x00, 0, 0, 0, 1}
	r = c.Classify(LinkEthernet, eth(0x86dd, ip6("fd99::11", "fd99::12", 44, append(frag, make([]byte, 64)...))))
	if r.Kind != KindOther || !strings.Contains(r.Summary, "fragment") {
		t.Fatalf("got %v %q, want other fragment", r.Kind, r.Summary)
	}
}

func TestClassifyFragmentsAndTruncation(t *testing.T) {
	c := testClassifier()
	// A later IPv4 fragment of a pod packet still shows pod addresses.
	p := ip4("10.244.1.2", "10.244.2.2", 17, make([]byte, 100))
	binary.BigEndian.PutUint16(p[6:], 185) // fragment offset, no L4 header
	if r := c.Classify(LinkRawIP, p); r.Kind != KindPlainPod {
		t.Fatalf("pod fragment: got %v %q", r.Kind, r.Summary)
	}
	// A WireGuard data packet cut at a snap length is still WireGuard:
	// its size comes from the UDP header.
	full := eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(51820, 51820, wg(4, 1400))))
	if r := c.Classify(LinkEthernet, full[:96]); r.Kind != KindWireGuard || !strings.Contains(r.Summary, "len 1400") {
		t.Fatalf("truncated wg data: got %v %q", r.Kind, r.Summary)
	}
	// Every prefix of every frame classifies without panicking.
	frames := [][]byte{
		full,
		eth(0x86dd, ip6("fd00:244::2", "fd99::1", 0, append([]byte{17, 0, 0, 0, 0, 0, 0, 0}, udp(1, 2, nil)...))),
		vlan(0x0800, ip4("10.99.1.1", "10.99.1.11", 1, append([]byte{3, 1, 0, 0, 0, 0, 0, 0}, ip4("10.244.1.2", "10.244.9.2", 1, icmpEcho())...))),
	}
	for _, f := range frames {
		for i := 0; i <= len(f); i++ {
			c.Classify(LinkEthernet, f[:i])
			c.Classify(LinkRawIP, f[:i])
		}
	}
}

func TestWritePcap(t *testing.T) {
	c := testClassifier()
	f := eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(51820, 51820, wg(4, 64))))
	var buf bytes.Buffer
	pkts := []Packet{{Link: LinkEthernet, Len: len(f), Data: f, Result: c.Classify(LinkEthernet, f)}}
	if err := WritePcap(&buf, pkts); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 24+16+len(f) {
		t.Fatalf("pcap size %d, want %d", buf.Len(), 24+16+len(f))
	}
	if binary.LittleEndian.Uint32(buf.Bytes()[20:]) != 1 {
		t.Fatal("link type is not ethernet")
	}
	if err := WritePcap(&buf, append(pkts, Packet{Link: LinkRawIP})); err == nil {
		t.Fatal("mixed link types accepted")
	}
}

func FuzzClassify(f *testing.F) {
	f.Add(false, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(51820, 51820, wg(4, 64)))))
	f.Add(false, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 4, ip4("10.244.1.2", "10.244.2.2", 6, tcp(1, 2)))))
	f.Add(false, eth(0x86dd, ip6("fd99::11", "fd99::12", 0, append([]byte{44, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 16)...))))
	f.Add(true, ip4("10.99.1.1", "10.99.1.11", 1, append([]byte{3, 1, 0, 0, 0, 0, 0, 0}, ip4("10.244.1.2", "10.244.9.2", 1, icmpEcho())...)))
	c := testClassifier()
	f.Fuzz(func(t *testing.T, raw bool, frame []byte) {
		lt := LinkEthernet
		if raw {
			lt = LinkRawIP
		}
		r1 := c.Classify(lt, frame)
		r2 := c.Classify(lt, frame)
		if r1 != r2 {
			t.Fatalf("not deterministic: %+v vs %+v", r1, r2)
		}
		if r1.Kind == KindWireGuard && (r1.WGType < 1 || r1.WGType > 4) {
			t.Fatalf("wireguard with type %d", r1.WGType)
		}
		if r1.Summary == "" {
			t.Fatal("empty summary")
		}
	})
}

// PlainHosts: TCP and ICMP between two listed underlay addresses are
// plaintext; WireGuard between them, and TCP to anyone else (etcd), are not.
func TestClassifyPlainHosts(t *testing.T) {
	c := testClassifier()
	c.PlainHosts = []netip.Addr{netip.MustParseAddr("10.99.1.11"), netip.MustParseAddr("10.99.1.12"), netip.MustParseAddr("fd99::11"), netip.MustParseAddr("fd99::12")}
	for _, tc := range []struct {
		name  string
		frame []byte
		want  Kind
	}{
		{"tcp between hosts", eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 6, tcp(40000, 5201))), KindPlainPod},
		{"icmp between hosts", eth(0x0800, ip4("10.99.1.12", "10.99.1.11", 1, icmpEcho())), KindPlainPod},
		{"tcp between hosts v6", eth(0x86dd, ip6("fd99::11", "fd99::12", 6, tcp(40000, 5201))), KindPlainPod},
		{"wireguard between hosts", eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(51820, 51820, wg(4, 64)))), KindWireGuard},
		{"icmp6 echo between hosts", eth(0x86dd, ip6("fd99::11", "fd99::12", 58, []byte{128, 0, 0, 0, 0, 1, 0, 1})), KindPlainPod},
		{"neighbour advertisement between hosts", eth(0x86dd, ip6("fd99::12", "fd99::11", 58, append([]byte{136, 0, 0, 0, 0x60, 0, 0, 0}, make([]byte, 16)...))), KindOther},
		{"tcp to etcd", eth(0x0800, ip4("10.99.1.11", "10.99.1.1", 6, tcp(40000, 2379))), KindOther},
		{"udp between hosts (not tcp/icmp)", eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 17, udp(53, 53, []byte("dns")))), KindOther},
	} {
		if r := c.Classify(LinkEthernet, tc.frame); r.Kind != tc.want {
			t.Errorf("%s: %v (%s), want %v", tc.name, r.Kind, r.Summary, tc.want)
		}
	}
	if r := testClassifier().Classify(LinkEthernet, eth(0x0800, ip4("10.99.1.11", "10.99.1.12", 6, tcp(40000, 5201)))); r.Kind != KindOther {
		t.Errorf("without PlainHosts, host TCP is %v", r.Kind)
	}
}
