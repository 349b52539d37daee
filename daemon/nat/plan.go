// Package nat carries nodes that sit behind a NAT (docs/nat.md). A node
// published as unreachable keeps its tunnels open itself (persistent
// keepalive) and its peers leave its endpoint to WireGuard's roaming.
// Reachable nodes publish in etcd where they see each NATed node's
// handshakes come from (its observed endpoint: the NAT's public address
// and port). Two NATed nodes talk through a relay — a reachable node both
// pick by rendezvous hash, whose peer carries the other's CIDRs, and which
// forwards between its tunnels — and meanwhile punch a direct path at each
// other's observed endpoint; once a handshake on it succeeds, the CIDRs
// move from the relay's peer to the direct peer in one device update, and
// back when it dies. A symmetric NAT (observers see different ports) stays
// relayed. The mesh applies what Plan rewrites (mesh.Paths).
package nat

import (
	"net/netip"
	"slices"
	"time"

	"github.com/wgcni/wgcni/daemon/mesh"
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
	// Endpoint is where the direct peer is aimed (Punched, punching).
	Endpoint string `json:"endpoint,omitempty"`
}

// Inputs is what the plan is made of besides the records' peers.
type Inputs struct {
	Self            string
	SelfUnreachable bool
	Obs             Observations
	// Up holds the peers whose punched direct path is up and due to carry
	// their CIDRs (Agent: after a handshake, at the agreed switch time).
	Up map[string]bool
	// Died holds when each peer's punched path last died: a session
	// from before is dropped, so it comes back only through a fresh
	// handshake (the switch instant both ends derive from it).
	Died map[string]time.Time
	// Relays are the nodes announcing themselves as relays (alive within
	// their short TTL); nil: not known, any reachable node may relay.
	Relays map[string]bool
	// Keepalive (seconds) towards every peer of an unreachable node that
	// asked for none itself; PunchKeepalive towards peers being punched.
	Keepalive      int
	PunchKeepalive int
	// RequirePSK (--post-quantum=required): PSKSince holds, per peer
	// node, since when the pair has had its preshared key. A pair without
	// one is not switched to its punched path, and the direct sessions
	// from before it are dropped, so the path opens only through a
	// handshake made with the PSK.
	RequirePSK bool
	PSKSince   map[string]time.Time
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
			switch {
			case selfMap.Known() && peerMap.Known() && selfMap.Public.Addr() == peerMap.Public.Addr():
				// Behind the same NAT: its LAN endpoint is reachable.
				p.Endpoint, path.Why = p.Published, "same NAT"
				if p.Keepalive == 0 {
					p.Keepalive = in.Keepalive
				}
			case selfMap.Symmetric || peerMap.Symmetric || !selfMap.Known() || !peerMap.Known():
				p.Keepalive = 0
				path.Why = "symmetric NAT"
				if !selfMap.Known() || !peerMap.Known() {
					path.Why = "no observed endpoint yet"
				}
				if relay == "" {
					path.Why += "; no relay"
					break
				}
				path.Mode, path.Via, p.RelayedVia = Relayed, relay, relay
			case in.Up[p.Node] && (!in.RequirePSK || !in.PSKSince[p.Node].IsZero()):
				p.Endpoint, p.Keepalive = peerMap.Public, in.PunchKeepalive
				path.Mode, path.Why, path.Endpoint = Punched, "hole punched", peerMap.Public.String()
			default:
				p.Endpoint, p.Keepalive = peerMap.Public, in.PunchKeepalive
				p.DropSessionsBefore = in.Died[p.Node]
				if at := in.PSKSince[p.Node]; in.RequirePSK && at.After(p.DropSessionsBefore) {
					p.DropSessionsBefore = at
				}
				path.Why, path.Endpoint = "punching", peerMap.Public.String()
				if relay == "" {
					path.Why += "; no relay"
					break
				}
				path.Mode, path.Via, p.RelayedVia = Relayed, relay, relay
			}
			if p.RelayedVia != "" {
				// Post-quantum required: a relayed pair has no direct
				// session to protect, its traffic rides the tunnels to
				// and from the relay, each with its own PSK, and the
				// relay's peer carries it only when not held
				// (mesh.Peer.allowedPrefixes). Holding it for a PSK of
				// its own would drop its traffic for nothing.
				p.Held = false
				r := out[byNode[relay]]
				r.Carries = append(slices.Clone(r.Carries), p.CIDRs...)
				out[byNode[relay]] = r
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
