package samenode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// watchHost tells died as soon as the pod device host is gone. It holds a
// "watch" connection to the host open: the host acknowledges it and then
// never writes again, so the read returns exactly when the host process
// ends (the kernel closes its side, also on SIGKILL). Then the daemon
// re-creates the pods' devices at once instead of at the next resync.
// Failing to connect also counts as gone (with backoff, so a host that
// cannot start does not spin the reconciler); a host that does not know
// "watch" (older, still running from before an upgrade: it outlives
// daemon restarts) is left to the resync timer.
func watchHost(ctx context.Context, runDir string, resync time.Duration, died chan<- struct{}, log *slog.Logger) {
	backoff := retryMin
	for ctx.Err() == nil {
		start := time.Now()
		err := watchOnce(ctx, runDir)
		if ctx.Err() != nil {
			return
		}
		var unsupported errWatchUnsupported
		if errors.As(err, &unsupported) {
			log.Info("same-node pod device host cannot be watched (older version); relying on resync", "err", err)
			backoff = resync
		} else {
			log.Debug("same-node pod device host watch ended", "err", err, "after", time.Since(start))
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
	c, err := net.DialTimeout("unix", HostSocket(runDir), 2*time.Second)
	if err != nil {
		return fmt.Errorf("connect to pod device host: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetDeadline(time.Now().Add(callTimeout))
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
	// Nothing more ever comes: this returns when the host's end closes.
	_, err = io.Copy(io.Discard, io.MultiReader(dec.Buffered(), c))
	return fmt.Errorf("watch connection closed: %v", err)
}
