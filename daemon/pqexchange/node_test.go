package pqexchange

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

// testNode is a Node on loopback recording what it installs.
type testNode struct {
	*Node
	id  Local
	log *bytes.Buffer

	mu        sync.Mutex
	installed []Result
	handshook []wgtypes.Key
}

func (n *testNode) installs() []Result {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Result(nil), n.installed...)
}

// startNode runs a Node for id at addr; peers maps a peer to where this
// node reaches it. The node stops at test end (or when stop is called).
func startNode(t *testing.T, id Local, addr netip.AddrPort, peers map[wgtypes.Key]Peer) (*testNode, func()) {
	t.Helper()
	tn := &testNode{id: id, log: &bytes.Buffer{}}
	var logMu sync.Mutex
	n, err := Listen(Config{
		Self: id, Addr: addr,
		Peers: func(k wgtypes.Key) (Peer, bool) { p, ok := peers[k]; return p, ok },
		Install: func(r Result) error {
			tn.mu.Lock()
			defer tn.mu.Unlock()
			tn.installed = append(tn.installed, r)
			return nil
		},
		Handshake: func(k wgtypes.Key) error {
			tn.mu.Lock()
			defer tn.mu.Unlock()
			tn.handshook = append(tn.handshook, k)
			return nil
		},
		Retransmit: 50 * time.Millisecond, Tries: 4, Attempts: 3,
		Log: slog.New(slog.NewTextHandler(lockedWriter{&logMu, tn.log}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	tn.Node = n
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(stop)
	return tn, stop
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// proxy sits between initiator and responder on loopback and lets a test
// drop, alter or act on each message. filter returns the bytes to forward
// (nil drops).
type proxy struct {
	conn      *net.UDPConn
	initiator netip.AddrPort // messages from here go to the responder
	responder netip.AddrPort
	filter    func(toResponder bool, b []byte) []byte
}

func startProxy(t *testing.T, initiator, responder netip.AddrPort, filter func(bool, []byte) []byte) *proxy {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{conn: c, initiator: initiator, responder: responder, filter: filter}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxMessage)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b := append([]byte(nil), buf[:n]...)
			toResponder := from == p.initiator
			if b = p.filter(toResponder, b); b == nil {
				continue
			}
			to := p.initiator
			if toResponder {
				to = p.responder
			}
			c.WriteToUDPAddrPort(b, to)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return p
}

func (p *proxy) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// pair starts a responder node and an initiator node that reaches it
// through a proxy (if filter is set) or directly.
func pair(t *testing.T, filter func(bool, []byte) []byte) (ini, resp *testNode, respStop func(), p *proxy) {
	t.Helper()
	i, r := newPair(t)
	// The initiator's address is known before its socket exists only by
	// binding it first; bind both, then tell each about the other.
	iConn, _ := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	iAddr := iConn.LocalAddr().(*net.UDPAddr).AddrPort()
	iConn.Close()
	resp, respStop = startNode(t, r, loopback, map[wgtypes.Key]Peer{i.WG: {KEM: i.KEM.Public(), Addrs: []netip.AddrPort{iAddr}}})
	target := resp.Addr()
	if filter != nil {
		p = startProxy(t, iAddr, resp.Addr(), filter)
		target = p.addr()
	}
	ini, _ = startNode(t, i, iAddr, map[wgtypes.Key]Peer{r.WG: {KEM: r.KEM.Public(), Addrs: []netip.AddrPort{target}}})
	return ini, resp, respStop, p
}

func TestNodesAgreeOverUDPAndRotate(t *testing.T) {
	ini, resp, _, _ := pair(t, nil)
	var prev []Result
	for round := 0; round < 3; round++ {
		res, err := ini.Exchange(context.Background(), resp.id.WG)
		if err != nil {
			t.Fatal(err)
		}
		ri, rr := ini.installs(), resp.installs()
		if len(ri) != round+1 || len(rr) != round+1 {
			t.Fatalf("round %d: %d / %d installs", round, len(ri), len(rr))
		}
		a, b := ri[round], rr[round]
		if !a.PSK.Equal(b.PSK) || !a.PSK.Equal(res.PSK) || a.Epoch != b.Epoch {
			t.Fatalf("round %d: the nodes installed different PSKs or epochs (%d, %d)", round, a.Epoch, b.Epoch)
		}
		for _, p := range prev {
			if p.PSK.Equal(a.PSK) || p.Epoch >= a.Epoch {
				t.Fatalf("round %d: PSK repeated or epoch not increasing", round)
			}
		}
		prev = append(prev, a)
	}
	if len(ini.handshook) != 3 || ini.handshook[0] != resp.id.WG || len(resp.handshook) != 0 {
		t.Fatalf("handshakes started: initiator %d, responder %d; want 3 by the initiator only", len(ini.handshook), len(resp.handshook))
	}
	// The responder does not initiate to the initiator.
	if _, err := resp.Exchange(context.Background(), ini.id.WG); !errors.Is(err, ErrWrongRole) {
		t.Fatalf("responder initiating: %v", err)
	}
}

// TestLostAckIsRetransmitted: the responder installs on Confirm; losing
// its Ack makes the initiator retransmit Confirm, and the responder acks
// again without installing twice.
func TestLostAckIsRetransmitted(t *testing.T) {
	var mu sync.Mutex
	dropped := 0
	ini, resp, _, _ := pair(t, func(toResponder bool, b []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		if typ, _ := PeekType(b); typ == TypeAck && dropped < 2 {
			dropped++
			return nil
		}
		return b
	})
	if _, err := ini.Exchange(context.Background(), resp.id.WG); err != nil {
		t.Fatal(err)
	}
	ri, rr := ini.installs(), resp.installs()
	mu.Lock()
	defer mu.Unlock()
	if dropped != 2 || len(ri) != 1 || len(rr) != 1 || !ri[0].PSK.Equal(rr[0].PSK) {
		t.Fatalf("dropped %d acks; installs %d / %d", dropped, len(ri), len(rr))
	}
}

// TestTamperedRepliesNeverInstall: every Resp altered in transit. The
// initiator rejects each, installs nothing, and says why.
func TestTamperedRepliesNeverInstall(t *testing.T) {
	ini, resp, _, _ := pair(t, func(toResponder bool, b []byte) []byte {
		if typ, _ := PeekType(b); typ == TypeResp {
			b[len(b)-1] ^= 1
		}
		return b
	})
	_, err := ini.Exchange(context.Background(), resp.id.WG)
	if !errors.Is(err, ErrNoResponse) || !errors.Is(err, ErrBadTag) {
		t.Fatalf("err = %v; want no response with the last reply rejected for its tag", err)
	}
	if len(ini.installs()) != 0 || len(resp.installs()) != 0 {
		t.Fatal("a PSK was installed")
	}
}

// TestResponderRestartMidExchange: the responder restarts (losing its
// state) after answering Init and before Confirm arrives. The restarted
// responder does not know the session; the initiator gets no Ack, starts
// a fresh exchange with a new epoch, and both end with the same PSK.
func TestResponderRestartMidExchange(t *testing.T) {
	var (
		mu        sync.Mutex
		restarted bool
		stopOld   func()
		restart   func() *testNode
		newResp   *testNode
	)
	ini, resp, stop, p := pair(t, func(toResponder bool, b []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		if typ, _ := PeekType(b); typ == TypeConfirm && !restarted {
			restarted = true
			stopOld()
			newResp = restart()
		}
		return b
	})
	mu.Lock()
	stopOld = stop
	restart = func() *testNode {
		n, _ := startNode(t, resp.id, resp.Addr(), map[wgtypes.Key]Peer{ini.id.WG: {KEM: ini.id.KEM.Public(), Addrs: []netip.AddrPort{p.initiator}}})
		return n
	}
	mu.Unlock()
	res, err := ini.Exchange(context.Background(), resp.id.WG)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !restarted || len(resp.installs()) != 0 {
		t.Fatalf("restarted=%v, old responder installs %d", restarted, len(resp.installs()))
	}
	rr := newResp.installs()
	if len(rr) != 1 || !rr[0].PSK.Equal(res.PSK) || rr[0].Epoch != res.Epoch || len(ini.installs()) != 1 {
		t.Fatalf("after restart: responder installs %d, initiator installs %d", len(rr), len(ini.installs()))
	}
}

// TestFallsBackToTheNextAddress: the peer's first address (its tunnel
// address, say, with no WireGuard session) swallows everything; the next
// attempt goes to its second address (the underlay) and succeeds.
func TestFallsBackToTheNextAddress(t *testing.T) {
	ini, resp, _, _ := pair(t, nil)
	var mu sync.Mutex
	swallowed := 0
	hole := startProxy(t, ini.Addr(), resp.Addr(), func(bool, []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		swallowed++
		return nil
	})
	peers := map[wgtypes.Key]Peer{resp.id.WG: {KEM: resp.id.KEM.Public(), Addrs: []netip.AddrPort{hole.addr(), resp.Addr()}}}
	ini2, _ := startNode(t, ini.id, loopback, peers)
	// resp knows ini at 127.0.0.1 (any port), which ini2 also sends from.
	res, err := ini2.Exchange(context.Background(), resp.id.WG)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if swallowed != ini2.cfg.Tries || len(resp.installs()) != 1 || !resp.installs()[0].PSK.Equal(res.PSK) {
		t.Fatalf("swallowed %d Inits (want %d), responder installs %d", swallowed, ini2.cfg.Tries, len(resp.installs()))
	}
}

// TestMessagesFromTheWrongAddressIgnored: an Init claiming to be from a
// peer but sent from another address gets no answer.
func TestMessagesFromTheWrongAddressIgnored(t *testing.T) {
	ini, resp, _, _ := pair(t, nil)
	x, _ := NewInitiator(ini.id, remote(resp.id), 1)
	err := resp.handle(x.InitMessage(), netip.MustParseAddrPort("127.0.0.9:5000"))
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("not one of its addresses")) {
		t.Fatalf("err = %v", err)
	}
}

// TestReplayOverUDPIgnored: the Init and Confirm of a committed exchange,
// captured on the wire and sent again later from the peer's address, are
// refused and install nothing.
func TestReplayOverUDPIgnored(t *testing.T) {
	var mu sync.Mutex
	captured := map[Type][]byte{}
	ini, resp, _, _ := pair(t, func(toResponder bool, b []byte) []byte {
		mu.Lock()
		defer mu.Unlock()
		if typ, _ := PeekType(b); captured[typ] == nil {
			captured[typ] = append([]byte(nil), b...)
		}
		return b
	})
	for range 2 {
		if _, err := ini.Exchange(context.Background(), resp.id.WG); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if err := resp.handle(captured[TypeInit], ini.Addr()); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("replayed Init: %v", err)
	}
	if err := resp.handle(captured[TypeConfirm], ini.Addr()); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("replayed Confirm: %v", err)
	}
	if len(resp.installs()) != 2 {
		t.Fatalf("%d installs, want 2", len(resp.installs()))
	}
}

// TestSetSelfExchangesUnderTheNewKey: after SetSelf (a WireGuard key
// rotation) a Node initiates under its new key, and the responder, which
// knows the new key from its directory, installs the PSK for it; both ends
// derive the same PSK.
func TestSetSelfExchangesUnderTheNewKey(t *testing.T) {
	i, r := newPair(t)
	var newKey wgtypes.Key
	for {
		priv, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		if newKey = priv.PublicKey(); Initiates(newKey, r.WG) {
			break
		}
	}
	iConn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	iAddr := iConn.LocalAddr().(*net.UDPAddr).AddrPort()
	iConn.Close()
	asI := Peer{KEM: i.KEM.Public(), Addrs: []netip.AddrPort{iAddr}}
	resp, _ := startNode(t, r, loopback, map[wgtypes.Key]Peer{i.WG: asI, newKey: asI})
	ini, _ := startNode(t, i, iAddr, map[wgtypes.Key]Peer{r.WG: {KEM: r.KEM.Public(), Addrs: []netip.AddrPort{resp.Addr()}}})
	for round, want := range []wgtypes.Key{i.WG, newKey} {
		if round == 1 {
			ini.SetSelf(newKey)
		}
		res, err := ini.Exchange(context.Background(), r.WG)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		rr := resp.installs()
		if len(rr) != round+1 {
			t.Fatalf("round %d: responder installed %d PSKs, want %d", round, len(rr), round+1)
		}
		if got := rr[round].Peer; got != want {
			t.Fatalf("round %d: responder installed for %s, want %s", round, got, want)
		}
		if !rr[round].PSK.Equal(res.PSK) {
			t.Fatalf("round %d: the ends derived different PSKs", round)
		}
	}
}
