package pmtu

import (
	"encoding/hex"
	"fmt"
	"log"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
)

// tunnelEnd is an in-process userspace WireGuard device in a test node.
type tunnelEnd struct {
	dev  *device.Device
	key  wgtypes.Key
	port int
}

// wireguard creates device wgp0 (MTU mtu, address inner) in n, its UDP
// socket bound in n, closed when the test ends. No UAPI socket: nothing
// outside this process can see or touch it.
func wireguard(t *testing.T, n *node, inner netip.Prefix, mtu int) *tunnelEnd {
	t.Helper()
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	var dev *device.Device
	err = n.ns.Do(func(ns.NetNS) error {
		tdev, err := tun.CreateTUN("wgp0", mtu)
		if err != nil {
			return fmt.Errorf("create TUN (needs /dev/net/tun): %w", err)
		}
		// NewDevice reads the MTU by name in this thread's netns, and
		// Up binds the UDP socket here too.
		dev = device.NewDevice(tdev, conn.NewDefaultBind(), &device.Logger{Verbosef: device.DiscardLogf, Errorf: quietMTUReload})
		if err := dev.IpcSet("private_key=" + hex.EncodeToString(key[:]) + "\nlisten_port=0\n"); err != nil {
			return err
		}
		return dev.Up()
	})
	if err != nil {
		t.Fatalf("WireGuard in %s: %v", n.name, err)
	}
	t.Cleanup(dev.Close)
	l, err := n.h.LinkByName("wgp0")
	if err != nil {
		t.Fatal(err)
	}
	ipn := &net.IPNet{IP: inner.Addr().AsSlice(), Mask: net.CIDRMask(inner.Bits(), inner.Addr().BitLen())}
	if err := n.h.AddrAdd(l, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatal(err)
	}
	if err := n.h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return &tunnelEnd{dev: dev, key: key, port: listenPort(t, dev)}
}

// quietMTUReload logs wireguard-go's errors but the expected ones: on a
// link event its TUN reader re-reads the MTU by name from a thread outside
// the test namespace, which fails harmlessly (the device keeps the MTU it
// was created with); and before the route clamp, node b's device sends
// ciphertext larger than its own 1400-byte link, which the kernel refuses
// (EMSGSIZE): the black hole under test.
func quietMTUReload(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.HasPrefix(msg, "Failed to load updated MTU") || strings.Contains(msg, "message too long") {
		return
	}
	log.Print("wgp0: " + msg)
}

func listenPort(t *testing.T, dev *device.Device) int {
	t.Helper()
	cfg, err := dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	var port int
	for _, line := range strings.Split(cfg, "\n") {
		if _, err := fmt.Sscanf(line, "listen_port=%d", &port); err == nil {
			return port
		}
	}
	t.Fatalf("no listen_port in device config")
	return 0
}

// peer makes e send inner traffic for allowed to the other end at endpoint.
func (e *tunnelEnd) peer(t *testing.T, other *tunnelEnd, endpoint netip.Addr, allowed netip.Prefix) {
	t.Helper()
	pub := other.key.PublicKey()
	cfg := fmt.Sprintf("public_key=%s\nendpoint=%s\nallowed_ip=%s\n",
		hex.EncodeToString(pub[:]), netip.AddrPortFrom(endpoint, uint16(other.port)), allowed)
	if err := e.dev.IpcSet(cfg); err != nil {
		t.Fatal(err)
	}
}

// Through a real WireGuard tunnel (wireguard-go, device MTU 1440) over an
// IPv4 underlay: with a 1500-byte path the search finds the device MTU;
// behind a router onto a 1400-byte link with its ICMP dropped, it finds
// 1328, the largest inner packet whose padded ciphertext fits: 1328 + 60
// (IPv4 20, UDP 8, WireGuard 32) = 1388; 1329 pads to 1344 and would need
// 1404.
func TestThroughWireGuard(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel() // namespaces of its own; no shared names
	f := families[0]
	for _, c := range []struct {
		farMTU int
		want   int
	}{{1500, 1440}, {1400, 1328}} {
		t.Run(fmt.Sprint(c.farMTU), func(t *testing.T) {
			t.Parallel()
			nw := routed(t, f, c.farMTU)
			innerA, innerB := netip.MustParsePrefix("10.96.0.1/24"), netip.MustParsePrefix("10.96.0.2/24")
			wa, wb := wireguard(t, nw.a, innerA, 1440), wireguard(t, nw.b, innerB, 1440)
			wa.peer(t, wb, nw.bAddr, netip.PrefixFrom(innerB.Addr(), 32))
			wb.peer(t, wa, nw.aAddr, netip.PrefixFrom(innerA.Addr(), 32))

			got := expectPathMTU(t, nw.a, "wgp0", serve(t, nw.b, innerB.Addr()), c.want)
			t.Logf("underlay far link %d: path MTU inside the tunnel %d", c.farMTU, got)
		})
	}
}

// The measured path MTU on the route to the peer ends the black hole for
// ordinary sockets, which know nothing of probes: behind the 1400-byte hop
// (ICMP dropped), a 1400-byte UDP datagram and a bulk TCP transfer toward
// the clamped node get nowhere before the route carries the MTU, and
// arrive after. Only node a's route is clamped: its advmss makes b send
// segments that fit as well.
func TestRouteClampEndsBlackHole(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel() // namespaces of its own; no shared names
	nw := routed(t, families[0], 1400)
	innerA, innerB := netip.MustParsePrefix("10.96.0.1/24"), netip.MustParsePrefix("10.96.0.2/24")
	wa, wb := wireguard(t, nw.a, innerA, 1440), wireguard(t, nw.b, innerB, 1440)
	wa.peer(t, wb, nw.bAddr, netip.PrefixFrom(innerB.Addr(), 32))
	wb.peer(t, wa, nw.aAddr, netip.PrefixFrom(innerA.Addr(), 32))
	dst := serve(t, nw.b, innerB.Addr())
	mtu := expectPathMTU(t, nw.a, "wgp0", dst, 1328)

	if udpEcho(t, nw.a, dst, 1400) {
		t.Fatal("a 1400-byte datagram crossed before the clamp: no black hole to end")
	}
	if n, total := tcpToward(t, nw.a, nw.b, innerA.Addr(), 3*time.Second); n == total {
		t.Fatal("bulk TCP completed before the clamp: no black hole to end")
	}
	l, err := nw.a.h.LinkByName("wgp0")
	if err != nil {
		t.Fatal(err)
	}
	err = nw.a.ns.Do(func(ns.NetNS) error {
		return EnsurePeerRoute(netip.PrefixFrom(innerB.Addr(), 32), l.Attrs().Index, innerA.Addr(), mtu)
	})
	if err != nil {
		t.Fatal(err)
	}
	if !udpEcho(t, nw.a, dst, 1400) {
		t.Fatal("a 1400-byte datagram did not cross with the route clamped to the path MTU")
	}
	if n, total := tcpToward(t, nw.a, nw.b, innerA.Addr(), 60*time.Second); n != total {
		t.Fatalf("bulk TCP with the clamp: %d of %d bytes", n, total)
	}
}

// udpEcho sends, from an ordinary UDP socket in n (the kernel's default
// PMTU handling, no don't-fragment forcing), a probe of IP size size to
// the responder at dst, three times, and reports whether an ack came.
func udpEcho(t *testing.T, n *node, dst netip.AddrPort, size int) bool {
	t.Helper()
	var c *net.UDPConn
	if err := n.ns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for id := uint32(1); id <= 3; id++ {
		probe, err := appendProbe(nil, id, size-Overhead(dst.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(probe); err != nil {
			t.Fatalf("send %d bytes: %v", size, err)
		}
		c.SetReadDeadline(time.Now().Add(ackWait))
		for {
			k, err := c.Read(buf)
			if err != nil {
				break
			}
			if m, err := Decode(buf[:k]); err == nil && m.Ack && m.ID == id {
				return true
			}
		}
	}
	return false
}

// tcpToward has b send 1 MiB over TCP to a listener on addr in a, and
// returns how much arrived before the deadline.
func tcpToward(t *testing.T, a, b *node, addr netip.Addr, deadline time.Duration) (got, total int) {
	t.Helper()
	total = 1 << 20
	var ln net.Listener
	if err := a.ns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var c net.Conn
	if err := b.ns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("connect through the tunnel: %v", err)
	}
	defer c.Close()
	go func() { c.Write(make([]byte, total)) }()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetReadDeadline(time.Now().Add(deadline))
	buf := make([]byte, 64<<10)
	for got < total {
		k, err := s.Read(buf)
		got += k
		if err != nil {
			break
		}
	}
	return got, total
}
