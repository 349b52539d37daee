package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgcni/wgcni/daemon/nat"
)

// NAT traversal (docs/nat.md): how each peer is reached.
var descPath = prometheus.NewDesc("wgcni_peer_path",
	"How the peer is reached (always 1): mode direct, relayed (via names the relay) or punched (a direct path through both NATs); why explains it (e.g. symmetric NAT).",
	[]string{"peer_node", "mode", "via", "why"}, nil)

func (c *Collector) collectPaths(ch chan<- prometheus.Metric) {
	if c.src.Paths == nil {
		return
	}
	for _, p := range c.src.Paths() {
		ch <- prometheus.MustNewConstMetric(descPath, prometheus.GaugeValue, 1, p.Node, p.Mode, p.Via, p.Why)
	}
}

// pathSource is Sources.Paths.
type pathSource = func() []nat.Path
