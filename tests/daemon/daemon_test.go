// Package daemon_test runs two real wgcnid nodes in the namespace cluster
// (tests/harness) with userspace WireGuard and no pods: node files, keys,
// peers, routes and the tunnel between the nodes' gateways, a SIGKILLed
// daemon's restart under traffic, node loss and `wgcnid cleanup`. Skips
// unless root with the tools (make test requires them).
package daemon_test

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/tests/harness"
)

const leaseTTL = 4 * time.Second

func waitFor(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	if err := harness.WaitFor(d, what, func() (bool, error) { return f(), nil }); err != nil {
		t.Fatal(err)
	}
}

func device(t *testing.T, n *harness.Node) *wgtypes.Device {
	t.Helper()
	d, err := n.WGDevice()
	if err != nil {
		t.Fatalf("wgctrl %s: %v", n.Device, err)
	}
	return d
}

func peerFor(d *wgtypes.Device, key wgtypes.Key) *wgtypes.Peer {
	for i := range d.Peers {
		if d.Peers[i].PublicKey == key {
			return &d.Peers[i]
		}
	}
	return nil
}

// routeExists reports whether the daemon (proto 87) routes cidr into the
// node's WireGuard device.
func routeExists(n *harness.Node, cidr string) bool {
	out, _ := n.Exec("ip", "route", "show", cidr, "proto", "87")
	return strings.Contains(out, "dev "+n.Device)
}

var lossRe = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

func TestTwoNodesUserspaceWireGuard(t *testing.T) {
	c := harness.Start(t, harness.Config{Tag: "wgd", LeaseTTL: leaseTTL, ResyncInterval: 5 * time.Second}, 0)
	t0 := time.Now()
	// n1 is told its endpoint; n2 detects it from its default route.
	n1, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	n1.ExtraArgs = []string{"--endpoint-ip", n1.UnderlayIP.String()}
	if err := n1.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	n2, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n1.WaitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	nf1, nf2 := n1.MustNodeFile(t), n2.MustNodeFile(t)
	t.Logf("node files after %s: n1 %s gw %s mtu %d; n2 %s gw %s mtu %d", time.Since(t0).Round(time.Millisecond),
		nf1.PodCIDR, nf1.Gateway, nf1.MTU, nf2.PodCIDR, nf2.Gateway, nf2.MTU)
	if nf1.PodCIDR == nf2.PodCIDR || nf1.MTU != c.Cfg.UnderlayMTU-60 || nf1.Device != n1.Device {
		t.Fatalf("node files: %+v %+v", nf1, nf2)
	}
	k1 := n1.MustPrivateKey(t)
	priv1, pub1 := k1.String(), k1.PublicKey()
	pub2 := n2.MustPrivateKey(t).PublicKey()

	// Peers both ways, AllowedIPs exactly the other's PodCIDR.
	waitFor(t, 20*time.Second, "peers configured both ways", func() bool {
		p12 := peerFor(device(t, n1), pub2)
		p21 := peerFor(device(t, n2), pub1)
		return p12 != nil && p21 != nil && routeExists(n1, nf2.PodCIDR) && routeExists(n2, nf1.PodCIDR)
	})
	d1 := device(t, n1)
	p12 := peerFor(d1, pub2)
	if len(p12.AllowedIPs) != 1 || p12.AllowedIPs[0].String() != nf2.PodCIDR || p12.Endpoint.String() != n2.UnderlayIP.String()+":51820" {
		t.Fatalf("n1's peer for n2 (auto-detected endpoint): allowed %v endpoint %v", p12.AllowedIPs, p12.Endpoint)
	}
	if d1.Type != wgtypes.Userspace || d1.ListenPort != 51820 || d1.PublicKey != pub1 {
		t.Fatalf("n1 device: type %v port %d", d1.Type, d1.ListenPort)
	}
	p21 := peerFor(device(t, n2), pub1)
	if len(p21.AllowedIPs) != 1 || p21.AllowedIPs[0].String() != nf1.PodCIDR || p21.Endpoint.String() != n1.UnderlayIP.String()+":51820" {
		t.Fatalf("n2's peer for n1 (--endpoint-ip): allowed %v endpoint %v", p21.AllowedIPs, p21.Endpoint)
	}
	// The kernel picks the gateway as source for traffic into the tunnel.
	rg, err := n1.Exec("ip", "route", "get", nf2.Gateway)
	if err != nil || !strings.Contains(rg, "dev "+n1.Device) || !strings.Contains(rg, "src "+nf1.Gateway) {
		t.Fatalf("route get %s in n1: %s %v", nf2.Gateway, rg, err)
	}
	// Strict: an unknown pod CIDR is unreachable, not sent via the default
	// route. The leases are random: the probed /24 must be neither node's.
	unknown := "10.244.250.1"
	for _, c := range []string{"10.244.250.0/24", "10.244.251.0/24", "10.244.252.0/24"} {
		if c != nf1.PodCIDR && c != nf2.PodCIDR {
			unknown = strings.TrimSuffix(c, "0/24") + "1"
			break
		}
	}
	if out, err := n2.Exec("ip", "route", "get", unknown); err == nil {
		t.Fatalf("unknown pod CIDR %s routable in n2 (which has a default route): %s", unknown, out)
	}

	// Ping gateway to gateway, with no -I: the route's src is what makes
	// the peer's AllowedIPs accept it.
	before := peerFor(device(t, n2), pub1).ReceiveBytes
	if out, err := n1.Exec("ping", "-c", "3", "-i", "0.2", "-W", "2", nf2.Gateway); err != nil {
		t.Fatalf("ping n1 -> n2 gateway: %v\n%s", err, out)
	}
	p21 = peerFor(device(t, n2), pub1)
	if p21.LastHandshakeTime.IsZero() || p21.ReceiveBytes <= before {
		t.Fatalf("no handshake/traffic on n2's peer for n1: handshake %v rx %d", p21.LastHandshakeTime, p21.ReceiveBytes)
	}
	t.Logf("ping through the tunnel ok; handshake at %s, n2 received %d bytes from n1", p21.LastHandshakeTime.Format(time.TimeOnly), p21.ReceiveBytes)

	// Restart: SIGKILL n1's daemon while a ping stream runs, start it again.
	devPID := n1.MustDeviceHost(t)
	hs := p21.LastHandshakeTime
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var pingOut bytes.Buffer
	pinger := n1.Command(ctx, "ping", "-c", "100", "-i", "0.05", "-W", "1", nf2.Gateway)
	pinger.Stdout, pinger.Stderr = &pingOut, &pingOut
	if err := pinger.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1 * time.Second)
	n1.StopDaemon(syscall.SIGKILL)
	if !harness.Alive(devPID) {
		t.Fatal("userspace device process died with the daemon")
	}
	if err := n1.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	pinger.Wait()
	m := lossRe.FindStringSubmatch(pingOut.String())
	if m == nil {
		t.Fatalf("ping output: %s", pingOut.String())
	}
	sent, recv := m[1], m[2]
	t.Logf("ping stream across SIGKILL+restart of n1's daemon: %s sent, %s received", sent, recv)
	if sent != recv {
		t.Errorf("packets lost across a daemon restart: %s sent, %s received", sent, recv)
	}
	waitFor(t, 20*time.Second, "restarted n1 adopted its lease", func() bool {
		b, _ := os.ReadFile(n1.LogPath)
		// The log holds both runs: only the restarted one has adopted.
		return bytes.Contains(b, []byte("how=adopted")) && bytes.Count(b, []byte("full sync done")) >= 2
	})
	if pid := n1.MustDeviceHost(t); pid != devPID {
		t.Fatalf("device process changed: %d -> %d", devPID, pid)
	}
	if nf := n1.MustNodeFile(t); nf.PodCIDR != nf1.PodCIDR {
		t.Fatalf("CIDR changed across restart: %s -> %s", nf1.PodCIDR, nf.PodCIDR)
	}
	if n1.MustPrivateKey(t).String() != priv1 {
		t.Fatal("key changed across restart")
	}
	if p := peerFor(device(t, n2), pub1); p == nil || !p.LastHandshakeTime.Equal(hs) && p.LastHandshakeTime.Before(hs) {
		t.Fatalf("n2 lost its peer for n1 across the restart")
	}
	if d := device(t, n1); d.PrivateKey.String() != priv1 || peerFor(d, pub2) == nil {
		t.Fatal("n1 device lost key or peer across restart")
	}

	// The private key never reaches etcd or the logs.
	if strings.Contains(c.Etcd.MustDump(t), priv1) {
		t.Fatal("private key found in etcd")
	}
	for _, f := range []string{n1.LogPath, n2.LogPath} {
		if b, _ := os.ReadFile(f); bytes.Contains(b, []byte(priv1)) {
			t.Fatalf("private key found in %s", f)
		}
	}

	// Node loss: n2's daemon stops (SIGTERM keeps everything), then the
	// node goes (its device process killed, its namespace deleted). Only
	// after the lease TTL does n1 drop the peer and the route.
	// The clock starts when the daemon stops renewing: removing the node
	// can take a second on a loaded machine, and the lease (renewed every
	// TTL/3) expires 2/3 TTL to TTL after the last renewal, not after that.
	lost := time.Now()
	n2.StopDaemon(syscall.SIGTERM)
	n2.Shutdown()
	waitFor(t, 30*time.Second, "n1 removes n2's peer and route", func() bool {
		return peerFor(device(t, n1), pub2) == nil && !routeExists(n1, nf2.PodCIDR)
	})
	took := time.Since(lost)
	t.Logf("n1 removed n2 %s after n2 vanished (lease TTL %s)", took.Round(100*time.Millisecond), leaseTTL)
	if took < 2*time.Second {
		t.Fatalf("peer removed after %s, before the %s lease could expire", took, leaseTTL)
	}
	if out, err := n1.Exec("ip", "route", "get", nf2.Gateway); err == nil {
		t.Fatalf("n2's CIDR still routable from n1 after removal: %s", out)
	}

	// cleanup removes everything n1's daemon created.
	n1.StopDaemon(syscall.SIGTERM)
	if out, err := n1.Cleanup(); err != nil {
		t.Fatalf("wgcnid cleanup: %v\n%s", err, out)
	}
	if harness.Alive(devPID) {
		t.Fatal("cleanup left the device process running")
	}
	links, err := n1.Exec("ip", "link")
	if err != nil {
		t.Fatal(err)
	}
	routes, err := n1.Exec("ip", "route", "show", "table", "all", "proto", "87")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(links, n1.Device) || strings.Contains(links, nf1.Bridge) || strings.TrimSpace(routes) != "" {
		t.Fatalf("cleanup left links/routes:\n%s\n%s", links, routes)
	}
	if _, err := os.Stat(nodefile.Path(n1.RunDir)); err == nil {
		t.Fatal("cleanup left the node file")
	}
	if dump := c.Etcd.MustDump(t); strings.Contains(dump, harness.Prefix+"/subnets/") {
		t.Fatalf("cleanup left records:\n%s", dump)
	}
}
