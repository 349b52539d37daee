package samenode

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/wgdev"
)

// handshakeTimeout bounds plumb's wait for the hub-device handshake (on
// loopback it takes about a millisecond).
const handshakeTimeout = 3 * time.Second

// plumb gives pod p (a registration to be: everything but its key and
// port) a new WireGuard device and points everything at it. It is the one
// sequence behind CNI ADD (AttachPod, in the plugin) and the daemon's
// re-creation of a device that died (recreate):
//
//  1. the device, with a fresh key and the hub as its only peer;
//  2. the registration, with the device's public key and port;
//  3. a handshake between hub and device, started by the hub alone
//     (Hub.handshake: why);
//  4. the hub peer — AllowedIPs exactly p's /32 and /128, taken over from
//     the peer of key replaces (a dead device's) if given — and the node's
//     routes of p's addresses into the hub;
//  5. last, the pod's routes into the device.
//
// Routes last means that until the hub and the device share a session the
// pod has no route at all: nothing leaves in clear (fail closed), and its
// first packets go out at once on that session.
// The caller holds the registry lock and cleans up after an error.
func plumb(wg *wgctrl.Client, runDir string, hub Hub, p *Pod, replaces string) error {
	hubKey, hubPort, err := hub.Info(wg)
	if err != nil {
		return err
	}
	pub, port, err := createDevice(runDir, p, hubKey, hubPort)
	if err != nil {
		return err
	}
	p.PublicKey, p.Port = pub, port
	if err := Register(runDir, p); err != nil {
		return err
	}
	// Not fatal: WireGuard's own handshake retry still connects the pod,
	// only later (and nothing is sent in clear meanwhile).
	_ = hub.handshake(wg, p, handshakeTimeout)
	if err := hub.applyPod(wg, p, replaces); err != nil {
		return err
	}
	return routePod(p)
}

// createDevice makes p's device in p's WireGuard mode and returns its
// public key and UDP port (in the node netns). The private key is made
// where the device lives (the pod device host's memory, or the kernel) and
// never leaves it.
func createDevice(runDir string, p *Pod, hubKey wgtypes.Key, hubPort int) (string, int, error) {
	if p.DeviceMode() == wgdev.Kernel {
		pub, port, err := createKernelDevice(p, hubKey, hubPort)
		if err != nil {
			return "", 0, err
		}
		return pub.String(), port, nil
	}
	resp, err := Call(runDir, Request{Op: "add", ID: p.ID, Netns: p.Netns, IfName: p.WGIfName, MTU: DeviceMTU, HubKey: hubKey.String(), HubPort: hubPort}, callTimeout)
	if err != nil {
		return "", 0, err
	}
	return resp.PublicKey, resp.Port, nil
}

// removeDevice removes the device of attachment id (p may be nil when its
// registration is unreadable: then only a hosted device can be found).
// A device already gone is fine.
func removeDevice(runDir, id string, p *Pod) error {
	if p != nil && p.DeviceMode() == wgdev.Kernel {
		return deleteKernelDevice(p)
	}
	if _, err := Call(runDir, Request{Op: "del", ID: id}, callTimeout); err != nil {
		// No host running means no hosted device to remove.
		var ne *net.OpError
		if !errors.As(err, &ne) {
			return err
		}
	}
	return nil
}

// enableIPv6 turns IPv6 on for interface name in the calling thread's
// netns (a new interface may inherit disable_ipv6=1, and pod devices are
// made with it: see quietIPv6).
func enableIPv6(name string) error { return setIPv6(name, true) }

// quietIPv6 turns IPv6 off on a new pod device before it comes up, in the
// calling thread's netns. Otherwise bringing it up makes the kernel send
// MLD reports and router solicitations into it at once, and the device
// starts a handshake of its own before the hub knows its key (dropped,
// retried only after 5 s) or crossing the hub's (Hub.handshake: both
// fail). routePod turns IPv6 on again, once hub and device share a
// session, for pods that have IPv6.
func quietIPv6(name string) error { return setIPv6(name, false) }

func setIPv6(name string, on bool) error {
	disable := "1"
	if on {
		disable = "0"
	}
	if _, err := sysctl.Sysctl("net/ipv6/conf/"+name+"/disable_ipv6", disable); err != nil {
		return fmt.Errorf("set IPv6 %v on %s: %w", on, name, err)
	}
	return nil
}

// routePod points every route of each family p has into its device,
// inside the pod's netns.
func routePod(p *Pod) error {
	err := ns.WithNetNSPath(p.Netns, func(ns.NetNS) error {
		if p.IP.IsValid() {
			if err := podRoutes(p.IfName, p.WGIfName, p.IP, p.PodCIDR, p.MTU); err != nil {
				return err
			}
		}
		if p.IP6.IsValid() {
			if err := enableIPv6(p.WGIfName); err != nil {
				return err
			}
			if err := podRoutes(p.IfName, p.WGIfName, p.IP6, p.PodCIDR6, p.MTU); err != nil {
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
