package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/samenode"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// setupSameNode turns same-node encryption on when this node's flag or the
// cluster config record asks for it: hub device, pod device host, and the
// reconciler of hub peers. The node file then tells the plugin.
func setupSameNode(ctx context.Context, cfg *config.Config, cli *clientv3.Client, mtu int, gw netip.Addr, nf *nodefile.Node, log *slog.Logger) error {
	on := cfg.SameNodeEncryption
	if !on {
		err := retry(ctx, log, "read cluster config (sameNodeEncryption)", func(ctx context.Context) error {
			var err error
			on, err = sameNodeClusterSetting(ctx, cli, cfg.EtcdPrefix)
			return err
		}, func(error) bool { return false })
		if err != nil {
			return err
		}
	}
	if !on {
		return nil
	}
	opts := samenode.Options{
		Device: cfg.Device, Port: cfg.SameNodePort, MTU: mtu, Mode: wgdev.Mode(cfg.WireGuard),
		StateDir: cfg.StateDir, RunDir: cfg.RunDir, Resync: sameNodeResync(cfg),
		Log: log.With("part", "samenode"),
	}
	// One gateway per family: the hub's pod routes use the one of the
	// pod address's family as source.
	for _, s := range append([]string{gw.String()}, nf.Gateways...) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		if a.Is4() {
			opts.Gateway = a
		} else {
			opts.Gateway6 = a
		}
	}
	// The PodCIDR of each family: the in-pod route re-created for pods
	// whose registration predates recording it.
	for _, s := range append([]string{nf.PodCIDR}, nf.PodCIDRs...) {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		if pfx.Addr().Is4() {
			opts.PodCIDR = pfx.Masked()
		} else {
			opts.PodCIDR6 = pfx.Masked()
		}
	}
	d, err := samenode.Setup(opts)
	if err != nil {
		return err
	}
	go d.Run(ctx)
	nf.SameNodeEncryption = true
	nf.SameNodeDevice = string(d.PodMode())
	return nil
}

// sameNodeResync is how often the hub is re-checked against the registry;
// the plugin applies changes itself, so this only repairs and collects.
func sameNodeResync(cfg *config.Config) time.Duration {
	if cfg.ResyncInterval > 0 && cfg.ResyncInterval < 10*time.Second {
		return cfg.ResyncInterval
	}
	return 10 * time.Second
}

// sameNodeClusterSetting reads sameNodeEncryption from the cluster config
// record (absent: false). An operator turns it on for the whole cluster by
// adding "sameNodeEncryption":true to <prefix>/config. It lives here, not in
// daemon/samenode, because that package is linked into the CNI plugin, and
// the etcd client's package initialisation alone costs every CNI call
// about 6.5 ms of CPU.
func sameNodeClusterSetting(ctx context.Context, kv clientv3.KV, prefix string) (bool, error) {
	key := record.ConfigKey(prefix)
	resp, err := kv.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	var c struct {
		SameNodeEncryption bool `json:"sameNodeEncryption"`
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return false, fmt.Errorf("etcd key %s: field sameNodeEncryption: %w", key, err)
	}
	return c.SameNodeEncryption, nil
}
