// Package agent wires wgcnid's parts together in the order that keeps the
// node safe: strict route first (no plaintext window), then key, etcd
// config, device, lease, bridge and node file, then the lease keeper and
// the mesh reconciler. It also implements `wgcnid cleanup`.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/cniconf"
	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/keys"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/metrics"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/samenode"
	"github.com/wgcni/wgcni/daemon/wgdev"
	"github.com/wgcni/wgcni/plugins/antispoof"
	"github.com/wgcni/wgcni/plugins/bridge"
	"github.com/wgcni/wgcni/plugins/masq"
)

// opTimeout bounds single etcd calls during start-up, so an unreachable
// etcd turns into logged retries instead of a hang.
const opTimeout = 5 * time.Second

// Run runs the daemon until ctx ends. On return (SIGTERM) the device, its
// peers, the routes and the lease stay in place: a restarted daemon adopts
// them all without dropping traffic.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	cluster := cfg.Cluster.CIDR
	om, err := startMetrics(cfg, log)
	if err != nil {
		return err
	}
	defer om.close()
	// 1. Strict mode before anything else: from this moment on, pod
	// traffic without a configured peer is refused, never sent in clear.
	if err := ensureStrictAll(cfg.Cluster); err != nil {
		return err
	}
	log.Info("strict mode: unreachable route for the cluster CIDR in place; pod traffic to a PodCIDR without a configured peer is dropped, never sent in clear", "cluster_cidr", cfg.ClusterCIDR)

	// 2. Identity.
	priv, created, err := keys.LoadOrCreate(cfg.StateDir)
	if err != nil {
		return err
	}
	log.Info("WireGuard key ready", "public_key", priv.Public().String(), "new", created)

	// 3. etcd and the cluster config.
	etcdOpts, err := cfg.EtcdOptions()
	if err != nil {
		return err
	}
	// With a password the client authenticates while it is created, so a
	// down etcd or refused credentials show up here: retry and say why.
	var cli *clientv3.Client
	err = retry(ctx, log, "connect to etcd", func(ctx context.Context) error {
		c, err := etcdutil.NewClient(etcdOpts)
		if err != nil {
			return etcdutil.Explain(context.WithoutCancel(ctx), etcdOpts, err)
		}
		cli = c
		return nil
	}, func(error) bool { return false })
	if err != nil {
		return err
	}
	defer cli.Close()
	err = retry(ctx, log, "write/check cluster config in etcd", func(ctx context.Context) error {
		created, err := lease.EnsureConfig(ctx, cli, cfg.EtcdPrefix, cfg.Cluster)
		if err == nil {
			log.Info("cluster config", "cluster_cidr", cluster, "node_prefix_len", cfg.Cluster.NodePrefixLen, "written_by_us", created)
		}
		if err != nil && !isPermanentConfigErr(err) {
			// Say why: a refused certificate looks like a timeout.
			err = etcdutil.Explain(context.WithoutCancel(ctx), etcdOpts, err)
		}
		return err
	}, isPermanentConfigErr)
	if err != nil {
		return err
	}

	// 4-5. Underlay (endpoint, MTU) and the device: adopted if it exists.
	nd, err := ensureDevice(ctx, cfg, priv, log)
	if err != nil {
		return err
	}
	defer nd.wg.Close()
	endpoint, mtu, dev, wg := nd.endpoint, nd.mtu, nd.dev, nd.wg

	hostEnc, err := setupHostEncryption(ctx, cfg, wg, endpoint, log)
	if err != nil {
		return err
	}

	// 6. PodCIDR lease.
	self := record.Lease{
		Node:      cfg.NodeName,
		PublicKey: priv.Public(),
		Endpoint:  netip.AddrPortFrom(endpoint, uint16(cfg.ListenPort)),
		Keepalive: int(cfg.Keepalive / time.Second),

		HostEncryption: hostEnc.On,
	}
	acq := &lease.Acquirer{Client: cli, Prefix: cfg.EtcdPrefix, Cluster: cfg.Cluster, Node: cfg.NodeName, TTL: cfg.LeaseTTL, Log: log,
		Preferred6: lease.LoadRemembered6(cfg.StateDir)}
	var held lease.Held
	err = retry(ctx, log, "acquire PodCIDR lease", func(ctx context.Context) error {
		var err error
		held, err = acq.Acquire(ctx, self, lease.LoadRemembered(cfg.StateDir))
		return err
	}, func(err error) bool { return errors.Is(err, lease.ErrClusterFull) })
	if err != nil {
		return err
	}
	log.Info("PodCIDR lease held", "cidr", held.CIDR, "key", held.Key, "how", held.How, "lease", fmt.Sprintf("%x", int64(held.LeaseID)), "cidr6", prefixOrNone(held.CIDR6))
	if err := lease.Remember(cfg.StateDir, held.CIDR); err != nil {
		return err
	}
	if err := lease.Remember6(cfg.StateDir, held.CIDR6); err != nil {
		return err
	}
	keeper := lease.NewKeeper(acq, self, held)
	go keeper.Run(ctx)
	// With host encryption the host routes carry the endpoint as their
	// source: a moved endpoint goes to the mesh too (latest wins).
	hostSrc := make(chan netip.Addr, 1)
	var moved func(netip.Addr)
	if hostEnc.On {
		moved = func(a netip.Addr) {
			select {
			case <-hostSrc:
			default:
			}
			hostSrc <- a
		}
	}
	followEndpoint(ctx, cfg, keeper, endpoint, moved, log)
	rot := &rotator{cfg: cfg, log: log, cli: cli, wg: wg, keeper: keeper, self: self}
	go rot.run(ctx)

	// 7. Bridge with the gateway, then the node file for the plugins.
	gw := record.Gateway(held.CIDR)
	gw6 := gateway6(held.CIDR6)
	if _, err := bridge.Ensure(cfg.Bridge, mtu, toIPNet(netip.PrefixFrom(gw, held.CIDR.Bits())), gatewayNet6(held.CIDR6)); err != nil {
		return fmt.Errorf("ensure bridge: %w", err)
	}
	setAddrs := setDeviceAddrs(cfg.Device, podNodeDeviceAddrs(held))
	if err := setAddrs(); err != nil {
		return err
	}
	nf := &nodefile.Node{
		Name: cfg.NodeName, PodCIDR: held.CIDR.String(), Gateway: gw.String(), ClusterCIDR: cluster.String(),
		MTU: mtu, Bridge: cfg.Bridge, Device: cfg.Device, IPAMDir: filepath.Join(cfg.StateDir, "ipam"),
	}
	setFamilies(nf, cfg.Cluster, held)
	if err := setupSameNode(ctx, cfg, cli, mtu, gw, nf, log); err != nil {
		return err
	}
	if written, err := writeNodeFile(cfg.RunDir, nf); err != nil {
		return err
	} else if written {
		log.Info("node file written", "path", nodefile.Path(cfg.RunDir))
	}
	// Only now may the runtime call the plugins: the conflist goes last.
	if cfg.CNIConflist != "" {
		if written, err := cniconf.Install(cfg.CNIConflist, cfg.CNIConfDir); err != nil {
			return err
		} else if written {
			log.Info("CNI conflist installed", "path", filepath.Join(cfg.CNIConfDir, filepath.Base(cfg.CNIConflist)))
		}
	}

	// 8. Peers and routes.
	link, err := netlink.LinkByName(cfg.Device)
	if err != nil {
		return fmt.Errorf("look up WireGuard device %s: %w", cfg.Device, err)
	}
	rec := mesh.New(mesh.Config{
		Client: cli, Prefix: cfg.EtcdPrefix, Cluster: cfg.Cluster, Self: cfg.NodeName, SelfKey: priv.Public(), OwnCIDR: held.CIDR,
		Gateway: gw, Gateway6: gw6, Device: cfg.Device, LinkIndex: link.Attrs().Index, WG: wg, Resync: cfg.ResyncInterval,
		Log: log.With("part", "mesh"), OwnRecordChanged: keeper.Recheck, Observe: om.observe,
		Keepalive:      int(cfg.Keepalive / time.Second),
		HostEncryption: hostEnc.On, HostSrc: endpoint, NoTunnel: hostEnc.NoTunnel, HostSrcChanges: hostSrc,
		Recreate: nd.recreate(cfg, log, setAddrs), DeviceEvents: wgdev.WatchLink(ctx, cfg.Device, log),
		// A new device for a record that was still ours (a crash or
		// reboot within the lease TTL): the peers hold sessions with the
		// old one. For a new record the peers may not know our key yet,
		// and an initiation they refuse would hold back ours for 5 s.
		FreshDevice: !dev.Adopted && held.How == "adopted",
	})
	om.register(metrics.Sources{
		Node: cfg.NodeName, Device: cfg.Device, Mode: string(dev.Mode), WG: wg, PodCIDR: held.CIDR,
		IPAMDir: nf.IPAMDir, LeaseExpiry: keeper.Expiry, Peers: rec.PeerNodes, Stats: &rec.Stats, Retakes: keeper.Retakes.Load,
		Rotations: rot.Rotations.Load,
	})
	go func() {
		select {
		case <-rec.Synced():
			om.setReady(true)
		case <-ctx.Done():
		}
	}()
	err = rec.Run(ctx)
	if ctx.Err() != nil {
		log.Info("stopping; device, peers, routes and lease stay in place")
		return nil
	}
	return err
}

// retry runs f until it succeeds, ctx ends, or permanent(err); each attempt
// gets its own timeout, and every failure is logged with the next delay.
func retry(ctx context.Context, log *slog.Logger, what string, f func(context.Context) error, permanent func(error) bool) error {
	// At most 5 s between attempts: a node started during an etcd outage
	// joins within seconds of etcd's return (one log line per attempt).
	bo := etcdutil.Backoff{Min: 500 * time.Millisecond, Max: 5 * time.Second}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, opTimeout)
		err := f(actx)
		cancel()
		if err == nil {
			return nil
		}
		if permanent(err) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := bo.Next()
		log.Warn(what+" failed (etcd unreachable?); retrying", "attempt", attempt, "err", err, "in", d.Round(time.Millisecond))
		if !etcdutil.Sleep(ctx, d) {
			return ctx.Err()
		}
	}
}

func isPermanentConfigErr(err error) bool {
	var me *lease.MismatchError
	return errors.As(err, &me) || errors.Is(err, lease.ErrCorruptConfig)
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

// Cleanup removes what the daemon created: its etcd record (best effort),
// peer routes, the strict route, the device (and its userspace process),
// and, once no pod uses the bridge any more, the bridge, the masquerade
// table and the node file (pods still attached need the node file for
// their CNI DEL). The state dir (key, remembered CIDR, IPAM) stays.
func Cleanup(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	var errs []error
	if err := deleteOwnRecords(ctx, cfg, "", log); err != nil {
		log.Warn("could not delete own etcd record; it expires with its lease", "err", err)
	}
	errs = append(errs, removeRoutesAll(cfg.Cluster)...)
	if err := route.RemoveHost(); err != nil {
		errs = append(errs, err)
	}
	if err := wgdev.Remove(cfg.RunDir, cfg.Device, log); err != nil {
		errs = append(errs, err)
	}
	if err := samenode.Cleanup(cfg.RunDir, cfg.Device, log); err != nil {
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
		return errors.Join(errs...)
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
	return errors.Join(errs...)
}

// deleteOwnRecords deletes this node's records of the given kind ("" for
// a pod node's PodCIDR, record.KindHost for a host-only peer's address)
// and revokes their leases.
func deleteOwnRecords(ctx context.Context, cfg *config.Config, kind string, log *slog.Logger) error {
	opts, err := cfg.EtcdOptions()
	if err != nil {
		return err
	}
	cli, err := etcdutil.NewClient(opts)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kvs, _, err := etcdutil.List(ctx, cli, record.SubnetsPrefix(cfg.EtcdPrefix))
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		l, err := record.DecodePeer(cfg.EtcdPrefix, string(kv.Key), kv.Value, cfg.Cluster)
		if err != nil || l.Kind != kind || l.Node != cfg.NodeName {
			continue
		}
		// Delete only the exact version we read, bound to its lease: never
		// a record someone else wrote meanwhile.
		if _, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(string(kv.Key))).Commit(); err != nil {
			return fmt.Errorf("delete own record %s: %w", kv.Key, err)
		}
		if kv.Lease != 0 {
			cli.Revoke(ctx, clientv3.LeaseID(kv.Lease))
		}
		log.Info("deleted own record", "key", string(kv.Key), "kind", kind)
	}
	return nil
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
