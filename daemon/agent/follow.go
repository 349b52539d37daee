package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/endpoint"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/record"
)

// followEndpoint re-publishes the auto-detected underlay endpoint whenever
// it changes; peers pick the new one up from their watch. A fixed
// --endpoint-ip (e.g. a NAT's public address) is the operator's word and is
// never followed. moved, if set, hears of the new address before it is
// published (host encryption: the mesh's host routes take it as source).
func followEndpoint(ctx context.Context, cfg *config.Config, keeper *lease.Keeper, published netip.Addr, moved func(netip.Addr), log *slog.Logger) {
	if cfg.Endpoint.IsValid() {
		return
	}
	f := &endpoint.Follower{
		Detect: func() (netip.Addr, error) {
			a, _, err := Underlay(netip.Addr{})
			if err == nil && cfg.Cluster.Contains(a) {
				return netip.Addr{}, fmt.Errorf("detected endpoint %s lies inside cluster CIDR %v", a, cfg.Cluster.Prefixes())
			}
			return a, err
		},
		Publish: func(ctx context.Context, a netip.Addr) error {
			if moved != nil {
				moved(a)
			}
			_, err := keeper.Update(ctx, func(l *record.Lease) { l.Endpoint = netip.AddrPortFrom(a, l.Endpoint.Port()) })
			return err
		},
		Interval: cfg.ResyncInterval,
		Log:      log.With("part", "endpoint"),
	}
	go f.Run(ctx, published)
}
