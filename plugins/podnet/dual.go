package podnet

import (
	"fmt"
	"net"
	"os"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/wgcni/wgcni/daemon/nodefile"
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
// address and no default route yet. It returns the families used
// (key: is IPv6).
func addIPs(result *current.Result, ips []*current.IPConfig, fams []nodefile.Family, ipamType string) (map[bool]bool, error) {
	used := map[bool]bool{}
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
		used[fam.Is6()] = true
	}
	hasDefault := map[bool]bool{}
	for _, r := range result.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			hasDefault[r.Dst.IP.To4() == nil] = true
		}
	}
	for _, f := range fams {
		if !used[f.Is6()] || hasDefault[f.Is6()] {
			continue
		}
		zero := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if f.Is6() {
			zero = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
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

// ensureForwardingFamily turns on forwarding of one family in the host
// namespace (read first: most ADDs find it on).
func ensureForwardingFamily(is6 bool) error {
	if !is6 {
		return ensureForwarding()
	}
	const path = "/proc/sys/net/ipv6/conf/all/forwarding"
	b, err := os.ReadFile(path)
	if err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable IPv6 forwarding: %w", err)
	}
	return nil
}
