package ctl

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/nodefile"
)

// PeersReport is `wgcnictl peers`: every peer's liveness state with its
// reason, its path MTU and the repairs wgcnid made, as wgcnid left them in
// its state file, with the device's endpoint and handshake age read now.
type PeersReport struct {
	Node       string      `json:"node"`
	Updated    time.Time   `json:"updated"` // when wgcnid last wrote the states
	DeviceMTU  int         `json:"deviceMTU"`
	Peers      []PeerState `json:"peers"`
	StateError string      `json:"stateError,omitempty"`
}

// PeerState is one peer of PeersReport.
type PeerState struct {
	heal.PeerStatus
	Endpoint         string   `json:"endpoint"`
	HandshakeAgeSecs *float64 `json:"handshakeAgeSeconds"` // null: never
}

// Peers gathers `wgcnictl peers`.
func Peers(cfg *config.Config, now time.Time) (*PeersReport, error) {
	nf, err := nodefile.Read(cfg.RunDir)
	if err != nil {
		return nil, fmt.Errorf("--run-dir %s: %w (is wgcnid running and holding its lease?)", cfg.RunDir, err)
	}
	r := &PeersReport{Node: nf.Name, Peers: []PeerState{}}
	st, err := heal.ReadState(heal.StateFile(cfg.RunDir))
	if err != nil {
		return nil, fmt.Errorf("peer states: %w (wgcnid writes them within seconds of its start)", err)
	}
	r.Updated, r.DeviceMTU = st.Updated, st.DeviceMTU
	endpoints, ages := map[string]string{}, map[string]*float64{}
	if wg, err := wgctrl.New(); err == nil {
		defer wg.Close()
		if dev, err := wg.Device(nf.Device); err == nil {
			for _, p := range dev.Peers {
				k := p.PublicKey.String()
				if p.Endpoint != nil {
					endpoints[k] = p.Endpoint.String()
				}
				if !p.LastHandshakeTime.IsZero() {
					age := max(0, now.Sub(p.LastHandshakeTime).Seconds())
					ages[k] = &age
				}
			}
		} else {
			r.StateError = err.Error()
		}
	}
	for _, s := range st.Peers {
		r.Peers = append(r.Peers, PeerState{PeerStatus: s, Endpoint: endpoints[s.PublicKey], HandshakeAgeSecs: ages[s.PublicKey]})
	}
	return r, nil
}

func (r *PeersReport) table(w io.Writer) {
	fmt.Fprintf(w, "node %s, device MTU %d, states as of %s\n\n", r.Node, r.DeviceMTU, r.Updated.Local().Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCIDR\tSTATE\tPATH MTU\tHANDSHAKE\tENDPOINT\tREPAIRS\tREASON")
	for _, p := range r.Peers {
		hs := handshakeAge(p.HandshakeAgeSecs)
		mtu := "-"
		if p.PathMTU > 0 {
			mtu = fmt.Sprint(p.PathMTU)
		}
		var reps []string
		for k, n := range p.Repairs {
			reps = append(reps, fmt.Sprintf("%s=%d", k, n))
		}
		slices.Sort(reps)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(p.Node), p.CIDR, p.State, mtu, hs, dash(p.Endpoint), dash(strings.Join(reps, ",")), p.Reason)
	}
	tw.Flush()
}
