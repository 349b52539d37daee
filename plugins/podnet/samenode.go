package podnet

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/samenode"
	"github.com/wgcni/wgcni/daemon/wgdev"
	"github.com/wgcni/wgcni/plugins/netconf"
	"github.com/wgcni/wgcni/plugins/veth"
)

func hubOf(n *nodefile.Node) samenode.Hub {
	h := samenode.Hub{Name: samenode.HubName(n.Device)}
	fams, _ := n.Families()
	for _, f := range fams {
		if f.Is6() {
			h.Gateway6 = f.Gateway.IP
		} else {
			h.Gateway = f.Gateway.IP.To4()
		}
	}
	return h
}

// attachSameNode moves the pod's traffic from the veth into its own
// WireGuard device peered with the node hub, and records the device in the
// result (the default route now has no gateway: it goes into the device).
func (p *Plugin) attachSameNode(node *nodefile.Node, conf *netconf.NetConf, args *skel.CmdArgs, id string, result *current.Result, mtu int) error {
	var ip, ip6 netip.Addr
	for _, ipc := range result.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		if a = a.Unmap(); a.Is4() && !ip.IsValid() {
			ip = a
		} else if a.Is6() && !ip6.IsValid() {
			ip6 = a
		}
	}
	if !ip.IsValid() && !ip6.IsValid() {
		return fmt.Errorf("wgcni: same-node encryption needs a pod address")
	}
	var podCIDR, podCIDR6 netip.Prefix
	fams, _ := node.Families()
	for _, f := range fams {
		ones, _ := f.Pod.Mask.Size()
		a, _ := netip.AddrFromSlice(f.Pod.IP)
		if f.Is6() {
			podCIDR6 = netip.PrefixFrom(a, ones)
		} else {
			podCIDR = netip.PrefixFrom(a.Unmap(), ones)
		}
	}
	pod, err := samenode.AttachPod(samenode.Attachment{
		PodCIDR: podCIDR, PodCIDR6: podCIDR6, IP6: ip6,
		RunDir: conf.RunDir, Hub: hubOf(node), ID: id, Network: conf.Name, ContainerID: args.ContainerID,
		IfName: args.IfName, Netns: args.Netns, IP: ip, MTU: mtu, Mode: wgdev.Mode(node.SameNodeDevice),
	})
	if err != nil {
		return fmt.Errorf("wgcni: same-node encryption: %w", err)
	}
	result.Interfaces = append(result.Interfaces, &current.Interface{Name: pod.WGIfName, Sandbox: args.Netns})
	// The default route of each family the pod has now goes into the
	// device (no gateway).
	var routes []*types.Route
	for _, r := range result.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && ((r.Dst.IP.To4() != nil && ip.IsValid()) || (r.Dst.IP.To4() == nil && ip6.IsValid())) {
			continue
		}
		routes = append(routes, r)
	}
	if ip.IsValid() {
		routes = append(routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
	}
	if ip6.IsValid() {
		routes = append(routes, &types.Route{Dst: net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}})
	}
	result.Routes = routes
	return nil
}

// detachSameNode runs on every DEL, whatever the node file says now (the
// option may have been switched off since ADD).
func (p *Plugin) detachSameNode(conf *netconf.NetConf, args *skel.CmdArgs) error {
	id := veth.HostName(attachment(conf, args))
	pod, err := samenode.Load(conf.RunDir, id)
	if err != nil || pod == nil {
		// Nothing registered; a device may still exist from an ADD that
		// died before registering: the daemon's reconciler collects it.
		return nil
	}
	hub := samenode.Hub{}
	if n, err := nodefile.Read(conf.RunDir); err == nil {
		hub = hubOf(n)
	}
	if err := samenode.DetachPod(conf.RunDir, hub, id); err != nil {
		return fmt.Errorf("wgcni: same-node detach: %w", err)
	}
	return nil
}

// gcSameNode detaches every registered pod of this network whose
// attachment is not valid.
func (p *Plugin) gcSameNode(conf *netconf.NetConf, valid map[veth.Attachment]bool) []error {
	pods, _ := samenode.List(conf.RunDir)
	if len(pods) == 0 {
		return nil
	}
	hub := samenode.Hub{}
	if n, err := nodefile.Read(conf.RunDir); err == nil {
		hub = hubOf(n)
	}
	var errs []error
	for _, pod := range pods {
		if pod.Network != conf.Name || valid[veth.Attachment{Network: pod.Network, ContainerID: pod.ContainerID, IfName: pod.IfName}] {
			continue
		}
		if err := samenode.DetachPod(conf.RunDir, hub, pod.ID); err != nil {
			errs = append(errs, fmt.Errorf("wgcni: GC same-node %s: %w", pod.ID, err))
			continue
		}
		p.Log.Info("GC removed same-node registration", "id", pod.ID, "containerID", pod.ContainerID)
	}
	return errs
}

// checkSameNode is CHECK's part for a pod with a same-node device: the
// registration holds the addresses CHECK was given, the pod device carries
// each family's default route, the hub has the pod's /32 and /128 as peer
// and routes.
func checkSameNode(conf *netconf.NetConf, args *skel.CmdArgs, node *nodefile.Node, podIPs []*current.IPConfig) (bool, error) {
	pod, err := samenode.Load(conf.RunDir, veth.HostName(attachment(conf, args)))
	if err != nil {
		return true, err
	}
	if pod == nil {
		return false, nil
	}
	for _, ipc := range podIPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if a = a.Unmap(); !ok || (a != pod.IP && a != pod.IP6) {
			return true, fmt.Errorf("same-node registration %s has %v, not prevResult's %s", pod.ID, pod.Addrs(), ipc.Address.IP)
		}
	}
	if err := samenode.CheckPod(pod); err != nil {
		return true, err
	}
	return true, hubOf(node).CheckHub(pod)
}
