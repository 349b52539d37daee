package mesh

import (
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
