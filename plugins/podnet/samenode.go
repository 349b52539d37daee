package podnet

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/samenode/attach"
	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/wgdev"
	"github.com/wgcni/wgcni/plugins/netconf"
	"github.com/wgcni/wgcni/plugins/veth"
)

// sameNodeFamilies reads the node's hub (with the gateway of each family)
// and PodCIDR of each family from the node file.
func sameNodeFamilies(n *nodefile.Node) (hub.Hub, []netip.Prefix, error) {
	h := hub.Hub{Name: hub.DeviceName(n.Device)}
	fams, err := n.Families()
	if err != nil {
		return hub.Hub{}, nil, err
	}
	var podCIDRs []netip.Prefix
	for _, f := range fams {
		gw, err := toAddr(f.Gateway.IP)
		if err != nil {
			return hub.Hub{}, nil, fmt.Errorf("node file gateway: %w", err)
		}
		pod, err := toAddr(f.Pod.IP)
		if err != nil {
			return hub.Hub{}, nil, fmt.Errorf("node file PodCIDR: %w", err)
		}
		ones, _ := f.Pod.Mask.Size()
		h.Gateways = append(h.Gateways, gw)
		podCIDRs = append(podCIDRs, netip.PrefixFrom(pod, ones))
	}
	return h, podCIDRs, nil
}

func toAddr(ip net.IP) (netip.Addr, error) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", ip)
	}
	return a.Unmap(), nil
}

// hubOf is the node's hub for DEL and GC, which must remove the device
// whatever the node file says: without a node file the zero Hub (nothing
// to change on it: the daemon's reconciler removes what is left), with
// unusable families the hub without gateways (removing a peer and routes
// needs none); why is logged.
func (p *Plugin) hubOf(runDir string) hub.Hub {
	n, err := nodefile.Read(runDir)
	if err != nil {
		p.Log.Warn("same-node detach without the hub (node file unreadable); wgcnid removes the hub peer", "err", err)
		return hub.Hub{}
	}
	h, _, err := sameNodeFamilies(n)
	if err != nil {
		p.Log.Warn("same-node detach: node file families unusable", "err", err)
		return hub.Hub{Name: hub.DeviceName(n.Device)}
	}
	return h
}

// attachSameNode moves the pod's traffic from the veth into its own
// WireGuard device peered with the node hub, and records the device in the
// result (the default route now has no gateway: it goes into the device).
func (p *Plugin) attachSameNode(node *nodefile.Node, conf *netconf.NetConf, args *skel.CmdArgs, id string, result *current.Result, mtu int) error {
	var ips []netip.Addr
	for _, ipc := range result.IPs {
		a, err := toAddr(ipc.Address.IP)
		if err != nil {
			return fmt.Errorf("wgcni: same-node encryption: pod address: %w", err)
		}
		ips = append(ips, a)
	}
	if len(ips) == 0 {
		return fmt.Errorf("wgcni: same-node encryption needs a pod address")
	}
	h, podCIDRs, err := sameNodeFamilies(node)
	if err != nil {
		return fmt.Errorf("wgcni: same-node encryption: %w", err)
	}
	pod, err := attach.AttachPod(attach.Attachment{
		RunDir: conf.RunDir, Hub: h, ID: id, Network: conf.Name, ContainerID: args.ContainerID,
		IfName: args.IfName, Netns: args.Netns, IPs: ips, PodCIDRs: podCIDRs, MTU: mtu, Mode: wgdev.Mode(node.SameNodeDevice),
	})
	if err != nil {
		return fmt.Errorf("wgcni: same-node encryption: %w", err)
	}
	result.Interfaces = append(result.Interfaces, &current.Interface{Name: pod.WGIfName, Sandbox: args.Netns})
	// The default route of each family the pod has now goes into the
	// device (no gateway).
	hasFamily := func(ip net.IP) bool {
		for _, a := range pod.IPs {
			if a.Is4() == (ip.To4() != nil) {
				return true
			}
		}
		return false
	}
	var routes []*types.Route
	for _, r := range result.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && hasFamily(r.Dst.IP) {
			continue
		}
		routes = append(routes, r)
	}
	for _, a := range pod.IPs {
		zero := netip.PrefixFrom(a, 0).Masked().Addr() // 0.0.0.0 or ::
		routes = append(routes, &types.Route{Dst: net.IPNet{IP: zero.AsSlice(), Mask: net.CIDRMask(0, a.BitLen())}})
	}
	result.Routes = routes
	return nil
}

// rollbackSameNode undoes attachSameNode of a failed ADD (node's families
// were good: the attach used them).
func rollbackSameNode(node *nodefile.Node, runDir, id string) error {
	h, _, err := sameNodeFamilies(node)
	if err != nil {
		h = hub.Hub{Name: hub.DeviceName(node.Device)}
	}
	return attach.DetachPod(runDir, h, id)
}

// detachSameNode runs on every DEL, whatever the node file says now (the
// option may have been switched off since ADD).
func (p *Plugin) detachSameNode(conf *netconf.NetConf, args *skel.CmdArgs) error {
	id := veth.HostName(attachment(conf, args))
	pod, err := registry.Load(conf.RunDir, id)
	if err != nil || pod == nil {
		// Nothing registered; a device may still exist from an ADD that
		// died before registering: the daemon's reconciler collects it.
		return nil
	}
	if err := attach.DetachPod(conf.RunDir, p.hubOf(conf.RunDir), id); err != nil {
		return fmt.Errorf("wgcni: same-node detach: %w", err)
	}
	return nil
}

// gcSameNode detaches every registered pod of this network whose
// attachment is not valid.
func (p *Plugin) gcSameNode(conf *netconf.NetConf, valid map[veth.Attachment]bool) []error {
	pods, errs := registry.List(conf.RunDir)
	for _, err := range errs {
		p.Log.Warn("GC: unreadable same-node registration skipped", "err", err)
	}
	if len(pods) == 0 {
		return nil
	}
	h := p.hubOf(conf.RunDir)
	var out []error
	for _, pod := range pods {
		if pod.Network != conf.Name || valid[veth.Attachment{Network: pod.Network, ContainerID: pod.ContainerID, IfName: pod.IfName}] {
			continue
		}
		if err := attach.DetachPod(conf.RunDir, h, pod.ID); err != nil {
			out = append(out, fmt.Errorf("wgcni: GC same-node %s: %w", pod.ID, err))
			continue
		}
		p.Log.Info("GC removed same-node registration", "id", pod.ID, "containerID", pod.ContainerID)
	}
	return out
}

// checkSameNode is CHECK's part for a pod with a same-node device: the
// registration holds the addresses CHECK was given, the pod device carries
// each family's default route, the hub has the pod's addresses as peer
// AllowedIPs and routes.
func checkSameNode(conf *netconf.NetConf, args *skel.CmdArgs, node *nodefile.Node, podIPs []*current.IPConfig) (bool, error) {
	pod, err := registry.Load(conf.RunDir, veth.HostName(attachment(conf, args)))
	if err != nil {
		return true, err
	}
	if pod == nil {
		return false, nil
	}
	for _, ipc := range podIPs {
		a, err := toAddr(ipc.Address.IP)
		if err != nil {
			return true, fmt.Errorf("prevResult address: %w", err)
		}
		if !slices.Contains(pod.IPs, a) {
			return true, fmt.Errorf("same-node registration %s has %v, not prevResult's %s", pod.ID, pod.IPs, a)
		}
	}
	if err := attach.CheckPod(pod); err != nil {
		return true, err
	}
	h, _, err := sameNodeFamilies(node)
	if err != nil {
		return true, err
	}
	return true, h.Check(pod)
}
