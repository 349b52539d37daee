package agent

import (
	"context"
	"log/slog"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/heal"
)

// startHeal makes the healer the mesh drives (per-peer liveness, repairs,
// path MTU; docs/self-healing.md) and starts this node's probe responders
// on its own addresses. Close the healer when the mesh stops.
func startHeal(ctx context.Context, cfg *config.Config, at attached, nd *nodeDevice, om *opsMetrics, log *slog.Logger) *heal.Healer {
	h := heal.New(heal.Config{Log: log.With("part", "heal"), ProbePort: cfg.ProbePort, DeviceMTU: nd.mtu, StateFile: heal.StateFile(cfg.RunDir)})
	heal.Serve(ctx, at.gws, cfg.ProbePort, log)
	om.setReadyCheck(h.Ready)
	return h
}
