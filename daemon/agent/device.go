package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/keys"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// hostPoll is how often start-up looks for a device an external host
// has not created yet.
const hostPoll = 200 * time.Millisecond

// nodeDevice is what start-up learns about the underlay and the WireGuard
// device; pod nodes and host-only peers bring it up the same way.
type nodeDevice struct {
	endpoint netip.Addr
	mtu      int
	dev      *wgdev.Device
	wg       *wgctrl.Client // the caller closes it
	// fresh: the device holds no WireGuard session of before: made now,
	// or adopted without a key (a sidecar's new device: a DaemonSet
	// rollout replaces it together with wgcnid). Peers that still hold a
	// session with the old device must be sent an initiation at once.
	fresh bool
}

// ensureDevice detects the underlay (endpoint, MTU), adopts or creates the
// WireGuard device and sets its key and port.
//
// With an external device host (--device-host=external) it waits, until
// ctx ends, for that host to create the device.
func ensureDevice(ctx context.Context, cfg *config.Config, priv keys.Private, log *slog.Logger) (*nodeDevice, error) {
	endpoint, underlayMTU, err := Underlay(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = WireGuardMTU(underlayMTU, endpoint)
	}
	log.Info("underlay", "endpoint", endpoint, "underlay_mtu", underlayMTU, "mtu", mtu)
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	dev, fresh, err := bringUpDevice(cfg, mtu, priv, wg, log)
	for waited := 0; errors.Is(err, wgdev.ErrNotHosted); waited++ {
		if waited%50 == 0 { // every 10 s
			log.Info("waiting for the external host of the userspace WireGuard device (e.g. its sidecar container)", "device", cfg.Device, "waited", time.Duration(waited)*hostPoll)
		}
		if !etcdutil.Sleep(ctx, hostPoll) {
			wg.Close()
			return nil, ctx.Err()
		}
		dev, fresh, err = bringUpDevice(cfg, mtu, priv, wg, log)
	}
	if err != nil {
		wg.Close()
		return nil, err
	}
	return &nodeDevice{endpoint: endpoint, mtu: mtu, dev: dev, wg: wg, fresh: fresh}, nil
}

// bringUpDevice adopts the device if it exists (a restart) or creates it,
// and sets its key and port. fresh reports a device without a key before
// (see nodeDevice.fresh).
func bringUpDevice(cfg *config.Config, mtu int, priv keys.Private, wg *wgctrl.Client, log *slog.Logger) (dev *wgdev.Device, fresh bool, err error) {
	dev, err = wgdev.Ensure(wgdev.Options{Name: cfg.Device, MTU: mtu, Want: wgdev.Mode(cfg.WireGuard), RunDir: cfg.RunDir,
		Verbose: cfg.Level <= slog.LevelDebug, External: cfg.DeviceHost == config.HostExternal, Log: log})
	if err != nil {
		return nil, false, err
	}
	fresh = !dev.Adopted
	if d, err := wg.Device(cfg.Device); err == nil && dev.Adopted && d.PrivateKey == (wgtypes.Key{}) {
		fresh = true
	}
	log.Info("WireGuard device ready", "device", dev.Name, "mode", dev.Mode, "adopted", dev.Adopted, "fresh", fresh, "pid", dev.PID)
	if err := wgdev.Configure(wg, cfg.Device, priv.Key(), cfg.ListenPort); err != nil {
		return nil, false, err
	}
	return dev, fresh, nil
}

// recreate returns the mesh's Recreate: bring the lost device back with
// the key in the state directory (a rotation may have replaced the one
// the daemon started with), then run after (e.g. the host-only peer's
// address) on the new link.
func (nd *nodeDevice) recreate(cfg *config.Config, log *slog.Logger, after func() error) func() (int, error) {
	return func() (int, error) {
		priv, created, err := keys.LoadOrCreate(cfg.StateDir)
		if err != nil {
			return 0, err
		}
		if created {
			// Someone removed the key file under a running daemon: the
			// new key is not the published one, and peers will refuse it
			// until a restart publishes it.
			log.Error("private key file was gone; the re-created device has a new, unpublished key: restart wgcnid to publish it", "state_dir", cfg.StateDir)
		}
		dev, _, err := bringUpDevice(cfg, nd.mtu, priv, nd.wg, log)
		if err != nil {
			return 0, err
		}
		if after != nil {
			if err := after(); err != nil {
				return 0, err
			}
		}
		return dev.Index, nil
	}
}
