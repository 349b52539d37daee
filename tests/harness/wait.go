package harness

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// WaitFor polls cond every 100 ms until it returns true or timeout passes.
// The error names what was awaited and cond's last error.
func WaitFor(timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("timed out after %v waiting for %s: %w", timeout, what, last)
			}
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Connect waits up to 20 s for one echo reply from `to` (the first packet
// to a peer may wait for a WireGuard handshake, or for a daemon to sync),
// then requires count of count replies; it fails the test otherwise.
func Connect(tb testing.TB, from NS, to netip.Addr, what string, count int) {
	tb.Helper()
	err := WaitFor(20*time.Second, what, func() (bool, error) {
		r, err := from.Ping(to, 1, 200*time.Millisecond)
		return err == nil && r.Received == 1, nil
	})
	if err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
	r, err := from.Ping(to, count, 100*time.Millisecond)
	if err != nil || r.Loss() != 0 {
		tb.Fatalf("%s: %d/%d replies: %v\n%s", what, r.Received, r.Sent, err, r.Output)
	}
}
