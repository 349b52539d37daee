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
	"github.com/wgcni/wgcni/plugins/netconf"
	"github.com/wgcni/wgcni/plugins/veth"
)

func hubOf(n *nodefile.Node) samenode.Hub {
	gw, _ := n.GatewayNet()
	h := samenode.Hub{Name: samenode.HubName(n.Device)}
	if gw != nil {
		h.Gateway = gw.IP
	}
	return h
}

// attachSameNode moves the pod's traffic from the veth into its own
// WireGuard device peered with the node hub, and records the device in the
// result (the default route now has no gateway: it goes into the device).
func (p *Plugin) attachSameNode(node *nodefile.Node, conf *netconf.NetConf, args *skel.CmdArgs, id string, result *current.Result, mtu int) error {
	var ip netip.Addr
	for _, ipc := range result.IPs {
		if ipc.Address.IP.To4() == nil {
			// The per-pod devices and the hub carry IPv4 only: an IPv6
			// address would talk to same-node pods in clear over the
			// bridge. Refuse rather than leak (docs/ipv6.md).
			return types.NewError(types.ErrInvalidNetworkConfig, "wgcni: same-node encryption covers IPv4 only; this node's pods have IPv6 addresses ("+ipc.Address.String()+"), which would cross the bridge unencrypted", "turn off same-node encryption or use an IPv4-only cluster CIDR")
		}
	}
	for _, ipc := range result.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP.To4()); ok && ipc.Address.IP.To4() != nil {
			ip = a
			break
		}
	}
	if !ip.IsValid() {
		return fmt.Errorf("wgcni: same-node encryption needs an IPv4 pod address")
	}
	podCIDR, _ := netip.ParsePrefix(node.PodCIDR)
	pod, err := samenode.AttachPod(samenode.Attachment{
		PodCIDR: podCIDR,
		RunDir:  conf.RunDir, Hub: hubOf(node), ID: id, Network: conf.Name, ContainerID: args.ContainerID,
		IfName: args.IfName, Netns: args.Netns, IP: ip, MTU: mtu,
	})
	if err != nil {
		return fmt.Errorf("wgcni: same-node encryption: %w", err)
	}
	result.Interfaces = append(result.Interfaces, &current.Interface{Name: pod.WGIfName, Sandbox: args.Netns})
	var routes []*types.Route
	for _, r := range result.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.Dst.IP.To4() != nil {
			continue
		}
		routes = append(routes, r)
	}
	result.Routes = append(routes, &types.Route{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
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

// checkSameNode is CHECK's part for a pod with a same-node device.
func checkSameNode(conf *netconf.NetConf, args *skel.CmdArgs) (bool, error) {
	pod, err := samenode.Load(conf.RunDir, veth.HostName(attachment(conf, args)))
	if err != nil {
		return true, err
	}
	if pod == nil {
		return false, nil
	}
	return true, samenode.CheckPod(pod)
}
