package pqexchange

import "errors"

// Errors name the check that failed and public identities only: never a
// key, a PSK or message bytes.
var (
	// Framing (Decode).
	ErrShort   = errors.New("pq exchange message: shorter than its header")
	ErrMagic   = errors.New("pq exchange message: bad magic")
	ErrVersion = errors.New("pq exchange message: unsupported version")
	ErrType    = errors.New("pq exchange message: unknown type")
	ErrLength  = errors.New("pq exchange message: wrong length for its type")

	// State machines.
	ErrWrongRole      = errors.New("pq exchange: the sender is not the initiator for this pair")
	ErrNotForUs       = errors.New("pq exchange: addressed to another node")
	ErrUnknownPeer    = errors.New("pq exchange: unknown peer")
	ErrStaleEpoch     = errors.New("pq exchange: epoch not newer than the last one (replay?)")
	ErrUnknownSession = errors.New("pq exchange: no exchange with these session ids (replay, or the responder restarted)")
	ErrBadTag         = errors.New("pq exchange: confirmation tag does not verify (tampered message or wrong static key)")
	ErrState          = errors.New("pq exchange: message not expected in this state")
	ErrDecapsulate    = errors.New("pq exchange: ciphertext does not decapsulate")

	// Transport (Node.Exchange). ErrNoAck: the responder never
	// acknowledged the Confirm, so it may or may not have installed the
	// PSK; this side did not. The next exchange (a new epoch) brings both
	// ends to the same PSK again.
	ErrNoResponse = errors.New("pq exchange: no response")
	ErrNoAck      = errors.New("pq exchange: no acknowledgement of the commit (outcome unknown on the responder)")
)
