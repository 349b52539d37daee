package samenode

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
)

// RouteProto marks the hub's /32 pod routes (the mesh uses 87).
const RouteProto netlink.RouteProtocol = 88

// HubName derives the hub device's name from the node's WireGuard device
// name (both must be unique on the machine: userspace UAPI sockets share
// one directory across namespaces).
func HubName(device string) string {
	if len(device) > 12 {
		device = device[:12]
	}
	return device + "-sn"
}

// DefaultHubPort is the hub's UDP port when --same-node-port is 0.
func DefaultHubPort(listenPort int) int { return listenPort + 1 }

// Hub is what the plugin and the daemon need to change the hub.
type Hub struct {
	Name string
	// Gateway and Gateway6 (the bridge's gateway of each family) are the
	// sources of host -> pod packets; nil when the node lacks the family.
	Gateway  net.IP
	Gateway6 net.IP
}

// gateway is the route source for pod address ip.
func (h Hub) gateway(ip netip.Addr) (net.IP, error) {
	gw := h.Gateway
	if ip.Is6() {
		gw = h.Gateway6
	}
	if gw == nil {
		return nil, fmt.Errorf("same-node hub %s: no gateway of %s's family on this node", h.Name, ip)
	}
	return gw, nil
}

// AllowedIPs is what the hub accepts from pod p: exactly its /32 and /128.
func AllowedIPs(p *Pod) []net.IPNet {
	var out []net.IPNet
	for _, a := range p.Addrs() {
		out = append(out, hostNet(a))
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
func (h Hub) ApplyPod(wg *wgctrl.Client, p *Pod) error { return h.applyPod(wg, p, "") }

// applyPod is ApplyPod that also removes the peer of public key replaces
// (the pod's previous, dead device) in the same configuration change, so
// the pod's addresses move from the old key to the new one at once.
func (h Hub) applyPod(wg *wgctrl.Client, p *Pod, replaces string) error {
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
		return fmt.Errorf("add pod %s (%v) as peer of hub %s: %w", p.ID, p.Addrs(), h.Name, err)
	}
	for _, a := range p.Addrs() {
		if err := h.ensureRoute(a); err != nil {
			return err
		}
	}
	return nil
}

// handshake makes p's new device a hub peer without AllowedIPs (so no
// traffic can reach it through the hub yet), has the hub initiate a
// handshake with it at once (switching a persistent keepalive on sends
// one; applyPod switches it off) and waits up to timeout for it to
// complete. Only the hub initiates: the device has no route yet and IPv6
// off, so it sends nothing. Without this, the hub (traffic for the pod
// arrives) and the pod (it sends) initiate at the same moment once the
// routes are in; each end's initiation overwrites its own pending one, both
// responses are then rejected, and WireGuard retries only after its 5 s
// rekey timeout: we measured 5-15 s stalls after re-creation from exactly
// that.
func (h Hub) handshake(wg *wgctrl.Client, p *Pod, timeout time.Duration) error {
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

// RemovePod removes p's peer and its /32 and /128 routes; missing ones are fine.
func (h Hub) RemovePod(wg *wgctrl.Client, p *Pod) error {
	var errs []error
	if key, err := wgtypes.ParseKey(p.PublicKey); err == nil {
		if err := wg.ConfigureDevice(h.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}}); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("remove pod %s from hub %s: %w", p.ID, h.Name, err))
		}
	}
	for _, a := range p.Addrs() {
		if err := h.deleteRoute(a); err != nil {
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

func (h Hub) ensureRoute(ip netip.Addr) error {
	l, err := h.link()
	if err != nil {
		return err
	}
	gw, err := h.gateway(ip)
	if err != nil {
		return err
	}
	dst := hostNet(ip)
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &dst, Src: gw, Scope: netlink.SCOPE_LINK, Protocol: RouteProto}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s dev %s: %w", ip, h.Name, err)
	}
	return nil
}

func (h Hub) deleteRoute(ip netip.Addr) error {
	l, err := h.link()
	if err != nil {
		return nil // no hub, no route through it
	}
	dst := hostNet(ip)
	// The scope must be the one installed: IPv4 deletes match on it, and
	// a mismatch is ESRCH, silently leaving the route behind.
	err = netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &dst, Scope: netlink.SCOPE_LINK, Protocol: RouteProto})
	if err != nil && !errors.Is(err, syscall.ESRCH) && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("delete route %s dev %s: %w", ip, h.Name, err)
	}
	return nil
}

// Routes returns the /32 and /128 pod routes through the hub.
func (h Hub) Routes() ([]netip.Addr, error) {
	l, err := h.link()
	if err != nil {
		return nil, err
	}
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Protocol: RouteProto}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list routes of hub %s: %w", h.Name, err)
	}
	var out []netip.Addr
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if ones, bits := r.Dst.Mask.Size(); ones != a.BitLen() || bits != a.BitLen() {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

func hostNet(ip netip.Addr) net.IPNet {
	return net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}
}

func isGone(err error) bool {
	return errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT)
}
