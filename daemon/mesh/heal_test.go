package mesh

import (
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Exactly one end of a pair re-creates its entry and initiates after
// BreakCrossed: the NATed end when only one is behind a NAT (the reachable
// end has no endpoint for it but roaming's), else the lower key.
func TestInitiatesAfterBreak(t *testing.T) {
	low, high := wgtypes.Key{1}, wgtypes.Key{2}
	for _, c := range []struct {
		name            string
		lowNAT, highNAT bool
		want            wgtypes.Key // the end that initiates
	}{
		{"both reachable: lower key", false, false, low},
		{"both behind NATs (punched): lower key", true, true, low},
		{"only the lower key behind a NAT", true, false, low},
		{"only the higher key behind a NAT: it, not the lower key", false, true, high},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Each end's view: its own NAT state and the peer's record flag.
			fromLow := Peer{PublicKey: high, SelfUnreachable: c.lowNAT, Unreachable: c.highNAT}.initiatesAfterBreak(low)
			fromHigh := Peer{PublicKey: low, SelfUnreachable: c.highNAT, Unreachable: c.lowNAT}.initiatesAfterBreak(high)
			if fromLow == fromHigh {
				t.Fatalf("low initiates %v, high initiates %v: want exactly one", fromLow, fromHigh)
			}
			if got := map[bool]wgtypes.Key{true: low, false: high}[fromLow]; got != c.want {
				t.Fatalf("initiator %v, want %v", got, c.want)
			}
		})
	}
}

// A held peer (required mode, no PSK yet) is probed only when its tunnel
// carries the probe's address (with NAT on either end, exchangePrefixes):
// elsewhere the probe is dropped by design and its loss would read as a
// fault to repair.
func TestHeldPeerIsProbedOnlyWhereTheTunnelCarriesIt(t *testing.T) {
	gw := netip.MustParseAddr("10.244.2.1")
	for _, c := range []struct {
		name                   string
		held, natPeer, natSelf bool
		want                   netip.Addr
	}{
		{"released", false, false, false, gw},
		{"held, no NAT", true, false, false, netip.Addr{}},
		{"held, the peer behind a NAT", true, true, false, gw},
		{"held, this node behind a NAT", true, false, true, gw},
	} {
		p := peer(t, "10.244.2.0/24")
		p.Held, p.Unreachable, p.SelfUnreachable = c.held, c.natPeer, c.natSelf
		if got := p.want().Probe; got != c.want {
			t.Errorf("%s: probe %v, want %v", c.name, got, c.want)
		}
	}
}
