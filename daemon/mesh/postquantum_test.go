package mesh

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/liveness"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
)

// A held peer (required mode, no PSK yet) keeps its entry but loses its
// PodCIDR from AllowedIPs and routes, whether it got held per event
// (DiffOne) or is found routed by a resync (Diff); releasing it puts both
// back. Its underlay address (host encryption) is not a pod route and
// stays; its device address and gateway (the post-quantum exchange's ends
// over the tunnel, the only way to a peer behind a NAT) are allowed and
// routed while held, and their routes go on release. A held relay carries
// no other node's CIDRs (NAT traversal).
func TestHeldPeerKeepsPodCIDRsOut(t *testing.T) {
	srcs := []netip.Addr{gw}
	free := peer(t, "10.244.2.0/24")
	free.Underlay, free.UnderlaySrc = netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.1")
	free.Unreachable = true // behind a NAT: the exchange runs in the tunnel
	held := free
	held.Held = true
	// Without NAT a held peer's tunnel carries nothing.
	noNAT := held
	noNAT.Unreachable = false
	if a := noNAT.allowedPrefixes(); len(a) != 1 || len(noNAT.routes(link, srcs)) != 1 {
		t.Fatalf("held peer, no NAT: allowed %v, routes %v; want only the underlay address", a, noNAT.routes(link, srcs))
	}
	selfNAT := noNAT
	selfNAT.SelfUnreachable = true
	if a := selfNAT.allowedPrefixes(); len(a) != 3 {
		t.Fatalf("held peer of a NATed node: allowed %v, want the exchange addresses too", a)
	}
	podRoute := free.routes(link, srcs)[0]
	exchange := map[netip.Prefix]bool{netip.MustParsePrefix("10.244.2.0/32"): true, netip.MustParsePrefix("10.244.2.1/32"): true,
		netip.MustParsePrefix("10.244.2.254/32"): true} // its relay address: we are reachable, it is NATed

	p := DiffOne(&free, &held, link, srcs)
	if len(p.RouteDel) != 1 || p.RouteDel[0] != podRoute {
		t.Fatalf("holding: route deletions %+v, want the PodCIDR's", p.RouteDel)
	}
	var allowed []string
	if len(p.Peers) == 1 {
		for _, a := range p.Peers[0].AllowedIPs {
			allowed = append(allowed, a.String())
		}
	}
	if len(p.Peers) != 1 || !slices.Equal(allowed, []string{"10.244.2.0/32", "10.244.2.1/32", "10.244.2.254/32", "10.99.0.2/32"}) || !p.Peers[0].ReplaceAllowedIPs {
		t.Fatalf("holding: peer config %+v, want only the exchange addresses and the underlay address allowed", p.Peers)
	}
	added := 0
	for _, r := range p.RouteAdd {
		if r.Dst == free.primary() {
			t.Fatalf("holding re-adds the PodCIDR route: %+v", p.RouteAdd)
		}
		if exchange[r.Dst] && r.Src == gw {
			added++
		}
	}
	if added != 3 {
		t.Fatalf("holding: routes added %+v, want the peer's device address, gateway and relay address from ours", p.RouteAdd)
	}

	p = DiffOne(&held, &free, link, srcs)
	if len(p.RouteDel) != 3 || !exchange[p.RouteDel[0].Dst] || !exchange[p.RouteDel[1].Dst] || !exchange[p.RouteDel[2].Dst] || len(p.RouteAdd) != 2 || len(p.Peers[0].AllowedIPs) != 2 {
		t.Fatalf("releasing: %+v", p)
	}

	// Resync: the device still allows the PodCIDR and the route is there.
	dev := onDevice(free)
	dev.AllowedIPs = append(dev.AllowedIPs, toIPNet(free.underlayPrefix()))
	routes := map[netip.Prefix]route.Peer{podRoute.Dst: podRoute}
	p = Diff(map[netip.Prefix]Peer{held.primary(): held}, []wgtypes.Peer{dev}, routes, link, srcs)
	if len(p.RouteDel) != 1 || p.RouteDel[0] != podRoute || len(p.Peers) != 1 {
		t.Fatalf("resync of a held peer: %+v", p)
	}
	// Converged held state: nothing to do.
	dev.AllowedIPs = held.allowed()
	have := map[netip.Prefix]route.Peer{}
	for _, r := range held.routes(link, srcs) {
		have[r.Dst] = r
	}
	if p = Diff(map[netip.Prefix]Peer{held.primary(): held}, []wgtypes.Peer{dev}, have, link, srcs); len(p.Peers)+len(p.RouteDel)+len(p.RouteAdd) != 0 {
		t.Fatalf("converged held peer gives %+v", p)
	}

	// A held relay still carries the relay addresses it carries: what
	// crosses to them is the relayed pairs' own WireGuard (each held for
	// its own PSK), and without them the pairs' packets would loop into
	// their own entries.
	relay := peer(t, "10.244.3.0/24")
	relay.Carries = []netip.Prefix{netip.MustParsePrefix("10.244.4.254/32")}
	relay.Held = true
	if !slices.Contains(relay.allowedPrefixes(), relay.Carries[0]) || slices.Contains(relay.allowedPrefixes(), relay.CIDRs[0]) {
		t.Fatalf("held relay allows %v: want its carried relay address and not its PodCIDR", relay.allowedPrefixes())
	}
	// On the relay, a held NATed peer still carries its relay address
	// (the pairs' own WireGuard), not on the NATed side, where the relay's
	// peer carries it.
	natted := peer(t, "10.244.5.0/24")
	natted.Held, natted.Unreachable = true, true
	ra := netip.MustParsePrefix("10.244.5.254/32")
	if !slices.Contains(natted.allowedPrefixes(), ra) || !slices.ContainsFunc(natted.routes(link, srcs), func(r route.Peer) bool { return r.Dst == ra }) {
		t.Fatalf("held NATed peer on a reachable node allows %v: want its relay address, routed", natted.allowedPrefixes())
	}
	natted.SelfUnreachable = true
	if slices.Contains(natted.allowedPrefixes(), ra) {
		t.Fatal("held NATed peer on a NATed node allows its relay address, which the relay's peer carries")
	}
}

// A (re)configured entry gets the current PSK; removals do not.
func TestPresharedKeyOnConfiguredEntries(t *testing.T) {
	a, b := key(t), key(t)
	var psk wgtypes.Key
	psk[0] = 1
	r := &Reconciler{cfg: Config{PQ: PQHooks{PresharedKey: func(k wgtypes.Key) (wgtypes.Key, bool) { return psk, k == a }}}}
	pcs := []wgtypes.PeerConfig{{PublicKey: a}, {PublicKey: b}, {PublicKey: a, Remove: true}}
	r.withPresharedKeys(pcs)
	if pcs[0].PresharedKey == nil || *pcs[0].PresharedKey != psk || pcs[1].PresharedKey != nil || pcs[2].PresharedKey != nil {
		t.Fatalf("PSKs: %v %v %v", pcs[0].PresharedKey != nil, pcs[1].PresharedKey != nil, pcs[2].PresharedKey != nil)
	}
}

// Required mode: a released peer's session made before its first PSK
// (classical only) is due to be dropped, so pod traffic starts on a
// handshake made with the PSK; a session made after it stays, and a held
// peer is left alone (it carries no pod traffic).
func TestReleasedPeerDropsClassicalSession(t *testing.T) {
	first := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	hold := false
	r := &Reconciler{cfg: Config{PQ: PQHooks{
		Hold:     func(wgtypes.Key) bool { return hold },
		FirstPSK: func(wgtypes.Key) (time.Time, bool) { return first, true },
	}}}
	p := peer(t, "10.244.2.0/24")
	r.pqPeer(&p, record.Lease{})
	if !p.DropSessionsBefore.Equal(first) {
		t.Fatalf("released peer: DropSessionsBefore %v, want the first PSK's time %v", p.DropSessionsBefore, first)
	}
	if !p.staleSession(wgtypes.Peer{LastHandshakeTime: first.Add(-time.Second)}) {
		t.Fatal("a session from before the first PSK is kept")
	}
	if p.staleSession(wgtypes.Peer{LastHandshakeTime: first.Add(time.Second)}) {
		t.Fatal("a session made with the PSK is dropped")
	}
	hold = true
	h := peer(t, "10.244.3.0/24")
	r.pqPeer(&h, record.Lease{})
	if !h.DropSessionsBefore.IsZero() {
		t.Fatalf("held peer: DropSessionsBefore %v, want none", h.DropSessionsBefore)
	}
}

// A resync that drops a stale session (a released peer's classical one)
// follows the re-created entry until its first handshake, re-creating it
// again while none comes (rekey.go), on the end that initiates after a
// break only: the NATed end of a NATed/reachable pair, else the lower key.
// The other end must not: two ends re-creating and initiating at once is
// how initiations cross.
func TestDroppedSessionIsFollowed(t *testing.T) {
	first := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	self := key(t)
	lower, higher := key(t), key(t)
	for !liveness.Initiates(self, higher) || liveness.Initiates(self, lower) {
		lower, higher = key(t), key(t)
	}
	type tc struct {
		name            string
		peerKey         wgtypes.Key
		unreachable     bool
		selfUnreachable bool
		handshake       time.Time // on the device; zero: no entry
		follow          bool
	}
	before, after := first.Add(-time.Second), first.Add(time.Second)
	for _, c := range []tc{
		{"reachable pair, we initiate", higher, false, false, before, true},
		{"reachable pair, the peer initiates", lower, false, false, before, false},
		{"we are behind a NAT, the peer is reachable", lower, false, true, before, true},
		{"the peer is behind a NAT, we are reachable", higher, true, false, before, false},
		{"both behind NATs (a punched pair), we initiate", higher, true, true, before, true},
		{"a session made with the PSK stays", higher, false, false, after, false},
		{"no entry yet: nothing dropped", higher, false, false, time.Time{}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &Reconciler{cfg: Config{SelfKey: self}}
			t.Cleanup(func() {
				if r.rekeyTimer != nil {
					r.rekeyTimer.Stop()
				}
			})
			p := peer(t, "10.244.2.0/24")
			p.PublicKey, p.Unreachable, p.SelfUnreachable, p.DropSessionsBefore = c.peerKey, c.unreachable, c.selfUnreachable, first
			var have []wgtypes.Peer
			if !c.handshake.IsZero() {
				h := onDevice(p)
				h.LastHandshakeTime = c.handshake
				have = append(have, h)
			}
			desired := map[netip.Prefix]Peer{p.primary(): p}
			if got := Diff(desired, have, nil, 1, nil); (len(got.Peers) == 2 && got.Peers[0].Remove) != (c.handshake.Equal(before)) {
				t.Fatalf("Diff: %+v; want the entry re-created iff its session is from before the PSK", got.Peers)
			}
			r.watchDroppedSessions(desired, have, first.Add(2*time.Second))
			if w := r.rekeyed[p.primary()]; (w != nil) != c.follow || w != nil && (w.key != p.PublicKey || w.why != whyStaleSession) {
				t.Fatalf("followed %+v, want followed=%v", w, c.follow)
			}
		})
	}
}
