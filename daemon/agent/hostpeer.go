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

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/record"
)

// HostPeerFile is the host-only daemon's status file in the run dir (the
// counterpart of the node file; no CNI plugin reads it, so a host-only
// machine can never be mistaken for one that runs pods).
const HostPeerFile = "host.json"

// HostPeerStatus is the content of HostPeerFile.
type HostPeerStatus struct {
	Name        string `json:"name"`
	Address     string `json:"address"` // overlay address, e.g. 10.244.255.7
	HostCIDR    string `json:"hostCIDR"`
	ClusterCIDR string `json:"clusterCIDR"`
	Device      string `json:"device"`
	MTU         int    `json:"mtu"`
}

// hostPeer is the mode of a host-only peer (--host-only, docs/hosts.md):
// instead of a PodCIDR it leases one address out of the host range, puts
// it on the WireGuard device and routes every peer's PodCIDR (and other
// hosts' addresses) through the tunnel from that address. No bridge, no
// node file, no forwarding.
type hostPeer struct{ cfg *config.Config }

func (*hostPeer) what() string   { return "host address" }
func (*hostPeer) kind() string   { return record.KindHostPeer }
func (*hostPeer) forwards() bool { return false }

// prepare reserves the host range (idempotent; the first host writes it).
func (h *hostPeer) prepare(ctx context.Context, cli *clientv3.Client, log *slog.Logger) error {
	cfg := h.cfg
	err := retry(ctx, log, "reserve host range", func(ctx context.Context) error {
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
	return nil
}

// grids: the host's address is leased exactly like a PodCIDR, on a grid
// of single addresses inside the host range.
func (h *hostPeer) grids() record.Cluster { return record.HostPeerGrid(h.cfg.HostRange) }

func (h *hostPeer) leaseErr(err error) error {
	return fmt.Errorf("host range %s: %w", h.cfg.HostRange, err)
}

// attach puts the leased address on the device (and back on a re-created
// one) and writes the host file.
func (h *hostPeer) attach(_ context.Context, _ *clientv3.Client, held lease.Held, nd *nodeDevice, _ *slog.Logger) (attached, error) {
	cfg := h.cfg
	setAddr := setDeviceAddrs(cfg.Device, []netip.Prefix{held.Primary()})
	if err := setAddr(); err != nil {
		return attached{}, err
	}
	addr := held.Primary().Addr()
	st := HostPeerStatus{Name: cfg.NodeName, Address: addr.String(), HostCIDR: cfg.HostRange.String(), ClusterCIDR: cfg.Cluster.Primary().CIDR.String(), Device: cfg.Device, MTU: nd.mtu}
	if err := writeHostPeerFile(cfg.RunDir, st); err != nil {
		return attached{}, err
	}
	return attached{gws: []netip.Addr{addr}, onNewDevice: setAddr}, nil
}

// cleanup removes the host file. The host range reservation stays: other
// hosts may use it.
func (h *hostPeer) cleanup(*slog.Logger) []error {
	if err := os.Remove(filepath.Join(h.cfg.RunDir, HostPeerFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return []error{fmt.Errorf("remove host file: %w", err)}
	}
	return nil
}

func writeHostPeerFile(runDir string, st HostPeerStatus) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	if err := nodefile.WriteFileAtomic(filepath.Join(runDir, HostPeerFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write host file: %w", err)
	}
	return nil
}

// ReadHostPeerFile reads the host-only daemon's status file.
func ReadHostPeerFile(runDir string) (*HostPeerStatus, error) {
	b, err := os.ReadFile(filepath.Join(runDir, HostPeerFile))
	if err != nil {
		return nil, err
	}
	var st HostPeerStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(runDir, HostPeerFile), err)
	}
	return &st, nil
}
