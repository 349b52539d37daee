package wgdev

import (
	"context"
	"log/slog"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// WatchLink reports on the returned channel each time the link named name
// is deleted or created (or changed): deleted, a userspace device whose
// host process died (crash, OOM kill) or a kernel device someone deleted;
// created, the device an external host (a sidecar container) makes again
// after its restart. The daemon must notice at once, not at its next
// resync: until the device is back and configured, the node's cross-node
// traffic is dropped by the strict route. Events are coalesced: the
// receiver looks at the device itself. It returns nil (no events; the
// resync timer is the fallback) when the subscription cannot be made.
func WatchLink(ctx context.Context, name string, log *slog.Logger) <-chan struct{} {
	updates := make(chan netlink.LinkUpdate, 64)
	onErr := func(err error) { log.Debug("netlink link subscription", "device", name, "err", err) }
	if err := netlink.LinkSubscribeWithOptions(updates, ctx.Done(), netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		log.Warn("cannot watch the WireGuard device for deletion; a lost device is found by the resync timer", "device", name, "err", err)
		return nil
	}
	events := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-updates:
				if !ok {
					log.Warn("WireGuard device watch ended; a lost device is found by the resync timer", "device", name)
					return
				}
				if (u.Header.Type != unix.RTM_DELLINK && u.Header.Type != unix.RTM_NEWLINK) || u.Link == nil || u.Link.Attrs().Name != name {
					continue
				}
				select {
				case events <- struct{}{}:
				default: // one pending event is enough
				}
			}
		}
	}()
	return events
}
