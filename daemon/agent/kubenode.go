package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/kubeapi"
	"github.com/wgcni/wgcni/daemon/lease"
)

// nodePodCIDRWait is how long wgcnid waits for the controller-manager to
// give a new Node its spec.podCIDRs (it does so moments after the node
// registers; longer means the cluster does not allocate them).
const nodePodCIDRWait = 30 * time.Second

// wantedCIDRs are the CIDRs this node asks for, best first: with
// --pod-cidr-from-node the Kubernetes Node's spec.podCIDRs, so that pod
// IPs lie where `kubectl get node` says; then those remembered in the
// state dir. Not reaching the API is a warning, not a failure: the node
// then leases as without the flag.
func wantedCIDRs(ctx context.Context, cfg *config.Config, log *slog.Logger) (want, fromNode []netip.Prefix) {
	remembered := lease.LoadRemembered(cfg.StateDir)
	if !cfg.PodCIDRFromNode {
		return remembered, nil
	}
	api, err := kubeapi.InCluster(kubeapi.ServiceAccountDir)
	if err == nil {
		fromNode, err = api.WaitNodePodCIDRs(ctx, cfg.NodeName, nodePodCIDRWait)
	}
	if err != nil || len(fromNode) == 0 {
		log.Warn("--pod-cidr-from-node: no spec.podCIDRs for this node; leasing any free PodCIDR", "node", cfg.NodeName, "err", err)
		return remembered, nil
	}
	log.Info("asking for the node's spec.podCIDRs", "cidrs", fromNode)
	return append(slices.Clone(fromNode), remembered...), fromNode
}

// warnIfNotNodeCIDRs says loudly when the lease is not the Node's
// spec.podCIDRs: another node holds them in etcd (e.g. a deleted node
// whose lease has not expired), or the node kept its earlier lease (a
// running node is never renumbered).
func warnIfNotNodeCIDRs(held lease.Held, fromNode []netip.Prefix, log *slog.Logger) {
	for _, c := range fromNode {
		if !slices.Contains(held.CIDRs, c) {
			log.Warn("PodCIDR lease differs from the node's spec.podCIDRs: pod IPs lie outside what Kubernetes shows for this node",
				"lease", held.CIDRs, "spec_pod_cidrs", fromNode, "how", held.How)
			return
		}
	}
}
