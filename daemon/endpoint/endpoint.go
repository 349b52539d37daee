// Package endpoint follows this node's underlay address: when the address
// peers send WireGuard traffic to changes (DHCP renewal, a moved VM, a new
// uplink), the node re-publishes its record and every peer's mesh
// reconciler updates the endpoint from the watch, without restarts.
package endpoint

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/etcdutil"
)

// Follower re-detects the endpoint on every netlink address or route
// change and on a timer (in case an update was missed), and publishes a
// changed one, retrying with backoff until it is published.
type Follower struct {
	// Detect returns the current endpoint (e.g. agent.Underlay).
	Detect func() (netip.Addr, error)
	// Publish makes peers use addr (e.g. lease.Keeper.Update).
	Publish func(ctx context.Context, addr netip.Addr) error
	// Interval bounds how long a missed netlink update goes unnoticed.
	Interval time.Duration
	// Settle coalesces a burst of updates (an address replaced is a
	// delete and an add) into one detection. Default 500ms.
	Settle time.Duration
	Log    *slog.Logger
}

// Run follows the endpoint, starting from published, until ctx ends.
func (f *Follower) Run(ctx context.Context, published netip.Addr) {
	if f.Settle <= 0 {
		f.Settle = 500 * time.Millisecond
	}
	if f.Interval <= 0 {
		f.Interval = time.Minute
	}
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	f.subscribe(ctx, poke)
	tick := time.NewTicker(f.Interval)
	defer tick.Stop()
	bo := etcdutil.Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second}
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			// Let the burst finish, then drain what queued meanwhile.
			if !etcdutil.Sleep(ctx, f.Settle) {
				return
			}
			select {
			case <-changed:
			default:
			}
		case <-tick.C:
		case <-retry:
		}
		retry = nil
		addr, err := f.Detect()
		if err != nil {
			// No usable address right now (e.g. between delete and add):
			// keep the published one; peers also roam to where our
			// packets come from.
			f.Log.Warn("underlay endpoint not detectable; keeping the published one", "endpoint", published, "err", err)
			continue
		}
		if addr == published {
			bo.Reset()
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = f.Publish(pctx, addr)
		cancel()
		if err != nil {
			d := bo.Next()
			f.Log.Warn("re-publishing changed underlay endpoint failed; retrying", "old", published, "new", addr, "err", err, "in", d.Round(time.Millisecond))
			retry = time.After(d)
			continue
		}
		f.Log.Info("underlay endpoint changed; re-published", "old", published, "new", addr)
		published = addr
		bo.Reset()
	}
}

// subscribe pokes on every address and route update in this network
// namespace. Subscription failures only cost promptness: the timer still
// catches the change.
func (f *Follower) subscribe(ctx context.Context, poke func()) {
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	onErr := func(err error) { f.Log.Debug("netlink subscription", "err", err) }
	if err := netlink.AddrSubscribeWithOptions(addrs, ctx.Done(), netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		f.Log.Warn("cannot watch address changes; relying on the timer", "err", err, "interval", f.Interval)
		addrs = nil
	}
	if err := netlink.RouteSubscribeWithOptions(routes, ctx.Done(), netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		f.Log.Warn("cannot watch route changes; relying on the timer", "err", err, "interval", f.Interval)
		routes = nil
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-addrs:
				if !ok {
					addrs = nil
					continue
				}
				poke()
			case u, ok := <-routes:
				if !ok {
					routes = nil
					continue
				}
				// Only default routes decide which interface is the
				// underlay; our own peer routes change all the time.
				if u.Dst == nil {
					poke()
				} else if ones, _ := u.Dst.Mask.Size(); ones == 0 {
					poke()
				}
			}
		}
	}()
}
