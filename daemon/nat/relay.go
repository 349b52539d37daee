package nat

import (
	"crypto/sha256"
	"encoding/binary"
)

// Relay picks the relay for the pair (a, b) among the reachable nodes by
// rendezvous (highest random weight) hashing: both ends compute the same
// node from the same list without talking, load spreads over the relays,
// and when a relay goes only the pairs it carried move. "" if none.
func Relay(candidates []string, a, b string) string {
	if b < a {
		a, b = b, a
	}
	best, bestW := "", uint64(0)
	for _, c := range candidates {
		if c == a || c == b {
			continue
		}
		h := sha256.Sum256([]byte(a + "\x00" + b + "\x00" + c))
		if w := binary.BigEndian.Uint64(h[:8]); best == "" || w > bestW || w == bestW && c < best {
			best, bestW = c, w
		}
	}
	return best
}
