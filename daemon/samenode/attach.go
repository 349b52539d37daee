package samenode

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
)

// callTimeout bounds one call to the pod device host.
const callTimeout = 10 * time.Second

// WGIfName is the pod's WireGuard interface for its CNI interface ifName.
func WGIfName(ifName string) string {
	n := "wg-" + ifName
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// Attachment is what the plugin knows about a pod during ADD.
type Attachment struct {
	RunDir      string
	Hub         Hub
	ID          string // host veth name
	Network     string
	ContainerID string
	IfName      string // the pod's veth end (e.g. eth0)
	Netns       string
	IP          netip.Addr // IPv4 address, if the pod has one
	IP6         netip.Addr // IPv6 address, if the pod has one
	MTU         int        // pod MTU towards other nodes (the node file's)
	// This node's pods (PodCIDR of each family): reached at DeviceMTU.
	PodCIDR  netip.Prefix
	PodCIDR6 netip.Prefix
}

// DeviceMTU is the MTU of the pod devices and the hub. Their WireGuard
// packets never leave the node (they run over loopback, MTU 65536), so they
// can carry 64 KB: one encryption per TCP super-segment instead of ~45 at
// MTU 1440. Traffic to other nodes keeps the node MTU through a route MTU.
const DeviceMTU = 65000

// AttachPod gives the pod its WireGuard device, registers it, makes it a
// peer of the hub, and points the pod's routes into the device instead of
// the veth. On error nothing of it is left behind.
func AttachPod(a Attachment) (_ *Pod, err error) {
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	defer wg.Close()
	hubKey, hubPort, err := a.Hub.Info(wg)
	if err != nil {
		return nil, err
	}
	wgIf := WGIfName(a.IfName)
	resp, err := Call(a.RunDir, Request{Op: "add", ID: a.ID, Netns: a.Netns, IfName: wgIf, MTU: DeviceMTU, HubKey: hubKey.String(), HubPort: hubPort}, callTimeout)
	if err != nil {
		return nil, err
	}
	p := &Pod{ID: a.ID, Network: a.Network, ContainerID: a.ContainerID, IfName: a.IfName, Netns: a.Netns, IP: a.IP, IP6: a.IP6, WGIfName: wgIf, PublicKey: resp.PublicKey, Port: resp.Port}
	defer func() {
		if err != nil {
			detach(wg, a.RunDir, a.Hub, a.ID, p)
		}
	}()
	if err := Register(a.RunDir, p); err != nil {
		return nil, err
	}
	if err := a.Hub.ApplyPod(wg, p); err != nil {
		return nil, err
	}
	err = ns.WithNetNSPath(a.Netns, func(ns.NetNS) error {
		if a.IP.IsValid() {
			if err := podRoutes(a.IfName, wgIf, a.IP, a.PodCIDR, a.MTU); err != nil {
				return err
			}
		}
		if a.IP6.IsValid() {
			if err := enableIPv6(wgIf); err != nil {
				return err
			}
			if err := podRoutes(a.IfName, wgIf, a.IP6, a.PodCIDR6, a.MTU); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("same-node routes in %s: %w", a.Netns, err)
	}
	return p, nil
}

// podRoutes removes every route of ip's family through the veth (the
// connected PodCIDR route included: pod-to-pod must not take the bridge)
// and sends everything of that family into the WireGuard device instead.
// With the device gone the pod has no route at all: it fails closed, never
// in clear.
func podRoutes(vethName, wgIf string, ip netip.Addr, podCIDR netip.Prefix, mtu int) error {
	family, bits, zero := netlink.FAMILY_V4, 32, net.IPv4zero.To4()
	if ip.Is6() {
		family, bits, zero = netlink.FAMILY_V6, 128, net.IPv6zero
	}
	veth, err := netlink.LinkByName(vethName)
	if err != nil {
		return err
	}
	wgl, err := netlink.LinkByName(wgIf)
	if err != nil {
		return err
	}
	// Keep the address on the veth (the pod's identity, what runtimes and
	// CHECK look at) but without its prefix route.
	addrs, err := netlink.AddrList(veth, family)
	if err != nil {
		return err
	}
	for _, ad := range addrs {
		if ad.Flags&unix.IFA_F_NOPREFIXROUTE != 0 || !ad.IP.IsGlobalUnicast() {
			continue // done already, or link-local (never pod traffic)
		}
		repl := ad
		repl.Flags |= unix.IFA_F_NOPREFIXROUTE
		if ip.Is6() {
			// Re-added addresses would go through DAD again and stay
			// tentative (unusable as source) for a while.
			repl.Flags |= unix.IFA_F_NODAD
		}
		repl.Label = ""
		if err := netlink.AddrDel(veth, &ad); err != nil {
			return fmt.Errorf("re-add %s without prefix route: %w", ad.IPNet, err)
		}
		if err := netlink.AddrAdd(veth, &repl); err != nil {
			return fmt.Errorf("re-add %s without prefix route: %w", ad.IPNet, err)
		}
	}
	rs, err := netlink.RouteList(veth, family)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() {
			continue // fe80::/64: link-local, no pod address is in it
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("delete route %s on %s: %w", r.Dst, vethName, err)
		}
	}
	def := &net.IPNet{IP: zero, Mask: net.CIDRMask(0, bits)}
	src := net.IP(ip.AsSlice())
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: wgl.Attrs().Index, Dst: def, Src: src, Scope: netlink.SCOPE_LINK, MTU: mtu}); err != nil {
		return fmt.Errorf("default route dev %s: %w", wgIf, err)
	}
	if podCIDR.IsValid() {
		local := &net.IPNet{IP: net.IP(podCIDR.Addr().AsSlice()), Mask: net.CIDRMask(podCIDR.Bits(), bits)}
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: wgl.Attrs().Index, Dst: local, Src: src, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route %s dev %s: %w", podCIDR, wgIf, err)
		}
	}
	return nil
}

// DetachPod undoes AttachPod for attachment id: hub peer and route, the pod
// device, the registration. Everything already gone is fine. hub may be
// zero (no node file): the daemon's reconciler then removes the hub side.
func DetachPod(runDir string, hub Hub, id string) error {
	p, err := Load(runDir, id)
	if err != nil {
		// Unreadable registration: still remove the device and the file.
		p = nil
	}
	var wg *wgctrl.Client
	if hub.Name != "" && p != nil {
		if wg, err = wgctrl.New(); err == nil {
			defer wg.Close()
		}
	}
	return detach(wg, runDir, hub, id, p)
}

func detach(wg *wgctrl.Client, runDir string, hub Hub, id string, p *Pod) error {
	var errs []error
	if wg != nil && p != nil && hub.Name != "" {
		if err := hub.RemovePod(wg, p); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := Call(runDir, Request{Op: "del", ID: id}, callTimeout); err != nil {
		// No host running means no device to remove.
		var ne *net.OpError
		if !errors.As(err, &ne) {
			errs = append(errs, err)
		}
	}
	if err := Unregister(runDir, id); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckPod verifies, inside the pod netns, that the pod's WireGuard device
// is up and carries the default route of each family the pod has.
func CheckPod(p *Pod) error {
	return ns.WithNetNSPath(p.Netns, func(ns.NetNS) error {
		l, err := netlink.LinkByName(p.WGIfName)
		if err != nil {
			return fmt.Errorf("same-node WireGuard interface %s: %w", p.WGIfName, err)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("same-node WireGuard interface %s is down", p.WGIfName)
		}
		for _, a := range p.Addrs() {
			family := netlink.FAMILY_V4
			if a.Is6() {
				family = netlink.FAMILY_V6
			}
			rs, err := netlink.RouteList(l, family)
			if err != nil {
				return err
			}
			found := false
			for _, r := range rs {
				if r.Dst == nil || r.Dst.IP.IsUnspecified() {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("default route of %s's family via same-node WireGuard interface %s missing", a, p.WGIfName)
			}
		}
		return nil
	})
}

// CheckHub verifies, in the node netns, that the hub has p as a peer with
// AllowedIPs exactly p's /32 and /128, and routes each of them into the hub.
func (h Hub) CheckHub(p *Pod) error {
	wg, err := wgctrl.New()
	if err != nil {
		return fmt.Errorf("open wgctrl: %w", err)
	}
	defer wg.Close()
	d, err := wg.Device(h.Name)
	if err != nil {
		return fmt.Errorf("same-node hub device %s: %w", h.Name, err)
	}
	found := false
	for _, peer := range d.Peers {
		if peer.PublicKey.String() != p.PublicKey {
			continue
		}
		found = true
		if !sameNets(peer.AllowedIPs, AllowedIPs(p)) {
			return fmt.Errorf("same-node hub %s: peer of pod %s allows %v, want %v", h.Name, p.ID, peer.AllowedIPs, p.Addrs())
		}
	}
	if !found {
		return fmt.Errorf("same-node hub %s has no peer for pod %s", h.Name, p.ID)
	}
	routes, err := h.Routes()
	if err != nil {
		return err
	}
	for _, a := range p.Addrs() {
		ok := false
		for _, r := range routes {
			ok = ok || r == a
		}
		if !ok {
			return fmt.Errorf("same-node hub %s: route %s dev %s missing", h.Name, a, h.Name)
		}
	}
	return nil
}
