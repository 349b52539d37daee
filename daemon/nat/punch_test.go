package nat

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/nftables/expr"
)

// TestPunchPacket: a punch is a UDP datagram from our WireGuard port
// carrying the smallest WireGuard transport message (type 4, 32 bytes)
// with receiver index 0, which no WireGuard has a session for.
func TestPunchPacket(t *testing.T) {
	b := punchPacket(51820, 40001)
	if len(b) != 40 || binary.BigEndian.Uint16(b[0:]) != 51820 || binary.BigEndian.Uint16(b[2:]) != 40001 || binary.BigEndian.Uint16(b[4:]) != 40 {
		t.Fatalf("UDP header %x", b[:8])
	}
	msg := b[8:]
	if binary.LittleEndian.Uint32(msg[:4]) != 4 || binary.LittleEndian.Uint32(msg[4:8]) != 0 || !bytes.Equal(msg[8:], make([]byte, 24)) {
		t.Fatalf("WireGuard message %x: want type 4, receiver 0, counter 0, empty payload", msg)
	}
}

// TestHeardRule: the counter matches the endpoint's address at the offset
// of its family's source address, its port as the source and ours as the
// destination.
func TestHeardRule(t *testing.T) {
	for _, tc := range []struct {
		ap  string
		off uint32
	}{{"10.99.0.14:40001", 12}, {"[2001:db8::14]:40001", 8}} {
		ap := netip.MustParseAddrPort(tc.ap)
		var loads []*expr.Payload
		var cmps []*expr.Cmp
		counter := false
		for _, e := range heardRule(ap, 51820) {
			switch e := e.(type) {
			case *expr.Payload:
				loads = append(loads, e)
			case *expr.Cmp:
				cmps = append(cmps, e)
			case *expr.Counter:
				counter = true
			}
		}
		if len(loads) != 3 || len(cmps) != 5 || !counter {
			t.Fatalf("%s: %d loads, %d compares, counter %v", ap, len(loads), len(cmps), counter)
		}
		if loads[0].Offset != tc.off || !bytes.Equal(cmps[2].Data, ap.Addr().AsSlice()) {
			t.Errorf("%s: source address at %d = %x", ap, loads[0].Offset, cmps[2].Data)
		}
		if binary.BigEndian.Uint16(cmps[3].Data) != 40001 || binary.BigEndian.Uint16(cmps[4].Data) != 51820 {
			t.Errorf("%s: ports %x -> %x", ap, cmps[3].Data, cmps[4].Data)
		}
	}
}

// TestUDP6Checksum: with the checksum filled in, the one's complement sum
// over the pseudo-header and the datagram verifies (comes to all ones).
func TestUDP6Checksum(t *testing.T) {
	src, dst := netip.MustParseAddr("2001:db8::13"), netip.MustParseAddr("2001:db8::14")
	u := punchPacket(51820, 40001)
	binary.BigEndian.PutUint16(u[6:], udp6Checksum(src, dst, u))
	if c := udp6Checksum(src, dst, u); c != 0xffff && c != 0 {
		t.Fatalf("checksum over the filled-in datagram: %#04x, want it to verify", c)
	}
}
