package mesh

import (
	"cmp"
	"net"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Paths rewrites the desired peers for NAT traversal (daemon/nat): which
// peer carries which CIDRs and at which endpoint. The reconciler calls
// Rewrite from its own goroutine whenever it applies, and re-applies when
// Changed fires (a path was punched or died, an observation arrived).
type Paths interface {
	Rewrite(active map[netip.Prefix]Peer) map[netip.Prefix]Peer
	Changed() <-chan struct{}
}

// desired is what the device and routes should hold: the records' peers,
// rewritten by Paths if set.
func (r *Reconciler) desired() map[netip.Prefix]Peer {
	if r.cfg.Paths == nil {
		return r.active
	}
	return r.cfg.Paths.Rewrite(r.active)
}

func (r *Reconciler) pathsChanged() <-chan struct{} {
	if r.cfg.Paths == nil {
		return nil
	}
	return r.cfg.Paths.Changed()
}

// orderMoves sorts one device update so that a CIDR moving from one peer
// to another never lacks an owner: WireGuard's AllowedIPs insert takes a
// prefix from whichever peer held it, while a replace first drops all of
// a peer's prefixes. So removals go first (their prefixes are re-owned
// later in the same update), then peers that gain prefixes, then the rest;
// a peer whose only loss is a prefix another peer of this update takes is
// written without replace (re-inserting what it keeps is a no-op).
func orderMoves(changes []wgtypes.PeerConfig, have []wgtypes.Peer) {
	held := make(map[wgtypes.Key]map[netip.Prefix]bool, len(have))
	for _, h := range have {
		m := map[netip.Prefix]bool{}
		for _, a := range h.AllowedIPs {
			if p, ok := prefixOf(a.IP, a.Mask); ok {
				m[p] = true
			}
		}
		held[h.PublicKey] = m
	}
	gains := func(pc wgtypes.PeerConfig) bool {
		for _, a := range pc.AllowedIPs {
			if p, ok := prefixOf(a.IP, a.Mask); ok && !held[pc.PublicKey][p] {
				return true
			}
		}
		return false
	}
	readded := map[wgtypes.Key]bool{}
	for _, pc := range changes {
		if !pc.Remove {
			readded[pc.PublicKey] = true
		}
	}
	rank := func(pc wgtypes.PeerConfig) int {
		switch {
		case pc.Remove && readded[pc.PublicKey]:
			// Re-created (staleSession): stays just before its add.
			return rankOf(changes, pc.PublicKey, gains)
		case pc.Remove:
			return 2
		case gains(pc):
			return 0
		}
		return 1
	}
	slices.SortStableFunc(changes, func(a, b wgtypes.PeerConfig) int { return cmp.Compare(rank(a), rank(b)) })
	taken := map[netip.Prefix]bool{}
	for i, pc := range changes {
		if pc.Remove {
			continue
		}
		want := map[netip.Prefix]bool{}
		for _, a := range pc.AllowedIPs {
			if p, ok := prefixOf(a.IP, a.Mask); ok {
				want[p] = true
			}
		}
		lost, lostTaken := 0, 0
		for p := range held[pc.PublicKey] {
			if !want[p] {
				lost++
				if taken[p] {
					lostTaken++
				}
			}
		}
		if lost > 0 && lost == lostTaken {
			changes[i].ReplaceAllowedIPs = false
		}
		for p := range want {
			taken[p] = true
		}
	}
}

// rankOf is the rank orderMoves gives the add of key in changes.
func rankOf(changes []wgtypes.PeerConfig, key wgtypes.Key, gains func(wgtypes.PeerConfig) bool) int {
	for _, pc := range changes {
		if pc.PublicKey == key && !pc.Remove && gains(pc) {
			return 0
		}
	}
	return 1
}

// staleSession reports whether the device's session with the peer is
// older than the peer may keep (DropSessionsBefore).
func (p Peer) staleSession(have wgtypes.Peer) bool {
	return !p.DropSessionsBefore.IsZero() && !have.LastHandshakeTime.IsZero() && have.LastHandshakeTime.Before(p.DropSessionsBefore)
}

func prefixOf(ip net.IP, mask net.IPMask) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
