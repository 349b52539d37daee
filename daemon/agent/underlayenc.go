package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/route"
)

// underlayEnc is the outcome of setupUnderlayEncryption: whether this node
// advertises host encryption, and the addresses never to tunnel.
type underlayEnc struct {
	On       bool
	NoTunnel []netip.Addr // the etcd endpoints' addresses
}

// setupUnderlayEncryption prepares host-to-host encryption (docs/hosts.md)
// before the mesh adds any route to a peer's underlay address: the
// device's own UDP gets the firewall mark first, then the rule sends
// unmarked packets to the host table. Off (flag not given, or not
// possible here), it removes a rule and mark left by an earlier run, so
// turning the flag off and restarting takes this node out cleanly; the
// mesh then drops the table routes as peers without a host address.
func setupUnderlayEncryption(ctx context.Context, cfg *config.Config, wg *wgctrl.Client, endpoint netip.Addr, log *slog.Logger) (underlayEnc, error) {
	h := underlayEnc{NoTunnel: etcdAddrs(ctx, cfg.EtcdEndpoints, log)}
	why := ""
	switch {
	case !cfg.UnderlayEncryption:
	case !isLocal(endpoint):
		why = "the endpoint address is not on this node (NAT?): host routes need it as their source"
	default:
		for _, a := range h.NoTunnel {
			if a == endpoint {
				why = "this node's underlay address is an etcd endpoint; etcd is never tunneled"
			}
		}
	}
	if !cfg.UnderlayEncryption || why != "" {
		if why != "" {
			log.Warn("host encryption requested but not used", "endpoint", endpoint, "why", why)
		}
		if err := route.RemoveHost(); err != nil {
			return h, err
		}
		if err := setMark(wg, cfg.Device, 0, route.FirewallMark); err != nil {
			return h, err
		}
		return h, setMark(wg, cfg.Device, 0, route.LegacyFirewallMark)
	}
	if err := setMark(wg, cfg.Device, route.FirewallMark, -1); err != nil {
		return h, err
	}
	fam := netlink.FAMILY_V4
	if endpoint.Is6() {
		fam = netlink.FAMILY_V6
	}
	if err := route.EnsureHostRule(fam); err != nil {
		return h, err
	}
	h.On = true
	log.Info("host encryption on: traffic to the underlay addresses of nodes that use it too goes through WireGuard",
		"fwmark", fmt.Sprintf("%#x", route.FirewallMark), "table", route.HostTable, "rule_priority", route.RulePriority, "never_tunneled", h.NoTunnel)
	return h, nil
}

// setMark sets the device's firewall mark to mark, only if it differs and,
// with onlyIf >= 0, only if the current mark is onlyIf (never clear a mark
// someone else set).
func setMark(wg *wgctrl.Client, dev string, mark, onlyIf int) error {
	d, err := wg.Device(dev)
	if err != nil {
		return fmt.Errorf("read WireGuard device %s: %w", dev, err)
	}
	if d.FirewallMark == mark || onlyIf >= 0 && d.FirewallMark != onlyIf {
		return nil
	}
	if err := wg.ConfigureDevice(dev, wgtypes.Config{FirewallMark: &mark}); err != nil {
		return fmt.Errorf("set firewall mark %#x on WireGuard device %s: %w", mark, dev, err)
	}
	return nil
}

// etcdAddrs returns the addresses of the etcd endpoints (names resolved
// now, best effort): the control plane must never depend on the tunnel.
func etcdAddrs(ctx context.Context, endpoints []string, log *slog.Logger) []netip.Addr {
	var out []netip.Addr
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Hostname() == "" {
			continue
		}
		if a, err := netip.ParseAddr(u.Hostname()); err == nil {
			out = append(out, a.Unmap())
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		as, err := net.DefaultResolver.LookupNetIP(rctx, "ip", u.Hostname())
		cancel()
		if err != nil {
			log.Warn("host encryption: cannot resolve etcd endpoint; its addresses are not excluded from the tunnel", "endpoint", e, "err", err)
			continue
		}
		for _, a := range as {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// isLocal reports whether addr is assigned to an interface here.
func isLocal(addr netip.Addr) bool {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return true
		}
	}
	return false
}
