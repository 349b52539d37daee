package pmtu

import (
	"bytes"
	"testing"
)

func TestWire(t *testing.T) {
	p, err := appendProbe(nil, 7, 1372)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 1372 {
		t.Fatalf("probe of %d bytes, want 1372", len(p))
	}
	m, err := Decode(p)
	if err != nil || m.Ack || m.ID != 7 || m.Len != 1372 {
		t.Fatalf("decode probe: %+v %v", m, err)
	}
	a := appendAck(nil, 7, 1372)
	if len(a) != ackLen {
		t.Fatalf("ack of %d bytes, want %d", len(a), ackLen)
	}
	m, err = Decode(a)
	if err != nil || !m.Ack || m.ID != 7 || m.Len != 1372 {
		t.Fatalf("decode ack: %+v %v", m, err)
	}
	if _, err := appendProbe(nil, 1, ackLen-1); err == nil {
		t.Fatal("probe shorter than its ack accepted")
	}
	for name, b := range map[string][]byte{
		"short":      []byte("wgPM"),
		"magic":      append([]byte("xxxx"), p[4:]...),
		"version":    append([]byte("wgPM\x02"), p[5:]...),
		"type":       append([]byte("wgPM\x01\x09"), p[6:]...),
		"long ack":   append(bytes.Clone(a), 0),
		"tiny probe": p[:headerLen],
	} {
		if _, err := Decode(b); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

// Decode never panics, and whatever it accepts re-encodes to a message
// of the same meaning.
func FuzzDecode(f *testing.F) {
	p, _ := appendProbe(nil, 1, 100)
	f.Add(p)
	f.Add(appendAck(nil, 2, 1400))
	f.Add([]byte("wgPM\x01\x02\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		var again []byte
		if m.Ack {
			again = appendAck(nil, m.ID, m.Len)
		} else if again, err = appendProbe(nil, m.ID, m.Len); err != nil {
			t.Fatalf("accepted probe %+v does not re-encode: %v", m, err)
		}
		m2, err := Decode(again)
		if err != nil || m2 != m {
			t.Fatalf("re-encoded %+v decodes as %+v, %v", m, m2, err)
		}
	})
}
