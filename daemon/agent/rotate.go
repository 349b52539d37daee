package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/keys"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/pqpeer"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// RotateRequestFile, in the run directory, asks the running daemon to
// rotate its WireGuard key. A file (rather than only a signal) fits a
// daemon whose restarts are hitless: a request made while the daemon is
// restarting is not lost, and `wgcnid rotate-key` can wait for the result.
// SIGHUP makes the daemon look at once instead of within a second.
const RotateRequestFile = "rotate-key"

// rotator performs key rotations requested through RotateRequestFile.
type rotator struct {
	cfg    *config.Config
	log    *slog.Logger
	cli    *clientv3.Client
	wg     *wgctrl.Client
	keeper *lease.Keeper
	self   record.Lease // what we publish; only the rotator changes it

	Rotations atomic.Int64
	// pq: the post-quantum exchanges (postquantum.go), set once they
	// exist; with post-quantum on, a rotation waits for them.
	pq atomic.Pointer[pqpeer.Manager]
}

func (r *rotator) run(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	req := filepath.Join(r.cfg.RunDir, RotateRequestFile)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-hup:
			r.log.Info("SIGHUP: checking for a key rotation request", "file", req)
		}
		if _, err := os.Stat(req); err != nil {
			continue
		}
		if r.cfg.PostQuantum.Mode != config.PQOff && r.pq.Load() == nil {
			continue // the exchanges are not set up yet: they must learn the new key
		}
		if err := r.rotate(ctx); err != nil {
			r.log.Error("key rotation failed; the old key stays in use, will retry", "err", err)
			continue
		}
		if err := os.Remove(req); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("remove key rotation request", "err", err)
		}
	}
}

// rotate switches to a new key with as little loss as WireGuard allows:
//  1. etcd must be reachable now: a new key that peers cannot learn would
//     cut this node off until etcd returns.
//  2. the new key is stored (crash-safe: a restart configures and
//     publishes it);
//  3. the device switches: its current sessions stop sending, but packets
//     peers still encrypt with the old session keys are still accepted;
//     packets we send are held (WireGuard's staged queue) until a
//     handshake with the new key succeeds. We initiate to every peer at
//     once, knowing the peers refuse it (initiateRefused);
//  4. the record is republished: every peer's mesh swaps the old peer for
//     the new key (old entry removed) and initiates a handshake at once,
//     which succeeds because our device already has the new key, and
//     flushes the held packets both ways; a peer that sees no handshake
//     soon initiates again (mesh/rekey.go), so one lost handshake message
//     does not cost WireGuard's 5 s retry.
func (r *rotator) rotate(ctx context.Context) error {
	h := r.keeper.Held()
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	_, err := r.cli.Get(cctx, h.Key)
	cancel()
	if err != nil {
		return fmt.Errorf("etcd not reachable, not rotating (peers could not learn the new key): %w", err)
	}
	old := r.self.PublicKey
	priv, err := keys.Rotate(r.cfg.StateDir)
	if err != nil {
		return err
	}
	if err := wgdev.Configure(r.wg, r.cfg.Device, priv.Key(), r.cfg.ListenPort); err != nil {
		return err
	}
	r.initiateRefused()
	r.self.PublicKey = priv.Public()
	start := time.Now()
	bo := etcdutil.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, opTimeout)
		// Update, not Publish: only the key changes, so a concurrent
		// endpoint re-publish (roaming) is never undone by a stale copy.
		_, err = r.keeper.Update(pctx, func(l *record.Lease) { l.PublicKey = r.self.PublicKey })
		cancel()
		if err == nil {
			break
		}
		r.log.Warn("publish rotated public key failed; retrying (peers cannot reach us until it is published)", "attempt", attempt, "err", err)
		if !etcdutil.Sleep(ctx, bo.Next()) {
			return ctx.Err()
		}
	}
	r.pqRotated()
	r.Rotations.Add(1)
	r.log.Info("WireGuard key rotated", "old_public_key", wgtypes.Key(old).String(), "public_key", wgtypes.Key(r.self.PublicKey).String(),
		"publish_took", time.Since(start).Round(time.Millisecond), "rotations", r.Rotations.Load())
	return nil
}

// initiateRefused sends every peer an initiation with the new key before
// the key is published, which they refuse. Its point is WireGuard's limit
// of one initiation per peer per 5 s: our own traffic can then not start a
// handshake in the moment a peer, having just learned the key, starts its
// own. Two initiations that cross leave both sides as responders, each
// waiting for the other to send first, until the 5 s are up (seen as ~5 s
// of lost traffic in tests/security). So the peers' handshakes are the only
// ones.
func (r *rotator) initiateRefused() {
	dev, err := r.wg.Device(r.cfg.Device)
	if err != nil {
		r.log.Warn("read device to initiate with the new key", "err", err)
		return
	}
	ka := make(map[wgtypes.Key]time.Duration, len(dev.Peers))
	for _, p := range dev.Peers {
		ka[p.PublicKey] = p.PersistentKeepaliveInterval
	}
	if err := wgdev.Initiate(r.wg, r.cfg.Device, ka); err != nil {
		r.log.Warn("initiate with the new key", "err", err)
	}
}

// RequestRotation implements `wgcnid rotate-key`: it asks the daemon of
// this node (same --run-dir/--state-dir) to rotate, waits until it has,
// and prints the new public key.
func RequestRotation(ctx context.Context, cfg *config.Config, out io.Writer, timeout time.Duration) error {
	req := filepath.Join(cfg.RunDir, RotateRequestFile)
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return fmt.Errorf("run dir: %w", err)
	}
	if err := os.WriteFile(req, []byte(time.Now().UTC().Format(time.RFC3339Nano)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write rotation request: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(req); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon did not rotate within %s (is wgcnid running with --run-dir %s? see its log); the request stays in %s", timeout, cfg.RunDir, req)
		}
		if !etcdutil.Sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
	priv, _, err := keys.LoadOrCreate(cfg.StateDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "rotated; new public key %s\n", priv.Public())
	return nil
}
