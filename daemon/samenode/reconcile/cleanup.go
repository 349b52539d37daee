package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/samenode/attach"
	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/poddevices"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// ClusterSetting reads sameNodeEncryption from the cluster config record
// (absent: false). An operator turns it on for the whole cluster by
// adding "sameNodeEncryption":true to <prefix>/config.
func ClusterSetting(ctx context.Context, kv clientv3.KV, prefix string) (bool, error) {
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

// Cleanup removes the hub (and its routes), the pod device process, kernel
// pod devices and the registry. Pods that still exist lose their WireGuard
// device: with same-node encryption they fail closed until re-added.
func Cleanup(runDir, device string, log *slog.Logger) error {
	var errs []error
	// Kernel pod devices outlive every process: remove them while the
	// registry still says where they are.
	pods, _ := registry.List(runDir)
	for _, p := range pods {
		if p.DeviceMode() == wgdev.Kernel {
			if err := attach.DeleteKernelDevice(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	h := hub.Hub{Name: hub.DeviceName(device)}
	if routes, err := h.Routes(); err == nil {
		for _, ip := range routes {
			if err := h.DeleteRoute(ip); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := wgdev.Remove(runDir, h.Name, log); err != nil {
		errs = append(errs, err)
	}
	poddevices.Stop(runDir)
	if err := os.RemoveAll(registry.Dir(runDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
