package heal

import (
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Drift names the fields in which the device's entry for a peer differs
// from what was applied from its etcd record: "endpoint", "allowed-ips",
// "keepalive". None: the entry is as it should be. The reconciler's full
// diff uses it too, so "drifted" means one thing.
func Drift(have wgtypes.Peer, want Want) []string {
	var out []string
	// No endpoint wanted (a peer behind a NAT, docs/nat.md): whatever
	// WireGuard's roaming found is right.
	if want.Endpoint.IsValid() && (have.Endpoint == nil || unmap(have.Endpoint.AddrPort()) != unmap(want.Endpoint)) {
		out = append(out, "endpoint")
	}
	if !sameAllowed(have, want.AllowedIPs) {
		out = append(out, "allowed-ips")
	}
	if have.PersistentKeepaliveInterval != time.Duration(want.Keepalive)*time.Second {
		out = append(out, "keepalive")
	}
	return out
}

func sameAllowed(have wgtypes.Peer, want []netip.Prefix) bool {
	if len(have.AllowedIPs) != len(want) {
		return false
	}
	for _, a := range have.AllowedIPs {
		ones, _ := a.Mask.Size()
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !slices.Contains(want, netip.PrefixFrom(ip.Unmap(), ones)) {
			return false
		}
	}
	return true
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// ProbeAddr is the address of a peer's probe responder for the record's
// CIDR: its gateway (the PodCIDR's first address), or the address itself
// for a host-only peer's single-address "CIDR".
func ProbeAddr(cidr netip.Prefix) netip.Addr {
	if cidr.Bits() == cidr.Addr().BitLen() {
		return cidr.Addr()
	}
	return cidr.Masked().Addr().Next()
}
