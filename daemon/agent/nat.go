package agent

import (
	"context"
	"log/slog"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/nat"
	"github.com/wgcni/wgcni/daemon/record"
)

// natAgent wires NAT traversal (daemon/nat, docs/nat.md) to the node: it
// publishes what this node observes of NATed peers on every node, and on a
// node that is (or may be) behind a NAT it also plans relays and punched
// paths for the mesh.
type natAgent struct {
	*nat.Agent
	plans bool
}

func newNATAgent(cfg *config.Config, cli *clientv3.Client, wg nat.DeviceReader, keeper *lease.Keeper, peers func() map[wgtypes.Key]mesh.PeerInfo,
	mtu int, log *slog.Logger) *natAgent {
	a := nat.New(nat.Config{
		Client: cli, Prefix: cfg.EtcdPrefix, Self: cfg.NodeName, Reachable: cfg.Reachable, Device: cfg.Device, WG: wg,
		PeerNodes: peers,
		LeaseID:   func() clientv3.LeaseID { return keeper.Held().LeaseID },
		Own:       func() netip.AddrPort { return keeper.Record().Endpoint },
		SetUnreachable: func(ctx context.Context, u bool) error {
			_, err := keeper.Update(ctx, func(l *record.Lease) { l.Unreachable = u })
			return err
		},
		Relay:     cfg.Reachable == config.ReachableYes && !cfg.HostOnly,
		StateFile: nat.StatePath(cfg.RunDir),
		DeviceMTU: mtu,
		SelfCIDR: func() netip.Prefix {
			if cfg.HostOnly {
				return netip.Prefix{} // no device address: never relayed
			}
			return keeper.Held().Primary()
		},
		Log: log.With("part", "nat"),
	})
	return &natAgent{Agent: a, plans: cfg.Reachable != config.ReachableYes}
}

// paths is the mesh's Paths: nil (incremental applies, as always) on a
// node that is reachable by configuration.
func (a *natAgent) paths() mesh.Paths {
	if !a.plans {
		return nil
	}
	return a.Agent
}
