package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/cniconf"
	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/samenode/reconcile"
	"github.com/wgcni/wgcni/plugins/antispoof"
	"github.com/wgcni/wgcni/plugins/bridge"
	"github.com/wgcni/wgcni/plugins/masq"
)

// podNode is the mode of a node that runs pods: it leases a PodCIDR of
// every family, puts the gateways on the bridge and tells the CNI plugins
// in the node file.
type podNode struct{ cfg *config.Config }

func (*podNode) what() string   { return "PodCIDR" }
func (*podNode) kind() string   { return "" }
func (*podNode) forwards() bool { return true }

func (*podNode) prepare(context.Context, *clientv3.Client, *slog.Logger) error { return nil }

func (n *podNode) grids() record.Cluster { return n.cfg.Cluster }

func (*podNode) leaseErr(err error) error { return err }

// attach puts the gateways on the bridge, starts same-node encryption if
// asked, and writes the node file for the plugins.
func (n *podNode) attach(ctx context.Context, cli *clientv3.Client, held lease.Held, nd *nodeDevice, log *slog.Logger) (attached, error) {
	cfg := n.cfg
	var gws []netip.Addr
	var gwNets []*net.IPNet
	for _, c := range held.CIDRs {
		gw := record.Gateway(c)
		gws = append(gws, gw)
		gwNets = append(gwNets, toIPNet(netip.PrefixFrom(gw, c.Bits())))
	}
	if _, err := bridge.Ensure(cfg.Bridge, nd.mtu, gwNets...); err != nil {
		return attached{}, fmt.Errorf("ensure bridge: %w", err)
	}
	setAddrs := setDeviceAddrs(cfg.Device, podNodeDeviceAddrs(held, cfg.Reachable != config.ReachableYes))
	if err := setAddrs(); err != nil {
		return attached{}, err
	}
	nf := nodeFile(cfg, held, nd.mtu)
	sameNode, err := setupSameNode(ctx, cfg, cli, nd.mtu, nf, log)
	if err != nil {
		return attached{}, err
	}
	if written, err := writeNodeFile(cfg.RunDir, nf); err != nil {
		return attached{}, err
	} else if written {
		log.Info("node file written", "path", nodefile.Path(cfg.RunDir))
	}
	// Only now may the runtime call the plugins: the conflist goes last.
	if cfg.CNIConflist != "" {
		if written, err := cniconf.Install(cfg.CNIConflist, cfg.CNIConfDir); err != nil {
			return attached{}, err
		} else if written {
			log.Info("CNI conflist installed", "path", filepath.Join(cfg.CNIConfDir, filepath.Base(cfg.CNIConflist)))
		}
	}
	go sweepAntispoof(ctx, cfg.ResyncInterval, log.With("part", "antispoof"))
	return attached{gws: gws, podCIDR: held.Primary(), ipamDir: nf.IPAMDir, sameNode: sameNode, onNewDevice: setAddrs}, nil
}

// sweepAntispoof removes, at start and on every resync, the anti-spoofing
// elements of pods whose host veth is gone: CNI DEL leaves them, because
// deleting set elements is what made DEL slow and an element keyed by a
// gone interface index matches nothing (plugins/antispoof). A failed sweep
// is tried again at the next tick; what it missed is still there to find.
func sweepAntispoof(ctx context.Context, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n, err := antispoof.Sweep()
		switch {
		case err != nil:
			log.Warn("sweep of anti-spoofing elements of gone pods failed; retrying at the next resync", "err", err)
		case n > 0:
			log.Info("anti-spoofing elements of gone pods removed", "elements", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// nodeFile is what the plugins learn of this node: one entry per family in
// the lists, the primary's repeated in the single fields older plugins
// read.
func nodeFile(cfg *config.Config, held lease.Held, mtu int) *nodefile.Node {
	nf := &nodefile.Node{Name: cfg.NodeName, MTU: mtu, Bridge: cfg.Bridge, Device: cfg.Device, IPAMDir: filepath.Join(cfg.StateDir, "ipam")}
	for i, c := range held.CIDRs {
		nf.PodCIDRs = append(nf.PodCIDRs, c.String())
		nf.Gateways = append(nf.Gateways, record.Gateway(c).String())
		nf.ClusterCIDRs = append(nf.ClusterCIDRs, cfg.Cluster.Grids[i].CIDR.String())
	}
	nf.PodCIDR, nf.Gateway, nf.ClusterCIDR = nf.PodCIDRs[0], nf.Gateways[0], nf.ClusterCIDRs[0]
	return nf
}

func writeNodeFile(runDir string, n *nodefile.Node) (bool, error) {
	if cur, err := nodefile.Read(runDir); err == nil && reflect.DeepEqual(cur, n) {
		return false, nil
	}
	if err := nodefile.Write(runDir, n); err != nil {
		return false, fmt.Errorf("write node file: %w", err)
	}
	return true, nil
}

// cleanup removes the same-node devices and, once no pod uses the bridge
// any more, the bridge, the masquerade and anti-spoofing tables and the
// node file (pods still attached need the node file for their CNI DEL).
func (n *podNode) cleanup(log *slog.Logger) []error {
	cfg := n.cfg
	var errs []error
	if err := reconcile.Cleanup(cfg.RunDir, cfg.Device, log); err != nil {
		errs = append(errs, err)
	}
	inUse, err := removeBridgeIfUnused(cfg.Bridge, log)
	if err != nil {
		errs = append(errs, err)
	}
	if inUse {
		// Pods still use the bridge: their CNI DEL and CHECK need the node
		// file (gateway, IPAM dir), and their egress the masquerade rule.
		// Run cleanup again after the last pod is gone.
		log.Info("pods still attached; keeping the node file, the masquerade and anti-spoofing tables", "bridge", cfg.Bridge, "node_file", nodefile.Path(cfg.RunDir))
		return errs
	}
	if err := masq.Remove(); err != nil {
		errs = append(errs, err)
	}
	if err := antispoof.Remove(); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(nodefile.Path(cfg.RunDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove node file: %w", err))
	}
	return errs
}

// removeBridgeIfUnused deletes the bridge unless pods are attached to it;
// inUse reports that they are.
func removeBridgeIfUnused(name string, log *slog.Logger) (inUse bool, err error) {
	br, err := netlink.LinkByName(name)
	if err != nil {
		return false, nil // gone already
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return false, nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return true, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			log.Info("bridge still has ports (pods); leaving it", "bridge", name, "port", l.Attrs().Name)
			return true, nil
		}
	}
	if err := netlink.LinkDel(br); err != nil {
		return false, fmt.Errorf("delete bridge %s: %w", name, err)
	}
	return false, nil
}
