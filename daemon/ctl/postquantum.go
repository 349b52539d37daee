package ctl

import (
	"fmt"
	"time"

	"github.com/wgcni/wgcni/daemon/pqpeer"
)

// pqStatus reads the daemon's post-quantum status file, by public key
// (empty when post-quantum is off or the file cannot be read).
func pqStatus(runDir string) map[string]*pqpeer.PeerStatus {
	s, err := pqpeer.ReadStatus(runDir)
	if err != nil {
		return nil
	}
	out := make(map[string]*pqpeer.PeerStatus, len(s.Peers))
	for i := range s.Peers {
		out[s.Peers[i].PublicKey] = &s.Peers[i]
	}
	return out
}

// pqCell is the PQ column: "off", the state, the PSK's age, and failures.
func pqCell(p *pqpeer.PeerStatus, now time.Time) string {
	if p == nil {
		return "off"
	}
	s := p.State
	if p.State == pqpeer.StatePSK {
		s = "psk " + now.Sub(p.Installed).Round(time.Second).String()
	}
	if p.Held {
		s += ",held"
	}
	if p.Failures > 0 {
		s += fmt.Sprintf(",%d failed", p.Failures)
	}
	return s
}
