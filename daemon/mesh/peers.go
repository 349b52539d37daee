package mesh

import (
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// What the reconciler tells other goroutines about its peers (metrics, at
// scrape time).

// PeerInfo names the node behind a configured peer.
type PeerInfo struct {
	Node string
	CIDR netip.Prefix
	// What the post-quantum exchange needs (daemon/pqpeer): all the
	// peer's CIDRs, its endpoint, its published ML-KEM key, and whether
	// its PodCIDRs are held out (required mode, no preshared key yet).
	CIDRs       []netip.Prefix
	Endpoint    netip.AddrPort
	PQPublicKey string
	Held        bool
	// Unreachable and Published are the record's NAT flag and endpoint
	// (daemon/nat: where its traffic should come from).
	Unreachable bool
	Published   netip.AddrPort
	// RelayedVia is the node whose tunnel carries the peer's CIDRs
	// (daemon/nat); "": its own.
	RelayedVia string
}

func (p Peer) info() PeerInfo {
	pub := p.Endpoint
	if p.Unreachable {
		pub = p.Published
	}
	return PeerInfo{Node: p.Node, CIDR: p.primary(), CIDRs: p.CIDRs, Endpoint: p.Endpoint, PQPublicKey: p.PQPublicKey, Held: p.Held,
		Unreachable: p.Unreachable, Published: pub, RelayedVia: p.RelayedVia}
}

// PeerNodes returns the node of every peer configured on the device.
func (r *Reconciler) PeerNodes() map[wgtypes.Key]PeerInfo {
	r.peerMu.Lock()
	defer r.peerMu.Unlock()
	out := make(map[wgtypes.Key]PeerInfo, len(r.peerNodes))
	for k, v := range r.peerNodes {
		out[k] = v
	}
	return out
}

// publishPeers refreshes what PeerNodes returns from r.applied.
func (r *Reconciler) publishPeers() {
	m := make(map[wgtypes.Key]PeerInfo, len(r.applied))
	for _, p := range r.applied {
		m[p.PublicKey] = p.info()
	}
	r.peerMu.Lock()
	r.peerNodes = m
	r.peerMu.Unlock()
	r.pqPeersChanged()
}

// publishPeer updates what PeerNodes returns for one changed peer
// (per event: no copy of the whole map).
func (r *Reconciler) publishPeer(old, cur *Peer) {
	defer r.pqPeersChanged() // after the unlock
	r.peerMu.Lock()
	defer r.peerMu.Unlock()
	if r.peerNodes == nil {
		r.peerNodes = map[wgtypes.Key]PeerInfo{}
	}
	if old != nil {
		delete(r.peerNodes, old.PublicKey)
	}
	if cur != nil {
		r.peerNodes[cur.PublicKey] = cur.info()
	}
}
