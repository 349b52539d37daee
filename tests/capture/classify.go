// Package capture records frames on an interface inside a network namespace
// (AF_PACKET) and classifies them, so tests can prove on the wire that pod
// traffic between nodes only ever travels inside WireGuard.
//
// The classifier parses headers itself (no gopacket dependency): it is small,
// bounded, and fuzzed, because a parser bug here would make an encryption
// test pass for the wrong reason.
package capture

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Kind is what a frame was classified as.
type Kind int

const (
	// KindOther is anything that is neither WireGuard nor carries a pod
	// address: ARP, neighbour discovery, etcd TCP between underlay addresses.
	KindOther Kind = iota
	// KindWireGuard is UDP to or from a WireGuard port with a valid
	// WireGuard message header, between non-pod addresses.
	KindWireGuard
	// KindPlainPod is an IP packet whose source or destination is a pod
	// address, visible without decryption: the thing encryption must prevent.
	KindPlainPod
)

func (k Kind) String() string {
	switch k {
	case KindWireGuard:
		return "wireguard"
	case KindPlainPod:
		return "PLAINTEXT-POD"
	default:
		return "other"
	}
}

// WireGuard message types (first byte of the UDP payload).
const (
	WGHandshakeInit     = 1
	WGHandshakeResponse = 2
	WGCookieReply       = 3
	WGTransportData     = 4
)

// LinkType tells how a frame starts.
type LinkType int

const (
	LinkEthernet LinkType = iota // 14-byte Ethernet header (also loopback)
	LinkRawIP                    // no L2 header: TUN devices, WireGuard devices
)

// Classifier decides what a frame is. It holds no mutable state, so one
// Classifier may be shared by many captures.
type Classifier struct {
	// PodNets are the cluster CIDRs: any packet with an address inside one
	// of them seen in plain text counts as KindPlainPod.
	PodNets []netip.Prefix
	// WGPorts are the WireGuard listen ports of the nodes.
	WGPorts []uint16
	// PlainHosts, if set, are underlay addresses whose host-to-host
	// traffic must be encrypted: TCP or ICMP with both source and
	// destination among them counts as plaintext (KindPlainPod) too.
	PlainHosts []netip.Addr
}

// Result describes one classified frame.
type Result struct {
	Kind Kind
	// WGType is the WireGuard message type for KindWireGuard.
	WGType byte
	// Summary is a one-line, tcpdump-like description.
	Summary string
}

// maxDepth bounds recursion into encapsulations (IP-in-IP, GRE, VXLAN,
// ICMP errors) so a crafted frame cannot make the parser loop.
const maxDepth = 4

// Classify parses one frame. It never panics on any input; truncated or
// unknown frames are KindOther.
func (c *Classifier) Classify(lt LinkType, frame []byte) Result {
	if lt == LinkRawIP {
		return c.classifyIP(frame, 0)
	}
	return c.classifyEthernet(frame, 0)
}

func (c *Classifier) classifyEthernet(b []byte, depth int) Result {
	if len(b) < 14 {
		return Result{Kind: KindOther, Summary: fmt.Sprintf("truncated ethernet (%d bytes)", len(b))}
	}
	etype := binary.BigEndian.Uint16(b[12:14])
	off := 14
	// Skip up to two VLAN tags (802.1Q, 802.1ad).
	for i := 0; i < 2 && (etype == 0x8100 || etype == 0x88a8); i++ {
		if len(b) < off+4 {
			return Result{Kind: KindOther, Summary: "truncated vlan tag"}
		}
		etype = binary.BigEndian.Uint16(b[off+2 : off+4])
		off += 4
	}
	switch etype {
	case 0x0800, 0x86dd:
		return c.classifyIP(b[off:], depth)
	case 0x0806:
		return Result{Kind: KindOther, Summary: "arp"}
	default:
		return Result{Kind: KindOther, Summary: fmt.Sprintf("ethertype 0x%04x", etype)}
	}
}

// ipHeader is what the classifier needs from an IPv4 or IPv6 header.
type ipHeader struct {
	src, dst netip.Addr
	proto    byte
	payload  []byte
	// l4 is false for non-first fragments: their payload has no L4 header.
	l4 bool
}

func parseIPv4(b []byte) (ipHeader, error) {
	if len(b) < 20 {
		return ipHeader{}, fmt.Errorf("truncated ipv4 header (%d bytes)", len(b))
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 || len(b) < ihl {
		return ipHeader{}, fmt.Errorf("bad ipv4 header length %d", ihl)
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	end := len(b)
	// Captures may be truncated (snaplen) or padded (Ethernet minimum):
	// trust the total length only when it lies within what we have.
	if total >= ihl && total < end {
		end = total
	}
	h := ipHeader{
		src:   netip.AddrFrom4([4]byte(b[12:16])),
		dst:   netip.AddrFrom4([4]byte(b[16:20])),
		proto: b[9],
		l4:    binary.BigEndian.Uint16(b[6:8])&0x1fff == 0,
	}
	h.payload = b[ihl:end]
	return h, nil
}

func parseIPv6(b []byte) (ipHeader, error) {
	if len(b) < 40 {
		return ipHeader{}, fmt.Errorf("truncated ipv6 header (%d bytes)", len(b))
	}
	h := ipHeader{
		src: netip.AddrFrom16([16]byte(b[8:24])),
		dst: netip.AddrFrom16([16]byte(b[24:40])),
		l4:  true,
	}
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	rest := b[40:]
	if plen < len(rest) {
		rest = rest[:plen]
	}
	next := b[6]
	// Walk at most 8 extension headers.
	for i := 0; i < 8; i++ {
		var l int
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(rest) < 8 {
				h.proto, h.payload, h.l4 = next, nil, false
				return h, nil
			}
			l = (int(rest[1]) + 1) * 8
		case 44: // fragment
			if len(rest) < 8 {
				h.proto, h.payload, h.l4 = next, nil, false
				return h, nil
			}
			if binary.BigEndian.Uint16(rest[2:4])&0xfff8 != 0 {
				h.l4 = false
			}
			l = 8
		case 51: // authentication header
			if len(rest) < 2 {
				h.proto, h.payload, h.l4 = next, nil, false
				return h, nil
			}
			l = (int(rest[1]) + 2) * 4
		default:
			h.proto, h.payload = next, rest
			return h, nil
		}
		if l > len(rest) {
			h.proto, h.payload, h.l4 = next, nil, false
			return h, nil
		}
		next = rest[0]
		rest = rest[l:]
	}
	h.proto, h.payload, h.l4 = next, rest, false
	return h, nil
}

func (c *Classifier) isPod(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range c.PodNets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// isPlainHost reports TCP or ICMP (any fragment) between two PlainHosts.
// IPv6 neighbour discovery (ICMPv6 133-137) is not: it resolves the
// underlay itself and can never go through a tunnel.
func (c *Classifier) isPlainHost(h ipHeader) bool {
	if h.proto != 6 && h.proto != 1 && h.proto != 58 {
		return false
	}
	if h.proto == 58 && h.l4 && len(h.payload) > 0 && h.payload[0] >= 133 && h.payload[0] <= 137 {
		return false
	}
	src, dst := false, false
	for _, a := range c.PlainHosts {
		src = src || a == h.src.Unmap()
		dst = dst || a == h.dst.Unmap()
	}
	return src && dst
}

func (c *Classifier) isWGPort(p uint16) bool {
	for _, w := range c.WGPorts {
		if w == p {
			return true
		}
	}
	return false
}

func protoName(p byte) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmp6"
	case 4:
		return "ipip"
	case 41:
		return "ipv6-in-ip"
	case 47:
		return "gre"
	default:
		return fmt.Sprintf("proto-%d", p)
	}
}

func (c *Classifier) classifyIP(b []byte, depth int) Result {
	if len(b) < 1 {
		return Result{Kind: KindOther, Summary: "empty ip packet"}
	}
	var (
		h   ipHeader
		err error
	)
	switch b[0] >> 4 {
	case 4:
		h, err = parseIPv4(b)
	case 6:
		h, err = parseIPv6(b)
	default:
		return Result{Kind: KindOther, Summary: fmt.Sprintf("ip version %d", b[0]>>4)}
	}
	if err != nil {
		return Result{Kind: KindOther, Summary: err.Error()}
	}
	addrs := fmt.Sprintf("%s > %s", h.src, h.dst)
	// Ports go into the summary when there is an L4 header with ports.
	var sport, dport uint16
	hasPorts := h.l4 && (h.proto == 6 || h.proto == 17) && len(h.payload) >= 4
	if hasPorts {
		sport = binary.BigEndian.Uint16(h.payload[0:2])
		dport = binary.BigEndian.Uint16(h.payload[2:4])
		addrs = fmt.Sprintf("%s:%d > %s:%d", h.src, sport, h.dst, dport)
	}
	if c.isPod(h.src) || c.isPod(h.dst) {
		return Result{Kind: KindPlainPod, Summary: fmt.Sprintf("%s %s len %d", addrs, protoName(h.proto), len(b))}
	}
	if c.isPlainHost(h) {
		return Result{Kind: KindPlainPod, Summary: fmt.Sprintf("host-to-host %s %s len %d", addrs, protoName(h.proto), len(b))}
	}
	if !h.l4 {
		return Result{Kind: KindOther, Summary: fmt.Sprintf("%s %s fragment", addrs, protoName(h.proto))}
	}
	switch h.proto {
	case 17:
		if !hasPorts || len(h.payload) < 8 {
			return Result{Kind: KindOther, Summary: addrs + " truncated udp"}
		}
		udp := h.payload[8:]
		// The UDP length field gives the datagram size even when the
		// capture was truncated to a snap length.
		ulen := int(binary.BigEndian.Uint16(h.payload[4:6])) - 8
		if ulen < len(udp) {
			udp = udp[:max(ulen, 0)]
		}
		if c.isWGPort(sport) || c.isWGPort(dport) {
			if t, ok := wireGuardType(udp, ulen); ok {
				return Result{Kind: KindWireGuard, WGType: t,
					Summary: fmt.Sprintf("%s udp wireguard %s len %d", addrs, wgTypeName(t), ulen)}
			}
			return Result{Kind: KindOther, Summary: fmt.Sprintf("%s udp to wireguard port, not a wireguard message, len %d", addrs, ulen)}
		}
		if (dport == 4789 || dport == 8472) && depth < maxDepth && len(udp) >= 8 {
			if r := c.classifyEthernet(udp[8:], depth+1); r.Kind == KindPlainPod {
				r.Summary = "vxlan " + addrs + " inner " + r.Summary
				return r
			}
		}
		return Result{Kind: KindOther, Summary: fmt.Sprintf("%s udp len %d", addrs, len(udp))}
	case 4, 41:
		if depth < maxDepth {
			if r := c.classifyIP(h.payload, depth+1); r.Kind == KindPlainPod {
				r.Summary = protoName(h.proto) + " " + addrs + " inner " + r.Summary
				return r
			}
		}
	case 47:
		// Plain GRE without options carrying IPv4/IPv6/Ethernet.
		if depth < maxDepth && len(h.payload) >= 4 && h.payload[0]&0xb0 == 0 {
			var r Result
			switch binary.BigEndian.Uint16(h.payload[2:4]) {
			case 0x0800, 0x86dd:
				r = c.classifyIP(h.payload[4:], depth+1)
			case 0x6558:
				r = c.classifyEthernet(h.payload[4:], depth+1)
			}
			if r.Kind == KindPlainPod {
				r.Summary = "gre " + addrs + " inner " + r.Summary
				return r
			}
		}
	case 1, 58:
		// ICMP errors quote the offending packet's header: a quoted pod
		// address is pod information in plain text too.
		if depth < maxDepth && len(h.payload) >= 8 && isICMPError(h.proto, h.payload[0]) {
			if r := c.classifyIP(h.payload[8:], depth+1); r.Kind == KindPlainPod {
				r.Summary = protoName(h.proto) + " error " + addrs + " quoting " + r.Summary
				return r
			}
		}
	}
	return Result{Kind: KindOther, Summary: fmt.Sprintf("%s %s len %d", addrs, protoName(h.proto), len(b))}
}

func isICMPError(proto, typ byte) bool {
	if proto == 1 {
		return typ == 3 || typ == 11 || typ == 12
	}
	return typ >= 1 && typ <= 4
}

// wireGuardType checks the fixed WireGuard header: a type byte 1..4, three
// reserved zero bytes, and the message's fixed (or minimum) size.
// size is the datagram's payload size from the UDP header; p may be shorter
// when the capture was truncated.
func wireGuardType(p []byte, size int) (byte, bool) {
	if len(p) < 4 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return 0, false
	}
	switch p[0] {
	case WGHandshakeInit:
		return p[0], size == 148
	case WGHandshakeResponse:
		return p[0], size == 92
	case WGCookieReply:
		return p[0], size == 64
	case WGTransportData:
		// 16-byte header plus at least the 16-byte authentication tag
		return p[0], size >= 32
	}
	return 0, false
}

func wgTypeName(t byte) string {
	switch t {
	case WGHandshakeInit:
		return "handshake-init"
	case WGHandshakeResponse:
		return "handshake-response"
	case WGCookieReply:
		return "cookie-reply"
	case WGTransportData:
		return "data"
	}
	return "?"
}
