package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WGDevice reads the node's WireGuard device through wgctrl from inside
// the node namespace (kernel devices via netlink, userspace ones via their
// UAPI socket).
func (n *Node) WGDevice() (*wgtypes.Device, error) {
	var dev *wgtypes.Device
	err := n.Do(func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		dev, err = c.Device(n.Device)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("wireguard device %s on %s: %w", n.Device, n.Name, err)
	}
	return dev, nil
}

// ConfigureDevice changes the node's WireGuard device through wgctrl,
// behind its daemon's back: the way the self-healing and post-quantum
// tests inject drift and wrong keys.
func (n *Node) ConfigureDevice(peers ...wgtypes.PeerConfig) error {
	err := n.Do(func() error {
		c, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer c.Close()
		return c.ConfigureDevice(n.Device, wgtypes.Config{Peers: peers})
	})
	if err != nil {
		return fmt.Errorf("configure wireguard device %s on %s by hand: %w", n.Device, n.Name, err)
	}
	return nil
}

// PresharedKey reads the PSK the node's device holds for peer (all-zero:
// none); found is false when the device has no such peer. Callers compare
// it and never print it.
func (n *Node) PresharedKey(peer wgtypes.Key) (psk wgtypes.Key, found bool, err error) {
	dev, err := n.WGDevice()
	if err != nil {
		return psk, false, err
	}
	for _, p := range dev.Peers {
		if p.PublicKey == peer {
			return p.PresharedKey, true, nil
		}
	}
	return psk, false, nil
}

// WGShow returns `wg show <device>` run in the node namespace (private key
// is never printed by wg show).
func (n *Node) WGShow() (string, error) { return n.Exec("wg", "show", n.Device) }

// PeerAllowedIPs returns, per peer public key, its AllowedIPs as strings.
func (n *Node) PeerAllowedIPs() (map[string][]string, error) {
	dev, err := n.WGDevice()
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, p := range dev.Peers {
		var ips []string
		for _, a := range p.AllowedIPs {
			ips = append(ips, a.String())
		}
		sort.Strings(ips)
		out[p.PublicKey.String()] = ips
	}
	return out, nil
}

// WaitPeerCIDRs waits until the node's device has exactly one peer per
// CIDR in want, each allowed exactly that CIDR, and no other peer.
func (n *Node) WaitPeerCIDRs(want []string, timeout time.Duration) error {
	wantSet := map[string]bool{}
	for _, w := range want {
		wantSet[w] = true
	}
	return WaitFor(timeout, fmt.Sprintf("peers %v on %s", want, n.Name), func() (bool, error) {
		peers, err := n.PeerAllowedIPs()
		if err != nil {
			return false, err
		}
		got := map[string]bool{}
		for _, ips := range peers {
			if len(ips) != 1 {
				return false, fmt.Errorf("peer with AllowedIPs %v", ips)
			}
			got[ips[0]] = true
		}
		if len(got) != len(wantSet) || len(peers) != len(wantSet) {
			return false, fmt.Errorf("have peers %v", peers)
		}
		for w := range wantSet {
			if !got[w] {
				return false, fmt.Errorf("have peers %v", peers)
			}
		}
		return true, nil
	})
}

// Lease is one subnet record in etcd (contracts.md data model).
type Lease struct {
	Key       string
	CIDR      string
	Node      string `json:"node"`
	PublicKey string `json:"publicKey"`
	Endpoint  string `json:"endpoint"`
	Port      int    `json:"port"`
	Keepalive int    `json:"keepalive"`
	// Unreachable: the node is behind a NAT (docs/nat.md).
	Unreachable bool `json:"unreachable"`
	LeaseID     int64
	TTL         int64 // seconds left, -1 if not bound to a lease
}

// Prefix is the etcd key prefix the harness's daemons use.
const Prefix = "/wgcni"

// Leases lists the subnet records in etcd with their remaining TTL.
func (c *Cluster) Leases() ([]Lease, error) {
	cli, err := c.Etcd.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, Prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	var out []Lease
	for _, kv := range resp.Kvs {
		var l Lease
		if err := json.Unmarshal(kv.Value, &l); err != nil {
			return nil, fmt.Errorf("etcd key %s: %w", kv.Key, err)
		}
		l.Key = string(kv.Key)
		l.CIDR = strings.Replace(strings.TrimPrefix(l.Key, Prefix+"/subnets/"), "-", "/", 1)
		l.LeaseID, l.TTL = kv.Lease, -1
		if kv.Lease != 0 {
			if ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease)); err == nil {
				l.TTL = ttl.TTL
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// LeaseOf returns the record of the named node, or nil.
func (c *Cluster) LeaseOf(node string) (*Lease, error) {
	ls, err := c.Leases()
	if err != nil {
		return nil, err
	}
	for i := range ls {
		if ls[i].Node == node {
			return &ls[i], nil
		}
	}
	return nil, nil
}

// RouteTo returns `ip route get dst` from the node namespace: which way
// the kernel would send a packet (device, or unreachable/blackhole).
func (n *Node) RouteTo(dst net.IP) (string, error) {
	return n.Exec("ip", "route", "get", dst.String())
}

// MustDeviceHost waits up to 5 s for the pid file of the node's userspace
// WireGuard device host and returns its PID, once that process is one.
func (n *Node) MustDeviceHost(tb testing.TB) int {
	tb.Helper()
	return MustPIDFile(tb, filepath.Join(n.RunDir, n.Device+".pid"), "userspace-device")
}

// MustPIDFile waits up to 5 s for pidFile to name a running process whose
// command line contains every one of cmdline, and returns its PID.
func MustPIDFile(tb testing.TB, pidFile string, cmdline ...string) int {
	tb.Helper()
	var pid int
	var last string
	err := WaitFor(5*time.Second, "pid file "+pidFile+" of a process running "+strings.Join(cmdline, " … "), func() (bool, error) {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false, nil
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return false, nil
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil {
			return false, nil
		}
		last = strings.ReplaceAll(string(cmd), "\x00", " ")
		for _, c := range cmdline {
			if !strings.Contains(last, c) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		tb.Fatalf("%v (last pid %d runs %q)", err, pid, last)
	}
	return pid
}

// MustPrivateKey reads the node's WireGuard private key from its state
// directory (the only place it may be).
func (n *Node) MustPrivateKey(tb testing.TB) wgtypes.Key {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(n.StateDir, "privatekey"))
	if err != nil {
		tb.Fatal(err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		tb.Fatalf("%s: private key file: %v", n.Name, err)
	}
	return k
}

// MustPublicKey is the node's WireGuard public key, read from its own
// device (after a rotate-key: the key in use, not the one on file).
func (n *Node) MustPublicKey(tb testing.TB) wgtypes.Key {
	tb.Helper()
	dev, err := n.WGDevice()
	if err != nil {
		tb.Fatal(err)
	}
	return dev.PublicKey
}
