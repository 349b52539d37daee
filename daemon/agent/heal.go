package agent

import (
	"context"
	"log/slog"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/gateway"
	"github.com/wgcni/wgcni/daemon/gwlive"
	"github.com/wgcni/wgcni/daemon/heal"
)

// startHeal makes the healer the mesh drives (per-peer liveness, repairs,
// path MTU; docs/self-healing.md) and starts this node's probe responders
// on its own addresses. Its state changes feed the gateway observer: a
// gateway whose tunnel is dead is skipped here (package gwlive,
// docs/gateways.md). Close the healer and the judge when the mesh stops.
func startHeal(ctx context.Context, cfg *config.Config, at attached, nd *nodeDevice, om *opsMetrics, sites *gateway.Observer, log *slog.Logger) (*heal.Healer, *gwlive.Judge) {
	judge := gwlive.New(sites.Recheck)
	sites.Usable, sites.Why, sites.LocalFile = judge.Usable, judge.Why, gateway.LocalFile(cfg.RunDir)
	h := heal.New(heal.Config{Log: log.With("part", "heal"), ProbePort: cfg.ProbePort, DeviceMTU: nd.mtu, StateFile: heal.StateFile(cfg.RunDir),
		OnChange: judge.Update})
	heal.Serve(ctx, at.gws, cfg.ProbePort, log)
	om.setReadyCheck(h.Ready)
	return h, judge
}
