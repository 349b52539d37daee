package samenode

import (
	"encoding/binary"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/samenode/hub"
	"github.com/wgcni/wgcni/daemon/samenode/poddevices"
	"github.com/wgcni/wgcni/daemon/samenode/registry"
	"github.com/wgcni/wgcni/tests/harness"
)

// recoveryBound is how long pods may wait for their devices after the pod
// device host dies. The daemon learns of the death from its watch
// connection, so this is well below its 10 s resync: a pass proves the
// event path, not the timer.
const recoveryBound = 5 * time.Second

// udpProbe sends a numbered UDP datagram every 10 ms from one pod to an
// echo server in another and records when each echo comes back: the gap
// around an outage is the outage, seen by the pods themselves.
type udpProbe struct {
	srv, cl *net.UDPConn
	dst     *net.UDPAddr
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	echoes  []time.Time
	sent    int
}

func startProbe(t *testing.T, from, to harness.NS, src, dst netip.Addr, port int) *udpProbe {
	t.Helper()
	p := &udpProbe{dst: net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(port))), stop: make(chan struct{})}
	// Sockets opened inside a namespace stay there.
	if err := to.Do(func() (err error) { p.srv, err = net.ListenUDP("udp", p.dst); return err }); err != nil {
		t.Fatalf("probe server on %s: %v", p.dst, err)
	}
	if err := from.Do(func() (err error) {
		p.cl, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
		return err
	}); err != nil {
		p.srv.Close()
		t.Fatalf("probe client on %s: %v", src, err)
	}
	p.wg.Add(3)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, addr, err := p.srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			p.srv.WriteToUDP(buf[:n], addr)
		}
	}()
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 2048)
		for {
			if _, _, err := p.cl.ReadFromUDP(buf); err != nil {
				return
			}
			p.mu.Lock()
			p.echoes = append(p.echoes, time.Now())
			p.mu.Unlock()
		}
	}()
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		msg := make([]byte, 64)
		copy(msg[8:], "wgcni same-node recovery probe")
		for seq := uint64(0); ; seq++ {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			binary.BigEndian.PutUint64(msg, seq)
			// While the pod has no route this fails (ENETUNREACH): it
			// fails closed, nothing is sent.
			p.cl.WriteToUDP(msg, p.dst)
			p.mu.Lock()
			p.sent++
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() { p.Stop() })
	return p
}

// Stop ends the probe (idempotent).
func (p *udpProbe) Stop() {
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	p.srv.Close()
	p.cl.Close()
	p.wg.Wait()
}

// firstAfter returns the first echo after t0 (zero if none yet), and the
// last echo before it.
func (p *udpProbe) firstAfter(t0 time.Time) (first, lastBefore time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.echoes {
		if e.Before(t0) {
			lastBefore = e
		} else if first.IsZero() {
			first = e
		}
	}
	return first, lastBefore
}

// waitRecovery waits until every probe has an echo after t0 and returns
// the longest time to it and the longest silence (last echo before t0 to
// first after).
func waitRecovery(t *testing.T, t0 time.Time, limit time.Duration, probes ...*udpProbe) (recovery, outage time.Duration) {
	t.Helper()
	err := harness.WaitFor(limit, "an echo on every probe after "+t0.Format("15:04:05.000"), func() (bool, error) {
		for _, p := range probes {
			if first, _ := p.firstAfter(t0); first.IsZero() {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probes {
		first, last := p.firstAfter(t0)
		recovery = max(recovery, first.Sub(t0))
		if !last.IsZero() {
			outage = max(outage, first.Sub(last))
		}
	}
	return recovery, outage
}

// hostPID is the pid of the node's pod device host, once one runs.
func hostPID(t *testing.T, n *harness.Node) int {
	t.Helper()
	return harness.MustPIDFile(t, poddevices.PIDFile(n.RunDir), "samenode-host", n.RunDir)
}

// killHost SIGKILLs the node's pod device host by pid and returns when.
func killHost(t *testing.T, n *harness.Node) (int, time.Time) {
	t.Helper()
	pid := hostPID(t, n)
	at := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill pod device host %d: %v", pid, err)
	}
	t.Logf("SIGKILLed pod device host of %s (pid %d)", n.Name, pid)
	return pid, at
}

// hubPeers returns the hub's peers: public key -> sorted AllowedIPs.
func hubPeers(t *testing.T, n *harness.Node) map[string]string {
	t.Helper()
	hubDev := hub.DeviceName(n.Device)
	out, err := n.Exec("wg", "show", hubDev, "allowed-ips")
	if err != nil {
		t.Fatalf("wg show %s: %v %s", hubDev, err, out)
	}
	peers := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		ips := append([]string(nil), f[1:]...)
		sort.Strings(ips)
		peers[f[0]] = strings.Join(ips, " ")
	}
	return peers
}

func registrations(t *testing.T, n *harness.Node) map[string]registry.Pod {
	t.Helper()
	regs, errs := registry.List(n.RunDir)
	if len(errs) > 0 {
		t.Fatalf("registry of %s: %v", n.Name, errs)
	}
	out := map[string]registry.Pod{}
	for _, r := range regs {
		out[r.ID] = *r
	}
	return out
}

// checkRecreated: the same pods (IDs, containers, addresses, route
// parameters) with new keys, and the hub holds exactly the new keys with
// exactly each pod's /32 and /128.
func checkRecreated(t *testing.T, n *harness.Node, before map[string]registry.Pod) map[string]registry.Pod {
	t.Helper()
	after := registrations(t, n)
	if len(after) != len(before) {
		t.Fatalf("registry had %d pods, now %d", len(before), len(after))
	}
	peers := hubPeers(t, n)
	if len(peers) != len(after) {
		t.Errorf("hub has %d peers, want %d (one per pod): %v", len(peers), len(after), peers)
	}
	for id, b := range before {
		a, ok := after[id]
		if !ok {
			t.Fatalf("registration %s gone", id)
		}
		if a.PublicKey == b.PublicKey {
			t.Errorf("pod %s kept key %s: the device was not re-created", id, a.PublicKey)
		}
		if _, ok := peers[b.PublicKey]; ok {
			t.Errorf("hub still has the dead device's key %s of pod %s", b.PublicKey, id)
		}
		var want []string
		for _, n := range hub.AllowedIPs(&a) {
			want = append(want, n.String())
		}
		sort.Strings(want)
		if got := peers[a.PublicKey]; got != strings.Join(want, " ") {
			t.Errorf("hub peer of pod %s allows %q, want %q", id, got, strings.Join(want, " "))
		}
		a.PublicKey, a.Port = b.PublicKey, b.Port
		if !reflect.DeepEqual(a, b) {
			t.Errorf("registration %s changed beyond key and port:\n before %+v\n after  %+v", id, b, a)
		}
	}
	return after
}

// TestSameNodeHostKilled: the pod device host process is SIGKILLed under
// traffic; the daemon re-creates every pod's WireGuard device from the
// registry (new keys, same names, addresses and routes) without any CNI
// call; pods' traffic is back within recoveryBound; captures on the bridge
// and the pods' host veths see no plaintext before, during or after. Then
// the same with the daemon down while the host dies: the restarted daemon
// re-creates the devices. Dual-stack, and --wireguard=auto, which on this
// kernel (no WireGuard module) must fall back to userspace pod devices.
func TestSameNodeHostKilled(t *testing.T) {
	c, on, off := startOnOff(t, harness.Config{Tag: "wgk", ClusterCIDR: dualCIDR, NodePrefixLenV6: 64, ListenPort: wgPort, WireGuard: "auto"})
	fams := c.Families()
	nf := on.MustNodeFile(t)
	if !nf.SameNodeEncryption || nf.SameNodeDevice != "userspace" {
		t.Fatalf("node file of %s: sameNodeEncryption=%v sameNodeDevice=%q, want userspace (auto without kernel module)", on.Name, nf.SameNodeEncryption, nf.SameNodeDevice)
	}
	a, b, x := on.MustAddPod(t), on.MustAddPod(t), off.MustAddPod(t)
	harness.Connect(t, a.NS, b.Addr4(), "same-node ping a->b before", 3)
	harness.Connect(t, b.NS, a.Addr6(), "same-node ping6 b->a before", 3)
	regs := registrations(t, on)
	for _, r := range regs {
		if r.DeviceMode() != "userspace" || r.MTU == 0 || len(r.PodCIDRs) != 2 {
			t.Fatalf("registration %s lacks what re-creation needs: %+v", r.ID, r)
		}
	}
	cls := c.Classifier(hubPort)
	gw := netip.MustParseAddr(nf.Gateway)

	t.Run("host killed: devices re-created, traffic back, nothing in clear", func(t *testing.T) {
		var recovery, outage time.Duration
		var oldPID int
		wire, lo := sniff(t, cls, on, a, b, func() {
			p4 := startProbe(t, a.NS, b.NS, a.Addr4(), b.Addr4(), 7001)
			p6 := startProbe(t, b.NS, a.NS, b.Addr6(), a.Addr6(), 7002)
			time.Sleep(300 * time.Millisecond)
			var killedAt time.Time
			oldPID, killedAt = killHost(t, on)
			recovery, outage = waitRecovery(t, killedAt, 30*time.Second, p4, p6)
			time.Sleep(300 * time.Millisecond)
			p4.Stop()
			p6.Stop()
			t.Logf("probes: IPv4 a->b %d sent / %d echoed, IPv6 b->a %d / %d", p4.sent, len(p4.echoes), p6.sent, len(p6.echoes))
			// Everything works again, in both families and directions,
			// to the node and across nodes.
			harness.Connect(t, a.NS, b.Addr6(), "same-node ping6 a->b after", 10)
			harness.Connect(t, b.NS, a.Addr4(), "same-node ping b->a after", 10)
			harness.Transfer(t, a.NS, b.NS, b.Addr4(), 4<<20, "same-node TCP a->b after")
			harness.Connect(t, on.NS, a.Addr4(), "node -> its pod after", 5)
			harness.Connect(t, a.NS, x.Addr6(), "pod -> other node's pod after", 5)
			harness.Connect(t, x.NS, b.Addr4(), "other node's pod -> pod after", 5)
		})
		t.Logf("RESULT host SIGKILL: pods' traffic back %v after the kill (longest silence %v; bound %v)", recovery.Round(time.Millisecond), outage.Round(time.Millisecond), recoveryBound)
		if recovery > recoveryBound {
			t.Errorf("traffic back only after %v, bound %v", recovery, recoveryBound)
		}
		encryptedOnly(t, "host killed", fams, gw, wire, lo)
		if pid := hostPID(t, on); pid == oldPID {
			t.Errorf("pod device host pid still %d", pid)
		}
		regs = checkRecreated(t, on, regs)
		for _, p := range []*harness.Pod{a, b} {
			if out, err := p.CNI("check"); err != nil {
				t.Errorf("CHECK %s after re-creation: %v %s", p.Name, err, out)
			}
		}
		for _, line := range on.LogLines("") {
			if strings.Contains(line, "process gone") || strings.Contains(line, "started same-node pod device process") || strings.Contains(line, "re-created") {
				t.Logf("daemon: %s", line)
			}
		}
		if n := len(on.LogLines("re-created same-node pod device")); n != 2 {
			t.Errorf("daemon log has %d re-creations, want 2 (one per pod)", n)
		}
	})

	t.Run("host dies while the daemon is down: pods fail closed, restart re-creates (from registrations in the previous version's format)", func(t *testing.T) {
		var recovery time.Duration
		wire, lo := sniff(t, cls, on, a, b, func() {
			on.StopDaemon(syscall.SIGTERM)
			killHost(t, on)
			p4 := startProbe(t, a.NS, b.NS, a.Addr4(), b.Addr4(), 7003)
			// Nobody repairs now: the pods must stay cut off, not fall
			// back to the bridge.
			time.Sleep(time.Second)
			if r, err := a.Ping(b.Addr4(), 3, 100*time.Millisecond); err != nil || r.Received != 0 {
				t.Errorf("pod reached a pod without its device: %+v %v", r, err)
			}
			if out, _ := a.Exec("ip", "-4", "route", "show"); strings.TrimSpace(out) != "" {
				t.Errorf("pod without device still has IPv4 routes (must fail closed):\n%s", out)
			}
			// The daemon comes back as an upgrade in place would: the
			// registrations on disk are the previous version's.
			writeLegacyRegistrations(t, on, regs)
			started := time.Now()
			if err := on.StartDaemon(); err != nil {
				t.Fatal(err)
			}
			recovery, _ = waitRecovery(t, started, 30*time.Second, p4)
			p4.Stop()
			harness.Connect(t, b.NS, a.Addr6(), "same-node ping6 b->a after daemon restart", 5)
		})
		t.Logf("RESULT host dead while daemon down: traffic back %v after daemon start", recovery.Round(time.Millisecond))
		if recovery > 2*recoveryBound {
			t.Errorf("traffic back only %v after the daemon started", recovery)
		}
		encryptedOnly(t, "daemon down", fams, gw, wire, lo)
		checkRecreated(t, on, regs)
		for _, p := range []*harness.Pod{a, b} {
			if out, err := p.CNI("check"); err != nil {
				t.Errorf("CHECK %s after re-creation from a legacy registration: %v %s", p.Name, err, out)
			}
		}
	})
}

// writeLegacyRegistrations rewrites regs in the format of the version
// before address lists: one field per family (ip, ip6, podCIDR, podCIDR6).
func writeLegacyRegistrations(t *testing.T, n *harness.Node, regs map[string]registry.Pod) {
	t.Helper()
	for id, r := range regs {
		m := map[string]any{"id": r.ID, "network": r.Network, "containerID": r.ContainerID, "ifName": r.IfName, "netns": r.Netns,
			"wgIfName": r.WGIfName, "publicKey": r.PublicKey, "port": r.Port, "mode": r.Mode, "mtu": r.MTU}
		for _, a := range r.IPs {
			m[map[bool]string{true: "ip", false: "ip6"}[a.Is4()]] = a
		}
		for _, c := range r.PodCIDRs {
			m[map[bool]string{true: "podCIDR", false: "podCIDR6"}[c.Addr().Is4()]] = c
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `"ip6"`) || strings.Contains(string(b), `"ips"`) {
			t.Fatalf("legacy registration of %s: %s", id, b)
		}
		if err := os.WriteFile(filepath.Join(registry.Dir(n.RunDir), id+".json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSameNodeHostKilledManyPods: pods added in parallel (their ADDs and
// the daemon's reconciler serialize on the registry lock) all get devices;
// after the host is killed every one is re-created and reachable again.
func TestSameNodeHostKilledManyPods(t *testing.T) {
	const pods = 8
	c := harness.Start(t, harness.Config{Tag: "wgk", ClusterCIDR: v4CIDR, ListenPort: wgPort, ResyncInterval: 3 * time.Second}, 0)
	on, err := c.AddNode("--same-node-encryption")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ps := make([]*harness.Pod, pods)
	errs := make([]error, pods)
	start := time.Now()
	for i := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ps[i], errs[i] = on.AddPod()
		}()
	}
	wg.Wait()
	t.Logf("%d parallel ADDs took %v", pods, time.Since(start).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("parallel ADD %d: %v", i, err)
		}
	}
	if got := len(hubPeers(t, on)); got != pods {
		t.Fatalf("hub has %d peers after %d parallel ADDs", got, pods)
	}
	for _, p := range ps[1:] {
		harness.Connect(t, ps[0].NS, p.IP, "pod 0 -> "+p.Name, 2)
	}
	regs := registrations(t, on)
	probes := make([]*udpProbe, 0, pods-1)
	for i, p := range ps[1:] {
		probes = append(probes, startProbe(t, ps[0].NS, p.NS, ps[0].IP, p.IP, 7100+i))
	}
	time.Sleep(200 * time.Millisecond)
	_, killedAt := killHost(t, on)
	recovery, _ := waitRecovery(t, killedAt, 30*time.Second, probes...)
	for _, p := range probes {
		p.Stop()
	}
	t.Logf("RESULT host SIGKILL with %d pods: every pod reachable again %v after the kill", pods, recovery.Round(time.Millisecond))
	if recovery > recoveryBound {
		t.Errorf("traffic back only after %v, bound %v", recovery, recoveryBound)
	}
	checkRecreated(t, on, regs)
	for _, p := range ps {
		if out, err := p.CNI("check"); err != nil {
			t.Errorf("CHECK %s: %v %s", p.Name, err, out)
		}
	}
}
