package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgcni/wgcni/daemon/liveness"
)

// Per-peer liveness, repairs, probes and path MTU (daemon/heal), from the
// healer's last round; the reason is not a label (unbounded values), it is
// in the log and in `wgcnictl peers`.
var (
	descPeerState = prometheus.NewDesc("wgcni_peer_state",
		"1 on the peer's current liveness state (pending, up, no-handshake, stale, one-way), 0 on the others.", append(peerLabels, "state"), nil)
	descPeerRepairs = prometheus.NewDesc("wgcni_peer_repairs_total",
		"Repairs wgcnid made on the peer, by kind (reapply-config, reread-endpoint, reinitiate, break-crossed-initiation, quiesce-retries).", append(peerLabels, "kind"), nil)
	descPeerProbes = prometheus.NewDesc("wgcni_peer_probes_total",
		"Liveness probes sent to the peer through the tunnel, by result (answered, lost).", append(peerLabels, "result"), nil)
	descPeerPathMTU = prometheus.NewDesc("wgcni_peer_path_mtu_bytes",
		"Path MTU to the peer measured inside the tunnel (largest inner packet acknowledged).", peerLabels, nil)
	descDeviceMTU = prometheus.NewDesc("wgcni_device_mtu_bytes",
		"MTU of the WireGuard device.", []string{"device"}, nil)
)

var healDescs = []*prometheus.Desc{descPeerState, descPeerRepairs, descPeerProbes, descPeerPathMTU, descDeviceMTU}

func (c *Collector) collectHealth(ch chan<- prometheus.Metric) {
	if c.src.DeviceMTU > 0 {
		ch <- prometheus.MustNewConstMetric(descDeviceMTU, prometheus.GaugeValue, float64(c.src.DeviceMTU), c.src.Device)
	}
	if c.src.Health == nil {
		return
	}
	// The node-wide handshake figures are derived from the liveness
	// states, the one judgement of whether a peer has a session.
	sessionless := 0
	for _, s := range c.src.Health() {
		if liveness.Sessionless(s.State) {
			sessionless++
		}
	}
	ch <- prometheus.MustNewConstMetric(descNoHandshake, prometheus.GaugeValue, float64(sessionless))
	if c.src.HandshakeStalls != nil {
		ch <- prometheus.MustNewConstMetric(descStalls, prometheus.CounterValue, float64(c.src.HandshakeStalls()))
	}
	for _, s := range c.src.Health() {
		lv := []string{s.Node, s.CIDR, s.PublicKey}
		for _, st := range liveness.States {
			ch <- prometheus.MustNewConstMetric(descPeerState, prometheus.GaugeValue, b2f(s.State == st), append(lv, string(st))...)
		}
		for _, k := range liveness.Repairs {
			ch <- prometheus.MustNewConstMetric(descPeerRepairs, prometheus.CounterValue, float64(s.Repairs[string(k)]), append(lv, string(k))...)
		}
		ch <- prometheus.MustNewConstMetric(descPeerProbes, prometheus.CounterValue, float64(s.ProbesAnswered), append(lv, "answered")...)
		ch <- prometheus.MustNewConstMetric(descPeerProbes, prometheus.CounterValue, float64(s.ProbesLost), append(lv, "lost")...)
		if s.PathMTU > 0 {
			ch <- prometheus.MustNewConstMetric(descPeerPathMTU, prometheus.GaugeValue, float64(s.PathMTU), lv...)
		}
	}
}
