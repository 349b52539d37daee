package podnet

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/route"
)

// gateways lists the node's gateway of every family, for the bridge.
func gateways(fams []nodefile.Family) []*net.IPNet {
	out := make([]*net.IPNet, 0, len(fams))
	for _, f := range fams {
		out = append(out, f.Gateway)
	}
	return out
}

// addIPs puts the IPAM addresses into the result, each inside the node's
// PodCIDR of its family, with that family's gateway when IPAM gave none,
// and adds a default route via the gateway for every family that has an
// address and no default route yet. It returns the families used.
func addIPs(result *current.Result, ips []*current.IPConfig, fams []nodefile.Family, ipamType string) ([]nodefile.Family, error) {
	var used []nodefile.Family
	for _, ipc := range ips {
		var fam *nodefile.Family
		for i := range fams {
			if fams[i].Pod.Contains(ipc.Address.IP) {
				fam = &fams[i]
			}
		}
		if fam == nil {
			var pods []string
			for _, f := range fams {
				pods = append(pods, f.Pod.String())
			}
			return nil, fmt.Errorf("wgcni: IPAM plugin %s returned %s, outside this node's podCIDRs %v", ipamType, ipc.Address.IP, pods)
		}
		if ipc.Gateway == nil {
			ipc.Gateway = fam.Gateway.IP
		}
		ipc.Interface = current.Int(ifPod)
		result.IPs = append(result.IPs, ipc)
		if !slices.ContainsFunc(used, func(u nodefile.Family) bool { return u.Pod == fam.Pod }) {
			used = append(used, *fam)
		}
	}
	for _, f := range used {
		_, bits := f.Pod.Mask.Size()
		if slices.ContainsFunc(result.Routes, func(r *types.Route) bool {
			ones, rbits := r.Dst.Mask.Size()
			return ones == 0 && rbits == bits
		}) {
			continue // this family has a default route already
		}
		zero := net.IPNet{IP: net.IPv6zero[:bits/8], Mask: net.CIDRMask(0, bits)}
		result.Routes = append(result.Routes, &types.Route{Dst: zero, GW: f.Gateway.IP})
	}
	return used, nil
}

// podIPv6Sysctls runs in the pod namespace before its addresses are set:
// IPv6 on, no duplicate address detection (addresses come from our lease
// and IPAM, and a tentative address would hold the ADD up for the DAD
// time), and no router advertisements (routes come from the CNI result).
func podIPv6Sysctls(ifName string) error {
	for _, kv := range [][2]string{
		{"/proc/sys/net/ipv6/conf/" + ifName + "/disable_ipv6", "0"},
		{"/proc/sys/net/ipv6/conf/" + ifName + "/accept_dad", "0"},
		{"/proc/sys/net/ipv6/conf/" + ifName + "/accept_ra", "0"},
	} {
		if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil {
			return fmt.Errorf("set %s=%s: %w", kv[0], kv[1], err)
		}
	}
	return nil
}

// ensureForwarding turns on forwarding of f's family in the host namespace
// (pods reach other nodes and the outside through it), the way the daemon
// does (read first: most ADDs find it on).
func ensureForwarding(f nodefile.Family) error {
	ones, _ := f.Pod.Mask.Size()
	a, _ := netip.AddrFromSlice(f.Pod.IP)
	return route.EnableForwarding(netip.PrefixFrom(a.Unmap(), ones))
}
