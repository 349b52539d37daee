package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/pqkeys"
	"github.com/wgcni/wgcni/daemon/pqpeer"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// pqKey loads or creates the node's ML-KEM key when post-quantum is on
// and returns its encapsulation key for the record ("" when off).
func pqKey(cfg *config.Config, log *slog.Logger) (pqkeys.Private, string, error) {
	if cfg.PostQuantum.Mode == config.PQOff {
		return pqkeys.Private{}, "", nil
	}
	k, created, err := pqkeys.LoadOrCreate(cfg.StateDir)
	if err != nil {
		return pqkeys.Private{}, "", err
	}
	log.Info("ML-KEM-768 key ready", "key", k, "new", created, "post_quantum", cfg.PostQuantum.Mode)
	return k, pqkeys.EncodePublic(k.Public()), nil
}

// startPQ prepares the post-quantum exchanges (nil when off); runPQ runs
// them. peers is read only once they run. With off it clears PSKs a previous run left on
// the device: the peers clear theirs once our record has no ML-KEM key.
func startPQ(ctx context.Context, cfg *config.Config, wg *wgctrl.Client, self wgtypes.Key, kem pqkeys.Private,
	peers func() map[wgtypes.Key]mesh.PeerInfo, selfNAT func() bool, log *slog.Logger) (*pqpeer.Manager, error) {
	if cfg.PostQuantum.Mode == config.PQOff {
		pqpeer.RemoveStatus(cfg.RunDir)
		if err := pqpeer.ClearDevice(wg, cfg.Device); err != nil {
			log.Warn("post-quantum off: clear preshared keys left on the device", "err", err)
		}
		return nil, nil
	}
	m, err := pqpeer.New(pqpeer.Config{
		Required: cfg.PostQuantum.Mode == config.PQRequired, MaxAge: cfg.PostQuantum.MaxAge, Interval: cfg.PostQuantum.Interval, Port: cfg.PostQuantum.Port,
		Device: cfg.Device, WG: wg, Self: self, KEM: kem, Peers: peers, SelfUnreachable: selfNAT,
		Handshake: func(peer wgtypes.Key, ka time.Duration) error {
			return wgdev.Initiate(wg, cfg.Device, map[wgtypes.Key]time.Duration{peer: ka})
		},
		StatusFile: filepath.Join(cfg.RunDir, pqpeer.StatusFileName),
		Log:        log.With("part", "pq"),
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// runPQ runs the exchanges once the mesh exists (nothing when off).
func runPQ(ctx context.Context, m *pqpeer.Manager, om *opsMetrics, log *slog.Logger) {
	if m == nil {
		return
	}
	om.registerCollector(m)
	go func() {
		if err := m.Run(ctx); err != nil {
			log.Error("post-quantum exchange stopped", "err", err)
		}
	}()
}

// pqHooks are the mesh's post-quantum hooks (none when off).
func pqHooks(m *pqpeer.Manager) mesh.PQHooks {
	if m == nil {
		return mesh.PQHooks{}
	}
	return m.Hooks()
}

// pqRotated tells the post-quantum exchanges our new key once it is
// published: they run under the new identity from now on. The PSKs stay on
// the device: each peer carries the pair's PSK to our new key
// (pqpeer.Manager.Carry), so the handshakes under the new key meet the same
// PSK on both ends, and a fresh exchange follows within a second.
func (r *rotator) pqRotated() {
	if m := r.pq.Load(); m != nil {
		m.SetSelf(r.self.PublicKey)
	}
}
