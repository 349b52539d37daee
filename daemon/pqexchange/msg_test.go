package pqexchange

import (
	"bytes"
	"errors"
	"testing"
)

// sampleMessages returns one encoded message of each type with distinct
// byte patterns in every field.
func sampleMessages() map[Type][]byte {
	var in Init
	in.Epoch = 0x0102030405060708
	for i := range in.SidI {
		in.SidI[i] = byte(i + 1)
	}
	in.Initiator[0], in.Responder[31] = 0xaa, 0xbb
	in.Ephemeral[5], in.CtResponder[7] = 3, 4
	var r Resp
	r.SidI[0], r.SidR[1], r.CtInitiator[2], r.CtEphemeral[3], r.Tag[4] = 1, 2, 3, 4, 5
	c := Confirm{SidI: SessionID{9}, SidR: SessionID{8}}
	c.Tag[31] = 7
	a := Ack{SidI: SessionID{6}, SidR: SessionID{5}}
	a.Tag[0] = 1
	return map[Type][]byte{TypeInit: in.Marshal(), TypeResp: r.Marshal(), TypeConfirm: c.Marshal(), TypeAck: a.Marshal()}
}

func TestRoundTrip(t *testing.T) {
	for typ, b := range sampleMessages() {
		if len(b) != headerSize+bodySize[typ] {
			t.Fatalf("%s: %d bytes, want %d", typ, len(b), headerSize+bodySize[typ])
		}
		got, err := PeekType(b)
		if err != nil || got != typ {
			t.Fatalf("%s: PeekType = %v, %v", typ, got, err)
		}
		m, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if re := remarshal(m); !bytes.Equal(re, b) {
			t.Fatalf("%s: re-encoding differs", typ)
		}
	}
}

func remarshal(m any) []byte {
	switch m := m.(type) {
	case *Init:
		return m.Marshal()
	case *Resp:
		return m.Marshal()
	case *Confirm:
		return m.Marshal()
	case *Ack:
		return m.Marshal()
	}
	return nil
}

func TestDecodeRejects(t *testing.T) {
	good := sampleMessages()[TypeConfirm]
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, tc := range map[string]struct {
		in   []byte
		want error
	}{
		"empty":        {nil, ErrShort},
		"short header": {good[:7], ErrShort},
		"magic":        {mod(func(b []byte) []byte { b[0] = 'X'; return b }), ErrMagic},
		"version":      {mod(func(b []byte) []byte { b[4] = 2; return b }), ErrVersion},
		"type 0":       {mod(func(b []byte) []byte { b[5] = 0; return b }), ErrType},
		"type 5":       {mod(func(b []byte) []byte { b[5] = 5; return b }), ErrType},
		"reserved":     {mod(func(b []byte) []byte { b[7] = 1; return b }), ErrType},
		"truncated":    {good[:len(good)-1], ErrLength},
		"trailing":     {append(bytes.Clone(good), 0), ErrLength},
		"other length": {mod(func(b []byte) []byte { b[5] = byte(TypeInit); return b }), ErrLength},
	} {
		t.Run(name, func(t *testing.T) {
			m, err := Decode(tc.in)
			if !errors.Is(err, tc.want) || m != nil {
				t.Fatalf("Decode = %v, %v; want %v", m, err, tc.want)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	for _, b := range sampleMessages() {
		f.Add(b)
	}
	f.Add([]byte("WGPQ\x01\x03\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if m != nil {
				t.Fatal("message returned with an error")
			}
			return
		}
		// Whatever is accepted has exactly one encoding: itself.
		if !bytes.Equal(remarshal(m), b) {
			t.Fatal("accepted message does not re-encode to its input")
		}
	})
}
