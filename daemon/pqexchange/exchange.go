// Package pqexchange derives a fresh WireGuard preshared key for a pair of
// nodes from a post-quantum key exchange in the spirit of Rosenpass: each
// side encapsulates to the other's static ML-KEM-768 key (as published in
// etcd) and the responder encapsulates to an ephemeral key of the
// initiator, so that the PSK is authenticated by the static keys and
// forward secret through the ephemeral one. Four messages:
//
//	1 Init     I → R  epoch, sidI, identities, ephemeral key, ct to R's static key
//	2 Resp     R → I  sidI, sidR, ct to I's static key, ct to ephemeral, tagR
//	3 Confirm  I → R  tagI: I has the PSK and asks R to install it
//	4 Ack      R → I  tagA: R has installed it; I installs and handshakes
//
// Initiator and Responder are the state machines, free of I/O; Node runs
// them over UDP. docs/post-quantum.md has the protocol, its threat model
// and how the switch to a new PSK avoids mismatched handshakes.
package pqexchange

import (
	"bytes"
	"crypto/mlkem"
	"crypto/rand"
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/pqkeys"
)

// Local is this node's identity: its WireGuard public key and its static
// ML-KEM key pair.
type Local struct {
	WG  wgtypes.Key
	KEM pqkeys.Private
}

// Remote is a peer's identity as published in etcd.
type Remote struct {
	WG  wgtypes.Key
	KEM *mlkem.EncapsulationKey768
}

// Result is a committed exchange: the PSK for the pair at Epoch.
type Result struct {
	Peer      wgtypes.Key
	Epoch     uint64
	PSK       PSK
	Initiator bool // this side was the initiator
}

// Initiates reports whether self initiates the exchange with peer: the
// side with the smaller WireGuard public key does, so exactly one
// exchange per pair is in flight and two can never cross.
func Initiates(self, peer wgtypes.Key) bool { return bytes.Compare(self[:], peer[:]) < 0 }

// Initiator runs one exchange from the initiating side.
type Initiator struct {
	self    Local
	peer    Remote
	init    Init
	initMsg []byte
	eph     *mlkem.DecapsulationKey768
	kR      []byte

	sidR       SessionID
	confirmMsg []byte
	sec        *secrets
	done       bool
}

// NewInitiator starts an exchange with peer at epoch, which must be newer
// than any epoch this node used with peer before (Node takes care of it).
func NewInitiator(self Local, peer Remote, epoch uint64) (*Initiator, error) {
	if peer.KEM == nil {
		return nil, fmt.Errorf("pq exchange with %s: %w (no ML-KEM key published)", peer.WG, ErrUnknownPeer)
	}
	eph, err := mlkem.GenerateKey768()
	if err != nil {
		return nil, fmt.Errorf("pq exchange: generate ephemeral key: %w", err)
	}
	i := &Initiator{self: self, peer: peer, eph: eph}
	i.init.Epoch = epoch
	rand.Read(i.init.SidI[:])
	i.init.Initiator, i.init.Responder = self.WG, peer.WG
	copy(i.init.Ephemeral[:], eph.EncapsulationKey().Bytes())
	kR, ct := peer.KEM.Encapsulate()
	i.kR = kR
	copy(i.init.CtResponder[:], ct)
	i.initMsg = i.init.Marshal()
	return i, nil
}

// InitMessage is message 1 (the same bytes on every retransmission).
func (i *Initiator) InitMessage() []byte { return i.initMsg }

// SessionID is the initiator's session id, which replies carry.
func (i *Initiator) SessionID() SessionID { return i.init.SidI }

// Epoch is the exchange's epoch.
func (i *Initiator) Epoch() uint64 { return i.init.Epoch }

// HandleResp checks message 2 and returns message 3. A retransmitted
// message 2 (same bytes) gets the same message 3.
func (i *Initiator) HandleResp(m *Resp) ([]byte, error) {
	if m.SidI != i.init.SidI {
		return nil, ErrUnknownSession
	}
	if i.sec != nil {
		if m.SidR == i.sidR && tagEqual(m.Tag, i.sec.tagR) {
			return i.confirmMsg, nil
		}
		return nil, ErrState
	}
	kI, err := i.self.KEM.Decapsulation().Decapsulate(m.CtInitiator[:])
	if err != nil {
		return nil, ErrDecapsulate
	}
	defer clear(kI)
	kE, err := i.eph.Decapsulate(m.CtEphemeral[:])
	if err != nil {
		return nil, ErrDecapsulate
	}
	defer clear(kE)
	t := &transcript{
		epoch: i.init.Epoch, wgI: i.self.WG, wgR: i.peer.WG,
		ekI: i.self.KEM.Public(), ekR: i.peer.KEM,
		ekEph: i.init.Ephemeral[:], ctR: i.init.CtResponder[:],
		sidI: m.SidI, sidR: m.SidR, ctI: m.CtInitiator[:], ctE: m.CtEphemeral[:],
	}
	sec, err := derive(t, i.kR, kI, kE)
	if err != nil {
		return nil, err
	}
	// tagR verifies only if R decapsulated ctR with its static key: it
	// authenticates R. Our tagI in turn proves we decapsulated ctI.
	if !tagEqual(m.Tag, sec.tagR) {
		sec.wipe()
		return nil, ErrBadTag
	}
	// Forward secrecy: the ephemeral key and kR are no longer needed.
	i.eph = nil
	clear(i.kR)
	i.sec, i.sidR = sec, m.SidR
	c := Confirm{SidI: m.SidI, SidR: m.SidR, Tag: sec.tagI}
	i.confirmMsg = c.Marshal()
	return i.confirmMsg, nil
}

// ConfirmMessage is message 3 once HandleResp succeeded, for retransmission.
func (i *Initiator) ConfirmMessage() []byte { return i.confirmMsg }

// HandleAck checks message 4: the responder has installed the PSK. The
// result is for this side to install now, then to start a WireGuard
// handshake.
func (i *Initiator) HandleAck(m *Ack) (Result, error) {
	if i.sec == nil || i.done {
		return Result{}, ErrState
	}
	if m.SidI != i.init.SidI || m.SidR != i.sidR {
		return Result{}, ErrUnknownSession
	}
	if !tagEqual(m.Tag, i.sec.tagA) {
		return Result{}, ErrBadTag
	}
	i.done = true
	res := Result{Peer: i.peer.WG, Epoch: i.init.Epoch, PSK: PSK{wgtypes.Key(i.sec.psk)}, Initiator: true}
	i.sec.wipe()
	return res, nil
}

// Responder answers exchanges from every peer that initiates to this node.
// It keeps at most one exchange in flight per peer and the last committed
// one (to answer a retransmitted Confirm whose Ack was lost).
type Responder struct {
	self      Local
	lookup    func(wgtypes.Key) (*mlkem.EncapsulationKey768, bool)
	pending   map[wgtypes.Key]*respSession
	bySid     map[SessionID]wgtypes.Key
	committed map[wgtypes.Key]*respSession
}

type respSession struct {
	peer       wgtypes.Key
	epoch      uint64
	sidI, sidR SessionID
	respMsg    []byte
	ackMsg     []byte
	sec        *secrets
}

// NewResponder answers for self; lookup returns a peer's published static
// encapsulation key.
func NewResponder(self Local, lookup func(wgtypes.Key) (*mlkem.EncapsulationKey768, bool)) *Responder {
	return &Responder{
		self: self, lookup: lookup,
		pending:   map[wgtypes.Key]*respSession{},
		bySid:     map[SessionID]wgtypes.Key{},
		committed: map[wgtypes.Key]*respSession{},
	}
}

// HandleInit checks message 1 and returns message 2. Nothing is installed
// at this point.
func (r *Responder) HandleInit(m *Init) ([]byte, error) {
	if m.Responder != r.self.WG {
		return nil, ErrNotForUs
	}
	if !Initiates(m.Initiator, r.self.WG) {
		return nil, ErrWrongRole
	}
	ekI, ok := r.lookup(m.Initiator)
	if !ok || ekI == nil {
		return nil, fmt.Errorf("%w %s", ErrUnknownPeer, m.Initiator)
	}
	if p := r.pending[m.Initiator]; p != nil {
		if p.sidI == m.SidI && p.epoch == m.Epoch {
			return p.respMsg, nil // retransmitted Init
		}
		if m.Epoch <= p.epoch {
			return nil, ErrStaleEpoch
		}
	}
	if c := r.committed[m.Initiator]; c != nil && m.Epoch <= c.epoch {
		return nil, ErrStaleEpoch
	}
	ekEph, err := mlkem.NewEncapsulationKey768(m.Ephemeral[:])
	if err != nil {
		return nil, fmt.Errorf("pq exchange: invalid ephemeral key from %s", m.Initiator)
	}
	kR, err := r.self.KEM.Decapsulation().Decapsulate(m.CtResponder[:])
	if err != nil {
		return nil, ErrDecapsulate
	}
	defer clear(kR)
	kI, ctI := ekI.Encapsulate()
	defer clear(kI)
	kE, ctE := ekEph.Encapsulate()
	defer clear(kE)
	s := &respSession{peer: m.Initiator, epoch: m.Epoch, sidI: m.SidI}
	rand.Read(s.sidR[:])
	t := &transcript{
		epoch: m.Epoch, wgI: m.Initiator, wgR: r.self.WG,
		ekI: ekI, ekR: r.self.KEM.Public(),
		ekEph: m.Ephemeral[:], ctR: m.CtResponder[:],
		sidI: m.SidI, sidR: s.sidR, ctI: ctI, ctE: ctE,
	}
	if s.sec, err = derive(t, kR, kI, kE); err != nil {
		return nil, err
	}
	resp := Resp{SidI: m.SidI, SidR: s.sidR, Tag: s.sec.tagR}
	copy(resp.CtInitiator[:], ctI)
	copy(resp.CtEphemeral[:], ctE)
	s.respMsg = resp.Marshal()
	r.drop(m.Initiator)
	r.pending[m.Initiator] = s
	r.bySid[s.sidR] = m.Initiator
	return s.respMsg, nil
}

func (r *Responder) drop(peer wgtypes.Key) {
	if p := r.pending[peer]; p != nil {
		p.sec.wipe()
		delete(r.bySid, p.sidR)
		delete(r.pending, peer)
	}
}

// HandleConfirm checks message 3. For a new commit it calls install with
// the result and, only if that succeeded, records the epoch as committed
// and returns message 4: the Ack is the promise that this side has the
// PSK installed. A retransmitted Confirm of the committed exchange gets the
// same Ack again without a second install.
func (r *Responder) HandleConfirm(m *Confirm, install func(Result) error) ([]byte, error) {
	peer, ok := r.bySid[m.SidR]
	if !ok {
		for _, c := range r.committed {
			if c.sidR == m.SidR && c.sidI == m.SidI {
				if !tagEqual(m.Tag, c.sec.tagI) {
					return nil, ErrBadTag
				}
				return c.ackMsg, nil
			}
		}
		return nil, ErrUnknownSession
	}
	s := r.pending[peer]
	if s.sidI != m.SidI {
		return nil, ErrUnknownSession
	}
	if !tagEqual(m.Tag, s.sec.tagI) {
		return nil, ErrBadTag
	}
	res := Result{Peer: peer, Epoch: s.epoch, PSK: PSK{wgtypes.Key(s.sec.psk)}}
	if err := install(res); err != nil {
		return nil, fmt.Errorf("install PSK for %s epoch %d: %w", peer, s.epoch, err)
	}
	a := Ack{SidI: s.sidI, SidR: s.sidR, Tag: s.sec.tagA}
	s.ackMsg = a.Marshal()
	s.sec.wipe() // the PSK is on the device now; only the tags stay
	delete(r.bySid, s.sidR)
	delete(r.pending, peer)
	r.committed[peer] = s
	return s.ackMsg, nil
}

// Committed returns the last committed epoch with peer (0 if none).
func (r *Responder) Committed(peer wgtypes.Key) uint64 {
	if c := r.committed[peer]; c != nil {
		return c.epoch
	}
	return 0
}

// Forget drops all state about peer (it left the cluster).
func (r *Responder) Forget(peer wgtypes.Key) {
	r.drop(peer)
	delete(r.committed, peer)
}
