package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/keys"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// HostFile is the host-only daemon's status file in the run dir (the
// counterpart of the node file; no CNI plugin reads it, so a host-only
// machine can never be mistaken for one that runs pods).
const HostFile = "host.json"

// HostStatus is the content of HostFile.
type HostStatus struct {
	Name        string `json:"name"`
	Address     string `json:"address"` // overlay address, e.g. 10.244.255.7
	HostCIDR    string `json:"hostCIDR"`
	ClusterCIDR string `json:"clusterCIDR"`
	Device      string `json:"device"`
	MTU         int    `json:"mtu"`
}

// RunHost runs wgcnid as a host-only peer (--host-only): same etcd, same
// key handling, device and mesh reconciler as a node, but instead of a
// PodCIDR it leases one address out of the host range, puts it on the
// WireGuard device and routes every peer's PodCIDR (and other hosts'
// addresses) through the tunnel from that address. No bridge, no node
// file, no forwarding.
func RunHost(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	cluster := cfg.Cluster.CIDR
	// Strict route first: this host's traffic to any pod address without
	// a configured peer is refused, never sent in clear.
	if err := route.EnsureStrict(cluster); err != nil {
		return err
	}
	priv, created, err := keys.LoadOrCreate(cfg.StateDir)
	if err != nil {
		return err
	}
	log.Info("WireGuard key ready", "public_key", priv.Public().String(), "new", created)

	cli, err := etcdutil.NewClient(etcdutil.ClientOptions{Endpoints: cfg.EtcdEndpoints, CAFile: cfg.EtcdCAFile, CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile})
	if err != nil {
		return err
	}
	defer cli.Close()
	err = retry(ctx, log, "write/check cluster config in etcd", func(ctx context.Context) error {
		_, err := lease.EnsureConfig(ctx, cli, cfg.EtcdPrefix, cfg.Cluster)
		return err
	}, isPermanentConfigErr)
	if err != nil {
		return err
	}
	err = retry(ctx, log, "reserve host range", func(ctx context.Context) error {
		created, err := lease.EnsureHostRange(ctx, cli, cfg.EtcdPrefix, cfg.Cluster, cfg.HostRange)
		if err == nil {
			log.Info("host range", "host_cidr", cfg.HostRange, "reserved_by_us", created)
		}
		return err
	}, func(err error) bool {
		var te *lease.TakenError
		return errors.As(err, &te)
	})
	if err != nil {
		return fmt.Errorf("--host-cidr %s: %w; choose another --host-cidr", cfg.HostRange, err)
	}

	nd, err := ensureDevice(ctx, cfg, priv, log)
	if err != nil {
		return err
	}
	defer nd.wg.Close()
	endpoint, mtu, wg := nd.endpoint, nd.mtu, nd.wg

	// The host's address is leased exactly like a PodCIDR, on a grid of
	// single addresses inside the host range.
	self := record.Lease{
		Node:      cfg.NodeName,
		PublicKey: priv.Public(),
		Endpoint:  netip.AddrPortFrom(endpoint, uint16(cfg.ListenPort)),
		Keepalive: int(cfg.Keepalive / time.Second),
		Kind:      record.KindHost,
	}
	acq := &lease.Acquirer{Client: cli, Prefix: cfg.EtcdPrefix, Cluster: record.HostCluster(cfg.HostRange), Node: cfg.NodeName, TTL: cfg.LeaseTTL, Log: log}
	preferred := lease.LoadRemembered(cfg.StateDir)
	if !preferred.IsSingleIP() || !cfg.HostRange.Contains(preferred.Addr()) {
		preferred = netip.Prefix{}
	}
	var held lease.Held
	err = retry(ctx, log, "acquire host address lease", func(ctx context.Context) error {
		var err error
		held, err = acq.Acquire(ctx, self, preferred)
		return err
	}, func(err error) bool { return errors.Is(err, lease.ErrClusterFull) })
	if err != nil {
		return fmt.Errorf("host range %s: %w", cfg.HostRange, err)
	}
	log.Info("host address lease held", "address", held.CIDR.Addr(), "key", held.Key, "how", held.How, "lease", fmt.Sprintf("%x", int64(held.LeaseID)))
	if err := lease.Remember(cfg.StateDir, held.CIDR); err != nil {
		return err
	}
	keeper := lease.NewKeeper(acq, self, held)
	go keeper.Run(ctx)
	followEndpoint(ctx, cfg, keeper, endpoint, nil, log)

	// The host's leased address lives on the device (and goes back on a
	// re-created one).
	setAddr := setDeviceAddrs(cfg.Device, []netip.Prefix{held.CIDR})
	if err := setAddr(); err != nil {
		return err
	}
	link, err := netlink.LinkByName(cfg.Device)
	if err != nil {
		return fmt.Errorf("look up WireGuard device %s: %w", cfg.Device, err)
	}
	addr := held.CIDR.Addr()
	st := HostStatus{Name: cfg.NodeName, Address: addr.String(), HostCIDR: cfg.HostRange.String(), ClusterCIDR: cluster.String(), Device: cfg.Device, MTU: mtu}
	if err := writeHostFile(cfg.RunDir, st); err != nil {
		return err
	}

	rec := mesh.New(mesh.Config{
		Client: cli, Prefix: cfg.EtcdPrefix, Cluster: cfg.Cluster, Self: cfg.NodeName, OwnCIDR: held.CIDR,
		Gateway: addr, Device: cfg.Device, LinkIndex: link.Attrs().Index, WG: wg, Resync: cfg.ResyncInterval,
		Log: log.With("part", "mesh"), OwnRecordChanged: keeper.Recheck, Keepalive: int(cfg.Keepalive / time.Second),
		Recreate:     nd.recreate(cfg, log, setAddr),
		DeviceEvents: wgdev.WatchLink(ctx, cfg.Device, log), FreshDevice: !nd.dev.Adopted && held.How == "adopted",
	})
	err = rec.Run(ctx)
	if ctx.Err() != nil {
		log.Info("stopping; device, peers, routes and lease stay in place")
		return nil
	}
	return err
}

func writeHostFile(runDir string, st HostStatus) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	if err := nodefile.WriteFileAtomic(filepath.Join(runDir, HostFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write host file: %w", err)
	}
	return nil
}

// ReadHostFile reads the host-only daemon's status file.
func ReadHostFile(runDir string) (*HostStatus, error) {
	b, err := os.ReadFile(filepath.Join(runDir, HostFile))
	if err != nil {
		return nil, err
	}
	var st HostStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(runDir, HostFile), err)
	}
	return &st, nil
}

// CleanupHost removes what RunHost created: its host record (best effort;
// otherwise it expires with its lease), peer routes, the strict route, the
// device with its address, and the host file. The host range reservation
// stays: other hosts may use it.
func CleanupHost(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	var errs []error
	if err := deleteOwnRecords(ctx, cfg, record.KindHost, log); err != nil {
		log.Warn("could not delete own host record; it expires with its lease", "err", err)
	}
	fam := netlink.FAMILY_V4
	if cfg.Cluster.CIDR.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	peers, _, err := route.Ours(fam)
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range peers {
		if err := route.DeletePeer(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := route.RemoveStrict(cfg.Cluster.CIDR); err != nil {
		errs = append(errs, err)
	}
	if err := wgdev.Remove(cfg.RunDir, cfg.Device, log); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(filepath.Join(cfg.RunDir, HostFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove host file: %w", err))
	}
	return errors.Join(errs...)
}
