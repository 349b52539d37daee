// Package pmtu finds the path MTU to a peer by packetization-layer probing
// (RFC 8899's idea, over a probe protocol of our own): padded UDP probes
// with the don't-fragment bit, answered by a short ack, instead of ICMP
// "fragmentation needed" / "packet too big", which firewalls and clouds
// often drop, leaving a black hole for large packets. A size is proven by
// an ack, never by an ICMP message, so a path that drops ICMP measures as
// well as one that does not.
//
// The same probe at the smallest size is the liveness probe of package
// liveness: one protocol, one responder per node.
package pmtu

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire format, big endian. A probe is padded to the size under test and
// is never shorter than an ack; an ack is always ackLen bytes, so
// answering never amplifies.
//
//	0  magic "wgPM"
//	4  version (1)
//	5  type (1 probe, 2 ack)
//	6  reserved, zero
//	8  probe id
//	12 ack only: payload length of the probe received
const (
	magic     = "wgPM"
	version   = 1
	typeProbe = 1
	typeAck   = 2
	headerLen = 12
	ackLen    = 16
)

// Message is a decoded probe or ack.
type Message struct {
	Ack bool
	ID  uint32
	// Len is, in an ack, the probe payload length the responder received;
	// in a probe, the length of the datagram decoded.
	Len int
}

var errShort = errors.New("shorter than a probe header")

// appendProbe writes a probe of exactly n payload bytes into b[:0].
func appendProbe(b []byte, id uint32, n int) ([]byte, error) {
	if n < ackLen {
		return nil, fmt.Errorf("probe payload %d bytes: at least %d needed (no shorter than its ack)", n, ackLen)
	}
	b = append(b[:0], magic...)
	b = append(b, version, typeProbe, 0, 0)
	b = binary.BigEndian.AppendUint32(b, id)
	for len(b) < n {
		b = append(b, 0)
	}
	return b, nil
}

func appendAck(b []byte, id uint32, received int) []byte {
	b = append(b[:0], magic...)
	b = append(b, version, typeAck, 0, 0)
	b = binary.BigEndian.AppendUint32(b, id)
	return binary.BigEndian.AppendUint32(b, uint32(received))
}

// Decode parses a datagram of the probe protocol.
func Decode(b []byte) (Message, error) {
	if len(b) < headerLen {
		return Message{}, errShort
	}
	if string(b[:4]) != magic {
		return Message{}, fmt.Errorf("bad magic %q", b[:4])
	}
	if b[4] != version {
		return Message{}, fmt.Errorf("unsupported version %d", b[4])
	}
	m := Message{ID: binary.BigEndian.Uint32(b[8:12]), Len: len(b)}
	switch b[5] {
	case typeProbe:
		if len(b) < ackLen {
			return Message{}, fmt.Errorf("probe of %d bytes is shorter than its ack", len(b))
		}
	case typeAck:
		if len(b) != ackLen {
			return Message{}, fmt.Errorf("ack of %d bytes, want %d", len(b), ackLen)
		}
		m.Ack = true
		m.Len = int(binary.BigEndian.Uint32(b[12:16]))
	default:
		return Message{}, fmt.Errorf("unknown message type %d", b[5])
	}
	return m, nil
}
