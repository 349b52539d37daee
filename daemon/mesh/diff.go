package mesh

import (
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/route"
)

// Peer is the desired state for one other node: a WireGuard peer whose
// AllowedIPs are exactly its PodCIDRs, and a route to each.
type Peer struct {
	// CIDRs are the peer's PodCIDRs, one per family, the record key's
	// first (a host-only peer: its address).
	CIDRs     []netip.Prefix
	Node      string
	PublicKey wgtypes.Key
	Endpoint  netip.AddrPort
	Keepalive int // seconds, 0 = off
	// Underlay is the peer's underlay address when both nodes use
	// underlay encryption (underlayenc.go): it is then allowed (the one exception to
	// "exactly the PodCIDR") and routed in route.HostTable with UnderlaySrc,
	// this node's underlay address, as source. Invalid = off.
	Underlay    netip.Addr
	UnderlaySrc netip.Addr
	// Post-quantum (postquantum.go): the peer's published ML-KEM key, and
	// Held: its PodCIDRs stay out of AllowedIPs and routes (required mode,
	// no preshared key yet), so its pod traffic meets the strict route.
	PQPublicKey string
	Held        bool
	// MTU is the path MTU measured to the peer when it is below the
	// device's (daemon/heal), put on its PodCIDR routes; 0: none.
	MTU int
	// Sites are the site CIDRs this peer serves as their gateway
	// (sites.go): allowed, but routed by sites.go, not per peer.
	Sites []netip.Prefix
	// NAT traversal (docs/nat.md, daemon/nat): Unreachable copies the
	// record's flag; such a peer's endpoint is left invalid, i.e. to
	// WireGuard's roaming (an invalid Endpoint is never written), unless
	// daemon/nat sets one. RelayedVia (the relay's node; "": not relayed):
	// the pair's own session rides the tunnel to that relay (WireGuard in
	// WireGuard: Endpoint is the peer's relay address, record.RelayAddr);
	// the peer keeps its CIDRs, so the switch to a punched path
	// is an endpoint change and no packet in flight is dropped. Carries:
	// the relay addresses of the nodes whose sessions this peer relays
	// for us (on its AllowedIPs, routed with CarrySrc, our own relay
	// address, as source).
	Unreachable bool
	NoRelay     bool           // the record's: never a relay (daemon/nat)
	Published   netip.AddrPort // an Unreachable peer's record endpoint (its LAN address)
	RelayedVia  string
	Carries     []netip.Prefix
	CarrySrc    netip.Addr
	// SelfUnreachable: this node is behind a NAT (set by daemon/nat).
	// With Unreachable it lets a held peer's tunnel carry the
	// post-quantum exchange (exchangePrefixes).
	SelfUnreachable bool
	// DropSessionsBefore: a session with the peer older than this is
	// dropped by re-creating its entry (required mode: a session made
	// before the pair's first post-quantum PSK; postquantum.go, paths.go).
	DropSessionsBefore time.Time
}

// Plan is what must change on the device and in the routing table. Apply
// order: route deletions, then peer changes, then route additions, so
// traffic is never routed into the tunnel for a peer that is not there.
type Plan struct {
	RouteDel []route.Peer
	Peers    []wgtypes.PeerConfig
	RouteAdd []route.Peer
}

// Empty reports whether nothing needs to change.
func (p Plan) Empty() bool { return len(p.RouteDel)+len(p.Peers)+len(p.RouteAdd) == 0 }

// primary is the CIDR that keys the peer's record.
func (p Peer) primary() netip.Prefix { return p.CIDRs[0] }

func (p Peer) equal(o Peer) bool {
	return slices.Equal(p.CIDRs, o.CIDRs) && p.Node == o.Node && p.PublicKey == o.PublicKey && p.Endpoint == o.Endpoint &&
		p.Keepalive == o.Keepalive && p.Underlay == o.Underlay && p.UnderlaySrc == o.UnderlaySrc && p.MTU == o.MTU &&
		p.PQPublicKey == o.PQPublicKey && p.Held == o.Held && slices.Equal(p.Sites, o.Sites) &&
		p.Unreachable == o.Unreachable && p.Published == o.Published && p.RelayedVia == o.RelayedVia && slices.Equal(p.Carries, o.Carries) && p.CarrySrc == o.CarrySrc &&
		p.DropSessionsBefore.Equal(o.DropSessionsBefore) && p.SelfUnreachable == o.SelfUnreachable
}

func (p Peer) config() wgtypes.PeerConfig {
	ka := time.Duration(p.Keepalive) * time.Second
	pc := wgtypes.PeerConfig{
		PublicKey:                   p.PublicKey,
		PersistentKeepaliveInterval: &ka,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  p.allowed(),
	}
	if p.Endpoint.IsValid() {
		pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
	}
	return pc
}

// allowed is the peer's AllowedIPs: its PodCIDR of each family. One
// WireGuard device carries both families whatever the underlay's family.
func (p Peer) allowed() []net.IPNet {
	var out []net.IPNet
	for _, c := range p.allowedPrefixes() {
		out = append(out, toIPNet(c))
	}
	return out
}

// allowedPrefixes is allowed as prefixes: the peer's own CIDRs and sites
// unless held, the relay addresses it carries (NAT traversal), its
// tunneled underlay address.
func (p Peer) allowedPrefixes() []netip.Prefix {
	var out []netip.Prefix
	if !p.Held {
		// Held (required mode, no PSK yet): neither its PodCIDRs nor
		// the sites it serves as gateway; a route into the tunnel then
		// finds no peer and WireGuard drops the packet.
		out = append(out, p.CIDRs...)
		out = append(out, p.Sites...)
	}
	// Carried relay addresses stay even while the relay is held: what
	// crosses to them is the relayed pairs' own WireGuard packets, each
	// pair held for its own PSK. Without them a relayed pair's packets
	// to its peer's relay address would fall to that peer's own entry,
	// whose endpoint is that very address: a loop.
	out = append(out, p.Carries...)
	out = append(out, p.exchangePrefixes()...)
	if p.Underlay.IsValid() {
		out = append(out, p.underlayPrefix())
	}
	return out
}

// routes are the peer's routes, one per PodCIDR; each takes as source the
// one of srcs (this node's gateways) of the same family.
func (p Peer) routes(link int, srcs []netip.Addr) []route.Peer {
	var out []route.Peer
	for _, c := range p.podCIDRs() {
		out = append(out, route.Peer{Dst: c, LinkIndex: link, Src: srcFor(c, srcs), MTU: p.MTU})
	}
	out = append(out, p.exchangeRoutes(link, srcs)...)
	for _, c := range p.Carries {
		// The relayed pairs' own WireGuard packets leave from our relay
		// address, the only source the far end accepts from the relay.
		out = append(out, route.Peer{Dst: c, LinkIndex: link, Src: p.CarrySrc})
	}
	if p.Underlay.IsValid() {
		out = append(out, route.HostRoute(p.Underlay, link, p.UnderlaySrc))
	}
	return out
}

func srcFor(dst netip.Prefix, srcs []netip.Addr) netip.Addr {
	for _, s := range srcs {
		if s.IsValid() && s.Is4() == dst.Addr().Is4() {
			return s
		}
	}
	return netip.Addr{}
}

func toIPNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// matches reports whether the device's peer is exactly as desired.
func matches(have wgtypes.Peer, want Peer) bool {
	return !want.staleSession(have) && len(heal.Drift(have, want.want())) == 0
}

// Diff compares the desired peers with the device's peers and our routes
// (as listed by route.Ours, every family) and returns the changes. Used for
// the full resync; per-event changes use DiffOne. src holds this node's
// gateway of each family; a route takes the one of its family as source.
func Diff(desired map[netip.Prefix]Peer, have []wgtypes.Peer, routes map[netip.Prefix]route.Peer, link int, src []netip.Addr) Plan {
	var plan Plan
	byKey := make(map[wgtypes.Key]Peer, len(desired))
	for _, d := range desired {
		byKey[d.PublicKey] = d
	}
	seen := make(map[wgtypes.Key]bool, len(have))
	for _, h := range have {
		seen[h.PublicKey] = true
		d, ok := byKey[h.PublicKey]
		switch {
		case !ok:
			plan.Peers = append(plan.Peers, wgtypes.PeerConfig{PublicKey: h.PublicKey, Remove: true})
		case !matches(h, d):
			if d.staleSession(h) {
				plan.Peers = append(plan.Peers, wgtypes.PeerConfig{PublicKey: h.PublicKey, Remove: true})
			}
			plan.Peers = append(plan.Peers, d.config())
		}
	}
	for _, d := range sortedPeers(desired) {
		if !seen[d.PublicKey] {
			plan.Peers = append(plan.Peers, d.config())
		}
		for _, want := range d.routes(link, src) {
			if r, ok := routes[want.Dst]; !ok || r != want {
				plan.RouteAdd = append(plan.RouteAdd, want)
			}
		}
	}
	wanted := make(map[netip.Prefix]bool, 2*len(desired))
	for _, d := range desired {
		for _, c := range d.podCIDRs() {
			wanted[c] = true
		}
		for _, c := range d.exchangePrefixes() {
			wanted[c] = true
		}
		for _, c := range d.Carries {
			wanted[c] = true
		}
		if d.Underlay.IsValid() {
			wanted[d.underlayPrefix()] = true
		}
	}
	for _, dst := range sortedKeys(routes) {
		if !wanted[dst] {
			plan.RouteDel = append(plan.RouteDel, routes[dst])
		}
	}
	siteHoldersFirst(plan.Peers, byKey)
	orderMoves(plan.Peers, have)
	return plan
}

// DiffOne is the incremental form for one PodCIDR: have is what was last
// applied for it (nil if nothing), want what should be there (nil if the
// peer must go). A changed key removes the old peer, since WireGuard
// identifies peers by key and a stale one would keep the old AllowedIPs.
func DiffOne(have, want *Peer, link int, src []netip.Addr) Plan {
	var plan Plan
	switch {
	case have == nil && want == nil:
	case want == nil:
		plan.RouteDel = append(plan.RouteDel, have.routes(link, src)...)
		plan.Peers = append(plan.Peers, wgtypes.PeerConfig{PublicKey: have.PublicKey, Remove: true})
	case have == nil:
		plan.Peers = append(plan.Peers, want.config())
		plan.RouteAdd = append(plan.RouteAdd, want.routes(link, src)...)
	case have.equal(*want):
	default:
		for _, c := range have.CIDRs {
			if !slices.Contains(want.CIDRs, c) {
				// A PodCIDR of the peer changed or went: its old route
				// must not keep pointing into the tunnel.
				plan.RouteDel = append(plan.RouteDel, route.Peer{Dst: c, LinkIndex: link, Src: srcFor(c, src)})
			}
		}
		plan.RouteDel = append(plan.RouteDel, heldRoutes(have, want, link, src)...)
		if have.Underlay.IsValid() && have.Underlay != want.Underlay {
			// Host encryption went off for this peer (or its address
			// moved): its underlay address must leave the tunnel table.
			plan.RouteDel = append(plan.RouteDel, route.HostRoute(have.Underlay, link, have.UnderlaySrc))
		}
		if have.PublicKey != want.PublicKey {
			plan.Peers = append(plan.Peers, wgtypes.PeerConfig{PublicKey: have.PublicKey, Remove: true})
		}
		plan.Peers = append(plan.Peers, want.config())
		// The route does not depend on the peer; replacing it is cheap
		// and repairs it if someone removed it.
		plan.RouteAdd = append(plan.RouteAdd, want.routes(link, src)...)
	}
	return plan
}

func sortedPeers(m map[netip.Prefix]Peer) []Peer {
	out := make([]Peer, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Peer) int { return a.primary().Addr().Compare(b.primary().Addr()) })
	return out
}

func sortedKeys[V any](m map[netip.Prefix]V) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}
