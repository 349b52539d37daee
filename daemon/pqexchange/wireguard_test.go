package pqexchange

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
	"github.com/wgcni/wgcni/daemon/internal/wghosttest"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

const hostEnv = "WGCNI_PQEXCHANGE_TEST_HOST"

// TestMain lets the test binary double as the userspace WireGuard host.
func TestMain(m *testing.M) { wghosttest.Main(m, hostEnv) }

// wgSide is one userspace WireGuard device in the test namespace.
type wgSide struct {
	name string
	priv wgtypes.Key
	port int
	ip   string
}

func (s wgSide) pub() wgtypes.Key { return s.priv.PublicKey() }

// TestPSKInUseByRealWireGuard: two userspace WireGuard devices (in a
// namespace of their own, talking over its loopback) get their PSK from a
// real exchange between two Nodes. The handshake succeeds with it; with a
// wrong PSK on one end the initiator rejects the response (so the PSK is
// really in use), and the handshake completes once the PSK matches again;
// a second exchange changes the PSK on both devices alike. PSKs are read
// back through wgctrl and compared, never printed.
func TestPSKInUseByRealWireGuard(t *testing.T) {
	n, _ := netnstest.New(t, "pq")
	runDir := t.TempDir()
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	if !Initiates(k1.PublicKey(), k2.PublicKey()) {
		k1, k2 = k2, k1
	}
	a := wgSide{name: netnstest.DeviceName("pqa"), priv: k1, port: 51901, ip: "10.77.0.1/32"}
	b := wgSide{name: netnstest.DeviceName("pqb"), priv: k2, port: 51902, ip: "10.77.0.2/32"}
	log := slog.New(slog.DiscardHandler)
	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	for _, s := range []wgSide{a, b} {
		t.Cleanup(func() { n.Do(func(ns.NetNS) error { return wgdev.Remove(runDir, s.name, log) }) })
	}
	err = n.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("loopback up: %w", err)
		}
		for _, s := range []wgSide{a, b} {
			if _, err := wgdev.Ensure(wghosttest.Options(t, hostEnv, s.name, runDir)); err != nil {
				return err
			}
			if err := wgdev.Configure(wg, s.name, s.priv, s.port); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("create userspace WireGuard devices (needs /dev/net/tun): %v", err)
	}
	// setPeer (re)creates x's entry for y with psk: a new entry has no
	// session, so the next handshake is a fresh one.
	setPeer := func(x, y wgSide, psk wgtypes.Key) {
		t.Helper()
		_, allowed, _ := net.ParseCIDR(y.ip)
		err := wg.ConfigureDevice(x.name, wgtypes.Config{ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
			PublicKey: y.pub(), PresharedKey: &psk, AllowedIPs: []net.IPNet{*allowed}, ReplaceAllowedIPs: true,
			Endpoint: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: y.port},
		}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	setPeer(a, b, wgtypes.Key{})
	setPeer(b, a, wgtypes.Key{})

	// The exchange runs between two Nodes on the test process's loopback
	// (the devices' UAPI sockets are reachable from any namespace); each
	// installs into its own device.
	ids := map[wgtypes.Key]Local{a.pub(): {WG: a.pub(), KEM: newLocal(t).KEM}, b.pub(): {WG: b.pub(), KEM: newLocal(t).KEM}}
	addrs := map[wgtypes.Key]netip.AddrPort{}
	nodes := map[wgtypes.Key]*Node{}
	for _, s := range []wgSide{b, a} {
		self := s
		node, err := Listen(Config{
			Self: ids[self.pub()], Addr: loopback,
			Peers: func(k wgtypes.Key) (Peer, bool) {
				id, ok := ids[k]
				return Peer{KEM: id.KEM.Public(), Addrs: []netip.AddrPort{addrs[k]}}, ok && k != self.pub()
			},
			Install: func(r Result) error {
				psk := r.PSK.Key()
				return wg.ConfigureDevice(self.name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: r.Peer, UpdateOnly: true, PresharedKey: &psk}}})
			},
			Handshake: func(peer wgtypes.Key) error {
				return wgdev.Initiate(wg, self.name, map[wgtypes.Key]time.Duration{peer: 0})
			},
			Retransmit: 100 * time.Millisecond, Log: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		addrs[self.pub()], nodes[self.pub()] = node.Addr(), node
	}
	for _, node := range nodes { // once both addresses are known
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- node.Serve(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}

	peerOf := func(x, y wgSide) wgtypes.Peer {
		t.Helper()
		dev, err := wg.Device(x.name)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range dev.Peers {
			if p.PublicKey == y.pub() {
				return p
			}
		}
		t.Fatalf("%s has no peer %s", x.name, y.pub())
		return wgtypes.Peer{}
	}
	// waitFor polls cond until it holds or a bound (generous: the machine
	// is shared) passes.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	handshook := func() bool { return !peerOf(a, b).LastHandshakeTime.IsZero() }

	// 1. Exchange: both devices hold the same, non-zero PSK, equal to the
	// result; the initiator's handshake succeeds with it.
	res1, err := nodes[a.pub()].Exchange(context.Background(), b.pub())
	if err != nil {
		t.Fatal(err)
	}
	pa, pb := peerOf(a, b).PresharedKey, peerOf(b, a).PresharedKey
	if pa != pb || pa != res1.PSK.Key() || pa == (wgtypes.Key{}) {
		t.Fatal("the devices do not hold the exchanged PSK (values not printed)")
	}
	waitFor("the handshake with the exchanged PSK", handshook)

	// 2. A wrong PSK on b's end (fresh entries: no session to reuse): a
	// initiates, b answers, a rejects the response.
	logA := filepath.Join(runDir, a.name+".log")
	before, _ := os.ReadFile(logA)
	wrong, _ := wgtypes.GenerateKey()
	setPeer(a, b, res1.PSK.Key())
	setPeer(b, a, wrong)
	if err := wgdev.Initiate(wg, a.name, map[wgtypes.Key]time.Duration{b.pub(): 0}); err != nil {
		t.Fatal(err)
	}
	waitFor("a to reject b's handshake response", func() bool {
		now, _ := os.ReadFile(logA)
		return strings.Contains(string(now[len(before):]), "Received invalid response message")
	})
	if handshook() {
		t.Fatal("handshake completed with mismatched PSKs")
	}
	// Matching again: WireGuard's own retry (5 s) completes it.
	right := res1.PSK.Key()
	if err := wg.ConfigureDevice(b.name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: a.pub(), UpdateOnly: true, PresharedKey: &right}}}); err != nil {
		t.Fatal(err)
	}
	waitFor("the handshake once the PSKs match again", handshook)

	// 3. The next exchange changes the PSK on both devices alike.
	res2, err := nodes[a.pub()].Exchange(context.Background(), b.pub())
	if err != nil {
		t.Fatal(err)
	}
	pa, pb = peerOf(a, b).PresharedKey, peerOf(b, a).PresharedKey
	if pa != pb || pa != res2.PSK.Key() || res2.PSK.Equal(res1.PSK) || res2.Epoch <= res1.Epoch {
		t.Fatal("the second exchange did not put a new, common PSK on both devices")
	}
}
