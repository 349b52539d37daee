package pqexchange

import (
	"context"
	"crypto/mlkem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Peer is what a Node needs to know about a peer: its published static
// encapsulation key and the addresses its Node is reached at, in order of
// preference: its tunnel address first, its underlay address as the
// fallback. The exchange is secure over either (its secrecy and
// authentication come from the KEM keys), but it must not depend on the
// tunnel alone: with mismatched PSKs (a commit whose outcome the
// initiator never learned) WireGuard cannot make a new session, and once
// the current one expires only the underlay still reaches the peer to run
// the exchange that repairs it. Messages claiming to come from a peer are
// accepted only from one of its addresses: over the tunnel, WireGuard's
// cryptokey routing makes that source a (classically) authenticated
// identity.
type Peer struct {
	KEM   *mlkem.EncapsulationKey768
	Addrs []netip.AddrPort
	// Sources are further prefixes a message from the peer may come from:
	// its AllowedIPs (PodCIDRs). Over the tunnel a node sends from its
	// route's source (its bridge gateway), not from the address it is
	// reached at, and WireGuard has already checked that the source is one
	// of the peer's.
	Sources []netip.Prefix
}

// Config configures a Node.
type Config struct {
	Self Local
	// Addr is the local address to listen on. To be reachable over both
	// the tunnel and the underlay, the wildcard address with the exchange
	// port.
	Addr netip.AddrPort
	// Peers looks a peer up in the directory built from etcd.
	Peers func(wgtypes.Key) (Peer, bool)
	// Install puts a committed PSK on the WireGuard device. The responder
	// calls it before acknowledging, the initiator after the
	// acknowledgement, so that the initiator's handshake (Handshake) only
	// starts once both ends have the PSK.
	Install func(Result) error
	// Handshake, if set, makes the device start a WireGuard handshake with
	// peer now (wgdev.Initiate); the initiator calls it after Install.
	Handshake func(peer wgtypes.Key) error
	// Retransmit is the first retransmission timeout; it doubles per try.
	Retransmit time.Duration
	// Tries bounds the sends of one message.
	Tries int
	// Attempts bounds the exchanges (each with a fresh epoch) per Exchange.
	Attempts int
	Log      *slog.Logger
}

// Defaults: a message is sent up to 4 times, 250 ms, 500 ms, 1 s, 2 s
// apart (a lost packet costs a fraction of a second, a dead peer ~4 s per
// message), and an Exchange tries 3 fresh exchanges.
const (
	DefaultRetransmit = 250 * time.Millisecond
	DefaultTries      = 4
	DefaultAttempts   = 3
)

// maxMessage bounds reads: the largest message (Init) plus slack.
const maxMessage = 4096

// Node runs the exchange over one UDP socket: it answers as responder for
// the peers that initiate to it and runs Exchange as initiator.
type Node struct {
	cfg  Config
	conn *net.UDPConn

	mu      sync.Mutex
	self    Local // cfg.Self until SetSelf
	resp    *Responder
	waiting map[SessionID]chan any
	epochs  map[wgtypes.Key]uint64 // last epoch used as initiator, per peer
	now     func() time.Time
}

// Listen opens the socket. Serve must run for the Node to answer.
func Listen(cfg Config) (*Node, error) {
	if cfg.Peers == nil || cfg.Install == nil {
		return nil, errors.New("pq exchange: Peers and Install are required")
	}
	if cfg.Retransmit <= 0 {
		cfg.Retransmit = DefaultRetransmit
	}
	if cfg.Tries <= 0 {
		cfg.Tries = DefaultTries
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = DefaultAttempts
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(cfg.Addr))
	if err != nil {
		return nil, fmt.Errorf("pq exchange: listen on %s: %w", cfg.Addr, err)
	}
	n := &Node{cfg: cfg, conn: conn, waiting: map[SessionID]chan any{}, epochs: map[wgtypes.Key]uint64{}, now: time.Now}
	n.self = cfg.Self
	n.resp = n.newResponder()
	return n, nil
}

func (n *Node) newResponder() *Responder {
	return NewResponder(n.self, func(k wgtypes.Key) (*mlkem.EncapsulationKey768, bool) {
		p, ok := n.cfg.Peers(k)
		return p.KEM, ok
	})
}

// SetSelf changes this node's WireGuard identity (a key rotation; the
// ML-KEM key stays). Half-done responder exchanges under the old identity
// are dropped: their initiators retry under the new one.
func (n *Node) SetSelf(wg wgtypes.Key) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.self.WG = wg
	n.resp = n.newResponder()
}

func (n *Node) local() Local {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.self
}

// Addr is the bound address (with the port chosen if Config.Addr had 0).
func (n *Node) Addr() netip.AddrPort { return n.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close closes the socket; Serve returns.
func (n *Node) Close() error { return n.conn.Close() }

// Serve reads messages until ctx ends or the socket is closed. Invalid
// messages are dropped (logged at debug level, without their contents):
// anyone can send to the port, and an error must not end the loop.
func (n *Node) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { n.conn.Close() })
	defer stop()
	buf := make([]byte, maxMessage)
	for {
		sz, from, err := n.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("pq exchange: read on %s: %w", n.Addr(), err)
		}
		if err := n.handle(buf[:sz], from); err != nil {
			n.cfg.Log.Debug("pq exchange message dropped", "from", from, "err", err)
		}
	}
}

func (n *Node) handle(b []byte, from netip.AddrPort) error {
	msg, err := Decode(b)
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case *Init:
		if err := n.checkSource(m.Initiator, from); err != nil {
			return err
		}
		n.mu.Lock()
		reply, err := n.resp.HandleInit(m)
		n.mu.Unlock()
		if err != nil {
			return err
		}
		return n.send(reply, from)
	case *Confirm:
		n.mu.Lock()
		// Install runs under the lock: one commit at a time, and a
		// retransmitted Confirm waits for the install to finish.
		var committed *Result
		reply, err := n.resp.HandleConfirm(m, func(r Result) error {
			if err := n.cfg.Install(r); err != nil {
				return err
			}
			committed = &r
			return nil
		})
		n.mu.Unlock()
		if err != nil {
			return err
		}
		if committed != nil {
			n.cfg.Log.Info("post-quantum PSK installed", "peer", committed.Peer.String(), "epoch", committed.Epoch, "role", "responder")
		}
		return n.send(reply, from)
	case *Resp:
		return n.deliver(m.SidI, m)
	case *Ack:
		return n.deliver(m.SidI, m)
	}
	return nil
}

// checkSource accepts a message claiming to be from peer only from peer's
// address.
func (n *Node) checkSource(peer wgtypes.Key, from netip.AddrPort) error {
	p, ok := n.cfg.Peers(peer)
	if !ok {
		return fmt.Errorf("%w %s", ErrUnknownPeer, peer)
	}
	for _, a := range p.Addrs {
		if a.Addr().Unmap() == from.Addr().Unmap() {
			return nil
		}
	}
	for _, s := range p.Sources {
		if s.Contains(from.Addr().Unmap()) {
			return nil
		}
	}
	return fmt.Errorf("pq exchange: message for peer %s from %s, not one of its addresses", peer, from.Addr())
}

func (n *Node) deliver(sid SessionID, m any) error {
	n.mu.Lock()
	ch := n.waiting[sid]
	n.mu.Unlock()
	if ch == nil {
		return ErrUnknownSession
	}
	select {
	case ch <- m:
	default: // the exchange has a message to look at already
	}
	return nil
}

func (n *Node) send(b []byte, to netip.AddrPort) error {
	if _, err := n.conn.WriteToUDPAddrPort(b, to); err != nil {
		return fmt.Errorf("pq exchange: send to %s: %w", to, err)
	}
	return nil
}

// nextEpoch returns an epoch newer than any this node used with peer, and
// newer than any used before a restart as long as the clock does not go
// back: the wall clock in milliseconds, or last+1 if that is not larger.
func (n *Node) nextEpoch(peer wgtypes.Key) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := max(n.epochs[peer]+1, uint64(n.now().UnixMilli()))
	n.epochs[peer] = e
	return e
}

// Exchange runs the exchange with peer as initiator, up to Attempts times
// with a fresh epoch each, and on success has installed the PSK (after the
// responder acknowledged installing it) and called Handshake. Run one
// Exchange at a time per peer: a second one would replace the first's
// pending state on the responder.
func (n *Node) Exchange(ctx context.Context, peer wgtypes.Key) (Result, error) {
	if !Initiates(n.local().WG, peer) {
		return Result{}, fmt.Errorf("pq exchange with %s: %w", peer, ErrWrongRole)
	}
	var err error
	for attempt := 1; attempt <= n.cfg.Attempts; attempt++ {
		var res Result
		res, err = n.exchangeOnce(ctx, peer, attempt-1)
		if err == nil {
			return res, nil
		}
		if ctx.Err() != nil {
			break
		}
		n.cfg.Log.Info("pq exchange attempt failed", "peer", peer.String(), "attempt", attempt, "err", err)
	}
	return Result{}, fmt.Errorf("pq exchange with %s: %w", peer, err)
}

// exchangeOnce runs one exchange (one epoch) with peer, over the peer's
// addresses in turn: the first attempt over the first (the tunnel), the
// next over the next (the underlay), and so on round.
func (n *Node) exchangeOnce(ctx context.Context, peer wgtypes.Key, attempt int) (Result, error) {
	p, ok := n.cfg.Peers(peer)
	if !ok || len(p.Addrs) == 0 {
		return Result{}, fmt.Errorf("%w %s", ErrUnknownPeer, peer)
	}
	addr := p.Addrs[attempt%len(p.Addrs)]
	ini, err := NewInitiator(n.local(), Remote{WG: peer, KEM: p.KEM}, n.nextEpoch(peer))
	if err != nil {
		return Result{}, err
	}
	ch := make(chan any, 1)
	n.mu.Lock()
	n.waiting[ini.SessionID()] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.waiting, ini.SessionID())
		n.mu.Unlock()
	}()

	// Messages 1 and 2.
	var confirm []byte
	err = n.roundTrip(ctx, ch, ini.InitMessage, addr, ErrNoResponse, func(m any) (bool, error) {
		r, ok := m.(*Resp)
		if !ok {
			return false, nil
		}
		c, err := ini.HandleResp(r)
		if err != nil {
			return false, err
		}
		confirm = c
		return true, nil
	})
	if err != nil {
		return Result{}, err
	}
	// Messages 3 and 4.
	var res Result
	err = n.roundTrip(ctx, ch, func() []byte { return confirm }, addr, ErrNoAck, func(m any) (bool, error) {
		switch m := m.(type) {
		case *Resp:
			return false, nil // a late duplicate of message 2
		case *Ack:
			r, err := ini.HandleAck(m)
			if err != nil {
				return false, err
			}
			res = r
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return Result{}, err
	}
	if err := n.cfg.Install(res); err != nil {
		// The responder has the new PSK and we do not: handshakes fail
		// until the next exchange succeeds. Report it loudly.
		return Result{}, fmt.Errorf("install PSK for %s epoch %d after the responder did: %w", peer, res.Epoch, err)
	}
	n.cfg.Log.Info("post-quantum PSK installed", "peer", peer.String(), "epoch", res.Epoch, "role", "initiator")
	if n.cfg.Handshake != nil {
		if err := n.cfg.Handshake(peer); err != nil {
			n.cfg.Log.Warn("start handshake with the new PSK", "peer", peer.String(), "err", err)
		}
	}
	return res, nil
}

// roundTrip sends msg() to addr up to Tries times with doubling timeouts
// until accept takes a reply. A reply accept rejects (forged, tampered) is
// dropped and the wait goes on: an attacker's message must not end an
// exchange that the genuine reply can still complete. The last rejection
// is reported if no reply is accepted.
func (n *Node) roundTrip(ctx context.Context, ch chan any, msg func() []byte, addr netip.AddrPort, timeoutErr error, accept func(any) (bool, error)) error {
	wait := n.cfg.Retransmit
	var rejected error
	for try := 0; try < n.cfg.Tries; try++ {
		if err := n.send(msg(), addr); err != nil {
			return err
		}
		t := time.NewTimer(wait)
	recv:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
				break recv
			case m := <-ch:
				ok, err := accept(m)
				if err != nil {
					rejected = err
					continue
				}
				if ok {
					t.Stop()
					return nil
				}
			}
		}
		wait *= 2
	}
	if rejected != nil {
		return fmt.Errorf("%w; last reply rejected: %w", timeoutErr, rejected)
	}
	return timeoutErr
}
