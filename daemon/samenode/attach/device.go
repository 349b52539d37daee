package attach

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/poddevices"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// handshakeTimeout bounds Plumb's wait for the hub-device handshake (on
// loopback it takes about a millisecond).
const handshakeTimeout = 3 * time.Second

// Plumb gives pod p (a registration to be: everything but its key and
// port) a new WireGuard device and points everything at it. It is the one
// sequence behind CNI ADD (AttachPod, in the plugin) and the daemon's
// re-creation of a device that died (reconcile):
//
//  1. the device, with a fresh key and the hub as its only peer;
//  2. the registration, with the device's public key and port;
//  3. a handshake between hub and device, started by the hub alone
//     (hub.Hub.Handshake: why);
//  4. the hub peer — AllowedIPs exactly p's addresses, taken over from
//     the peer of key replaces (a dead device's) if given — and the node's
//     routes of p's addresses into the hub;
//  5. last, the pod's routes into the device.
//
// Routes last means that until the hub and the device share a session the
// pod has no route at all: nothing leaves in clear (fail closed), and its
// first packets go out at once on that session.
// The caller holds the registry lock and cleans up after an error.
func Plumb(wg *wgctrl.Client, runDir string, h hub.Hub, p *registry.Pod, replaces string) error {
	hubKey, hubPort, err := h.Info(wg)
	if err != nil {
		return err
	}
	pub, port, err := createDevice(runDir, p, hubKey, hubPort)
	if err != nil {
		return err
	}
	p.PublicKey, p.Port = pub, port
	if err := registry.Register(runDir, p); err != nil {
		return err
	}
	// Not fatal: WireGuard's own handshake retry still connects the pod,
	// only later (and nothing is sent in clear meanwhile).
	_ = h.Handshake(wg, p, handshakeTimeout)
	if err := h.ReplacePod(wg, p, replaces); err != nil {
		return err
	}
	return routePod(p)
}

// createDevice makes p's device in p's WireGuard mode and returns its
// public key and UDP port (in the node netns). The private key is made
// where the device lives (the pod device process's memory, or the kernel) and
// never leaves it.
func createDevice(runDir string, p *registry.Pod, hubKey wgtypes.Key, hubPort int) (string, int, error) {
	if p.DeviceMode() == wgdev.Kernel {
		pub, port, err := createKernelDevice(p, hubKey, hubPort)
		if err != nil {
			return "", 0, err
		}
		return pub.String(), port, nil
	}
	resp, err := poddevices.Call(runDir, poddevices.Request{Op: "add", ID: p.ID, Netns: p.Netns, IfName: p.WGIfName, MTU: hub.DeviceMTU, HubKey: hubKey.String(), HubPort: hubPort}, poddevices.CallTimeout)
	if err != nil {
		return "", 0, err
	}
	return resp.PublicKey, resp.Port, nil
}

// RemoveDevice removes the device of attachment id (p may be nil when its
// registration is unreadable: then only a hosted device can be found).
// A device already gone is fine.
func RemoveDevice(runDir, id string, p *registry.Pod) error {
	if p != nil && p.DeviceMode() == wgdev.Kernel {
		return DeleteKernelDevice(p)
	}
	if _, err := poddevices.Call(runDir, poddevices.Request{Op: "del", ID: id}, poddevices.CallTimeout); err != nil {
		// No pod device process running means no hosted device to remove.
		var ne *net.OpError
		if !errors.As(err, &ne) {
			return err
		}
	}
	return nil
}

// routePod points every route of each family p has into its device,
// inside the pod's netns.
func routePod(p *registry.Pod) error {
	err := ns.WithNetNSPath(p.Netns, func(ns.NetNS) error {
		for _, a := range p.IPs {
			podCIDR, _ := p.PodCIDR(a)
			if err := route.PodViaDevice(p.IfName, p.WGIfName, a, podCIDR, p.MTU); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("same-node routes of pod %s in %s: %w", p.ID, p.Netns, err)
	}
	return nil
}
