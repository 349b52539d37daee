package samenode

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgcni/wgcni/daemon/wgdev"
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
	// Mode is the WireGuard of the pod device (the node file's
	// sameNodeDevice): kernel, or userspace (also when empty).
	Mode wgdev.Mode
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
	unlock, err := lockRegistry(a.RunDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	defer wg.Close()
	p := &Pod{ID: a.ID, Network: a.Network, ContainerID: a.ContainerID, IfName: a.IfName, Netns: a.Netns,
		IP: a.IP, IP6: a.IP6, WGIfName: WGIfName(a.IfName), Mode: a.Mode, MTU: a.MTU, PodCIDR: a.PodCIDR, PodCIDR6: a.PodCIDR6}
	p.Mode = p.DeviceMode() // recorded explicitly: empty means userspace
	if err := plumb(wg, a.RunDir, a.Hub, p, ""); err != nil {
		if derr := detach(wg, a.RunDir, a.Hub, a.ID, p); derr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", derr))
		}
		return nil, err
	}
	return p, nil
}

// DetachPod undoes AttachPod for attachment id: hub peer and route, the pod
// device, the registration. Everything already gone is fine. hub may be
// zero (no node file): the daemon's reconciler then removes the hub side.
func DetachPod(runDir string, hub Hub, id string) error {
	unlock, err := lockRegistry(runDir)
	if err != nil {
		return err
	}
	defer unlock()
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
	if err := removeDevice(runDir, id, p); err != nil {
		errs = append(errs, err)
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
