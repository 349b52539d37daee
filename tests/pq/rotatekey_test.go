package pq

import (
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/pqpeer"
	"github.com/wgcni/wgcni/tests/harness"
)

// TestRotateKeyWithPQ: `wgcnid rotate-key` works with post-quantum on and
// required. Under a 100/s ping both ways, n1 rotates its WireGuard key: the
// peer carries the pair's PSK to n1's new key, so the first handshake
// under the new key meets the same PSK on both ends and traffic goes on
// (at most a handful lost, as tests/security allows a rotation without
// post-quantum); then an exchange under the new identity gives both ends
// the same fresh PSK (compared through wgctrl, never printed).
func TestRotateKeyWithPQ(t *testing.T) {
	for _, mode := range []string{"on", "required"} {
		t.Run(mode, func(t *testing.T) {
			c, nodes, pods := startModes(t, interval, mode, mode)
			n1, n2, p1, p2 := nodes[0], nodes[1], pods[0], pods[1]
			before := sharedPSK(t, n1, n2, 30*time.Second)
			connect(t, p1, p2)
			connect(t, p2, p1)
			oldKey, k2 := n1.MustPublicKey(t), n2.MustPublicKey(t)

			wait := pingBoth(t, p1, p2, int(12*time.Second/pingGap))
			time.Sleep(2 * time.Second)
			tRotate := time.Now()
			argv := append([]string{c.Bin("wgcnid"), "rotate-key"}, n1.DaemonArgs()...)
			out, err := n1.ExecTimeout(90*time.Second, argv...)
			if err != nil {
				t.Fatalf("wgcnid rotate-key with --post-quantum %s: %v %s", mode, err, out)
			}
			rotateTook := time.Since(tRotate)
			newKey := n1.MustPublicKey(t)
			if newKey == oldKey || !strings.Contains(out, newKey.String()) {
				t.Fatalf("rotate-key: device key unchanged or not the one printed (%q)", out)
			}
			// A fresh PSK under the new identities (n2's state for the new
			// key counts an exchange installed after the rotation; a
			// carried PSK counts none), the same on both ends.
			var fresh time.Duration
			err = harness.WaitFor(30*time.Second, "an exchange under n1's new key and the same PSK on both ends", func() (bool, error) {
				st, err := pqpeer.ReadStatus(n2.RunDir)
				if err != nil {
					return false, nil // not written yet
				}
				exchanged := false
				for _, ps := range st.Peers {
					exchanged = exchanged || ps.PublicKey == newKey.String() && ps.Exchanges > 0 && ps.Installed.After(tRotate)
				}
				if !exchanged {
					return false, nil
				}
				for _, p := range mustDev(t, n2).Peers {
					if p.PublicKey == newKey {
						a := pskOf(t, n1, k2)
						if a == p.PresharedKey && fingerprint(a) != before && a != (wgtypes.Key{}) {
							fresh = time.Since(tRotate)
							return true, nil
						}
					}
				}
				return false, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			sent, lost, _ := wait()
			if hs := lastHandshake(t, n2, newKey); hs.Before(tRotate) {
				t.Fatalf("no handshake with n1's new key since the rotation (last %v)", hs)
			}
			for _, p := range mustDev(t, n2).Peers {
				if p.PublicKey == oldKey {
					t.Fatal("n2 still has a peer entry for n1's old key")
				}
			}
			if lost[0]+lost[1] > 5 {
				t.Fatalf("rotate-key with --post-quantum %s: lost %d/%d (n1->n2) and %d/%d (n2->n1), want at most a handful", mode, lost[0], sent[0], lost[1], sent[1])
			}
			connect(t, p1, p2)
			connect(t, p2, p1)
			harness.Result(t, "--post-quantum %s: rotate-key took %v under %d+%d pings at %v intervals: lost %d (n1->n2) + %d (n2->n1); handshake under the new key; exchange under the new key, same fresh PSK on both ends %v after the rotation",
				mode, rotateTook.Round(10*time.Millisecond), sent[0], sent[1], pingGap, lost[0], lost[1], fresh.Round(100*time.Millisecond))
		})
	}
}
