package attach

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

// PodDeviceMode decides, once per daemon start, which WireGuard the pods'
// devices use, by wgdev's one rule: kernel when asked for, or in auto mode
// when the kernel can make a wireguard link (tested by creating and
// deleting probe link probeName in the node netns); else userspace. The
// answer goes to the plugin in the node file, so ADDs do not each try the
// kernel first (a failed attempt may run modprobe).
func PodDeviceMode(want wgdev.Mode, probeName string, log *slog.Logger) (wgdev.Mode, error) {
	mode, err := wgdev.Choose(want, func() error { return wgdev.ProbeKernel(probeName) }, func() error { return nil }, log)
	if err != nil {
		return "", fmt.Errorf("same-node pod devices: %w", err)
	}
	return mode, nil
}

// ProbeName is the name of PodDeviceMode's probe link for node device dev.
func ProbeName(dev string) string { return kernelTempName("probe/" + dev) }

// kernelTempName is a kernel pod device's name in the node netns, between
// its creation and its move into the pod: unique per attachment (ADDs run
// in parallel) and never the pod-side name (wg-eth0 could clash with the
// node's own interfaces).
func kernelTempName(id string) string {
	h := sha256.Sum256([]byte(id))
	return "wgk" + hex.EncodeToString(h[:6])
}

// createKernelDevice makes p's device as a kernel WireGuard link. The link
// is created in the calling thread's netns — the node's — because kernel
// WireGuard opens its UDP socket in the netns the link was created in, for
// the link's whole life: the pod sees only the interface, its encrypted
// packets go to the hub over the node's loopback. It is then moved into
// the pod's netns, renamed to p.WGIfName, given a fresh private key (made
// here, handed to the kernel, kept nowhere else) and the hub as its only
// peer, and brought up, which binds the socket to a free port. On error
// nothing of it is left.
func createKernelDevice(p *registry.Pod, hubKey wgtypes.Key, hubPort int) (_ wgtypes.Key, _ int, err error) {
	tmp := kernelTempName(p.ID)
	// A leftover of an ADD killed between creation and move.
	if l, err := netlink.LinkByName(tmp); err == nil && l.Type() == "wireguard" {
		if err := netlink.LinkDel(l); err != nil {
			return wgtypes.Key{}, 0, fmt.Errorf("delete leftover kernel WireGuard link %s: %w", tmp, err)
		}
	}
	if err := wgdev.CreateKernel(tmp, hub.DeviceMTU); err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("same-node device %s of pod %s: %w", p.WGIfName, p.ID, err)
	}
	link, err := netlink.LinkByName(tmp)
	if err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("look up new kernel WireGuard link %s: %w", tmp, err)
	}
	podNS, err := ns.GetNS(p.Netns)
	if err != nil {
		netlink.LinkDel(link)
		return wgtypes.Key{}, 0, fmt.Errorf("same-node device of pod %s: open netns %s: %w", p.ID, p.Netns, err)
	}
	defer podNS.Close()
	if err := netlink.LinkSetNsFd(link, int(podNS.Fd())); err != nil {
		netlink.LinkDel(link)
		return wgtypes.Key{}, 0, fmt.Errorf("move kernel WireGuard link %s into %s: %w", tmp, p.Netns, err)
	}
	var pub wgtypes.Key
	var port int
	err = podNS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(tmp)
		if err != nil {
			return fmt.Errorf("kernel WireGuard link %s after the move: %w", tmp, err)
		}
		pub, port, err = configureKernelDevice(l, p.WGIfName, hubKey, hubPort)
		if err != nil {
			// The index survives the rename; the name may not have.
			if dl, lerr := netlink.LinkByIndex(l.Attrs().Index); lerr == nil && dl.Type() == "wireguard" {
				netlink.LinkDel(dl)
			}
		}
		return err
	})
	if err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("same-node device %s of pod %s in %s: %w", p.WGIfName, p.ID, p.Netns, err)
	}
	return pub, port, nil
}

// configureKernelDevice runs in the pod's netns: generic netlink (wgctrl)
// finds WireGuard links of the netns its socket was opened in.
func configureKernelDevice(l netlink.Link, wgIf string, hubKey wgtypes.Key, hubPort int) (wgtypes.Key, int, error) {
	if old, err := netlink.LinkByName(wgIf); err == nil {
		if old.Type() != "wireguard" {
			return wgtypes.Key{}, 0, fmt.Errorf("interface %s exists and is a %s device, not a WireGuard device", wgIf, old.Type())
		}
		// A kernel device of an earlier ADD or re-creation: its key is
		// known to no one any more (never stored), so it is replaced.
		if err := netlink.LinkDel(old); err != nil {
			return wgtypes.Key{}, 0, fmt.Errorf("delete previous %s: %w", wgIf, err)
		}
	}
	if err := netlink.LinkSetName(l, wgIf); err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("rename %s to %s: %w", l.Attrs().Name, wgIf, err)
	}
	wg, err := wgctrl.New()
	if err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("open wgctrl: %w", err)
	}
	defer wg.Close()
	priv, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("generate key: %w", err)
	}
	// No listen port: the kernel binds a free one when the link comes up
	// and keeps it across later down/up, so the hub's endpoint stays right.
	err = wg.ConfigureDevice(wgIf, wgtypes.Config{PrivateKey: &priv, ReplacePeers: true, Peers: []wgtypes.PeerConfig{hubPeer(hubKey, hubPort)}})
	if err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("configure %s: %w", wgIf, err)
	}
	if err := route.SetIPv6Enabled(wgIf, false); err != nil {
		return wgtypes.Key{}, 0, err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("set %s up: %w", wgIf, err)
	}
	d, err := wg.Device(wgIf)
	if err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("read %s: %w", wgIf, err)
	}
	if d.ListenPort == 0 {
		return wgtypes.Key{}, 0, fmt.Errorf("%s has no UDP port after coming up", wgIf)
	}
	return d.PublicKey, d.ListenPort, nil
}

// hubPeer is a pod device's only peer: the hub on the node's loopback,
// allowed to send it anything (the hub filters per pod).
func hubPeer(hubKey wgtypes.Key, hubPort int) wgtypes.PeerConfig {
	return wgtypes.PeerConfig{
		PublicKey:         hubKey,
		Endpoint:          &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: hubPort},
		ReplaceAllowedIPs: true,
		AllowedIPs:        []net.IPNet{{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, {IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
	}
}

// DeleteKernelDevice removes p's kernel device; a gone netns or link is
// fine (a netns takes its WireGuard links with it).
func DeleteKernelDevice(p *registry.Pod) error {
	err := ns.WithNetNSPath(p.Netns, func(ns.NetNS) error {
		l, err := kernelLink(p.WGIfName)
		if l == nil || err != nil {
			return err // a missing or non-kernel device is not ours to delete
		}
		return netlink.LinkDel(l)
	})
	var nsErr ns.NSPathNotExistErr
	if err != nil && !errors.As(err, &nsErr) && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete same-node device %s of pod %s in %s: %w", p.WGIfName, p.ID, p.Netns, err)
	}
	return nil
}

// KernelDeviceUp reports whether p's kernel device is in its netns and up.
func KernelDeviceUp(p *registry.Pod) (bool, error) {
	up := false
	err := ns.WithNetNSPath(p.Netns, func(ns.NetNS) error {
		l, err := kernelLink(p.WGIfName)
		up = l != nil && l.Attrs().Flags&net.FlagUp != 0
		return err
	})
	return up, err
}

// kernelLink returns the kernel WireGuard link name in the current netns;
// nil, without error, when there is none or name is another kind of link.
func kernelLink(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if l.Type() != "wireguard" {
		return nil, nil
	}
	return l, nil
}
