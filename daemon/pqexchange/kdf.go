package pqexchange

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/mlkem"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"log/slog"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Label names the protocol and its version in every derivation, so keys of
// this protocol can never be confused with another use of the same KEM keys.
const Label = "wgcni post-quantum psk v1"

// transcript is what both ends hash and bind every derived key to: the
// label, the epoch, both identities (WireGuard public keys), both static
// encapsulation keys as published in etcd, and every message field that
// carries key material, in protocol order.
type transcript struct {
	epoch      uint64
	wgI, wgR   wgtypes.Key
	ekI, ekR   *mlkem.EncapsulationKey768
	ekEph      []byte
	ctR        []byte
	sidI, sidR SessionID
	ctI, ctE   []byte
}

func (t *transcript) hash() []byte {
	h := sha256.New()
	h.Write([]byte(Label))
	h.Write(binary.BigEndian.AppendUint64(nil, t.epoch))
	for _, b := range [][]byte{t.wgI[:], t.wgR[:], t.ekI.Bytes(), t.ekR.Bytes(), t.ekEph, t.ctR, t.sidI[:], t.sidR[:], t.ctI, t.ctE} {
		h.Write(b)
	}
	return h.Sum(nil)
}

// secrets are the outputs of one exchange.
type secrets struct {
	psk              [wgtypes.KeyLen]byte
	tagR, tagI, tagA [tagSize]byte
}

// derive runs HKDF-SHA256 with the three KEM shared secrets as input key
// material (responder static, initiator static, ephemeral: an attacker must
// break all three, or steal both static keys and break the ephemeral) and
// the transcript hash as salt. The PSK and three confirmation keys are
// independent expansions; each tag is an HMAC of the transcript hash.
func derive(t *transcript, kR, kI, kE []byte) (*secrets, error) {
	th := t.hash()
	ikm := make([]byte, 0, 3*mlkem.SharedKeySize)
	ikm = append(append(append(ikm, kR...), kI...), kE...)
	defer clear(ikm)
	prk, err := hkdf.Extract(sha256.New, ikm, th)
	if err != nil {
		return nil, fmt.Errorf("derive: %w", err)
	}
	defer clear(prk)
	s := &secrets{}
	out := []struct {
		info string
		dst  []byte
		tag  bool
	}{
		{Label + " psk", s.psk[:], false},
		{Label + " responder confirm", s.tagR[:], true},
		{Label + " initiator confirm", s.tagI[:], true},
		{Label + " responder ack", s.tagA[:], true},
	}
	for _, o := range out {
		k, err := hkdf.Expand(sha256.New, prk, o.info, 32)
		if err != nil {
			return nil, fmt.Errorf("derive: %w", err)
		}
		if o.tag {
			m := hmac.New(sha256.New, k)
			m.Write(th)
			copy(o.dst, m.Sum(nil))
		} else {
			copy(o.dst, k)
		}
		clear(k)
	}
	return s, nil
}

func (s *secrets) wipe() {
	if s != nil {
		clear(s.psk[:])
	}
}

func tagEqual(a, b [tagSize]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }

// PSK is a derived WireGuard preshared key. Every formatting verb, %#v and
// slog print a fixed placeholder; Key hands the raw key to wgctrl only.
type PSK struct{ k wgtypes.Key }

// Key returns the raw key, for configuring the device only.
func (p PSK) Key() wgtypes.Key { return p.k }

// Equal compares two PSKs in constant time.
func (p PSK) Equal(q PSK) bool { return subtle.ConstantTimeCompare(p.k[:], q.k[:]) == 1 }

// IsZero reports whether p is unset.
func (p PSK) IsZero() bool { return p.Equal(PSK{}) }

func (p PSK) String() string { return "preshared key (redacted)" }

// GoString keeps %#v from dumping the key.
func (p PSK) GoString() string { return p.String() }

// Format implements fmt.Formatter so that %x, %d and friends cannot walk
// the struct and print its bytes.
func (p PSK) Format(f fmt.State, _ rune) { fmt.Fprint(f, p.String()) }

// LogValue implements slog.LogValuer.
func (p PSK) LogValue() slog.Value { return slog.StringValue(p.String()) }
