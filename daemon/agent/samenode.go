package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/samenode/reconcile"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// setupSameNode turns same-node encryption on when this node's flag or the
// cluster config record asks for it: hub device, pod device process, and
// the reconciler of hub peers. The node file then tells the plugin. The
// reconciler's failure counters are returned for the metrics (nil: off).
func setupSameNode(ctx context.Context, cfg *config.Config, cli *clientv3.Client, mtu int, nf *nodefile.Node, log *slog.Logger) (*reconcile.Stats, error) {
	on := cfg.SameNodeEncryption
	if !on {
		err := retry(ctx, log, "read cluster config (sameNodeEncryption)", func(ctx context.Context) error {
			var err error
			on, err = reconcile.ClusterSetting(ctx, cli, cfg.EtcdPrefix)
			return err
		}, func(error) bool { return false })
		if err != nil {
			return nil, err
		}
	}
	if !on {
		return nil, nil
	}
	opts := reconcile.Options{
		Device: cfg.Device, Port: cfg.SameNodePort, MTU: mtu, Mode: wgdev.Mode(cfg.WireGuard),
		StateDir: cfg.StateDir, RunDir: cfg.RunDir, Resync: sameNodeResync(cfg),
		Log: log.With("part", "samenode"),
	}
	// Each family's gateway (the source of the hub's routes to pods of
	// that family) and PodCIDR (the in-pod route re-created for pods whose
	// registration predates recording it), from the node file's families.
	fams, err := nf.Families()
	if err != nil {
		return nil, fmt.Errorf("same-node encryption: %w", err)
	}
	for _, f := range fams {
		gw, ok := netip.AddrFromSlice(f.Gateway.IP)
		pod, pok := netip.AddrFromSlice(f.Pod.IP)
		if !ok || !pok {
			return nil, fmt.Errorf("same-node encryption: node family %v has no valid gateway or PodCIDR", f.Pod)
		}
		ones, _ := f.Pod.Mask.Size()
		opts.Gateways = append(opts.Gateways, gw.Unmap())
		opts.PodCIDRs = append(opts.PodCIDRs, netip.PrefixFrom(pod.Unmap(), ones).Masked())
	}
	r, err := reconcile.Setup(opts)
	if err != nil {
		return nil, err
	}
	go r.Run(ctx)
	nf.SameNodeEncryption = true
	nf.SameNodeDevice = string(r.PodMode())
	return &r.Stats, nil
}

// sameNodeResync is how often the hub is re-checked against the registry;
// the plugin applies changes itself, so this only repairs and collects.
func sameNodeResync(cfg *config.Config) time.Duration {
	if cfg.ResyncInterval > 0 && cfg.ResyncInterval < 10*time.Second {
		return cfg.ResyncInterval
	}
	return 10 * time.Second
}
