package harness_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
	"github.com/wgcni/wgcni/tests/netnsdir"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// requireInfra skips unless the infrastructure (not wgcni's binaries) can
// run here.
func requireInfra(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "etcd", "etcdctl", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			harness.Missing(t, "%s (make deps)", tool)
		}
	}
}

func leftovers(runID string) []string {
	var out []string
	ents, _ := os.ReadDir(harness.NetnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), harness.Tag+"-"+runID) {
			out = append(out, e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(os.TempDir(), harness.Tag+"-"+runID)); err == nil {
		out = append(out, "run dir")
	}
	return out
}

// TestInfrastructure checks every piece of the harness except wgcni
// itself: namespaces, the underlay (and that it routes nowhere), a real
// etcd reached by the v3.6 Go client and by a node, the capture's positive
// and negative controls, and that Close leaves nothing behind.
func TestInfrastructure(t *testing.T) {
	requireInfra(t)
	c, err := harness.New(harness.Config{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()
	n1, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	n2, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("underlay routes nowhere", func(t *testing.T) {
		// `ip route get` only consults the table; nothing is sent.
		if out, err := c.Underlay.Exec("ip", "route", "get", "192.0.2.1"); err == nil {
			t.Fatalf("underlay namespace has a route out: %s", out)
		}
		out, err := c.Underlay.Exec("cat", "/proc/sys/net/ipv4/ip_forward")
		if err != nil || strings.TrimSpace(out) != "0" {
			t.Fatalf("underlay forwarding = %q (%v), want 0", out, err)
		}
		out, err = n1.Exec("ip", "route", "show", "default")
		if err != nil || !strings.Contains(out, "via "+c.Underlay.Gateway.String()) {
			t.Fatalf("node default route = %q (%v), want via %s", out, err, c.Underlay.Gateway)
		}
	})

	t.Run("nodes reach each other", func(t *testing.T) {
		r, err := n1.Ping(n2.UnderlayIP, 3, 200*time.Millisecond)
		if err != nil || r.Received != 3 {
			t.Fatalf("ping %s: %+v %v", n2.UnderlayIP, r, err)
		}
	})

	t.Run("underlay survives node loss", func(t *testing.T) {
		mac := func() string {
			out, err := c.Underlay.Exec("cat", "/sys/class/net/"+c.Underlay.Bridge+"/address")
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimSpace(out)
		}
		before := mac()
		n3, err := c.AddBareNode()
		if err != nil {
			t.Fatal(err)
		}
		n3.Shutdown()
		if after := mac(); after != before {
			t.Fatalf("underlay bridge MAC changed from %s to %s when a node left: other nodes' ARP for etcd goes stale", before, after)
		}
		r, err := n1.Ping(c.Underlay.Gateway, 3, 100*time.Millisecond)
		if err != nil || r.Loss() != 0 {
			t.Fatalf("ping underlay gateway after node loss: %+v %v", r, err)
		}
	})

	t.Run("etcd v3.6 client against etcd 3.4", func(t *testing.T) {
		cli := c.Etcd.MustClient(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		watch := cli.Watch(ctx, "/wge/", clientv3.WithPrefix())
		// Create-if-absent: Grant + Txn(Version==0), as the daemon does.
		lease, err := cli.Grant(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		create := func() bool {
			r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("/wge/a"), "=", 0)).
				Then(clientv3.OpPut("/wge/a", "1", clientv3.WithLease(lease.ID))).Commit()
			if err != nil {
				t.Fatal(err)
			}
			return r.Succeeded
		}
		if !create() {
			t.Fatal("first create-if-absent failed")
		}
		if create() {
			t.Fatal("second create-if-absent succeeded")
		}
		if _, err := cli.KeepAliveOnce(ctx, lease.ID); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-watch:
			if len(ev.Events) == 0 || string(ev.Events[0].Kv.Key) != "/wge/a" {
				t.Fatalf("watch event %+v", ev)
			}
		case <-ctx.Done():
			t.Fatal("no watch event")
		}
		// The lease expires and takes the key with it.
		err = harness.WaitFor(10*time.Second, "lease expiry", func() (bool, error) {
			r, err := cli.Get(ctx, "/wge/a")
			return err == nil && len(r.Kvs) == 0, err
		})
		if err != nil {
			t.Fatal(err)
		}
		// A node reaches etcd at the endpoint its daemon is given.
		if out, err := n1.Exec("etcdctl", "--endpoints", c.Etcd.Endpoint, "put", "/wge/from-node", "x"); err != nil {
			t.Fatalf("etcd from node: %v %s", err, out)
		}
		// etcd survives a stop/start with its data (etcd outage tests).
		c.Etcd.Stop()
		if err := c.Etcd.Start(); err != nil {
			t.Fatal(err)
		}
		r, err := cli.Get(ctx, "/wge/from-node")
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("after etcd restart: %v %v", r, err)
		}
	})

	t.Run("capture sees wireguard and plaintext", func(t *testing.T) {
		cls := &capture.Classifier{
			PodNets: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
			WGPorts: []uint16{51820},
		}
		cp, err := capture.Start(c.Underlay.Path(), "", cls, capture.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer cp.Stop()
		// Negative control: WireGuard-shaped datagrams between underlay
		// addresses are WireGuard, not plaintext.
		msg := make([]byte, 64)
		msg[0] = capture.WGTransportData
		err = n1.Do(func() error {
			// Unconnected: n2's ICMP port-unreachable must not fail writes.
			conn, err := net.ListenPacket("udp", ":0")
			if err != nil {
				return err
			}
			defer conn.Close()
			dst := &net.UDPAddr{IP: n2.UnderlayIP.AsSlice(), Port: 51820}
			for i := 0; i < 5; i++ {
				if _, err := conn.WriteTo(msg, dst); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// Positive control: a packet from a pod address on the underlay.
		if out, err := n1.Exec("ip", "addr", "add", "10.244.77.1/32", "dev", "lo"); err != nil {
			t.Fatal(out)
		}
		r, err := n1.Exec("ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.77.1", n2.UnderlayIP.String())
		_ = r // n2 cannot answer a pod address: no route back; loss is expected
		time.Sleep(200 * time.Millisecond)
		rep, err := cp.Stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("capture: %s\n%s", rep, rep.Excerpt(12))
		if rep.WireGuard() < 5 || rep.WGTypes[capture.WGTransportData] < 5 {
			t.Errorf("saw %d wireguard packets, want >= 5", rep.WireGuard())
		}
		if rep.PlainPod() < 3 {
			t.Errorf("saw %d plaintext pod packets, want >= 3 (positive control)", rep.PlainPod())
		}
		if rep.Drops != 0 {
			t.Errorf("capture dropped %d frames", rep.Drops)
		}
	})

	runID := c.RunID
	c.Close()
	closed = true
	if l := leftovers(runID); len(l) > 0 {
		t.Fatalf("left behind after Close: %v", l)
	}
	if c.Etcd.Running() {
		t.Fatal("etcd still running after Close")
	}
}

// TestSweep fakes a crashed run (a namespace with a process in it and a
// dead owner) and checks Sweep removes both, while a live run's namespace
// is left alone.
func TestSweep(t *testing.T) {
	requireInfra(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	mk := func(id string, owner int) string {
		dir := filepath.Join(os.TempDir(), harness.Tag+"-"+id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(fmt.Sprint(owner)), 0o600); err != nil {
			t.Fatal(err)
		}
		name := harness.Tag + "-" + id + "-x"
		if err := netnsdir.Prepare(); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		t.Cleanup(func() {
			_ = exec.Command("ip", "netns", "del", name).Run()
			_ = os.RemoveAll(dir)
		})
		return name
	}
	deadNS := mk("zzzz", dead.Process.Pid)
	liveNS := mk("a11e", os.Getpid())
	_ = deadNS
	// "zzzz" is not a hex run id: Sweep must ignore it.
	crashed := mk("dea0", dead.Process.Pid)
	sleeper := exec.Command("ip", "netns", "exec", crashed, "sleep", "60")
	sleeper.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(exited) }()
	defer func() { _ = sleeper.Process.Kill() }()
	time.Sleep(200 * time.Millisecond)

	harness.Sweep(t.Logf)

	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(harness.NetnsDir, name))
		return err == nil
	}
	if exists(crashed) {
		t.Error("crashed run's namespace survived the sweep")
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("process inside the crashed run's namespace survived the sweep")
	}
	if !exists(liveNS) {
		t.Error("sweep removed a live run's namespace")
	}
	if !exists(deadNS) {
		t.Error("sweep removed a namespace that is not of the harness's form")
	}
}
