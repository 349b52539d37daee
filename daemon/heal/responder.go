package heal

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/wgcni/wgcni/daemon/pmtu"
)

// Serve starts a probe responder on each of this node's own addresses
// (its gateways) at port, answering the other nodes' liveness and path
// MTU probes until ctx ends. The addresses are reachable from other nodes
// only through the tunnel. A responder that cannot start is logged, not
// fatal: the peers' probes then get a port unreachable back through the
// tunnel, which still proves it works.
func Serve(ctx context.Context, addrs []netip.Addr, port int, log *slog.Logger) {
	if port == 0 {
		return
	}
	for _, a := range addrs {
		r, err := pmtu.Listen(netip.AddrPortFrom(a, uint16(port)))
		if err != nil {
			log.Warn("probe responder not started", "err", err)
			continue
		}
		log.Info("answering liveness and path MTU probes", "addr", r.Addr())
		go func() {
			if err := r.Serve(ctx); err != nil {
				log.Warn("probe responder stopped", "addr", a, "err", err)
			}
		}()
	}
}
