package netnstest

import (
	"fmt"
	"math/rand/v2"
)

// DeviceName returns "<base>-<4 hex>": userspace WireGuard's control socket
// /var/run/wireguard/<name>.sock is shared by every namespace on the
// machine, so tests that may run at the same time (other packages, other
// checkouts) must not reuse a fixed device name. base must leave room for
// the suffix (at most 10 characters).
func DeviceName(base string) string {
	return fmt.Sprintf("%s-%04x", base, rand.N(1<<16))
}
