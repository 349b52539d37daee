package agent

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/metrics"
)

// opsMetrics is the daemon's metrics/health endpoint; a nil *opsMetrics
// (--metrics-addr empty) does nothing.
type opsMetrics struct {
	srv *metrics.Server
	col *metrics.Collector
	log *slog.Logger
}

func startMetrics(cfg *config.Config, log *slog.Logger) (*opsMetrics, error) {
	if cfg.MetricsAddr == "" {
		return nil, nil
	}
	srv, err := metrics.Listen(cfg.MetricsAddr, log)
	if err != nil {
		return nil, err
	}
	return &opsMetrics{srv: srv, log: log}, nil
}

// register starts reporting the node's parts once they all exist.
func (m *opsMetrics) register(src metrics.Sources) {
	if m == nil {
		return
	}
	m.col = metrics.NewCollector(src)
	if err := m.srv.Registry.Register(m.col); err != nil {
		m.log.Error("register metrics collector", "err", err)
	}
}

// registerCollector adds a collector of another part (gateway sites).
func (m *opsMetrics) registerCollector(c prometheus.Collector) {
	if m == nil {
		return
	}
	if err := m.srv.Registry.Register(c); err != nil {
		m.log.Error("register metrics collector", "err", err)
	}
}

// observe is mesh.Config.Observe.
func (m *opsMetrics) observe(kind string, took time.Duration, err error) {
	if m == nil || m.col == nil {
		return
	}
	m.col.ObserveReconcile(kind, took, err)
}

func (m *opsMetrics) setReady(ok bool) {
	if m != nil {
		m.srv.SetReady(ok)
	}
}

// setReadyCheck adds a condition to /readyz once the node is ready.
func (m *opsMetrics) setReadyCheck(f func() error) {
	if m != nil {
		m.srv.SetReadyCheck(f)
	}
}

func (m *opsMetrics) close() {
	if m != nil {
		m.srv.Close()
	}
}
