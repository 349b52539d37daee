// Package agent wires wgcnid's parts together in the order that keeps the
// node safe: strict routes first (no plaintext window), then key, etcd
// config, device, lease, what the mode builds on the lease (a pod node's
// bridge and node file, or a host-only peer's address), then the lease
// keeper and the mesh reconciler. It also implements `wgcnid cleanup`.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/gateway"
	"github.com/wgcni/wgcni/daemon/keys"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/metrics"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// opTimeout bounds single etcd calls during start-up, so an unreachable
// etcd turns into logged retries instead of a hang.
const opTimeout = 5 * time.Second

// Run runs the daemon until ctx ends, as a pod node or, with --host-only,
// as a host-only peer (hostpeer.go). Both are one start-up path: only what
// is leased and what is built on the lease differ (the mode), so every
// option (etcd auth, strict routes of every family, metrics, key rotation)
// reaches both. On return (SIGTERM) the device, its peers, the routes and
// the lease stay in place: a restarted daemon adopts them all without
// dropping traffic.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	m := modeOf(cfg)
	om, err := startMetrics(cfg, log)
	if err != nil {
		return err
	}
	defer om.close()
	// 1. Strict mode before anything else: from this moment on, pod
	// traffic without a configured peer is refused, never sent in clear.
	if err := ensureStrict(cfg.Cluster, m.forwards()); err != nil {
		return err
	}
	log.Info("strict mode: unreachable route for the cluster CIDR in place; pod traffic to a PodCIDR without a configured peer is dropped, never sent in clear", "cluster_cidr", cfg.ClusterCIDR)

	// 2. Identity.
	priv, created, err := keys.LoadOrCreate(cfg.StateDir)
	if err != nil {
		return err
	}
	log.Info("WireGuard key ready", "public_key", priv.Public().String(), "new", created)
	kem, pqPublic, err := pqKey(cfg, log)
	if err != nil {
		return err
	}

	// 3. etcd and the cluster config (and the mode's reservations).
	cli, err := connectEtcd(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := m.prepare(ctx, cli, log); err != nil {
		return err
	}

	// 4-5. Underlay (endpoint, MTU) and the device: adopted if it exists.
	nd, err := ensureDevice(ctx, cfg, priv, log)
	if err != nil {
		return err
	}
	defer nd.wg.Close()
	endpoint, wg := nd.endpoint, nd.wg

	underlayEnc, err := setupUnderlayEncryption(ctx, cfg, wg, endpoint, log)
	if err != nil {
		return err
	}
	if err := prepareGateway(ctx, cfg, cli, endpoint, log); err != nil {
		return err
	}

	// 6. The lease: a PodCIDR, or a host-only peer's address.
	self := record.Lease{
		Node:      cfg.NodeName,
		PublicKey: priv.Public(),
		Endpoint:  netip.AddrPortFrom(endpoint, uint16(cfg.ListenPort)),
		Keepalive: int(cfg.Keepalive / time.Second),
		Kind:      m.kind(),

		UnderlayEncryption: underlayEnc.On,
		Unreachable:        cfg.Reachable == config.ReachableNo,
		NoRelay:            cfg.Reachable == config.ReachableAuto,
		PQPublicKey:        pqPublic,
		Sites:              cfg.Sites,
	}
	acq := &lease.Acquirer{Client: cli, Prefix: cfg.EtcdPrefix, Cluster: m.grids(), Node: cfg.NodeName, TTL: cfg.LeaseTTL, Log: log}
	var held lease.Held
	want, fromNode := wantedCIDRs(ctx, cfg, log)
	err = retry(ctx, log, "acquire "+m.what()+" lease", func(ctx context.Context) error {
		var err error
		held, err = acq.Acquire(ctx, self, want...)
		return err
	}, func(err error) bool { return errors.Is(err, lease.ErrClusterFull) })
	if err != nil {
		return m.leaseErr(err)
	}
	log.Info(m.what()+" lease held", "cidrs", held.CIDRs, "key", held.Key, "how", held.How, "lease", fmt.Sprintf("%x", int64(held.LeaseID)))
	warnIfNotNodeCIDRs(held, fromNode, log)
	if err := lease.Remember(cfg.StateDir, held.CIDRs); err != nil {
		return err
	}
	keeper := lease.NewKeeper(acq, self, held)
	go keeper.Run(ctx)
	// With host encryption the host routes carry the endpoint as their
	// source: a moved endpoint goes to the mesh too (latest wins).
	hostSrc := make(chan netip.Addr, 1)
	var moved func(netip.Addr)
	if underlayEnc.On {
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

	// 7. What the mode builds on its lease: bridge, node file and
	// same-node encryption, or the address on the device and the host file.
	at, err := m.attach(ctx, cli, held, nd, log)
	if err != nil {
		return err
	}

	// 8. Peers and routes.
	link, err := netlink.LinkByName(cfg.Device)
	if err != nil {
		return fmt.Errorf("look up WireGuard device %s: %w", cfg.Device, err)
	}
	sites := gateway.NewObserver(cli, cfg.EtcdPrefix, cfg.Cluster,
		gateway.Advert{Record: held.Primary(), CIDRs: held.CIDRs, Node: cfg.NodeName, Endpoint: endpoint, Sites: cfg.Sites}, log.With("part", "gateway"))
	healer, judge := startHeal(ctx, cfg, at, nd, om, sites, log)
	defer healer.Close()
	defer judge.Close()
	go sites.Run(ctx)
	var rec *mesh.Reconciler
	natA := newNATAgent(cfg, cli, wg, keeper, func() map[wgtypes.Key]mesh.PeerInfo { return rec.PeerNodes() }, nd.mtu, log)
	pq, err := startPQ(ctx, cfg, wg, priv.Public(), kem, func() map[wgtypes.Key]mesh.PeerInfo { return rec.PeerNodes() }, natA.Unreachable, log)
	if err != nil {
		return err
	}
	if pq != nil {
		rot.pq.Store(pq) // rotations wait for this with post-quantum on
	}
	rec = mesh.New(mesh.Config{
		Client: cli, Prefix: cfg.EtcdPrefix, Cluster: cfg.Cluster, Self: cfg.NodeName, SelfKey: priv.Public(), OwnCIDR: held.Primary(),
		Gateways: at.gws, Device: cfg.Device, LinkIndex: link.Attrs().Index, WG: wg, Resync: cfg.ResyncInterval,
		Log: log.With("part", "mesh"), OwnRecordChanged: keeper.Recheck, Observe: om.observe,
		Keepalive:          int(cfg.Keepalive / time.Second),
		UnderlayEncryption: underlayEnc.On, UnderlaySrc: endpoint, NoTunnel: underlayEnc.NoTunnel, UnderlaySrcChanges: hostSrc,
		Recreate: nd.recreate(cfg, log, at.onNewDevice), DeviceEvents: wgdev.WatchLink(ctx, cfg.Device, log),
		// A new device for a record that was still ours (a crash or
		// reboot within the lease TTL, or a sidecar's device replaced by
		// a rollout): the peers hold sessions with the old one. For a new
		// record the peers may not know our key yet, and an initiation
		// they refuse would hold back ours for 5 s.
		FreshDevice: nd.fresh && held.How == "adopted",
		PQ:          pqHooks(pq),
		Heal:        healer,
		Sites:       sites,
		Paths:       natA.paths(),
	})
	go natA.Run(ctx)
	om.registerCollector(gateway.Collector{O: sites})
	campaignWhenSynced(ctx, &gateway.Campaigner{Client: cli, Prefix: cfg.EtcdPrefix, Node: cfg.NodeName, Record: held.Primary(),
		Sites: cfg.Sites, TTL: cfg.GatewayTTL, StateDir: cfg.StateDir, Log: log.With("part", "gateway")}, rec.Synced())
	om.register(metrics.Sources{
		Node: cfg.NodeName, Device: cfg.Device, Mode: string(nd.dev.Mode), WG: wg, PodCIDR: at.podCIDR,
		IPAMDir: at.ipamDir, LeaseExpiry: keeper.Expiry, Peers: rec.PeerNodes, Stats: &rec.Stats, SameNode: at.sameNode, Retakes: keeper.Retakes.Load,
		Rotations: rot.Rotations.Load, Health: healer.Status, HandshakeStalls: healer.Stalls, DeviceMTU: nd.mtu, Paths: natA.Paths,
	})
	runPQ(ctx, pq, om, log)
	go func() {
		select {
		case <-rec.Synced():
			om.setReady(true)
		case <-ctx.Done():
		}
	}()
	// The first sync must know the elections, or a restart would pull
	// every site off its gateway's peer until they are listed.
	select {
	case <-sites.Synced():
	case <-ctx.Done():
		return nil
	}
	err = rec.Run(ctx)
	if ctx.Err() != nil {
		log.Info("stopping; device, peers, routes and lease stay in place")
		return nil
	}
	return err
}

// connectEtcd builds the etcd client from every etcd option (TLS, user and
// password) and writes or checks the cluster config record.
func connectEtcd(ctx context.Context, cfg *config.Config, log *slog.Logger) (*clientv3.Client, error) {
	etcdOpts, err := cfg.EtcdOptions()
	if err != nil {
		return nil, err
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
		return nil, err
	}
	err = retry(ctx, log, "write/check cluster config in etcd", func(ctx context.Context) error {
		created, err := lease.EnsureConfig(ctx, cli, cfg.EtcdPrefix, cfg.Cluster)
		if err == nil {
			log.Info("cluster config", "cluster", cfg.Cluster, "written_by_us", created)
		}
		if err != nil && !isPermanentConfigErr(err) {
			// Say why: a refused certificate looks like a timeout.
			err = etcdutil.Explain(context.WithoutCancel(ctx), etcdOpts, err)
		}
		return err
	}, isPermanentConfigErr)
	if err != nil {
		cli.Close()
		return nil, err
	}
	return cli, nil
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

// Cleanup removes what Run created, in either mode: its etcd record (best
// effort; otherwise it expires with its lease), the peer and strict routes
// of every family, the device (and its userspace process), then what the
// mode built (cleanup in node.go and hostpeer.go). The state dir (key,
// remembered CIDRs, IPAM) stays.
func Cleanup(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	m := modeOf(cfg)
	var errs []error
	if err := deleteOwnRecords(ctx, cfg, m.kind(), log); err != nil {
		log.Warn("could not delete own etcd record; it expires with its lease", "err", err)
	}
	errs = append(errs, cleanupGateway(ctx, cfg, log)...)
	errs = append(errs, removeRoutes(cfg.Cluster)...)
	if err := route.RemoveHost(); err != nil {
		errs = append(errs, err)
	}
	if err := wgdev.Remove(cfg.RunDir, cfg.Device, log); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, m.cleanup(log)...)
	return errors.Join(errs...)
}

// deleteOwnRecords deletes this node's records of the given kind ("" for
// a pod node's PodCIDR, record.KindHostPeer for a host-only peer's address)
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
