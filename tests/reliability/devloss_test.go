package reliability

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

// TestDeviceHostKilled SIGKILLs one node's userspace WireGuard device host
// (what an OOM kill or a crash does) while pods on the two other nodes
// ping a pod on it at 100/s and it pings one of them. Its daemon must see
// the link go, re-create the device with the same key, put back every
// peer and route, and initiate to every peer, without restarting; the
// underlay must carry no plaintext pod packet meanwhile (the strict route
// drops what has no tunnel). Figures: time to the re-created device, and
// the pings lost each way.
func TestDeviceHostKilled(t *testing.T) {
	c := start(t, harness.Config{LeaseTTL: 6 * time.Second}, 3)
	nodes := c.Nodes()
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	harness.WaitMesh(t, nodes, 20*time.Second)
	p1, p2, p3 := n1.MustAddPod(t), n2.MustAddPod(t), n3.MustAddPod(t)
	connect(t, p1.NS, p2.IP)
	connect(t, p3.NS, p1.IP)

	daemonPID := n1.Daemon().PID()
	hostPID := n1.MustDeviceHost(t)
	before, err := n1.WGDevice()
	if err != nil {
		t.Fatal(err)
	}

	cp, err := capture.Start(c.Underlay.Path(), "", c.Classifier(), capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Stop() })

	const count, interval = 700, 10 * time.Millisecond // 7 s; the kill at 2 s
	out := startPing(t, p1.NS, p2.IP, count, interval)
	in := startPing(t, p2.NS, p1.IP, count, interval)
	in3 := startPing(t, p3.NS, p1.IP, count, interval)
	time.Sleep(2 * time.Second)
	recreated := countLog(t, n1, "WireGuard device re-created")
	killed := time.Now()
	if err := syscall.Kill(hostPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill device host %d: %v", hostPID, err)
	}
	waitLogCount(t, n1, "WireGuard device re-created", recreated, 15*time.Second)
	back := time.Since(killed)
	outSent, outRecv := out.Wait(t)
	inSent, inRecv := in.Wait(t)
	in3Sent, in3Recv := in3.Wait(t)
	rep, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}

	if p := n1.Daemon().PID(); p != daemonPID {
		t.Fatalf("wgcnid restarted (pid %d, was %d): the daemon itself must bring the device back", p, daemonPID)
	}
	if newPID := n1.MustDeviceHost(t); newPID == hostPID {
		t.Fatalf("device host pid still %d after the kill", hostPID)
	}
	after, err := n1.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	if after.PublicKey != before.PublicKey || after.ListenPort != before.ListenPort {
		t.Fatalf("re-created device has key %s port %d, want the node's %s port %d", after.PublicKey, after.ListenPort, before.PublicKey, before.ListenPort)
	}
	if len(after.Peers) != len(before.Peers) {
		t.Fatalf("re-created device has %d peers, had %d", len(after.Peers), len(before.Peers))
	}
	for _, p := range after.Peers {
		if !p.LastHandshakeTime.After(killed) {
			t.Errorf("peer %s: no handshake since the kill (last %v)", p.PublicKey, p.LastHandshakeTime)
		}
	}
	if err := n1.WaitPeerCIDRs([]string{n2.MustPodCIDR(t), n3.MustPodCIDR(t)}, time.Second); err != nil {
		t.Fatalf("routes after re-creation: %v", err)
	}
	t.Logf("underlay capture: %s", rep)
	if rep.PlainPod() != 0 {
		t.Fatalf("%d plaintext pod packets on the underlay while the device was gone:\n%s", rep.PlainPod(), rep.Excerpt(20))
	}
	harness.Result(t, "n1's userspace device host SIGKILLed under 3 ping streams at 100/s: wgcnid (same pid) re-created the device in %v (same key, %d peers, routes back); lost n1->n2 %d/%d, n2->n1 %d/%d, n3->n1 %d/%d; %d plaintext pod packets of %d underlay frames",
		back.Round(time.Millisecond), len(after.Peers), outSent-outRecv, outSent, inSent-inRecv, inSent, in3Sent-in3Recv, in3Sent, rep.PlainPod(), rep.Total)
	// A device gone for more than a second would be a regression: the
	// daemon hears of it from netlink at once, and re-creating it, its
	// peers and routes takes milliseconds.
	for _, l := range []struct {
		what       string
		sent, recv int
	}{{"n1->n2", outSent, outRecv}, {"n2->n1", inSent, inRecv}, {"n3->n1", in3Sent, in3Recv}} {
		if lost := l.sent - l.recv; lost > int(time.Second/interval) {
			t.Errorf("%s lost %d pings (%v of traffic) after the device host was killed", l.what, lost, time.Duration(lost)*interval)
		}
	}
}

// TestExternalDeviceHost runs two nodes the way a Kubernetes DaemonSet pod
// runs wgcnid: the daemon as PID 1 of its own PID namespace (a container;
// when it dies the kernel kills everything it started), and kills and
// restarts those daemons under a 100/s ping from a third node.
//   - control: wgcnid spawns its userspace device (the default): the device
//     dies with the "container";
//   - external: the device runs in its own PID namespace (a sidecar
//     container, `wgcnid userspace-device`) and wgcnid has
//     --device-host=external: it waits for the device, adopts it, and the
//     daemon's death does not touch it. Killing the sidecar then shows the
//     daemon re-configuring the device its restarted host makes.
func TestExternalDeviceHost(t *testing.T) {
	c := start(t, harness.Config{LeaseTTL: 6 * time.Second}, 1)
	peer := c.Nodes()[0]
	container := []string{"unshare", "--pid", "--fork", "--kill-child"}
	ext, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	ext.Wrapper, ctl.Wrapper = container, container
	ext.ExtraArgs = []string{"--device-host", "external"}

	// The daemon comes first and waits; then the sidecar.
	if err := ext.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	waitLogCount(t, ext, "waiting for the external host", 0, 15*time.Second)
	sidecarDir := filepath.Join(ext.Dir, "sidecar")
	sidecar := func() *harness.Process {
		argv := append(append([]string{}, container...), c.Bin("wgcnid"), "userspace-device", "--name", ext.Device, "--run-dir", sidecarDir)
		p, err := ext.StartProcess("sidecar", argv...)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	side := sidecar()
	// SIGTERM does not reach a process behind unshare (it ignores it), so
	// the harness's graceful stop would wait 10 s per node: stop them
	// here, before the cluster goes (cleanups run last-in first-out).
	t.Cleanup(func() {
		ext.StopDaemon(syscall.SIGKILL)
		ctl.StopDaemon(syscall.SIGKILL)
		side.Kill()
	})
	for _, n := range []*harness.Node{ext, ctl} {
		if n == ctl {
			if err := ctl.StartDaemon(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := n.WaitReady(30 * time.Second); err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
	}
	if countLog(t, ext, "started userspace WireGuard device") != 0 {
		t.Fatal("wgcnid --device-host=external started a device itself")
	}
	harness.WaitMesh(t, c.Nodes(), 20*time.Second)
	pp, pe, pc := peer.MustAddPod(t), ext.MustAddPod(t), ctl.MustAddPod(t)
	connect(t, pp.NS, pe.IP)
	connect(t, pp.NS, pc.IP)
	// The host's pid file holds its pid inside the sidecar (1): find it
	// as the child of the sidecar's unshare.
	hostPID := childOf(t, side.PID())

	// Both "containers" die (SIGKILL) and come back a second later.
	const count, interval = 600, 10 * time.Millisecond
	toExt := startPing(t, pp.NS, pe.IP, count, interval)
	toCtl := startPing(t, pp.NS, pc.IP, count, interval)
	time.Sleep(2 * time.Second)
	ctlStarts := countLog(t, ctl, "started userspace WireGuard device")
	for _, n := range []*harness.Node{ext, ctl} {
		n.StopDaemon(syscall.SIGKILL)
	}
	time.Sleep(time.Second)
	for _, n := range []*harness.Node{ext, ctl} {
		syncs := countLog(t, n, "full sync done")
		if err := n.StartDaemon(); err != nil {
			t.Fatal(err)
		}
		waitLogCount(t, n, "full sync done", syncs, 30*time.Second)
	}
	extSent, extRecv := toExt.Wait(t)
	ctlSent, ctlRecv := toCtl.Wait(t)
	if !side.Running() || childOf(t, side.PID()) != hostPID {
		t.Fatal("the sidecar's device host did not survive the daemon's container")
	}
	if countLog(t, ctl, "started userspace WireGuard device") == ctlStarts {
		t.Fatal("control: the spawned device survived its daemon's PID namespace; the test does not show what it claims")
	}
	if lost := extSent - extRecv; lost != 0 {
		t.Errorf("external device host: %d/%d pings lost across the daemon container's death and restart, want 0", lost, extSent)
	}

	// The sidecar dies and its restart makes a new, empty device: the
	// running daemon configures it (key, peers, routes) by itself.
	toExt = startPing(t, pp.NS, pe.IP, 500, interval)
	time.Sleep(time.Second)
	recreated := countLog(t, ext, "WireGuard device re-created")
	side.Kill()
	killed := time.Now()
	time.Sleep(time.Second) // the kubelet's restart delay
	side = sidecar()
	waitLogCount(t, ext, "WireGuard device re-created", recreated, 15*time.Second)
	back := time.Since(killed)
	sideSent, sideRecv := toExt.Wait(t)
	if err := ext.WaitPeerCIDRs([]string{peer.MustPodCIDR(t), ctl.MustPodCIDR(t)}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	harness.Result(t, "wgcnid as PID 1 of its own PID namespace (a container), SIGKILLed and restarted 1 s later under 100/s ping: spawned device (default) lost %d/%d, device in a sidecar (--device-host=external) lost %d/%d; sidecar SIGKILLed and restarted 1 s later: device configured again %v after the kill, %d/%d lost",
		ctlSent-ctlRecv, ctlSent, extSent-extRecv, extSent, back.Round(time.Millisecond), sideSent-sideRecv, sideSent)
	// The sidecar was down 1 s; a device configured well after its
	// return would be a regression (the daemon retries at least every
	// second).
	if back > 4*time.Second {
		t.Errorf("device configured again only %v after its host was killed (restarted after 1 s)", back)
	}

	// A DaemonSet rollout replaces both containers: daemon and sidecar
	// die, a new, empty device comes with the new sidecar and the new
	// daemon adopts it. The peer still holds a session with the old
	// device, and with only its pings in flight it would wait ~15 s
	// (WireGuard's keepalive + rekey timeouts) before initiating again:
	// the new daemon must treat the keyless device as fresh and initiate.
	toExt = startPing(t, pp.NS, pe.IP, 1000, interval)
	time.Sleep(time.Second)
	ext.StopDaemon(syscall.SIGKILL)
	side.Kill()
	time.Sleep(time.Second)
	side = sidecar()
	syncs := countLog(t, ext, "full sync done")
	if err := ext.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	waitLogCount(t, ext, "full sync done", syncs, 30*time.Second)
	rollSent, rollRecv := toExt.Wait(t)
	harness.Result(t, "daemon and sidecar SIGKILLed together and restarted 1 s later (a rollout) under 100/s ping: %d/%d lost", rollSent-rollRecv, rollSent)
	if lost := rollSent - rollRecv; lost > 500 {
		t.Errorf("rollout of daemon and sidecar: %d/%d pings lost (more than 5 s): the peer kept its session with the old device", lost, rollSent)
	}
}

// childOf returns the one child of pid (the process unshare --fork runs).
func childOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(pid), "children"))
	f := strings.Fields(string(b))
	if err != nil || len(f) != 1 {
		t.Fatalf("children of %d: %q %v", pid, b, err)
	}
	c, _ := strconv.Atoi(f[0])
	return c
}
