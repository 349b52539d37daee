package podnet

import (
	"bytes"
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/plugins/netconf"
	"github.com/wgcni/wgcni/plugins/veth"
)

// Check implements CNI CHECK: the pod interface, its addresses, routes and
// MTU, the host veth and its bridge port, compared with prevResult. The
// error names the first thing that differs.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return netconf.Invalid("field prevResult: required for CHECK")
	}
	node, err := readNode(conf.RunDir)
	if err != nil {
		return err
	}
	ipm, err := newIPAM(conf.IPAMType, args, p.Log)
	if err != nil {
		return err
	}
	if err := ipm.Check(); err != nil {
		return err
	}
	mtu := node.MTU
	if conf.MTU > 0 {
		mtu = conf.MTU
	}
	prev := conf.PrevResult
	att := attachment(conf, args)
	hostName := veth.HostName(att)

	podIdx, hostIdx := -1, -1
	for i, intf := range prev.Interfaces {
		switch {
		case intf.Name == args.IfName && intf.Sandbox == args.Netns:
			podIdx = i
		case intf.Name == hostName && intf.Sandbox == "":
			hostIdx = i
		}
	}
	if podIdx < 0 {
		return fmt.Errorf("wgcni CHECK: prevResult has no interface %s in sandbox %s", args.IfName, args.Netns)
	}
	if hostIdx < 0 {
		return fmt.Errorf("wgcni CHECK: prevResult has no host interface %s", hostName)
	}
	var podIPs []*current.IPConfig
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && *ipc.Interface == podIdx {
			podIPs = append(podIPs, ipc)
		}
	}
	if len(podIPs) == 0 {
		return fmt.Errorf("wgcni CHECK: prevResult has no IP for interface %s", args.IfName)
	}

	if err := checkHost(hostName, node.Bridge, att, mtu, prev.Interfaces[hostIdx]); err != nil {
		return fmt.Errorf("wgcni CHECK: %w", err)
	}

	podNS, err := openNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	routes := prev.Routes
	if sn, err := checkSameNode(conf, args, node, podIPs); err != nil {
		return fmt.Errorf("wgcni CHECK: %w", err)
	} else if sn {
		routes = nil // they go through the pod's WireGuard device, checked above
	}
	return podNS.Do(func(ns.NetNS) error {
		if err := checkPod(args.IfName, mtu, prev.Interfaces[podIdx], podIPs, routes); err != nil {
			return fmt.Errorf("wgcni CHECK in %s: %w", args.Netns, err)
		}
		return nil
	})
}

func checkHost(name, bridgeName string, att veth.Attachment, mtu int, want *current.Interface) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", name, err)
	}
	if l.Type() != "veth" {
		return fmt.Errorf("host interface %s is a %s, not a veth", name, l.Type())
	}
	if got := l.Attrs().Alias; got != veth.Alias(att) {
		return fmt.Errorf("host veth %s is tagged %q, want %q", name, got, veth.Alias(att))
	}
	if want.Mac != "" && !macEqual(l.Attrs().HardwareAddr, want.Mac) {
		return fmt.Errorf("host veth %s MAC is %s, prevResult says %s", name, l.Attrs().HardwareAddr, want.Mac)
	}
	if l.Attrs().MTU != mtu {
		return fmt.Errorf("host veth %s MTU is %d, want %d", name, l.Attrs().MTU, mtu)
	}
	br, err := netlink.LinkByName(bridgeName)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridgeName, err)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host veth %s is not attached to bridge %s", name, bridgeName)
	}
	return nil
}

func checkPod(ifName string, mtu int, want *current.Interface, ips []*current.IPConfig, routes []*types.Route) error {
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return fmt.Errorf("interface %s does not exist", ifName)
		}
		return fmt.Errorf("interface %s: %w", ifName, err)
	}
	if l.Type() != "veth" {
		return fmt.Errorf("interface %s is a %s, not a veth", ifName, l.Type())
	}
	if want.Mac != "" && !macEqual(l.Attrs().HardwareAddr, want.Mac) {
		return fmt.Errorf("interface %s MAC is %s, prevResult says %s", ifName, l.Attrs().HardwareAddr, want.Mac)
	}
	if want.Mtu != 0 && l.Attrs().MTU != want.Mtu {
		return fmt.Errorf("interface %s MTU is %d, prevResult says %d", ifName, l.Attrs().MTU, want.Mtu)
	}
	if l.Attrs().MTU != mtu {
		return fmt.Errorf("interface %s MTU is %d, want %d", ifName, l.Attrs().MTU, mtu)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("interface %s is down", ifName)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", ifName, err)
	}
	for _, ipc := range ips {
		found := false
		for _, a := range addrs {
			if a.IPNet.IP.Equal(ipc.Address.IP) {
				if a.IPNet.String() != ipc.Address.String() {
					return fmt.Errorf("interface %s has %s, prevResult says %s", ifName, a.IPNet, ipc.Address.String())
				}
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("interface %s lacks address %s", ifName, ipc.Address.String())
		}
	}
	got, err := netlink.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", ifName, err)
	}
	for _, want := range routes {
		if !hasRoute(got, want) {
			gw := "(interface gateway)"
			if want.GW != nil {
				gw = want.GW.String()
			}
			return fmt.Errorf("route to %s via %s missing on %s", want.Dst.String(), gw, ifName)
		}
	}
	return nil
}

func hasRoute(routes []netlink.Route, want *types.Route) bool {
	wantOnes, wantBits := want.Dst.Mask.Size()
	for _, r := range routes {
		var ones, bits int
		var dst net.IP
		if r.Dst == nil {
			bits = 32
			dst = net.IPv4zero
			if r.Family == netlink.FAMILY_V6 {
				bits, dst = 128, net.IPv6zero
			}
		} else {
			ones, bits = r.Dst.Mask.Size()
			dst = r.Dst.IP
		}
		if ones != wantOnes || bits != wantBits || !dst.Equal(want.Dst.IP.Mask(want.Dst.Mask)) {
			continue
		}
		if want.GW != nil && !want.GW.Equal(r.Gw) {
			continue
		}
		return true
	}
	return false
}

func macEqual(got net.HardwareAddr, want string) bool {
	w, err := net.ParseMAC(want)
	return err == nil && bytes.Equal(got, w)
}
