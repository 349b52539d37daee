// Package nat carries nodes that sit behind a NAT (docs/nat.md). A node
// published as unreachable keeps its tunnels open itself (persistent
// keepalive) and its peers leave its endpoint to WireGuard's roaming.
// Reachable nodes publish in etcd where they see each NATed node's
// handshakes come from (its observed endpoint: the NAT's public address
// and port). Two NATed nodes keep their own WireGuard session and send it
// through a relay — a reachable node both pick by rendezvous hash — by
// aiming it at each other's relay address, which the relay's peer carries
// (WireGuard in WireGuard); meanwhile each punches at the other's observed
// endpoint, and once it hears the other there, aims the session at it: an
// endpoint change, which loses nothing in flight. A symmetric NAT
// (observers see different ports) stays relayed. The mesh applies what
// Plan rewrites (mesh.Paths).
package nat

import (
	"net/netip"
	"slices"

	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/record"
)

// Path modes, per peer.
const (
	Direct  = "direct"
	Relayed = "relayed"
	Punched = "punched"
)

// Path is how this node reaches one peer.
type Path struct {
	Node string `json:"node"`
	Mode string `json:"mode"`          // Direct, Relayed or Punched
	Via  string `json:"via,omitempty"` // the relay (Relayed)
	// Why explains the mode: "reachable", "it keeps alive to us",
	// "same NAT", "punching", "symmetric NAT", "no relay".
	Why string `json:"why"`
	// Endpoint is the peer's public endpoint, where this node punches
	// (punching) and, once it hears the peer there, aims the session
	// (Punched).
	Endpoint string `json:"endpoint,omitempty"`
}

// Inputs is what the plan is made of besides the records' peers.
type Inputs struct {
	Self            string
	SelfUnreachable bool
	// SelfCIDR is this node's record CIDR: its relay address is that
	// CIDR's (record.RelayAddr), the source of the sessions it sends
	// through a relay.
	SelfCIDR netip.Prefix
	Obs      Observations
	// Heard holds the peers whose punch reaches us: their packets arrive
	// from their public endpoint (Agent, punch.go). Only then is the
	// session aimed there, so a path that does not come back is never
	// taken.
	Heard map[string]bool
	// Relays are the nodes announcing themselves as relays (alive within
	// their short TTL); nil: not known, any reachable node may relay.
	Relays map[string]bool
	// Keepalive (seconds) towards every peer of an unreachable node that
	// asked for none itself; PunchKeepalive towards punched peers.
	Keepalive      int
	PunchKeepalive int
	// DeviceMTU is the WireGuard device's MTU: a relayed pair's routes get
	// less (relayMTU).
	DeviceMTU int
}

// relayMTU is the route MTU of a pair relayed to relay address ra over a
// device of MTU dev: what is left once the pair's own WireGuard adds its
// outer IP and UDP headers and 32 bytes, rounded down to WireGuard's
// 16-byte padding (a packet is padded up to the device MTU, so anything
// not a multiple of 16 grows). The relay's tunnel must carry the result
// whole: UDP GSO, which userspace WireGuard sends batches with, refuses to
// fragment, and bulk TCP stalled at the unrounded MTU.
func relayMTU(dev int, ra netip.Addr) int {
	overhead := 40 + 8 + 32
	if ra.Is4() {
		overhead = 20 + 8 + 32
	}
	return (dev - overhead) &^ 15
}

// Plan rewrites the records' peers (keyed by primary CIDR) for this node
// and says how each peer is reached. active is not modified.
func Plan(in Inputs, active map[netip.Prefix]mesh.Peer) (map[netip.Prefix]mesh.Peer, []Path) {
	out := make(map[netip.Prefix]mesh.Peer, len(active))
	byNode := map[string]netip.Prefix{}
	reachable := map[string]bool{} // the observers
	for c, p := range active {
		out[c] = p
		byNode[p.Node] = c
		if !p.Unreachable {
			reachable[p.Node] = true
		}
	}
	// Relays: reachable pod nodes (host-only peers forward nothing) that
	// declared it (not auto), announce themselves (alive), and are not
	// seen behind a NAT (an old daemon, or a NAT it does not know of).
	var relays []string
	for n := range reachable {
		p := active[byNode[n]]
		m := in.Obs.Mapping(n, reachable)
		if !p.NoRelay && !byNode[n].IsSingleIP() && (in.Relays == nil || in.Relays[n]) &&
			!(m.Known() && m.Public.Addr() != p.Endpoint.Addr()) {
			relays = append(relays, n)
		}
	}
	slices.Sort(relays)
	if !in.SelfCIDR.IsValid() || !record.RelayAddr(in.SelfCIDR).IsValid() {
		relays = nil // no relay address of our own to send from
	}
	selfMap := in.Obs.Mapping(in.Self, reachable)
	var paths []Path
	for _, c := range sortedCIDRs(active) {
		p := out[c]
		p.SelfUnreachable = in.SelfUnreachable
		path := Path{Node: p.Node, Mode: Direct}
		switch {
		case !p.Unreachable:
			path.Why = "reachable"
			if in.SelfUnreachable && p.Keepalive == 0 {
				p.Keepalive = in.Keepalive // hold our NAT's mapping open
			}
		case !in.SelfUnreachable:
			path.Why = "it keeps alive to us"
		default:
			peerMap := in.Obs.Mapping(p.Node, reachable)
			relay := Relay(relays, in.Self, p.Node)
			// Never left to roaming: the device would keep an endpoint
			// from before, maybe a relay address no relay carries any
			// more. Its LAN address goes nowhere, harmlessly.
			p.Endpoint, p.Keepalive = p.Published, 0
			switch {
			case selfMap.Known() && peerMap.Known() && selfMap.Public.Addr() == peerMap.Public.Addr():
				// Behind the same NAT: its LAN endpoint is reachable.
				path.Why, p.Keepalive = "same NAT", in.Keepalive
			case selfMap.Symmetric || peerMap.Symmetric || !selfMap.Known() || !peerMap.Known():
				path.Why = "symmetric NAT"
				if !selfMap.Known() || !peerMap.Known() {
					path.Why = "no observed endpoint yet"
				}
			case in.Heard[p.Node]:
				p.Endpoint, p.Keepalive = peerMap.Public, in.PunchKeepalive
				path.Mode, path.Why, path.Endpoint = Punched, "hole punched", peerMap.Public.String()
			default:
				path.Why, path.Endpoint = "punching", peerMap.Public.String()
				p.Endpoint = peerMap.Public // with no relay, the punch is all there is
			}
			if path.Why == "same NAT" {
				break
			}
			if relay == "" || !record.RelayAddr(c).IsValid() {
				if path.Mode != Punched {
					path.Why += "; no relay" // a host-only peer has no relay address
				}
				break
			}
			// WireGuard in WireGuard: the relay's peer carries the peer's
			// relay address, and the relay forwards the pair's session
			// there like any packet between two PodCIDRs, never seeing
			// its plaintext. It carries it on the punched path too, so
			// that each end accepts the pair's packets from both paths
			// at any time: the two ends take the direct path each when it
			// hears the other, and packets still on the relay arrive.
			ra := record.RelayAddr(c)
			r := out[byNode[relay]]
			r.Carries = append(slices.Clone(r.Carries), netip.PrefixFrom(ra, ra.BitLen()))
			r.CarrySrc = record.RelayAddr(in.SelfCIDR)
			out[byNode[relay]] = r
			if path.Mode != Punched {
				// Aimed at the relay address: the pair's packets ride
				// our tunnel to the relay, and the relay's to the peer.
				p.Endpoint = netip.AddrPortFrom(ra, p.Published.Port())
				path.Mode, path.Via, p.RelayedVia = Relayed, relay, relay
				if m := relayMTU(in.DeviceMTU, ra); in.DeviceMTU > 0 && (p.MTU == 0 || m < p.MTU) {
					p.MTU = m
				}
			}
		}
		out[c] = p
		paths = append(paths, path)
	}
	return out, paths
}

func sortedCIDRs(m map[netip.Prefix]mesh.Peer) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for c := range m {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}
