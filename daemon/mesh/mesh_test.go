package mesh

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/internal/etcdtest"
	"github.com/wgcni/wgcni/daemon/internal/netnstest"
	"github.com/wgcni/wgcni/daemon/internal/wghosttest"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/daemon/wgdev"
)

const hostEnv = "WGD_MESH_TEST_HOST"

func TestMain(m *testing.M) { wghosttest.Main(m, hostEnv) }

// syncBuf is a log sink the test can search while the reconciler writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type env struct {
	t     *testing.T
	cli   *clientv3.Client
	netns ns.NetNS
	wg    *wgctrl.Client
	dev   string
	r     *Reconciler
	logs  *syncBuf
	key   wgtypes.Key // the device's public key

	priv   wgtypes.Key // the device's private key
	runDir string      // the userspace device host's pid and log files
	cfg    Config      // what the reconciler got
}

func rec(t *testing.T, node string, ep string) (record.Lease, wgtypes.Key) {
	k, _ := wgtypes.GeneratePrivateKey()
	return record.Lease{Node: node, PublicKey: k.PublicKey(), Endpoint: netip.MustParseAddrPort(ep)}, k.PublicKey()
}

func setup(t *testing.T) *env {
	n, _ := netnstest.New(t, "wgd")
	srv := etcdtest.Start(t)
	e := &env{t: t, cli: srv.Client(t), netns: n, dev: netnstest.DeviceName("wgd-m1"), logs: &syncBuf{}}
	exe, _ := os.Executable()
	runDir := t.TempDir()
	e.runDir = runDir
	cluster, _ := record.NewCluster("10.244.0.0/16", 24)
	own := netip.MustParsePrefix("10.244.1.0/24")
	var cfg Config
	err := n.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "wgd-br"
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil {
			return err
		}
		br, _ := netlink.LinkByName("wgd-br")
		netlink.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("10.244.1.1"), Mask: net.CIDRMask(24, 32)}})
		netlink.LinkSetUp(br)
		d, err := wgdev.Ensure(wgdev.Options{Name: e.dev, MTU: 1420, Want: wgdev.Userspace, RunDir: runDir,
			Exe: exe, Args: []string{"userspace-device"}, Env: []string{hostEnv + "=1"}})
		if err != nil {
			return err
		}
		t.Cleanup(func() {
			n.Do(func(ns.NetNS) error { return wgdev.Remove(runDir, e.dev, slog.New(slog.DiscardHandler)) })
		})
		e.wg, err = wgctrl.New()
		if err != nil {
			return err
		}
		k, _ := wgtypes.GeneratePrivateKey()
		if err := wgdev.Configure(e.wg, e.dev, k, 51820); err != nil {
			return err
		}
		e.key, e.priv = k.PublicKey(), k
		cfg = Config{Client: e.cli, Prefix: "/wgcni", Cluster: cluster, Self: "self", SelfKey: e.key, OwnCIDR: own,
			Gateways: []netip.Addr{netip.MustParseAddr("10.244.1.1")}, Device: e.dev, LinkIndex: d.Index, WG: e.wg, Resync: time.Hour,
			Log: slog.New(slog.NewTextHandler(e.logs, nil))}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.wg.Close() })
	e.cfg = cfg
	e.r = New(cfg)
	return e
}

// start runs f (the reconciler) on a thread inside the test netns, since
// netlink calls act on the calling thread's namespace.
func (e *env) start(f func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.netns.Do(func(ns.NetNS) error { f(ctx); return nil })
	}()
	e.t.Cleanup(func() { cancel(); <-done })
}

func (e *env) put(cidr string, v string) {
	key := record.SubnetKey("/wgcni", netip.MustParsePrefix(cidr))
	if _, err := e.cli.Put(context.Background(), key, v); err != nil {
		e.t.Fatal(err)
	}
}

// state returns the device's peers by CIDR and our routes.
func (e *env) state() (map[string]wgtypes.Peer, map[netip.Prefix]route.Peer) {
	peers := map[string]wgtypes.Peer{}
	var routes map[netip.Prefix]route.Peer
	e.netns.Do(func(ns.NetNS) error {
		d, err := e.wg.Device(e.dev)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, p := range d.Peers {
			var s []string
			for _, a := range p.AllowedIPs {
				s = append(s, a.String())
			}
			peers[strings.Join(s, ",")] = p
		}
		routes, _, _ = route.Ours(netlink.FAMILY_V4)
		return nil
	})
	return peers, routes
}

func (e *env) waitFor(what string, f func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s\nlogs:\n%s", what, e.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestReconcilerAgainstEtcdAndDevice(t *testing.T) {
	e := setup(t)
	a, ka := rec(t, "a", "10.99.0.2:51820")
	b, _ := rec(t, "b", "10.99.0.3:51820")
	self, _ := rec(t, "self", "10.99.0.1:51820")
	e.put("10.244.2.0/24", string(a.Encode()))
	e.put("10.244.1.0/24", string(self.Encode())) // our own record: never a peer
	e.put("10.244.3.0/24", `{"node":"bad json`)
	e.start(func(ctx context.Context) { e.r.Run(ctx) })
	<-e.r.Synced()

	peers, routes := e.state()
	if len(peers) != 1 || peers["10.244.2.0/24"].PublicKey != ka || len(routes) != 1 {
		t.Fatalf("after first sync: peers %v routes %v", peers, routes)
	}
	if r := routes[netip.MustParsePrefix("10.244.2.0/24")]; r.Src.String() != "10.244.1.1" {
		t.Fatalf("route src %v", r.Src)
	}
	if !strings.Contains(e.logs.String(), "/wgcni/subnets/10.244.3.0-24") || e.r.Stats.BadRecords.Load() != 1 {
		t.Fatalf("bad record not logged by key / counted: %d\n%s", e.r.Stats.BadRecords.Load(), e.logs.String())
	}

	// Incremental add.
	e.put("10.244.4.0/24", string(b.Encode()))
	e.waitFor("b added", func() bool { p, r := e.state(); return len(p) == 2 && len(r) == 2 })

	// Hijack attempts and bad records, all skipped and counted.
	hijack, _ := rec(t, "mallory", "10.99.0.66:51820")
	e.put("10.244.1.0/24", string(hijack.Encode()))                                          // claims our CIDR
	e.cli.Put(context.Background(), "/wgcni/subnets/10.245.0.0-24", string(hijack.Encode())) // outside cluster
	e.cli.Put(context.Background(), "/wgcni/subnets/10.244.8.0-23", string(hijack.Encode())) // overlapping two node CIDRs
	dupKey := hijack
	dupKey.PublicKey = a.PublicKey
	e.put("10.244.5.0/24", string(dupKey.Encode())) // steals a's key: would widen a's AllowedIPs
	e.waitFor("4 more bad records counted", func() bool { return e.r.Stats.BadRecords.Load() == 5 })
	peers, routes = e.state()
	if len(peers) != 2 || len(routes) != 2 || len(peers["10.244.2.0/24"].AllowedIPs) != 1 {
		t.Fatalf("hijack changed state: peers %v routes %v", peers, routes)
	}
	for _, k := range []string{"10.244.1.0-24", "10.245.0.0-24", "10.244.8.0-23", "10.244.5.0-24"} {
		if !strings.Contains(e.logs.String(), k) {
			t.Errorf("log does not name %s", k)
		}
	}

	// Key rotation: the old peer goes, the new one takes the CIDR.
	rot, _ := wgtypes.GeneratePrivateKey()
	a2 := a
	a2.PublicKey = rot.PublicKey()
	e.put("10.244.2.0/24", string(a2.Encode()))
	e.waitFor("a's key rotated", func() bool {
		p, _ := e.state()
		return len(p) == 3 && p["10.244.2.0/24"].PublicKey == a2.PublicKey
	})
	// ...which freed a's old key: the record at .5 that was waiting for it
	// becomes a peer now (it is a valid record with a unique key).
	peers, _ = e.state()
	if peers["10.244.5.0/24"].PublicKey != a.PublicKey {
		t.Fatalf("waiting record not promoted: %v", peers)
	}

	// A record turning bad removes its peer (it no longer vouches for it).
	e.put("10.244.5.0/24", `garbage`)
	e.waitFor("bad-turned record removed", func() bool { p, r := e.state(); return len(p) == 2 && len(r) == 2 })

	// Deletion removes peer and route.
	e.cli.Delete(context.Background(), record.SubnetKey("/wgcni", netip.MustParsePrefix("10.244.4.0/24")))
	e.waitFor("b removed", func() bool { p, r := e.state(); return len(p) == 1 && len(r) == 1 })

	// Drift: someone deletes our route; the timer resync repairs it.
	e.netns.Do(func(ns.NetNS) error {
		return route.DeletePeer(route.Peer{Dst: netip.MustParsePrefix("10.244.2.0/24"), LinkIndex: e.r.cfg.LinkIndex, Src: e.r.cfg.Gateways[0]})
	})
	if err := func() (err error) { e.netns.Do(func(ns.NetNS) error { err = e.r.kernelResync(); return nil }); return }(); err != nil {
		t.Fatal(err)
	}
	if _, r := e.state(); len(r) != 1 {
		t.Fatal("resync did not repair the route")
	}
}

func TestReconcilerRecoversFromCompaction(t *testing.T) {
	e := setup(t)
	a, _ := rec(t, "a", "10.99.0.2:51820")
	b, _ := rec(t, "b", "10.99.0.3:51820")
	e.put("10.244.2.0/24", string(a.Encode()))
	var rev int64
	e.netns.Do(func(ns.NetNS) error {
		e.r.reset()
		var err error
		rev, err = e.r.fullSync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return nil
	})
	// While "disconnected": a leaves, b joins, and etcd compacts past rev.
	e.cli.Delete(context.Background(), record.SubnetKey("/wgcni", netip.MustParsePrefix("10.244.2.0/24")))
	e.put("10.244.3.0/24", string(b.Encode()))
	resp, _ := e.cli.Get(context.Background(), "x")
	if _, err := e.cli.Compact(context.Background(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	e.start(func(ctx context.Context) {
		e.r.loop(ctx, rev, &etcdutil.Backoff{Min: 100 * time.Millisecond, Max: time.Second})
	})
	e.waitFor("converged after compaction", func() bool {
		p, r := e.state()
		_, hasB := p["10.244.3.0/24"]
		return len(p) == 1 && hasB && len(r) == 1
	})
	if e.r.Stats.FullResyncs.Load() != 2 || e.r.Stats.WatchRestarts.Load() != 1 {
		t.Fatalf("full resyncs %d watch restarts %d, want 2 and 1 (no hot loop)", e.r.Stats.FullResyncs.Load(), e.r.Stats.WatchRestarts.Load())
	}
	if !strings.Contains(e.logs.String(), "compaction") {
		t.Fatal("compaction not logged")
	}
}

// TestRecordWithOwnKeyRefused: another node's record carrying this node's
// public key is skipped and counted; WireGuard would ignore such a peer and
// leave only a route into nowhere.
func TestRecordWithOwnKeyRefused(t *testing.T) {
	e := setup(t)
	a, _ := rec(t, "a", "10.99.0.2:51820")
	e.put("10.244.2.0/24", string(a.Encode()))
	e.start(func(ctx context.Context) { e.r.Run(ctx) })
	<-e.r.Synced()
	thief, _ := rec(t, "thief", "10.99.0.9:51820")
	thief.PublicKey = e.key
	e.put("10.244.6.0/24", string(thief.Encode()))
	e.waitFor("own-key record counted", func() bool { return e.r.Stats.BadRecords.Load() == 1 })
	peers, routes := e.state()
	if len(peers) != 1 || len(routes) != 1 {
		t.Fatalf("own-key record changed state: peers %v routes %v", peers, routes)
	}
	if !strings.Contains(e.logs.String(), "10.244.6.0-24") || !strings.Contains(e.logs.String(), "own public key") {
		t.Fatalf("log does not name the record:\n%s", e.logs.String())
	}
}

// A peer whose key changed but that never completes a handshake (here: an
// endpoint nobody listens on) has its entry re-created rekeyAttempts times,
// on rekeyDelay's schedule, then left to WireGuard's own retries; a peer
// that was merely added (no key change) is not followed.
func TestRekeyedPeerWithoutHandshakeIsRecreated(t *testing.T) {
	e := setup(t)
	a, _ := rec(t, "a", "127.0.0.1:9")
	e.put("10.244.2.0/24", string(a.Encode()))
	e.start(func(ctx context.Context) { e.r.Run(ctx) })
	e.waitFor("a configured", func() bool { p, _ := e.state(); return len(p) == 1 })

	rot, _ := wgtypes.GeneratePrivateKey()
	a.PublicKey = rot.PublicKey()
	t0 := time.Now()
	e.put("10.244.2.0/24", string(a.Encode()))
	var first time.Duration
	e.waitFor("first re-creation", func() bool {
		if e.r.Stats.RekeyRetries.Load() >= 1 && first == 0 {
			first = time.Since(t0)
		}
		return first != 0
	})
	e.waitFor("all re-creations and the give-up", func() bool {
		return strings.Contains(e.logs.String(), "no handshake since the peer's entry was re-created; WireGuard keeps retrying")
	})
	if got := e.r.Stats.RekeyRetries.Load(); got != rekeyAttempts {
		t.Fatalf("entry re-created %d times, want %d", got, rekeyAttempts)
	}
	if min := rekeyDelay(0); first < min {
		t.Fatalf("first re-creation after %v, before the %v a handshake gets", first, min)
	}
	p, _ := e.state()
	if len(p) != 1 || p["10.244.2.0/24"].PublicKey != rot.PublicKey() {
		t.Fatalf("after re-creations the device has %v, want only a's new key", p)
	}
	t.Logf("first re-creation %v after the key change; %d in all, given up after %v", first.Round(time.Millisecond), rekeyAttempts, time.Since(t0).Round(100*time.Millisecond))
}

// TestLostDeviceIsRecreated kills the userspace device's host process (the
// TUN and all configuration go with it): the reconciler hears of it from
// netlink, re-creates the device through Recreate and puts every peer and
// route back, without an etcd event.
func TestLostDeviceIsRecreated(t *testing.T) {
	e := setup(t)
	exe, _ := os.Executable()
	cfg := e.cfg
	var calls atomic.Int32
	cfg.Recreate = func() (int, error) {
		calls.Add(1)
		d, err := wgdev.Ensure(wgdev.Options{Name: e.dev, MTU: 1420, Want: wgdev.Userspace, RunDir: e.runDir,
			Exe: exe, Args: []string{"userspace-device"}, Env: []string{hostEnv + "=1"}})
		if err != nil {
			return 0, err
		}
		return d.Index, wgdev.Configure(e.wg, e.dev, e.priv, 51820)
	}
	a, _ := rec(t, "a", "127.0.0.1:9")
	b, _ := rec(t, "b", "127.0.0.1:10")
	e.put("10.244.2.0/24", string(a.Encode()))
	e.put("10.244.3.0/24", string(b.Encode()))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// The subscription belongs to the namespace it is made in.
	e.netns.Do(func(ns.NetNS) error { cfg.DeviceEvents = wgdev.WatchLink(ctx, e.dev, cfg.Log); return nil })
	if cfg.DeviceEvents == nil {
		t.Fatal("no link subscription")
	}
	e.r = New(cfg)
	e.start(func(ctx context.Context) { e.r.Run(ctx) })
	full := func() bool {
		p, r := e.state()
		return len(p) == 2 && len(r) == 2
	}
	e.waitFor("a and b configured", full)

	pidb, err := os.ReadFile(wgdev.PIDFile(e.runDir, e.dev))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	t0 := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the device re-created", func() bool {
		return e.r.Stats.DeviceRecreations.Load() == 1 && strings.Contains(e.logs.String(), "peers and routes restored")
	})
	took := time.Since(t0)
	if !full() {
		p, r := e.state()
		t.Fatalf("after re-creation: %d peers, %d routes; want 2 and 2\n%s", len(p), len(r), e.logs.String())
	}
	var dev *wgtypes.Device
	e.netns.Do(func(ns.NetNS) error { dev, err = e.wg.Device(e.dev); return err })
	if err != nil || dev.PublicKey != e.key || dev.ListenPort != 51820 {
		t.Fatalf("re-created device: %v %+v", err, dev)
	}
	t.Logf("device back with 2 peers and routes %v after the kill (%d Recreate call(s))", took.Round(time.Millisecond), calls.Load())
}
