package agent

import (
	"context"
	"log/slog"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/samenode/reconcile"
)

// mode is what differs between a pod node (node.go) and a host-only peer
// (hostpeer.go): what it reserves and leases, and what it builds on the
// lease. Everything else is Run's one path.
type mode interface {
	// what names the lease in logs: "PodCIDR" or "host address".
	what() string
	// kind is the record kind the mode publishes and cleans up.
	kind() string
	// forwards reports whether the node routes for others (pods).
	forwards() bool
	// prepare runs once etcd is reachable, before the device exists.
	prepare(ctx context.Context, cli *clientv3.Client, log *slog.Logger) error
	// grids is what the mode leases from.
	grids() record.Cluster
	// leaseErr explains a failure to lease.
	leaseErr(err error) error
	// attach builds on the held lease.
	attach(ctx context.Context, cli *clientv3.Client, held lease.Held, nd *nodeDevice, log *slog.Logger) (attached, error)
	// cleanup removes what attach built (`wgcnid cleanup`).
	cleanup(log *slog.Logger) []error
}

// attached is what the mesh and the metrics need from the mode's attach.
type attached struct {
	// gws are the node's own addresses per family: the source of its
	// traffic into the tunnel.
	gws []netip.Addr
	// onNewDevice re-applies the mode's state on a re-created device.
	onNewDevice func() error
	podCIDR     netip.Prefix // metrics: the PodCIDR (invalid for a host)
	ipamDir     string       // metrics: pod address usage ("" for a host)
	// sameNode counts the same-node reconciler's failed steps and retries
	// (nil where same-node encryption is off, and for a host).
	sameNode *reconcile.Stats
}

func modeOf(cfg *config.Config) mode {
	if cfg.HostOnly {
		return &hostPeer{cfg: cfg}
	}
	return &podNode{cfg: cfg}
}
