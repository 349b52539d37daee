package nat

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/mesh"
)

func node(t *testing.T, name, cidr string, unreachable bool) mesh.Peer {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	p := mesh.Peer{CIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}, Node: name, PublicKey: k.PublicKey(),
		Endpoint: netip.MustParseAddrPort("10.99.0.2:51820")}
	if unreachable {
		p.Unreachable, p.Published, p.Endpoint = true, netip.MustParseAddrPort("192.168.1.11:51820"), netip.AddrPort{}
	}
	return p
}

var (
	natA  = netip.MustParseAddrPort("10.99.0.13:40001")
	natA2 = netip.MustParseAddrPort("10.99.0.13:40002")
	natC  = netip.MustParseAddrPort("10.99.0.14:40001")
)

// TestPlan: how a NATed node reaches each kind of peer, where its
// session is aimed, and which relay carries the peer's relay address.
func TestPlan(t *testing.T) {
	r1, r2 := node(t, "r1", "10.244.1.0/24", false), node(t, "r2", "10.244.2.0/24", false)
	far := node(t, "far", "10.244.3.0/24", true)
	active := map[netip.Prefix]mesh.Peer{}
	for _, p := range []mesh.Peer{r1, r2, far} {
		active[p.CIDRs[0]] = p
	}
	self := netip.MustParsePrefix("10.244.9.0/24")
	farRelay := netip.MustParseAddrPort("10.244.3.254:51820") // far's relay address, its port
	seen := func(m map[string]netip.AddrPort) map[string]netip.AddrPort { return m }
	relay := Relay([]string{"r1", "r2"}, "self", "far")
	for _, tc := range []struct {
		name     string
		obs      Observations
		heard    bool
		mode     string
		why      string
		endpoint netip.AddrPort // of far's peer
		punch    string         // the path's public endpoint (punched at)
	}{
		{"no observation yet", Observations{}, false, Relayed, "no observed endpoint yet", farRelay, ""},
		{"punching", Observations{"self": seen(map[string]netip.AddrPort{"r1": natA, "r2": natA}), "far": {"r1": natC, "r2": natC}},
			false, Relayed, "punching", farRelay, natC.String()},
		{"punched", Observations{"self": {"r1": natA, "r2": natA}, "far": {"r1": natC, "r2": natC}}, true, Punched, "hole punched", natC, natC.String()},
		{"symmetric peer", Observations{"self": {"r1": natA, "r2": natA}, "far": {"r1": natC, "r2": netip.AddrPortFrom(natC.Addr(), 5555)}},
			true, Relayed, "symmetric NAT", farRelay, ""},
		{"symmetric self", Observations{"self": {"r1": natA, "r2": natA2}, "far": {"r1": natC, "r2": natC}}, false, Relayed, "symmetric NAT", farRelay, ""},
		{"same NAT", Observations{"self": {"r1": natA}, "far": {"r1": natA2}}, false, Direct, "same NAT", far.Published, ""},
		{"observer not reachable", Observations{"self": {"far": natA}, "far": {"self": natC}}, false, Relayed, "no observed endpoint yet", farRelay, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, paths := Plan(Inputs{Self: "self", SelfUnreachable: true, SelfCIDR: self, Obs: tc.obs, Heard: map[string]bool{"far": tc.heard},
				Keepalive: 25, PunchKeepalive: 2, DeviceMTU: 1440}, active)
			var got Path
			for _, p := range paths {
				if p.Node == "far" {
					got = p
				}
			}
			if got.Mode != tc.mode || got.Why != tc.why || got.Endpoint != tc.punch {
				t.Fatalf("path %+v, want %s (%s) punching at %q", got, tc.mode, tc.why, tc.punch)
			}
			if tc.mode == Relayed && got.Via != relay {
				t.Errorf("via %q, want %q", got.Via, relay)
			}
			f := out[far.CIDRs[0]]
			if f.Endpoint != tc.endpoint {
				t.Errorf("far's endpoint %v, want %v", f.Endpoint, tc.endpoint)
			}
			if !slices.Equal(f.CIDRs, far.CIDRs) || f.Held != far.Held {
				t.Errorf("far's own entry changed: CIDRs %v held %v (its session carries its CIDRs on every path)", f.CIDRs, f.Held)
			}
			if (f.RelayedVia != "") != (tc.mode == Relayed) {
				t.Errorf("far relayed via %q in mode %s", f.RelayedVia, tc.mode)
			}
			// Relayed, the pair's packets carry its own WireGuard header
			// (60 bytes over IPv4) and padding inside the relay's tunnel:
			// 1440 - 60 = 1380, down to a multiple of 16.
			if want := map[bool]int{true: 1376}[tc.mode == Relayed]; f.MTU != want {
				t.Errorf("far's route MTU %d, want %d", f.MTU, want)
			}
			for _, r := range []mesh.Peer{r1, r2} {
				or := out[r.CIDRs[0]]
				carries := slices.Contains(or.Carries, netip.PrefixFrom(farRelay.Addr(), 32))
				// Carried on the punched path too: packets still on the
				// relay when either end switches are accepted.
				if want := tc.mode != Direct && r.Node == relay; carries != want {
					t.Errorf("%s carries far's relay address: %v, want %v", r.Node, carries, want)
				}
				if carries && or.CarrySrc != netip.MustParseAddr("10.244.9.254") {
					t.Errorf("%s's carried route source %v, want our relay address 10.244.9.254", r.Node, or.CarrySrc)
				}
				if out[r.CIDRs[0]].Keepalive != 25 {
					t.Errorf("keepalive to reachable %s: %d, want 25 (an unreachable node holds its mapping open)", r.Node, out[r.CIDRs[0]].Keepalive)
				}
			}
			// The loop guard: a session aimed at a relay address must
			// find a relay's peer carrying it, or it would fall back into
			// its own entry (whose CIDR holds that address) and loop.
			if f.Endpoint.Addr() == farRelay.Addr() && !slices.Contains(out[r1.CIDRs[0]].Carries, netip.PrefixFrom(farRelay.Addr(), 32)) &&
				!slices.Contains(out[r2.CIDRs[0]].Carries, netip.PrefixFrom(farRelay.Addr(), 32)) {
				t.Error("far's session aimed at its relay address, which no peer carries")
			}
			if len(active[r1.CIDRs[0]].Carries)+len(active[r2.CIDRs[0]].Carries) != 0 {
				t.Fatal("Plan modified its input")
			}
		})
	}
	// A reachable node plans nothing: unreachable peers keep alive to it.
	out, paths := Plan(Inputs{Self: "self", Obs: Observations{}}, active)
	if out[far.CIDRs[0]].RelayedVia != "" || paths[2].Why != "it keeps alive to us" || out[far.CIDRs[0]].Endpoint.IsValid() {
		t.Errorf("reachable self: %+v %+v", out[far.CIDRs[0]], paths)
	}
	// A node that says it is reachable but is seen behind a NAT (auto,
	// undecided) relays nothing.
	obs := Observations{"r1": {"r2": natC}, "r2": {"r1": netip.AddrPortFrom(r2.Endpoint.Addr(), 51820)}}
	_, paths = Plan(Inputs{Self: "self", SelfUnreachable: true, SelfCIDR: self, Obs: obs}, active)
	if paths[2].Via != "r2" {
		t.Errorf("relay %q, want r2 (r1 is seen behind a NAT)", paths[2].Via)
	}
	// A node whose reachability is not declared (auto) relays nothing.
	undeclared := maps.Clone(active)
	r2n := r2
	r2n.NoRelay = true
	undeclared[r2.CIDRs[0]] = r2n
	if _, paths := Plan(Inputs{Self: "self", SelfUnreachable: true, SelfCIDR: self, Obs: Observations{}}, undeclared); paths[2].Via != "r1" {
		t.Errorf("relay %q, want r1 (r2 is auto)", paths[2].Via)
	}
	// Only announced relays (alive within their short TTL) relay.
	if _, paths := Plan(Inputs{Self: "self", SelfUnreachable: true, SelfCIDR: self, Obs: Observations{}, Relays: map[string]bool{"r2": true}}, active); paths[2].Via != "r2" {
		t.Errorf("relay %q, want r2 (the only one announced)", paths[2].Via)
	}
	if _, paths := Plan(Inputs{Self: "self", SelfUnreachable: true, Obs: Observations{}, Relays: map[string]bool{}}, active); paths[2].Via != "" {
		t.Errorf("relay %q with none announced", paths[2].Via)
	}
	// No reachable node at all: nothing to relay through.
	only := map[netip.Prefix]mesh.Peer{far.CIDRs[0]: far}
	out, paths = Plan(Inputs{Self: "self", SelfUnreachable: true, SelfCIDR: self, Obs: Observations{}}, only)
	if paths[0].Mode != Direct || paths[0].Why != "no observed endpoint yet; no relay" || out[far.CIDRs[0]].Endpoint != far.Published {
		t.Errorf("no relay: %+v, endpoint %v (never a relay address nobody carries)", paths, out[far.CIDRs[0]].Endpoint)
	}
	// No relay address of our own (a host-only node): never relayed.
	if _, paths := Plan(Inputs{Self: "self", SelfUnreachable: true, Obs: Observations{}}, active); paths[2].Via != "" {
		t.Errorf("relayed via %q without a relay address of our own", paths[2].Via)
	}
}

// TestRelay: both ends pick the same relay, never themselves; pairs
// spread over relays; a relay leaving moves only its own pairs.
func TestRelay(t *testing.T) {
	relays := []string{"r1", "r2", "r3", "r4"}
	if Relay(relays, "a", "b") != Relay(relays, "b", "a") {
		t.Fatal("the two ends of a pair pick different relays")
	}
	if got := Relay([]string{"a", "b"}, "a", "b"); got != "" {
		t.Fatalf("relay %q for a pair of the only candidates", got)
	}
	load := map[string]int{}
	moved := 0
	for i := 0; i < 200; i++ {
		a, b := fmt.Sprint("x", i), fmt.Sprint("y", i)
		r := Relay(relays, a, b)
		load[r]++
		after := Relay(slices.DeleteFunc(slices.Clone(relays), func(s string) bool { return s == "r1" }), a, b)
		if r != "r1" && after != r {
			moved++
		}
	}
	for _, r := range relays {
		if load[r] < 20 {
			t.Errorf("relay %s carries %d of 200 pairs: not spread (%v)", r, load[r], load)
		}
	}
	if moved != 0 {
		t.Errorf("%d pairs not relayed by r1 moved when r1 left", moved)
	}
}

func TestAutoUnreachable(t *testing.T) {
	own := netip.MustParseAddrPort("192.168.1.11:51820")
	reach := map[string]bool{"r1": true}
	for _, tc := range []struct {
		seen               map[string]netip.AddrPort
		unreachable, known bool
	}{
		{nil, false, false},
		{map[string]netip.AddrPort{"r1": natA}, true, true},
		{map[string]netip.AddrPort{"r1": netip.AddrPortFrom(own.Addr(), 51820)}, false, true},
		{map[string]netip.AddrPort{"x": natA}, false, false}, // not a reachable observer
	} {
		u, k := AutoUnreachable(own, tc.seen, reach)
		if u != tc.unreachable || k != tc.known {
			t.Errorf("%v: unreachable %v known %v, want %v %v", tc.seen, u, k, tc.unreachable, tc.known)
		}
	}
}

func TestParseObserved(t *testing.T) {
	node, obs, ap, err := ParseObserved("/wgcni", "/wgcni/nat/observed/a1/r1", []byte("10.99.0.13:40001"))
	if err != nil || node != "a1" || obs != "r1" || ap != natA {
		t.Fatalf("%s %s %v %v", node, obs, ap, err)
	}
	for _, bad := range []struct{ key, value string }{
		{"/wgcni/nat/observed/a1", "10.99.0.13:40001"},
		{"/wgcni/nat/observed/a 1/r1", "10.99.0.13:40001"},
		{"/wgcni/nat/observed/a1/r1", "10.99.0.13"},
		{"/wgcni/nat/observed/a1/r1", "224.0.0.1:5"},
		{"/wgcni/nat/observed/a1/r1", "10.99.0.13:0"},
		{"/other/a1/r1", "10.99.0.13:40001"},
	} {
		if _, _, _, err := ParseObserved("/wgcni", bad.key, []byte(bad.value)); err == nil {
			t.Errorf("%s = %q accepted", bad.key, bad.value)
		}
	}
}

func FuzzParseObserved(f *testing.F) {
	f.Add("/wgcni/nat/observed/a1/r1", "10.99.0.13:40001")
	f.Add("/wgcni/nat/observed/a1/r1", "[fd00::1]:1")
	f.Fuzz(func(t *testing.T, key, value string) {
		node, obs, ap, err := ParseObserved("/wgcni", key, []byte(value))
		if err != nil {
			return
		}
		if node == "" || obs == "" || !ap.IsValid() || ap.Port() == 0 {
			t.Fatalf("accepted %q=%q as %q %q %v", key, value, node, obs, ap)
		}
	})
}

// TestPlanPostQuantumRequired: with --post-quantum=required a relayed
// pair stays held for its own PSK (its session rides the relay, and the
// relay never sees its plaintext, so the pair's own PSK is what protects
// it), and a held relay still carries the relay address: the pair's
// packets to it are the pair's own WireGuard, and without it they would
// loop into the pair's own entry.
func TestPlanPostQuantumRequired(t *testing.T) {
	r1, r2 := node(t, "r1", "10.244.1.0/24", false), node(t, "r2", "10.244.2.0/24", false)
	far := node(t, "far", "10.244.3.0/24", true)
	far.Held = true // what mesh's Hold hook says: no PSK with far yet
	r1.Held, r2.Held = true, true
	active := map[netip.Prefix]mesh.Peer{}
	for _, p := range []mesh.Peer{r1, r2, far} {
		active[p.CIDRs[0]] = p
	}
	symmetric := Observations{"self": {"r1": natA, "r2": natA}, "far": {"r1": natC, "r2": netip.AddrPortFrom(natC.Addr(), 5555)}}
	out, paths := Plan(Inputs{Self: "self", SelfUnreachable: true, SelfCIDR: netip.MustParsePrefix("10.244.9.0/24"), Obs: symmetric}, active)
	if paths[2].Mode != Relayed {
		t.Fatalf("path %+v, want relayed", paths[2])
	}
	if !out[far.CIDRs[0]].Held {
		t.Error("relayed peer released without its own PSK")
	}
	relay := out[byName(out, paths[2].Via)]
	if !relay.Held || !slices.Contains(relay.Carries, netip.MustParsePrefix("10.244.3.254/32")) {
		t.Errorf("held relay %s: held %v, carries %v; want held and carrying far's relay address", relay.Node, relay.Held, relay.Carries)
	}
}

func byName(m map[netip.Prefix]mesh.Peer, name string) netip.Prefix {
	for c, p := range m {
		if p.Node == name {
			return c
		}
	}
	return netip.Prefix{}
}
