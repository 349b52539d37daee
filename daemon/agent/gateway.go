package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/gateway"
	"github.com/wgcni/wgcni/daemon/route"
)

// Gateways (docs/gateways.md): every node follows the sites' elections
// and routes site CIDRs to their serving gateways; a node with
// --advertise-cidrs is also a gateway.

// prepareGateway checks this node's advertisement against etcd before it
// is published (a collision is permanent: the daemon stops and says with
// whom), then readies the forwarding and masquerade a gateway needs.
func prepareGateway(ctx context.Context, cfg *config.Config, cli *clientv3.Client, endpoint netip.Addr, log *slog.Logger) error {
	if len(cfg.Sites) == 0 {
		return nil
	}
	self := gateway.Advert{Node: cfg.NodeName, Endpoint: endpoint, Sites: cfg.Sites}
	err := retry(ctx, log, "check --advertise-cidrs against etcd", func(ctx context.Context) error {
		return gateway.Check(ctx, cli, cfg.EtcdPrefix, cfg.Cluster, self)
	}, func(err error) bool {
		var re *gateway.RefusedError
		return errors.As(err, &re)
	})
	if err != nil {
		return err
	}
	for _, s := range cfg.Sites {
		// A host-only peer does not forward otherwise.
		if err := route.EnableForwarding(s); err != nil {
			return err
		}
	}
	if cfg.GatewayMasquerade {
		if err := gateway.EnsureMasquerade(cfg.Cluster.Prefixes(), cfg.Sites); err != nil {
			return err
		}
		log.Info("gateway masquerades cluster traffic into its sites", "sites", cfg.Sites, "table", gateway.MasqTable)
	}
	return nil
}

// campaignWhenSynced makes this node a candidate for its sites once its
// peers and routes are in place (a gateway that wins must be able to
// forward).
func campaignWhenSynced(ctx context.Context, c *gateway.Campaigner, synced <-chan struct{}) {
	if len(c.Sites) == 0 {
		return
	}
	go func() {
		select {
		case <-synced:
			c.Run(ctx)
		case <-ctx.Done():
		}
	}()
}

// cleanupGateway gives up this node's candidacies (another gateway takes
// over at once), removes the masquerade table and the unreachable routes
// of sites (the cluster's own are removed by removeRoutes).
func cleanupGateway(ctx context.Context, cfg *config.Config, log *slog.Logger) []error {
	var errs []error
	if opts, err := cfg.EtcdOptions(); err == nil {
		if cli, err := etcdutil.NewClient(opts); err == nil {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := gateway.Withdraw(wctx, cli, cfg.StateDir); err != nil {
				log.Warn("could not withdraw gateway candidacy; it expires with its lease", "err", err)
			}
			cancel()
			cli.Close()
		}
	}
	if err := gateway.RemoveMasquerade(); err != nil {
		errs = append(errs, err)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		_, strict, err := route.Ours(fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, d := range strict {
			if !slices.Contains(cfg.Cluster.Prefixes(), d) {
				if err := route.RemoveStrict(d); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errs
}
