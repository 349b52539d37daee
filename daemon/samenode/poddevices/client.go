package poddevices

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/wgcni/wgcni/daemon/helperproc"
)

// Watch tells died as soon as the pod device process is gone. It holds a
// "watch" connection to the process open: the process acknowledges it and
// then never writes again, so the read returns exactly when the process
// ends (the kernel closes its side, also on SIGKILL). Then the daemon
// re-creates the pods' devices at once instead of at the next resync.
// Failing to connect also counts as gone (with backoff from retryMin, so
// a process that cannot start does not spin the reconciler); a process
// that does not know "watch" (older, still running from before an
// upgrade: it outlives daemon restarts) is left to the resync timer.
func Watch(ctx context.Context, runDir string, retryMin, resync time.Duration, died chan<- struct{}, log *slog.Logger) {
	backoff := retryMin
	for ctx.Err() == nil {
		start := time.Now()
		err := watchOnce(ctx, runDir)
		if ctx.Err() != nil {
			return
		}
		var unsupported errWatchUnsupported
		if errors.As(err, &unsupported) {
			log.Info("same-node pod device process cannot be watched (older version); relying on resync", "err", err)
			backoff = resync
		} else {
			log.Debug("same-node pod device process watch ended", "err", err, "after", time.Since(start))
			select {
			case died <- struct{}{}:
			default:
			}
			if time.Since(start) > time.Minute {
				backoff = retryMin
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, resync)
	}
}

type errWatchUnsupported struct{ msg string }

func (e errWatchUnsupported) Error() string { return e.msg }

// watchOnce returns when the watch connection ends, or ctx does.
func watchOnce(ctx context.Context, runDir string) error {
	c, err := net.DialTimeout("unix", Socket(runDir), 2*time.Second)
	if err != nil {
		return fmt.Errorf("connect to pod device process: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetDeadline(time.Now().Add(CallTimeout))
	if err := json.NewEncoder(c).Encode(Request{Op: "watch"}); err != nil {
		return fmt.Errorf("send watch: %w", err)
	}
	dec := json.NewDecoder(c)
	var resp Response
	if err := dec.Decode(&resp); err != nil {
		return fmt.Errorf("read watch acknowledgement: %w", err)
	}
	if resp.Error != "" {
		return errWatchUnsupported{msg: resp.Error}
	}
	c.SetDeadline(time.Time{})
	// Nothing more ever comes: this returns when the process's end closes.
	_, err = io.Copy(io.Discard, io.MultiReader(dec.Buffered(), c))
	return fmt.Errorf("watch connection closed: %v", err)
}

// Ensure starts the pod device process unless one answers on its socket.
func Ensure(runDir string, log *slog.Logger) error {
	if _, err := Call(runDir, Request{Op: "ping"}, 2*time.Second); err == nil {
		return nil
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("create run dir %s: %w", runDir, err)
	}
	pid, err := helperproc.Start(helperproc.Spec{
		What: "same-node pod device process", Args: []string{Subcommand, "--run-dir", runDir},
		LogPath: filepath.Join(runDir, Subcommand+".log"), Log: log,
	})
	if err != nil {
		return err
	}
	log.Info("started same-node pod device process", "pid", pid)
	return nil
}

// Running reports whether pid is a live pod device process (pids are
// reused).
func Running(pid int) bool { return helperproc.Running(pid, helperproc.Subcommand(Subcommand)) }

// Stop ends the pod device process of runDir, if its pid file names one
// (every hosted pod device closes with it), and removes its socket and pid
// file.
func Stop(runDir string) {
	if pid, err := helperproc.ReadPID(PIDFile(runDir)); err == nil {
		helperproc.Stop(pid, helperproc.Subcommand(Subcommand), 5*time.Second)
	}
	os.Remove(Socket(runDir))
	os.Remove(PIDFile(runDir))
}
