// Package pqpeer runs wgcnid's post-quantum preshared keys: one
// pqexchange.Node per daemon, answering every peer that initiates to it and
// initiating, every Interval, to every peer it is the initiator for (the
// smaller WireGuard key of the pair). A committed exchange's PSK goes onto
// the device peer through wgctrl (UpdateOnly: the reconciler's own configs
// leave the PSK alone). The reconciler asks, through mesh.PQHooks, whether
// a peer is held (required mode, no PSK yet) and what PSK a re-created
// peer entry gets. docs/post-quantum.md has the protocol and the rules.
package pqpeer

import (
	"context"
	"crypto/mlkem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/pqexchange"
	"github.com/wgcni/wgcni/daemon/pqkeys"
)

// Device is the part of wgctrl.Client the manager uses.
type Device interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

// Config configures a Manager.
type Config struct {
	// Required: a peer without a current PSK is held (its pod traffic
	// dropped).
	Required bool
	// MaxAge (required mode): a PSK older than this is not current any
	// more; its peer is held until a fresh exchange succeeds. 0: never.
	MaxAge   time.Duration
	Interval time.Duration
	Port     int
	Device   string
	WG       Device
	Self     wgtypes.Key
	KEM      pqkeys.Private
	// Peers returns the peers configured by the reconciler.
	Peers func() map[wgtypes.Key]mesh.PeerInfo
	// Handshake starts a WireGuard handshake with a peer that has no
	// session (wgdev.Initiate); optional.
	Handshake func(peer wgtypes.Key, keepalive time.Duration) error
	// SelfUnreachable reports that this node sits behind a NAT
	// (daemon/nat); optional. Its messages over the underlay then come
	// from the NAT's address, which no peer can attribute to it.
	SelfUnreachable func() bool
	// StatusFile, if set, receives the per-peer state for wgcnictl.
	StatusFile string
	Log        *slog.Logger
}

// maxParallel bounds concurrent exchanges as initiator.
const maxParallel = 8

// peerState is what the manager knows about one peer. Owned under mu.
type peerState struct {
	info      mesh.PeerInfo
	kem       *mlkem.EncapsulationKey768
	psk       wgtypes.Key
	has       bool
	epoch     uint64 // 0: found on the device at start
	installed time.Time
	first     time.Time // when the current run of PSKs began (FirstPSK)
	// releaseAt: required mode releases the peer (and FirstPSK reports
	// first) from then on; see releaseSettle.
	releaseAt time.Time
	exchanges int64
	failures  int64
	streak    int // consecutive failed exchanges
	lastErr   string
	next      time.Time // next exchange (initiator side)
	running   bool
	// handshakeDue: the first PSK was just installed; the initiator's
	// Handshake call makes the first handshake now.
	handshakeDue bool
	// stale: held for age (required mode), as last told to the
	// reconciler; checkAge and install flip it and signal holdChanged.
	stale bool
}

// releaseSettle is how long after its first PSK each end keeps the peer
// held (required mode). The responder of the exchange installs first and
// acks; the initiator installs only when the ack arrives. Released at
// once, the responder would drop the session from before the PSK
// (re-create the entry, mesh.PQHooks.FirstPSK) a millisecond after sending
// the ack — which the old entry still held, so the ack was lost with it —
// and initiate with the PSK before the initiator had it, an initiation
// answered with the old PSK and dropped. Either left the pair's tunnel
// broken for seconds, and every exchange relayed through it lost
// (TestNATWithPostQuantum/required). A second covers the ack's way and one
// retransmission of the commit. The initiator waits as long, so that the
// two ends release together: an end released a second before the other
// sends probes and pod traffic that the held end cannot answer, which
// reads as a one-way link and gets "repaired" (TestRequiredHoldsAgainAfterMaxAge).
const releaseSettle = time.Second

// holds is required mode's rule for one peer at now: held without a PSK,
// and held when the last successful exchange (installed) is more than
// maxAge ago — a PSK that stopped rotating no longer counts as current, so
// a blocked exchange cannot leave pod traffic on an old PSK forever.
// And held until releaseAt (releaseSettle).
func holds(has bool, installed, releaseAt, now time.Time, maxAge time.Duration) bool {
	return !has || (maxAge > 0 && now.Sub(installed) > maxAge) || now.Before(releaseAt)
}

// Manager runs the exchanges; build it with New, then Run.
type Manager struct {
	cfg  Config
	node *pqexchange.Node

	mu    sync.Mutex
	self  wgtypes.Key // cfg.Self until SetSelf (a key rotation)
	peers map[wgtypes.Key]*peerState

	peersChanged chan struct{}
	holdChanged  chan struct{}
	wake         chan struct{}
	sem          chan struct{}
	changes      atomic.Int64 // bumped on every state change; the status file follows
}

// New opens the exchange socket (wildcard address, cfg.Port: reachable over
// the tunnel and the underlay) and takes the PSKs already on the device (a
// restarted daemon adopts its device, and its PSKs with it: only this
// package ever sets one), so a restart holds no peer in required mode.
func New(cfg Config) (*Manager, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, self: cfg.Self, peers: map[wgtypes.Key]*peerState{},
		peersChanged: make(chan struct{}, 1), holdChanged: make(chan struct{}, 1), wake: make(chan struct{}, 1),
		sem: make(chan struct{}, maxParallel)}
	dev, err := cfg.WG.Device(cfg.Device)
	if err != nil {
		return nil, fmt.Errorf("post-quantum: read WireGuard device %s: %w", cfg.Device, err)
	}
	now := time.Now()
	for _, p := range dev.Peers {
		if p.PresharedKey != (wgtypes.Key{}) {
			m.peers[p.PublicKey] = &peerState{psk: p.PresharedKey, has: true, installed: now, first: now}
		}
	}
	m.node, err = pqexchange.Listen(pqexchange.Config{
		Self:      pqexchange.Local{WG: cfg.Self, KEM: cfg.KEM},
		Addr:      netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(cfg.Port)),
		Peers:     m.lookup,
		Install:   m.install,
		Handshake: m.handshake,
		Log:       cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Hooks are the reconciler's side (mesh.Config.PQ).
func (m *Manager) Hooks() mesh.PQHooks {
	h := mesh.PQHooks{PresharedKey: m.PresharedKey, PeersChanged: m.PeersChanged, Carry: m.Carry}
	if m.cfg.Required {
		h.Hold, h.HoldChanged, h.FirstPSK = m.Hold, m.holdChanged, m.FirstPSK
	}
	return h
}

// Hold reports that peer has no current PSK (required mode holds its
// PodCIDRs): none at all, or one older than MaxAge.
func (m *Manager) Hold(peer wgtypes.Key) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.peers[peer]
	return st == nil || holds(st.has, st.installed, st.releaseAt, time.Now(), m.cfg.MaxAge)
}

// checkAge holds the peers whose PSK just became older than MaxAge and
// tells the reconciler (required mode; install releases them).
func (m *Manager) checkAge(now time.Time) {
	if !m.cfg.Required || m.cfg.MaxAge <= 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	for k, st := range m.peers {
		if !st.has || st.stale || !holds(st.has, st.installed, time.Time{}, now, m.cfg.MaxAge) {
			continue
		}
		st.stale, changed = true, true
		m.cfg.Log.Warn("post-quantum: peer's PSK is older than --pq-max-age; its pod traffic is held until an exchange succeeds", "peer", k.String(), "peer_node", st.info.Node,
			"age", now.Sub(st.installed).Round(time.Second), "max_age", m.cfg.MaxAge, "last_err", st.lastErr)
	}
	if changed {
		m.changes.Add(1)
		signal(m.holdChanged)
	}
}

// PresharedKey is the PSK a (re)created entry for peer gets.
func (m *Manager) PresharedKey(peer wgtypes.Key) (wgtypes.Key, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.peers[peer]; st != nil && st.has {
		return st.psk, true
	}
	return wgtypes.Key{}, false
}

// FirstPSK reports since when peer has had a PSK (its first install, or
// the daemon's start for a PSK adopted from the device); false without
// one. NAT traversal (daemon/nat) in required mode lets a punched direct
// path carry traffic only through a session made after it.
func (m *Manager) FirstPSK(peer wgtypes.Key) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.peers[peer]; st != nil && st.has && !time.Now().Before(st.releaseAt) {
		return st.first, true
	}
	return time.Time{}, false
}

// Carry moves the pair's PSK to peer's new WireGuard key when the node
// behind it rotated its key (same node name, same ML-KEM key: the same
// static identity the PSK was agreed with). The PSK stays secret whatever
// the WireGuard key; the rotating node keeps it on its entry for us, so
// both ends' first handshake under the new key uses the same PSK. The new
// key's state is fresh otherwise: syncPeers schedules an exchange under
// the new identities and drops the old key's state.
func (m *Manager) Carry(peer wgtypes.Key, node, pqPublicKey string) {
	if pqPublicKey == "" || node == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.peers[peer] != nil {
		return
	}
	for k, st := range m.peers {
		if k == peer || !st.has || st.info.Node != node || st.info.PQPublicKey != pqPublicKey {
			continue
		}
		m.peers[peer] = &peerState{psk: st.psk, has: true, epoch: st.epoch, installed: st.installed, first: st.first, stale: st.stale}
		m.changes.Add(1)
		m.cfg.Log.Info("post-quantum: peer's WireGuard key changed (same node, same ML-KEM key); its PSK carries over until an exchange under the new key",
			"peer", peer.String(), "old_peer", k.String(), "peer_node", node)
		return
	}
}

// SetSelf switches to this node's new WireGuard key (wgcnid rotate-key),
// once it is published: the exchange identifies both ends by their keys,
// so every pair runs a fresh exchange under the new identity soon. The
// PSKs on the device stay (the peers carry them to our new key, Carry).
func (m *Manager) SetSelf(key wgtypes.Key) {
	m.node.SetSelf(key)
	m.mu.Lock()
	m.self = key
	now := time.Now()
	for k, st := range m.peers {
		if st.kem != nil && pqexchange.Initiates(key, k) {
			st.next = now.Add(rand.N(time.Second))
		}
	}
	m.changes.Add(1)
	m.mu.Unlock()
	signal(m.wake)
}

// PeersChanged tells the manager to re-read the reconciler's peers.
func (m *Manager) PeersChanged() { signal(m.peersChanged) }

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Run serves the exchange and runs the schedule until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- m.node.Serve(ctx) }()
	m.syncPeers()
	// Re-check the device's PSKs now and then: an entry re-created
	// between an install and its record here would lack the PSK.
	repair := time.NewTicker(max(m.cfg.Interval/2, time.Second))
	defer repair.Stop()
	// The status file is rewritten at most once a second, when
	// something changed: with many peers a rewrite per exchange would be
	// a steady stream of writes.
	status := time.NewTicker(time.Second)
	defer status.Stop()
	written := int64(-1)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			<-errc
			return nil
		case err := <-errc:
			return err
		case <-m.peersChanged:
			m.syncPeers()
		case <-repair.C:
			m.repair()
		case now := <-status.C:
			m.checkAge(now)
			if c := m.changes.Load(); c != written {
				written = c
				m.writeStatus()
			}
			continue
		case <-m.wake:
		case <-timer.C:
		}
		timer.Reset(m.schedule(ctx))
	}
}

// syncPeers takes the reconciler's peers: new ones get a state (and, as
// initiator, an exchange soon), gone ones are forgotten, and a peer that
// stopped publishing an ML-KEM key loses its PSK (the other end no longer
// has one for us either).
func (m *Manager) syncPeers() {
	cur := m.cfg.Peers()
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for k, st := range m.peers {
		info, ok := cur[k]
		if !ok && st.info.Node != "" {
			// Configured before and now gone (a record that went, or a
			// key that changed): nothing of it is left on the device.
			delete(m.peers, k)
			continue
		}
		if ok && info.PQPublicKey == "" && st.has {
			m.clearPSK(k, st)
		}
	}
	for k, info := range cur {
		st := m.peers[k]
		if st == nil {
			st = &peerState{}
			m.peers[k] = st
		}
		if st.info.PQPublicKey != info.PQPublicKey {
			st.kem = nil
			if info.PQPublicKey != "" {
				ek, err := pqkeys.ParsePublic(info.PQPublicKey)
				if err != nil {
					// The record checked only the encoding: no
					// exchange with this peer (held in required).
					m.cfg.Log.Warn("post-quantum: peer publishes an invalid ML-KEM key; no exchange with it", "peer", k.String(), "peer_node", info.Node, "err", err)
				}
				st.kem = ek
			}
			if st.kem != nil && pqexchange.Initiates(m.self, k) {
				// A new peer, or one whose key changed: soon, spread
				// over up to a second so a start does not burst.
				st.next = now.Add(rand.N(time.Second))
			}
		}
		st.info = info
	}
	m.changes.Add(1)
	signal(m.wake)
}

// clearPSK removes peer's PSK from the device and the state (mu held).
func (m *Manager) clearPSK(peer wgtypes.Key, st *peerState) {
	var zero wgtypes.Key
	if err := m.setPSK(peer, zero); err != nil {
		m.cfg.Log.Warn("post-quantum: clear the PSK of a peer that no longer publishes an ML-KEM key", "peer", peer.String(), "err", err)
		return
	}
	st.has, st.psk, st.epoch, st.stale = false, zero, 0, false
	m.changes.Add(1)
	m.cfg.Log.Info("post-quantum: peer publishes no ML-KEM key any more; its PSK is cleared", "peer", peer.String(), "peer_node", st.info.Node)
	if m.cfg.Required {
		signal(m.holdChanged)
	}
}

func (m *Manager) setPSK(peer, psk wgtypes.Key) error {
	return m.cfg.WG.ConfigureDevice(m.cfg.Device, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: peer, UpdateOnly: true, PresharedKey: &psk}}})
}

// lookup is pqexchange.Config.Peers: a peer's published key and its
// addresses, tunnel first (its device address) and underlay second — or
// underlay first while it is held or has no PSK yet, since the tunnel
// does not carry its PodCIDR while held.
func (m *Manager) lookup(peer wgtypes.Key) (pqexchange.Peer, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.peers[peer]
	if st == nil || st.kem == nil || len(st.info.CIDRs) == 0 {
		return pqexchange.Peer{}, false
	}
	selfNAT := m.cfg.SelfUnreachable != nil && m.cfg.SelfUnreachable()
	// A PSK adopted from the device at start (epoch 0) is of unknown age:
	// the peer may hold us for it (--pq-max-age) and then cannot answer
	// through the tunnel, so until a first exchange of ours it counts as
	// none here and the underlay comes first.
	current := st.has && !st.stale && st.epoch != 0
	return pqexchange.Peer{KEM: st.kem, Addrs: exchangeAddrs(st.info, current, selfNAT, uint16(m.cfg.Port)), Sources: st.info.CIDRs}, true
}

// exchangeAddrs orders the addresses a peer's exchange goes to. NAT
// (docs/nat.md) changes the underlay's worth: a peer behind a NAT has no
// endpoint to send to (WireGuard roams to its NAT's mapping, unset here)
// or one that drops unsolicited packets (a punched path's public
// endpoint), and when this node is behind a NAT the peer sees our
// underlay messages come from the NAT's address, not one it can tie to
// us, and drops them. The tunnel reaches such a peer: at its device
// address over its direct session (held or not: a held peer's tunnel
// still carries the exchange's addresses, mesh.Peer.exchangePrefixes), or
// through the relay that carries its PodCIDR. So with NAT on either side
// the tunnel comes first; the underlay stays as the fallback for peers
// behind the same NAT (their LAN endpoint works).
func exchangeAddrs(info mesh.PeerInfo, has, selfNAT bool, port uint16) []netip.AddrPort {
	tunnel := netip.AddrPortFrom(info.CIDRs[0].Masked().Addr(), port)
	if !info.Endpoint.IsValid() {
		return []netip.AddrPort{tunnel}
	}
	underlay := netip.AddrPortFrom(info.Endpoint.Addr(), port)
	nat := info.Unreachable || selfNAT
	if !nat && (info.Held || !has) {
		return []netip.AddrPort{underlay, tunnel}
	}
	return []netip.AddrPort{tunnel, underlay}
}

// install is pqexchange.Config.Install: the PSK onto the device peer, then
// into the state. Both under mu, so PresharedKey never returns a PSK the
// device does not have yet or no longer has.
func (m *Manager) install(r pqexchange.Result) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.peers[r.Peer]
	if st == nil {
		return fmt.Errorf("peer %s is not configured", r.Peer)
	}
	if err := m.setPSK(r.Peer, r.PSK.Key()); err != nil {
		return fmt.Errorf("set PSK on %s: %w", m.cfg.Device, err)
	}
	first, stale := !st.has, st.stale
	st.psk, st.has, st.epoch, st.installed = r.PSK.Key(), true, r.Epoch, time.Now()
	if first {
		st.first, st.releaseAt = st.installed, st.installed
		if m.cfg.Required {
			st.releaseAt = st.installed.Add(releaseSettle)
			time.AfterFunc(releaseSettle, func() { signal(m.holdChanged) })
		}
	}
	st.handshakeDue, st.stale = first, false
	m.changes.Add(1)
	if !r.Initiator {
		st.exchanges++ // the initiator counts its own when Exchange returns
	}
	if stale {
		m.cfg.Log.Info("post-quantum: fresh PSK after --pq-max-age was exceeded; peer's pod traffic released", "peer", r.Peer.String(), "peer_node", st.info.Node)
	}
	if (first || stale) && m.cfg.Required {
		signal(m.holdChanged)
	}
	return nil
}

// handshake is pqexchange.Config.Handshake, called by the initiator after
// both ends installed. With a live session it does nothing: WireGuard
// keeps the session and mixes the new PSK into its next renewal (at 120 s
// of session age), which is how a rotation loses no packet. After the
// first PSK, with no session (required mode holds traffic until now), it
// starts the handshake at once; later PSKs never read the device here.
func (m *Manager) handshake(peer wgtypes.Key) error {
	m.mu.Lock()
	st := m.peers[peer]
	due := st != nil && st.handshakeDue
	if due {
		st.handshakeDue = false
	}
	m.mu.Unlock()
	if m.cfg.Handshake == nil || !due {
		return nil
	}
	dev, err := m.cfg.WG.Device(m.cfg.Device)
	if err != nil {
		return err
	}
	for _, p := range dev.Peers {
		if p.PublicKey == peer {
			if time.Since(p.LastHandshakeTime) < 180*time.Second {
				return nil
			}
			return m.cfg.Handshake(peer, p.PersistentKeepaliveInterval)
		}
	}
	return nil
}

// schedule starts the exchanges that are due and returns how long until
// the next one.
func (m *Manager) schedule(ctx context.Context) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	wait := m.cfg.Interval
	for k, st := range m.peers {
		if st.kem == nil || st.running || st.info.Node == "" || !pqexchange.Initiates(m.self, k) {
			continue
		}
		if d := st.next.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		if m.relayHeld(st) {
			// Started when the relay's entry is released (the
			// reconciler's PeersChanged wakes us), or looked at again.
			wait = min(wait, relayRecheck)
			continue
		}
		select {
		case m.sem <- struct{}{}:
		default:
			wait = min(wait, 100*time.Millisecond)
			continue
		}
		st.running = true
		go m.exchange(ctx, k)
	}
	return wait
}

// relayRecheck bounds how long an exchange held back by relayHeld waits
// before it is looked at again, should no PeersChanged come.
const relayRecheck = time.Second

// relayHeld reports whether a relayed peer's exchange must wait (mu
// held): the relay's own entry is held (required mode, no PSK with the
// relay yet). The pair's session rides that leg (WireGuard in WireGuard,
// docs/nat.md), and its release re-creates our entry for the relay,
// dropping what it had queued: an exchange started before loses its
// messages, or the pair's handshake, which WireGuard retries only after
// 5 s — with the release settle (releaseSettle) often its whole first
// attempt. The relay's entry is the reconciler's view (what the device
// carries), not Hold's.
func (m *Manager) relayHeld(st *peerState) bool {
	if st.info.RelayedVia == "" {
		return false
	}
	for _, r := range m.peers {
		if r.info.Node == st.info.RelayedVia {
			return r.info.Held
		}
	}
	return true // the relay's entry is not configured yet
}

// exchange runs one Exchange with peer and schedules the next: an
// interval after a success; after a failure soon, then backing off up to
// the interval.
func (m *Manager) exchange(ctx context.Context, peer wgtypes.Key) {
	defer func() { <-m.sem }()
	start := time.Now()
	res, err := m.node.Exchange(ctx, peer)
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.peers[peer]
	if st == nil {
		return
	}
	st.running = false
	m.changes.Add(1)
	switch {
	case err == nil:
		st.exchanges++
		st.streak, st.lastErr = 0, ""
		st.next = time.Now().Add(m.cfg.Interval)
		m.cfg.Log.Debug("post-quantum exchange done", "peer", peer.String(), "peer_node", st.info.Node, "epoch", res.Epoch, "took", time.Since(start).Round(time.Microsecond))
	case ctx.Err() != nil:
		return
	default:
		st.failures++
		st.streak++
		st.lastErr = err.Error()
		d := min(m.cfg.Interval, time.Second<<min(st.streak-1, 8))
		if errors.Is(err, pqexchange.ErrNoAck) && st.streak == 1 {
			// The responder may hold the new PSK and we do not:
			// repair at once.
			d = 0
		}
		st.next = time.Now().Add(d)
		m.cfg.Log.Warn("post-quantum exchange failed; retrying", "peer", peer.String(), "peer_node", st.info.Node, "failures_in_a_row", st.streak, "in", d, "err", err)
	}
	signal(m.wake)
}

// repair puts the known PSK back on any device peer that lacks it (an
// entry re-created at the wrong moment).
func (m *Manager) repair() {
	dev, err := m.cfg.WG.Device(m.cfg.Device)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range dev.Peers {
		st := m.peers[p.PublicKey]
		if st == nil || !st.has || p.PresharedKey == st.psk {
			continue
		}
		if err := m.setPSK(p.PublicKey, st.psk); err != nil {
			m.cfg.Log.Warn("post-quantum: restore a peer's PSK", "peer", p.PublicKey.String(), "err", err)
			continue
		}
		m.cfg.Log.Warn("post-quantum: a peer's PSK on the device differed from the last committed one; restored", "peer", p.PublicKey.String(), "peer_node", st.info.Node)
	}
}

// ClearDevice removes every PSK from the device's peers (post-quantum
// turned off: a PSK left from an earlier run would fail every handshake
// with peers that cleared theirs).
func ClearDevice(wg Device, device string) error {
	dev, err := wg.Device(device)
	if err != nil {
		return err
	}
	var zero wgtypes.Key
	var pcs []wgtypes.PeerConfig
	for _, p := range dev.Peers {
		if p.PresharedKey != zero {
			pcs = append(pcs, wgtypes.PeerConfig{PublicKey: p.PublicKey, UpdateOnly: true, PresharedKey: &zero})
		}
	}
	if len(pcs) == 0 {
		return nil
	}
	return wg.ConfigureDevice(device, wgtypes.Config{Peers: pcs})
}
