package pqexchange

import (
	"crypto/mlkem"
	"encoding/binary"
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Wire format. Every message starts with a 8-byte header:
//
//	magic "WGPQ" | version (1) | type (1) | reserved, zero (2)
//
// followed by a body of a fixed size per type; the decoder accepts exactly
// that size, so there is no length field to lie. Integers are big-endian.
const (
	magic   = "WGPQ"
	Version = 1

	headerSize = 8
	sidSize    = 8
	tagSize    = 32
)

// Type is a message type.
type Type uint8

const (
	// TypeInit (initiator → responder): epoch, initiator session id, both
	// WireGuard public keys, the ephemeral encapsulation key and a
	// ciphertext to the responder's static key.
	TypeInit Type = 1
	// TypeResp (responder → initiator): both session ids, a ciphertext to
	// the initiator's static key, one to the ephemeral key, and the
	// responder's confirmation tag.
	TypeResp Type = 2
	// TypeConfirm (initiator → responder): the initiator's confirmation
	// tag; asks the responder to install the new PSK.
	TypeConfirm Type = 3
	// TypeAck (responder → initiator): the responder has installed it.
	TypeAck Type = 4
)

func (t Type) String() string {
	switch t {
	case TypeInit:
		return "init"
	case TypeResp:
		return "resp"
	case TypeConfirm:
		return "confirm"
	case TypeAck:
		return "ack"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// SessionID names one exchange on one side; chosen at random by its owner.
type SessionID [sidSize]byte

// Init is message 1.
type Init struct {
	Epoch       uint64
	SidI        SessionID
	Initiator   wgtypes.Key // WireGuard public key of the initiator
	Responder   wgtypes.Key // WireGuard public key of the responder
	Ephemeral   [mlkem.EncapsulationKeySize768]byte
	CtResponder [mlkem.CiphertextSize768]byte // encapsulated to the responder's static key
}

// Resp is message 2.
type Resp struct {
	SidI, SidR  SessionID
	CtInitiator [mlkem.CiphertextSize768]byte // encapsulated to the initiator's static key
	CtEphemeral [mlkem.CiphertextSize768]byte // encapsulated to Init.Ephemeral
	Tag         [tagSize]byte
}

// Confirm is message 3 and Ack message 4: session ids and a tag.
type Confirm struct {
	SidI, SidR SessionID
	Tag        [tagSize]byte
}

// Ack is message 4.
type Ack Confirm

var bodySize = map[Type]int{
	TypeInit:    8 + sidSize + 32 + 32 + mlkem.EncapsulationKeySize768 + mlkem.CiphertextSize768,
	TypeResp:    2*sidSize + 2*mlkem.CiphertextSize768 + tagSize,
	TypeConfirm: 2*sidSize + tagSize,
	TypeAck:     2*sidSize + tagSize,
}

func header(t Type) []byte {
	b := make([]byte, headerSize, headerSize+bodySize[t])
	copy(b, magic)
	b[4], b[5] = Version, byte(t)
	return b
}

// Marshal encodes m1.
func (m *Init) Marshal() []byte {
	b := header(TypeInit)
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	b = append(b, m.SidI[:]...)
	b = append(b, m.Initiator[:]...)
	b = append(b, m.Responder[:]...)
	b = append(b, m.Ephemeral[:]...)
	return append(b, m.CtResponder[:]...)
}

// Marshal encodes m2.
func (m *Resp) Marshal() []byte {
	b := header(TypeResp)
	b = append(b, m.SidI[:]...)
	b = append(b, m.SidR[:]...)
	b = append(b, m.CtInitiator[:]...)
	b = append(b, m.CtEphemeral[:]...)
	return append(b, m.Tag[:]...)
}

func marshalTagged(t Type, sidI, sidR SessionID, tag [tagSize]byte) []byte {
	b := header(t)
	b = append(b, sidI[:]...)
	b = append(b, sidR[:]...)
	return append(b, tag[:]...)
}

// Marshal encodes m3.
func (m *Confirm) Marshal() []byte { return marshalTagged(TypeConfirm, m.SidI, m.SidR, m.Tag) }

// Marshal encodes m4.
func (m *Ack) Marshal() []byte { return marshalTagged(TypeAck, m.SidI, m.SidR, m.Tag) }

// PeekType checks the header and the length for its type and returns the
// type; Decode goes on to parse the body.
func PeekType(b []byte) (Type, error) {
	if len(b) < headerSize {
		return 0, ErrShort
	}
	if string(b[:4]) != magic {
		return 0, ErrMagic
	}
	if b[4] != Version {
		return 0, ErrVersion
	}
	t := Type(b[5])
	size, ok := bodySize[t]
	if !ok || b[6] != 0 || b[7] != 0 {
		return 0, ErrType
	}
	if len(b) != headerSize+size {
		return 0, ErrLength
	}
	return t, nil
}

// Decode parses a message into *Init, *Resp, *Confirm or *Ack. It checks
// framing only; the cryptographic checks are the state machines' job.
func Decode(b []byte) (any, error) {
	t, err := PeekType(b)
	if err != nil {
		return nil, err
	}
	r := reader(b[headerSize:])
	switch t {
	case TypeInit:
		m := &Init{}
		m.Epoch = binary.BigEndian.Uint64(r.next(8))
		copy(m.SidI[:], r.next(sidSize))
		copy(m.Initiator[:], r.next(32))
		copy(m.Responder[:], r.next(32))
		copy(m.Ephemeral[:], r.next(len(m.Ephemeral)))
		copy(m.CtResponder[:], r.next(len(m.CtResponder)))
		return m, nil
	case TypeResp:
		m := &Resp{}
		copy(m.SidI[:], r.next(sidSize))
		copy(m.SidR[:], r.next(sidSize))
		copy(m.CtInitiator[:], r.next(len(m.CtInitiator)))
		copy(m.CtEphemeral[:], r.next(len(m.CtEphemeral)))
		copy(m.Tag[:], r.next(tagSize))
		return m, nil
	default:
		var c Confirm
		copy(c.SidI[:], r.next(sidSize))
		copy(c.SidR[:], r.next(sidSize))
		copy(c.Tag[:], r.next(tagSize))
		if t == TypeAck {
			a := Ack(c)
			return &a, nil
		}
		return &c, nil
	}
}

// reader hands out consecutive slices; lengths were checked by PeekType.
type reader []byte

func (r *reader) next(n int) []byte {
	b := (*r)[:n]
	*r = (*r)[n:]
	return b
}
