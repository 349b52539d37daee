// Package attach is same-node encryption's per-pod work, shared by the
// plugin (AttachPod on ADD, DetachPod on DEL and GC, CheckPod on CHECK)
// and the daemon's reconciler (Plumb, to re-create a device that died): a
// pod's WireGuard device — hosted by the pod device process (poddevices)
// or a kernel link (kernel.go) — its registration, its hub peer, and its
// routes into the device.
package attach

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

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
	Hub         hub.Hub
	ID          string // host veth name
	Network     string
	ContainerID string
	IfName      string // the pod's veth end (e.g. eth0)
	Netns       string
	IPs         []netip.Addr // the pod's addresses, at most one per family
	MTU         int          // pod MTU towards other nodes (the node file's)
	// Mode is the WireGuard of the pod device (the node file's
	// sameNodeDevice): kernel, or userspace (also when empty).
	Mode wgdev.Mode
	// This node's pods (PodCIDR of each family): reached at the device MTU.
	PodCIDRs []netip.Prefix
}

// AttachPod gives the pod its WireGuard device, registers it, makes it a
// peer of the hub, and points the pod's routes into the device instead of
// the veth. On error nothing of it is left behind.
func AttachPod(a Attachment) (_ *registry.Pod, err error) {
	unlock, err := registry.Lock(a.RunDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("open wgctrl: %w", err)
	}
	defer wg.Close()
	p := &registry.Pod{ID: a.ID, Network: a.Network, ContainerID: a.ContainerID, IfName: a.IfName, Netns: a.Netns,
		IPs: slices.Clone(a.IPs), WGIfName: WGIfName(a.IfName), Mode: a.Mode, MTU: a.MTU, PodCIDRs: slices.Clone(a.PodCIDRs)}
	p.Mode = p.DeviceMode() // recorded explicitly: empty means userspace
	p.Normalize()
	if err := Plumb(wg, a.RunDir, a.Hub, p, ""); err != nil {
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
func DetachPod(runDir string, h hub.Hub, id string) error {
	unlock, err := registry.Lock(runDir)
	if err != nil {
		return err
	}
	defer unlock()
	p, err := registry.Load(runDir, id)
	if err != nil {
		// Unreadable registration: still remove the device and the file.
		p = nil
	}
	var wg *wgctrl.Client
	if h.Name != "" && p != nil {
		if wg, err = wgctrl.New(); err == nil {
			defer wg.Close()
		}
	}
	return detach(wg, runDir, h, id, p)
}

func detach(wg *wgctrl.Client, runDir string, h hub.Hub, id string, p *registry.Pod) error {
	var errs []error
	if wg != nil && p != nil && h.Name != "" {
		if err := h.RemovePod(wg, p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := RemoveDevice(runDir, id, p); err != nil {
		errs = append(errs, err)
	}
	if err := registry.Unregister(runDir, id); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CheckPod verifies, inside the pod netns, that the pod's WireGuard device
// is up and carries the default route of each family the pod has.
func CheckPod(p *registry.Pod) error {
	return ns.WithNetNSPath(p.Netns, func(ns.NetNS) error {
		l, err := netlink.LinkByName(p.WGIfName)
		if err != nil {
			return fmt.Errorf("same-node WireGuard interface %s: %w", p.WGIfName, err)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("same-node WireGuard interface %s is down", p.WGIfName)
		}
		for _, a := range p.IPs {
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
