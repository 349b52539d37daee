package nodefile

import (
	"fmt"
	"net"
)

// Family is one address family of the node: its PodCIDR, the gateway on
// the bridge (with the PodCIDR's mask) and the cluster CIDR.
type Family struct {
	Pod     *net.IPNet
	Gateway *net.IPNet
	Cluster *net.IPNet
}

// Is6 reports whether f is the IPv6 family.
func (f Family) Is6() bool { return f.Pod.IP.To4() == nil }

// Families returns the node's address families, primary first: the lists
// if the daemon wrote them, else the single fields of older node files.
func (n *Node) Families() ([]Family, error) {
	if len(n.PodCIDRs) == 0 {
		gw, err := n.GatewayNet()
		if err != nil {
			return nil, err
		}
		cl, err := n.ClusterNet()
		if err != nil {
			return nil, err
		}
		pod, _ := n.PodNet()
		return []Family{{Pod: pod, Gateway: gw, Cluster: cl}}, nil
	}
	if len(n.Gateways) != len(n.PodCIDRs) || len(n.ClusterCIDRs) != len(n.PodCIDRs) {
		return nil, fmt.Errorf("node file fields podCIDRs, gateways and clusterCIDRs have %d, %d and %d entries; want one each per family",
			len(n.PodCIDRs), len(n.Gateways), len(n.ClusterCIDRs))
	}
	var out []Family
	seen := map[bool]bool{}
	for i := range n.PodCIDRs {
		_, pod, err := net.ParseCIDR(n.PodCIDRs[i])
		if err != nil {
			return nil, fmt.Errorf("node file field podCIDRs[%d] %q: %w", i, n.PodCIDRs[i], err)
		}
		_, cl, err := net.ParseCIDR(n.ClusterCIDRs[i])
		if err != nil {
			return nil, fmt.Errorf("node file field clusterCIDRs[%d] %q: %w", i, n.ClusterCIDRs[i], err)
		}
		gw := net.ParseIP(n.Gateways[i])
		if gw == nil || !pod.Contains(gw) {
			return nil, fmt.Errorf("node file field gateways[%d] %q: not an address inside podCIDRs[%d] %s", i, n.Gateways[i], i, pod)
		}
		if !cl.Contains(pod.IP) || (cl.IP.To4() == nil) != (pod.IP.To4() == nil) {
			return nil, fmt.Errorf("node file field podCIDRs[%d] %s is outside clusterCIDRs[%d] %s", i, pod, i, cl)
		}
		f := Family{Pod: pod, Gateway: &net.IPNet{IP: gw, Mask: pod.Mask}, Cluster: cl}
		if seen[f.Is6()] {
			return nil, fmt.Errorf("node file field podCIDRs: two CIDRs of one family (%v)", n.PodCIDRs)
		}
		seen[f.Is6()] = true
		out = append(out, f)
	}
	return out, nil
}

// validateFamilies checks the lists and that they agree with the single
// fields.
func (n *Node) validateFamilies() error {
	if len(n.PodCIDRs) == 0 && len(n.Gateways) == 0 && len(n.ClusterCIDRs) == 0 {
		return nil
	}
	fs, err := n.Families()
	if err != nil {
		return err
	}
	if len(fs) == 0 || n.PodCIDRs[0] != n.PodCIDR || n.Gateways[0] != n.Gateway || n.ClusterCIDRs[0] != n.ClusterCIDR {
		return fmt.Errorf("node file fields podCIDRs/gateways/clusterCIDRs must start with podCIDR %s, gateway %s and clusterCIDR %s", n.PodCIDR, n.Gateway, n.ClusterCIDR)
	}
	return nil
}
