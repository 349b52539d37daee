// Package hub is same-node encryption's hub: one WireGuard device per node,
// owned by wgcnid, with one peer per pod device (AllowedIPs exactly the
// pod's addresses as host prefixes, endpoint the device's port on
// loopback) and a route per pod address into it (daemon/route). The plugin
// (attach) changes it per pod; the daemon's reconciler repairs it.
package hub

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
)

// DeviceName derives the hub device's name from the node's WireGuard
// device name (both must be unique on the machine: userspace UAPI sockets
// share one directory across namespaces).
func DeviceName(device string) string {
	if len(device) > 12 {
		device = device[:12]
	}
	return device + "-sn"
}

// DefaultPort is the hub's UDP port when --same-node-port is 0.
func DefaultPort(listenPort int) int { return listenPort + 1 }

// DeviceMTU is the MTU of the pod devices and the hub. Their WireGuard
// packets never leave the node (they run over loopback, MTU 65536), so they
// can carry 64 KB: one encryption per TCP super-segment instead of ~45 at
// MTU 1440. Traffic to other nodes keeps the node MTU through a route MTU.
const DeviceMTU = 65000

// Hub is what the plugin and the daemon need to change the hub.
type Hub struct {
	Name string
	// Gateways (the bridge's gateway of each family the node has) are the
	// sources of host -> pod packets.
	Gateways []netip.Addr
}

// gateway is the route source for pod address ip.
func (h Hub) gateway(ip netip.Addr) (netip.Addr, error) {
	for _, gw := range h.Gateways {
		if gw.Is4() == ip.Is4() {
			return gw, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("same-node hub %s: no gateway of %s's family on this node", h.Name, ip)
}

// AllowedIPs is what the hub accepts from pod p: exactly its addresses, as
// host prefixes.
func AllowedIPs(p *registry.Pod) []net.IPNet {
	var out []net.IPNet
	for _, a := range p.IPs {
		out = append(out, net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())})
	}
	return out
}

// Info reads the hub's public key and port.
func (h Hub) Info(wg *wgctrl.Client) (wgtypes.Key, int, error) {
	d, err := wg.Device(h.Name)
	if err != nil {
		return wgtypes.Key{}, 0, fmt.Errorf("same-node hub device %s: %w", h.Name, err)
	}
	if d.ListenPort == 0 {
		return wgtypes.Key{}, 0, fmt.Errorf("same-node hub device %s has no listen port", h.Name)
	}
	return d.PublicKey, d.ListenPort, nil
}

// ApplyPod makes p a peer of the hub (AllowedIPs exactly p's /32 and /128,
// endpoint its loopback port) and routes each of p's addresses into the
// hub, so the node sends nothing to p in plain text over the bridge.
func (h Hub) ApplyPod(wg *wgctrl.Client, p *registry.Pod) error { return h.ReplacePod(wg, p, "") }

// ReplacePod is ApplyPod that also removes the peer of public key replaces
// (the pod's previous, dead device) in the same configuration change, so
// the pod's addresses move from the old key to the new one at once.
func (h Hub) ReplacePod(wg *wgctrl.Client, p *registry.Pod, replaces string) error {
	key, err := wgtypes.ParseKey(p.PublicKey)
	if err != nil {
		return fmt.Errorf("same-node registration %s: publicKey: %w", p.ID, err)
	}
	var peers []wgtypes.PeerConfig
	if old, err := wgtypes.ParseKey(replaces); err == nil && old != key {
		peers = append(peers, wgtypes.PeerConfig{PublicKey: old, Remove: true})
	}
	// Keepalive is switched on only by handshake.
	peers = append(peers, podPeer(key, p.Port, AllowedIPs(p), 0))
	err = wg.ConfigureDevice(h.Name, wgtypes.Config{Peers: peers})
	if err != nil {
		return fmt.Errorf("add pod %s (%v) as peer of hub %s: %w", p.ID, p.IPs, h.Name, err)
	}
	return h.EnsureRoutes(p)
}

// Handshake makes p's new device a hub peer without AllowedIPs (so no
// traffic can reach it through the hub yet), has the hub initiate a
// handshake with it at once (switching a persistent keepalive on sends
// one; ReplacePod switches it off) and waits up to timeout for it to
// complete. Only the hub initiates: the device has no route yet and IPv6
// off, so it sends nothing. Without this, the hub (traffic for the pod
// arrives) and the pod (it sends) initiate at the same moment once the
// routes are in; each end's initiation overwrites its own pending one, both
// responses are then rejected, and WireGuard retries only after its 5 s
// rekey timeout: we measured 5-15 s stalls after re-creation from exactly
// that.
func (h Hub) Handshake(wg *wgctrl.Client, p *registry.Pod, timeout time.Duration) error {
	key, err := wgtypes.ParseKey(p.PublicKey)
	if err != nil {
		return fmt.Errorf("same-node registration %s: publicKey: %w", p.ID, err)
	}
	err = wg.ConfigureDevice(h.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{podPeer(key, p.Port, nil, 25*time.Second)}})
	if err != nil {
		return fmt.Errorf("add pod %s as peer of hub %s: %w", p.ID, h.Name, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		d, err := wg.Device(h.Name)
		if err != nil {
			return fmt.Errorf("same-node hub device %s: %w", h.Name, err)
		}
		for _, peer := range d.Peers {
			if peer.PublicKey == key && !peer.LastHandshakeTime.IsZero() {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("same-node hub %s: no handshake with pod %s's device within %v", h.Name, p.ID, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// podPeer is the hub's peer for a pod device on loopback port port, with
// exactly allowed as AllowedIPs and the given persistent keepalive.
func podPeer(key wgtypes.Key, port int, allowed []net.IPNet, keepalive time.Duration) wgtypes.PeerConfig {
	return wgtypes.PeerConfig{
		PublicKey:                   key,
		Endpoint:                    &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port},
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  allowed,
		PersistentKeepaliveInterval: &keepalive,
	}
}

// RemovePod removes p's peer and the routes of its addresses; missing ones are fine.
func (h Hub) RemovePod(wg *wgctrl.Client, p *registry.Pod) error {
	var errs []error
	if key, err := wgtypes.ParseKey(p.PublicKey); err == nil {
		if err := wg.ConfigureDevice(h.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}}); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("remove pod %s from hub %s: %w", p.ID, h.Name, err))
		}
	}
	for _, a := range p.IPs {
		if err := h.DeleteRoute(a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (h Hub) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(h.Name)
	if err != nil {
		return nil, fmt.Errorf("same-node hub device %s: %w", h.Name, err)
	}
	return l, nil
}

// EnsureRoutes routes each of p's addresses into the hub.
func (h Hub) EnsureRoutes(p *registry.Pod) error {
	l, err := h.link()
	if err != nil {
		return err
	}
	for _, a := range p.IPs {
		gw, err := h.gateway(a)
		if err != nil {
			return err
		}
		if err := route.EnsureSameNode(l, a, gw); err != nil {
			return err
		}
	}
	return nil
}

// DeleteRoute removes the route of ip into the hub; a missing route (or
// hub) is fine.
func (h Hub) DeleteRoute(ip netip.Addr) error {
	l, err := h.link()
	if err != nil {
		return nil // no hub, no route through it
	}
	return route.DeleteSameNode(l, ip)
}

// Routes returns the pod addresses routed into the hub.
func (h Hub) Routes() ([]netip.Addr, error) {
	l, err := h.link()
	if err != nil {
		return nil, err
	}
	return route.SameNodeRoutes(l)
}

func isGone(err error) bool {
	return errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT)
}

// Check verifies, in the node netns, that the hub has p as a peer with
// AllowedIPs exactly p's addresses, and routes each of them into the hub.
func (h Hub) Check(p *registry.Pod) error {
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
		if !SameNets(peer.AllowedIPs, AllowedIPs(p)) {
			return fmt.Errorf("same-node hub %s: peer of pod %s allows %v, want %v", h.Name, p.ID, peer.AllowedIPs, p.IPs)
		}
	}
	if !found {
		return fmt.Errorf("same-node hub %s has no peer for pod %s", h.Name, p.ID)
	}
	routes, err := h.Routes()
	if err != nil {
		return err
	}
	for _, a := range p.IPs {
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

// SameNets reports whether a and b hold the same prefixes, in any order.
func SameNets(a, b []net.IPNet) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, n := range a {
		seen[n.String()]++
	}
	for _, n := range b {
		if seen[n.String()] == 0 {
			return false
		}
		seen[n.String()]--
	}
	return true
}
