package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/internal/etcdtest"
	"github.com/wgcni/wgcni/daemon/internal/netnstest"
	"github.com/wgcni/wgcni/daemon/lease"
	"github.com/wgcni/wgcni/daemon/record"
)

func TestWireGuardMTU(t *testing.T) {
	if m := WireGuardMTU(1500, netip.MustParseAddr("10.0.0.1")); m != 1440 {
		t.Errorf("IPv4 underlay: %d", m)
	}
	if m := WireGuardMTU(1500, netip.MustParseAddr("fd00::1")); m != 1420 {
		t.Errorf("IPv6 underlay: %d", m)
	}
	if m := WireGuardMTU(9000, netip.MustParseAddr("10.0.0.1")); m != 8940 {
		t.Errorf("jumbo: %d", m)
	}
}

func TestUnderlayAutoDetect(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	err := n.Do(func(ns.NetNS) error {
		if _, _, err := Underlay(netip.Addr{}); err == nil || !strings.Contains(err.Error(), "--endpoint-ip") {
			return errors.New("no default route must name --endpoint-ip, got " + errString(err))
		}
		la := netlink.NewLinkAttrs()
		la.Name, la.MTU = "wgd-ul0", 9000
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return err
		}
		l, _ := netlink.LinkByName("wgd-ul0")
		netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.99.0.5"), Mask: net.CIDRMask(24, 32)}})
		netlink.LinkSetUp(l)
		if err := netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP("10.99.0.254"), LinkIndex: l.Attrs().Index}); err != nil {
			return err
		}
		ep, mtu, err := Underlay(netip.Addr{})
		if err != nil {
			return err
		}
		if ep.String() != "10.99.0.5" || mtu != 9000 {
			return errors.New("detected " + ep.String())
		}
		// Explicit endpoint: MTU of the interface that holds it.
		if _, mtu, _ := Underlay(netip.MustParseAddr("10.99.0.5")); mtu != 9000 {
			return errors.New("explicit endpoint MTU wrong")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func testConfig(t *testing.T, endpoint string, extra ...string) *config.Config {
	args := append([]string{"--node-name", "n1", "--etcd-endpoints", endpoint, "--endpoint-ip", "10.99.0.1",
		"--state-dir", t.TempDir(), "--run-dir", t.TempDir(), "--device", netnstest.DeviceName("wgd-a1"), "--bridge", "wgd-abr", "--wireguard", "userspace"}, extra...)
	c, err := config.Parse("wgcnid", args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// strictRoutePresent checks the cluster CIDR is unreachable in the netns.
func strictRoutePresent(n ns.NetNS) bool {
	ok := false
	n.Do(func(ns.NetNS) error {
		rs, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("10.244.0.0"), Mask: net.CIDRMask(16, 32)}}, netlink.RT_FILTER_DST)
		ok = len(rs) == 1 && rs[0].Type == unix.RTN_UNREACHABLE
		return nil
	})
	return ok
}

func TestRunRefusesClusterMismatch(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	srv := etcdtest.Start(t)
	other, _ := record.NewCluster("10.50.0.0/16", 24)
	if _, err := lease.EnsureConfig(context.Background(), srv.Client(t), "/wgcni", other); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, srv.Endpoint)
	var err error
	n.Do(func(ns.NetNS) error {
		err = Run(context.Background(), cfg, slog.New(slog.DiscardHandler))
		return nil
	})
	var me *lease.MismatchError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "10.50.0.0/16") || !strings.Contains(err.Error(), "10.244.0.0/16") {
		t.Fatalf("mismatch: %v", err)
	}
	// Strict mode was in place before etcd was even asked.
	if !strictRoutePresent(n) {
		t.Fatal("strict route not installed")
	}
}

func TestRunRetriesWhileEtcdUnreachable(t *testing.T) {
	n, _ := netnstest.New(t, "wgd")
	logs := &syncBuf{}
	// A port nothing listens on.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cfg := testConfig(t, "http://"+addr)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Second)
	defer cancel()
	var err error
	n.Do(func(ns.NetNS) error {
		err = Run(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil)))
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run returned %v, want it to keep retrying until cancelled", err)
	}
	if c := strings.Count(logs.String(), "retrying"); c < 2 {
		t.Fatalf("want repeated retry log lines, got %d:\n%s", c, logs.String())
	}
	if !strictRoutePresent(n) {
		t.Fatal("strict route not installed while etcd is down")
	}
}
