package mesh

import (
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
)

// PQHooks connect the reconciler to the post-quantum preshared-key
// exchanges (daemon/pqpeer, docs/post-quantum.md). The PSK itself is not
// part of the diff: the exchange sets it on the device peer (an UpdateOnly
// change that the reconciler's configs, which leave PresharedKey nil,
// never touch); a peer entry the reconciler creates or re-creates gets the
// current PSK from PresharedKey, so a re-created entry never starts a
// handshake without it.
type PQHooks struct {
	// Hold reports that a peer's PodCIDRs must stay out of its
	// AllowedIPs and routes: required mode and no PSK yet. Its pod
	// traffic then meets the strict route (dropped, never sent with
	// classical protection only).
	Hold func(wgtypes.Key) bool
	// FirstPSK (required mode) reports since when a peer has had a PSK.
	// A session made before then (a NATed peer's keepalives, the
	// exchange's own packets in a held tunnel) is classical only and may
	// live up to two minutes more: a released peer's entry is re-created
	// so that its pod traffic starts on a handshake made with the PSK.
	FirstPSK func(wgtypes.Key) (time.Time, bool)
	// HoldChanged signals that Hold changed for some peer.
	HoldChanged <-chan struct{}
	// PresharedKey returns the peer's current PSK, if any.
	PresharedKey func(wgtypes.Key) (wgtypes.Key, bool)
	// PeersChanged is told after the configured peers changed (PeerNodes
	// has the new set).
	PeersChanged func()
	// Carry is told of every desired peer before Hold and PresharedKey
	// are asked about it: a node whose WireGuard key changed (wgcnid
	// rotate-key) with its ML-KEM key unchanged keeps the pair's PSK
	// under the new key, so the new entry's first handshake meets the
	// PSK the rotating node still holds for us.
	Carry func(peer wgtypes.Key, node, pqPublicKey string)
}

// pqPeer fills the post-quantum part of a desired peer.
func (r *Reconciler) pqPeer(p *Peer, l record.Lease) {
	p.PQPublicKey = l.PQPublicKey
	if r.cfg.PQ.Carry != nil {
		r.cfg.PQ.Carry(p.PublicKey, p.Node, p.PQPublicKey)
	}
	p.Held = r.cfg.PQ.Hold != nil && r.cfg.PQ.Hold(p.PublicKey)
	if r.cfg.PQ.FirstPSK != nil && !p.Held {
		if at, ok := r.cfg.PQ.FirstPSK(p.PublicKey); ok && at.After(p.DropSessionsBefore) {
			p.DropSessionsBefore = at
		}
	}
}

// reHold re-resolves every record whose peer's Held no longer agrees with
// the hook: a first PSK releases its PodCIDRs, a lost one holds them.
func (r *Reconciler) reHold() {
	if r.cfg.PQ.Hold == nil {
		return
	}
	for _, cidr := range sortedKeys(r.active) {
		if p := r.active[cidr]; p.Held != r.cfg.PQ.Hold(p.PublicKey) {
			r.resolve(cidr, true)
		}
	}
}

// withPresharedKeys gives every peer entry being written its current PSK.
func (r *Reconciler) withPresharedKeys(pcs []wgtypes.PeerConfig) {
	if r.cfg.PQ.PresharedKey == nil {
		return
	}
	for i := range pcs {
		if pcs[i].Remove {
			continue
		}
		if k, ok := r.cfg.PQ.PresharedKey(pcs[i].PublicKey); ok {
			pcs[i].PresharedKey = &k
		}
	}
}

func (r *Reconciler) pqPeersChanged() {
	if r.cfg.PQ.PeersChanged != nil {
		r.cfg.PQ.PeersChanged()
	}
}

// podCIDRs are the PodCIDRs routed into the tunnel: none while held.
func (p Peer) podCIDRs() []netip.Prefix {
	if p.Held {
		return nil
	}
	return p.CIDRs
}

// exchangePrefixes are what a held peer's tunnel still carries: the host
// prefixes of its device address (the network address of each PodCIDR,
// agent/devaddr.go) and gateway (record.Gateway), the two ends the
// post-quantum exchange uses over the tunnel. Without them the exchange
// that releases the peer could only use the underlay, which does not
// reach a node behind a NAT (docs/nat.md). Pod traffic is not among them:
// a pod's address is neither, so the peer's WireGuard drops it. Only
// with NAT on either end (elsewhere a held peer's tunnel carries nothing,
// as before); a host-only peer (single-address CIDR) gets none.
//
// On a reachable node, a held NATed peer's tunnel also carries its relay
// address (record.RelayAddr): this node may relay that peer's sessions
// with other NATed nodes (WireGuard in WireGuard, docs/nat.md), and what
// crosses to it is those sessions' own WireGuard packets, each pair held
// for its own PSK. Without it a pair's first handshake, sent while a leg
// was still held here, was dropped, and WireGuard tries again only after
// 5 s: the pair's first exchange attempt timed out.
func (p Peer) exchangePrefixes() []netip.Prefix {
	if !p.Held || !(p.Unreachable || p.SelfUnreachable) {
		return nil
	}
	var out []netip.Prefix
	for _, c := range p.CIDRs {
		if c.IsSingleIP() {
			continue
		}
		for _, a := range []netip.Addr{c.Masked().Addr(), record.Gateway(c)} {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	if a := record.RelayAddr(p.primary()); p.Unreachable && !p.SelfUnreachable && a.IsValid() {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// exchangeRoutes route a held peer's exchangePrefixes into the tunnel.
func (p Peer) exchangeRoutes(link int, srcs []netip.Addr) []route.Peer {
	var out []route.Peer
	for _, c := range p.exchangePrefixes() {
		out = append(out, route.Peer{Dst: c, LinkIndex: link, Src: srcFor(c, srcs)})
	}
	return out
}

// heldRoutes are the routes that leave the tunnel because want holds
// have's PodCIDRs, or because want releases them (the exchange routes;
// the others DiffOne removes itself).
func heldRoutes(have, want *Peer, link int, src []netip.Addr) []route.Peer {
	if have.Held && !want.Held {
		return have.exchangeRoutes(link, src)
	}
	if have.Held || !want.Held {
		return nil
	}
	var out []route.Peer
	for _, c := range have.CIDRs {
		for _, w := range want.CIDRs {
			if c == w {
				out = append(out, route.Peer{Dst: c, LinkIndex: link, Src: srcFor(c, src)})
			}
		}
	}
	return out
}
