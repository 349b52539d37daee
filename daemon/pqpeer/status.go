package pqpeer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/pqexchange"
)

// StatusFileName is the per-peer post-quantum state in the run directory,
// written by wgcnid and read by wgcnictl. It holds public data only.
const StatusFileName = "pq-status.json"

// Peer states in the status file.
const (
	StatePSK         = "psk"         // a PSK from an exchange is on the device
	StateWaiting     = "waiting"     // both publish keys, no PSK yet
	StateUnsupported = "unsupported" // the peer publishes no ML-KEM key
)

// Status is the status file.
type Status struct {
	Mode     string       `json:"mode"` // on or required
	Interval string       `json:"interval"`
	Written  time.Time    `json:"written"`
	Peers    []PeerStatus `json:"peers"`
}

// PeerStatus is one peer's post-quantum state (never the PSK).
type PeerStatus struct {
	Node      string    `json:"node"`
	PublicKey string    `json:"publicKey"`
	Role      string    `json:"role"` // initiator or responder
	State     string    `json:"state"`
	Held      bool      `json:"held,omitempty"` // required mode: pod traffic dropped
	Epoch     uint64    `json:"epoch,omitempty"`
	Installed time.Time `json:"installed,omitzero"`
	Exchanges int64     `json:"exchanges"`
	Failures  int64     `json:"failures"`
	LastError string    `json:"lastError,omitempty"`
}

// Status returns the current state of every configured peer.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Status{Mode: "on", Interval: m.cfg.Interval.String(), Written: time.Now(), Peers: []PeerStatus{}}
	if m.cfg.Required {
		s.Mode = "required"
	}
	for k, st := range m.peers {
		if st.info.Node == "" {
			continue // found on the device, not (yet) configured
		}
		ps := PeerStatus{Node: st.info.Node, PublicKey: k.String(), Role: "responder", State: StateWaiting, Held: st.info.Held,
			Epoch: st.epoch, Exchanges: st.exchanges, Failures: st.failures, LastError: st.lastErr}
		if pqexchange.Initiates(m.self, k) {
			ps.Role = "initiator"
		}
		switch {
		case st.has:
			ps.State, ps.Installed = StatePSK, st.installed
		case st.kem == nil:
			ps.State = StateUnsupported
		}
		s.Peers = append(s.Peers, ps)
	}
	slices.SortFunc(s.Peers, func(a, b PeerStatus) int { return strings.Compare(a.Node+a.PublicKey, b.Node+b.PublicKey) })
	return s
}

func (m *Manager) writeStatus() {
	if m.cfg.StatusFile == "" {
		return
	}
	b, _ := json.MarshalIndent(m.Status(), "", "  ")
	if err := nodefile.WriteFileAtomic(m.cfg.StatusFile, append(b, '\n'), 0o644); err != nil {
		m.cfg.Log.Warn("post-quantum: write status file", "err", err)
	}
}

// ReadStatus reads the status file in runDir; os.ErrNotExist when the
// daemon runs without post-quantum keys.
func ReadStatus(runDir string) (*Status, error) {
	b, err := os.ReadFile(filepath.Join(runDir, StatusFileName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("read post-quantum status: %w", err)
	}
	var s Status
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("post-quantum status %s: %w", filepath.Join(runDir, StatusFileName), err)
	}
	return &s, nil
}

// RemoveStatus removes a stale status file (the daemon runs with off).
func RemoveStatus(runDir string) {
	os.Remove(filepath.Join(runDir, StatusFileName))
}

var (
	pqLabels    = []string{"peer_node", "public_key"}
	descPSKAge  = prometheus.NewDesc("wgcni_pq_psk_age_seconds", "Seconds since the peer's current post-quantum preshared key was installed (absent: none).", pqLabels, nil)
	descHasPSK  = prometheus.NewDesc("wgcni_pq_peer_has_psk", "1 when the peer has a post-quantum preshared key on the device, else 0.", pqLabels, nil)
	descHeld    = prometheus.NewDesc("wgcni_pq_peer_held", "1 when the peer's pod traffic is dropped for lack of a preshared key (required mode).", pqLabels, nil)
	descExch    = prometheus.NewDesc("wgcni_pq_exchanges_total", "Post-quantum exchanges committed with the peer.", pqLabels, nil)
	descFailure = prometheus.NewDesc("wgcni_pq_exchange_failures_total", "Post-quantum exchanges with the peer that failed (initiator side).", pqLabels, nil)
)

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPSKAge, descHasPSK, descHeld, descExch, descFailure} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	s := m.Status()
	for _, p := range s.Peers {
		l := []string{p.Node, p.PublicKey}
		has, held := 0.0, 0.0
		if p.State == StatePSK {
			has = 1
			ch <- prometheus.MustNewConstMetric(descPSKAge, prometheus.GaugeValue, time.Since(p.Installed).Seconds(), l...)
		}
		if p.Held {
			held = 1
		}
		ch <- prometheus.MustNewConstMetric(descHasPSK, prometheus.GaugeValue, has, l...)
		ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, held, l...)
		ch <- prometheus.MustNewConstMetric(descExch, prometheus.CounterValue, float64(p.Exchanges), l...)
		ch <- prometheus.MustNewConstMetric(descFailure, prometheus.CounterValue, float64(p.Failures), l...)
	}
}
