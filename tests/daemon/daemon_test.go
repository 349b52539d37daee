// Package daemon_test runs real wgcnid binaries in network namespaces: an
// underlay bridge namespace with a Debian etcd, and two node namespaces
// with userspace WireGuard. Root only; everything it creates is named
// wgd-* and removed by PID and name when the test ends, also on failure.
package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	etcdIP  = "10.99.0.254"
	prefix  = "/wgcni"
	ttl     = "4s"
	cluster = "10.244.0.0/16"
)

type lab struct {
	t    *testing.T
	id   string
	dir  string
	bin  string
	ul   string // underlay netns
	etcd *exec.Cmd
}

type node struct {
	name, ns, dev, ip string
	state, run, logf  string
	cmd               *exec.Cmd
	extra             []string
}

func need(t *testing.T, tools ...string) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			harness.Missing(t, "%s not installed (make deps)", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func repoRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func newLab(t *testing.T) *lab {
	need(t, "ip", "etcd", "etcdctl", "ping", "go")
	l := &lab{t: t, id: fmt.Sprintf("%04x", rand.N(1<<16)), dir: t.TempDir()}
	// Registered before everything else, so it runs last: the logs are
	// read once the processes are gone, before the directory is removed.
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("WGD_DUMP_LOGS") != "" {
			l.dumpLogs()
		}
	})
	l.bin = filepath.Join(l.dir, "wgcnid")
	build := exec.Command("go", "build", "-o", l.bin, "./daemon/wgcnid")
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build wgcnid: %v\n%s", err, out)
	}
	l.ul = "wgd-" + l.id + "-ul"
	run(t, "ip", "netns", "add", l.ul)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", l.ul).Run() })
	run(t, "ip", "-n", l.ul, "link", "set", "lo", "up")
	run(t, "ip", "-n", l.ul, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", l.ul, "addr", "add", etcdIP+"/24", "dev", "br0")
	run(t, "ip", "-n", l.ul, "link", "set", "br0", "up")

	data := filepath.Join(l.dir, "etcd")
	logf, _ := os.Create(filepath.Join(l.dir, "etcd.log"))
	l.etcd = exec.Command("ip", "netns", "exec", l.ul, "etcd", "--name", "wgd", "--data-dir", data,
		"--listen-client-urls", "http://"+etcdIP+":2379", "--advertise-client-urls", "http://"+etcdIP+":2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "wgd=http://127.0.0.1:2380")
	l.etcd.Stdout, l.etcd.Stderr = logf, logf
	if err := l.etcd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() { l.etcd.Process.Kill(); l.etcd.Wait(); logf.Close() })
	l.waitFor(20*time.Second, "etcd healthy", func() bool {
		return exec.Command("ip", "netns", "exec", l.ul, "etcdctl", "--endpoints", "http://"+etcdIP+":2379", "endpoint", "health").Run() == nil
	})
	return l
}

func (l *lab) etcdctl(args ...string) string {
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ul, "etcdctl", "--endpoints", "http://" + etcdIP + ":2379"}, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if err != nil {
		l.t.Fatalf("etcdctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func (l *lab) addNode(i int, autoEndpoint bool) *node {
	t := l.t
	n := &node{
		name: fmt.Sprintf("n%d", i), ns: fmt.Sprintf("wgd-%s-n%d", l.id, i), dev: fmt.Sprintf("wgd%s-%d", l.id[:min(4, len(l.id))], i),
		ip:    fmt.Sprintf("10.99.0.%d", i),
		state: filepath.Join(l.dir, fmt.Sprintf("n%d", i), "state"), run: filepath.Join(l.dir, fmt.Sprintf("n%d", i), "run"),
	}
	n.logf = filepath.Join(l.dir, n.name+".log")
	run(t, "ip", "netns", "add", n.ns)
	t.Cleanup(func() { l.removeNode(n) })
	veth := fmt.Sprintf("wgd%s%d", l.id, i)
	run(t, "ip", "-n", l.ul, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.ns)
	run(t, "ip", "-n", l.ul, "link", "set", veth, "master", "br0", "up")
	run(t, "ip", "-n", n.ns, "link", "set", "lo", "up")
	run(t, "ip", "-n", n.ns, "addr", "add", n.ip+"/24", "dev", "eth0")
	run(t, "ip", "-n", n.ns, "link", "set", "eth0", "up")
	if autoEndpoint {
		// A default route into the underlay namespace, which forwards
		// nothing: it only gives endpoint auto-detection something to find.
		run(t, "ip", "-n", n.ns, "route", "add", "default", "via", etcdIP)
	} else {
		n.extra = []string{"--endpoint-ip", n.ip}
	}
	return n
}

func (l *lab) start(n *node) {
	t := l.t
	args := append([]string{"netns", "exec", n.ns, l.bin,
		"--etcd-endpoints", "http://" + etcdIP + ":2379", "--etcd-prefix", prefix,
		"--node-name", n.name, "--cluster-cidr", cluster, "--device", n.dev, "--bridge", "wgd-br",
		"--state-dir", n.state, "--run-dir", n.run, "--lease-ttl", ttl, "--wireguard", "userspace",
		"--resync-interval", "5s", "--log-level", "debug"}, n.extra...)
	f, err := os.OpenFile(n.logf, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command("ip", args...)
	n.cmd.Stdout, n.cmd.Stderr = f, f
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start wgcnid %s: %v", n.name, err)
	}
	f.Close()
	go n.cmd.Wait() // reap; `ip netns exec` execs wgcnid, so this PID is the daemon
}

func (l *lab) stop(n *node, sig syscall.Signal) {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	n.cmd.Process.Signal(sig)
	pid := n.cmd.Process.Pid
	l.waitFor(10*time.Second, n.name+" daemon exit", func() bool { return !alive(pid) })
	n.cmd = nil
}

func (l *lab) devicePID(n *node) int {
	b, err := os.ReadFile(filepath.Join(n.run, n.dev+".pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// removeNode stops the daemon and the userspace device process by PID and
// deletes the namespace.
func (l *lab) removeNode(n *node) {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Kill()
		n.cmd = nil
	}
	if pid := l.devicePID(n); pid > 1 && isDeviceHost(pid, n.dev) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	exec.Command("ip", "netns", "del", n.ns).Run()
	os.Remove("/var/run/wireguard/" + n.dev + ".sock")
}

func isDeviceHost(pid int, dev string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), "userspace-device") && strings.Contains(string(b), dev)
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func (l *lab) waitFor(d time.Duration, what string, f func() bool) {
	l.t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			l.t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *lab) dumpLogs() {
	for _, f := range []string{"n1.log", "n2.log", "etcd.log"} {
		b, _ := os.ReadFile(filepath.Join(l.dir, f))
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		l.t.Logf("---- %s ----\n%s", f, b)
	}
}

func readNode(t *testing.T, n *node) *nodefile.Node {
	nf, err := nodefile.Read(n.run)
	if err != nil {
		t.Fatalf("node file of %s: %v", n.name, err)
	}
	return nf
}

func device(t *testing.T, wg *wgctrl.Client, name string) *wgtypes.Device {
	t.Helper()
	d, err := wg.Device(name)
	if err != nil {
		t.Fatalf("wgctrl %s: %v", name, err)
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

func nodeKey(t *testing.T, n *node) (priv string, pub wgtypes.Key) {
	b, err := os.ReadFile(filepath.Join(n.state, "privatekey"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return k.String(), k.PublicKey()
}

func routeExists(n *node, cidr string) bool {
	out, _ := exec.Command("ip", "-n", n.ns, "route", "show", cidr, "proto", "87").CombinedOutput()
	return strings.Contains(string(out), "dev "+n.dev)
}

var lossRe = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

func TestTwoNodesUserspaceWireGuard(t *testing.T) {
	l := newLab(t)
	n1 := l.addNode(1, false)
	n2 := l.addNode(2, true)
	t0 := time.Now()
	l.start(n1)
	l.start(n2)
	l.waitFor(30*time.Second, "both node files", func() bool {
		_, e1 := nodefile.Read(n1.run)
		_, e2 := nodefile.Read(n2.run)
		return e1 == nil && e2 == nil
	})
	nf1, nf2 := readNode(t, n1), readNode(t, n2)
	t.Logf("node files after %s: n1 %s gw %s mtu %d; n2 %s gw %s mtu %d", time.Since(t0).Round(time.Millisecond),
		nf1.PodCIDR, nf1.Gateway, nf1.MTU, nf2.PodCIDR, nf2.Gateway, nf2.MTU)
	if nf1.PodCIDR == nf2.PodCIDR || nf1.MTU != 1440 || nf1.Device != n1.dev {
		t.Fatalf("node files: %+v %+v", nf1, nf2)
	}
	priv1, pub1 := nodeKey(t, n1)
	_, pub2 := nodeKey(t, n2)

	wg, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Close()
	// Peers both ways, AllowedIPs exactly the other's PodCIDR.
	l.waitFor(20*time.Second, "peers configured both ways", func() bool {
		p12 := peerFor(device(t, wg, n1.dev), pub2)
		p21 := peerFor(device(t, wg, n2.dev), pub1)
		return p12 != nil && p21 != nil && routeExists(n1, nf2.PodCIDR) && routeExists(n2, nf1.PodCIDR)
	})
	d1 := device(t, wg, n1.dev)
	p12 := peerFor(d1, pub2)
	if len(p12.AllowedIPs) != 1 || p12.AllowedIPs[0].String() != nf2.PodCIDR || p12.Endpoint.String() != "10.99.0.2:51820" {
		t.Fatalf("n1's peer for n2: allowed %v endpoint %v", p12.AllowedIPs, p12.Endpoint)
	}
	if d1.Type != wgtypes.Userspace || d1.ListenPort != 51820 || d1.PublicKey != pub1 {
		t.Fatalf("n1 device: type %v port %d", d1.Type, d1.ListenPort)
	}
	p21 := peerFor(device(t, wg, n2.dev), pub1)
	if len(p21.AllowedIPs) != 1 || p21.AllowedIPs[0].String() != nf1.PodCIDR || p21.Endpoint.String() != "10.99.0.1:51820" {
		t.Fatalf("n2's peer for n1 (auto-detected endpoint): allowed %v endpoint %v", p21.AllowedIPs, p21.Endpoint)
	}
	// The kernel picks the gateway as source for traffic into the tunnel.
	rg := run(t, "ip", "-n", n1.ns, "route", "get", nf2.Gateway)
	if !strings.Contains(rg, "dev "+n1.dev) || !strings.Contains(rg, "src "+nf1.Gateway) {
		t.Fatalf("route get %s in n1: %s", nf2.Gateway, rg)
	}
	// Strict: an unknown pod CIDR is unreachable, not sent via the default route.
	if out, err := exec.Command("ip", "-n", n2.ns, "route", "get", "10.244.250.1").CombinedOutput(); err == nil {
		t.Fatalf("unknown pod CIDR routable in n2 (which has a default route): %s", out)
	}

	// Ping gateway to gateway, with no -I: the route's src is what makes
	// the peer's AllowedIPs accept it.
	before := peerFor(device(t, wg, n2.dev), pub1).ReceiveBytes
	out, err := exec.Command("ip", "netns", "exec", n1.ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", nf2.Gateway).CombinedOutput()
	if err != nil {
		t.Fatalf("ping n1 -> n2 gateway: %v\n%s", err, out)
	}
	p21 = peerFor(device(t, wg, n2.dev), pub1)
	if p21.LastHandshakeTime.IsZero() || p21.ReceiveBytes <= before {
		t.Fatalf("no handshake/traffic on n2's peer for n1: handshake %v rx %d", p21.LastHandshakeTime, p21.ReceiveBytes)
	}
	t.Logf("ping through the tunnel ok; handshake at %s, n2 received %d bytes from n1", p21.LastHandshakeTime.Format(time.TimeOnly), p21.ReceiveBytes)

	// Restart: SIGKILL n1's daemon while a ping stream runs, start it again.
	devPID := l.devicePID(n1)
	if devPID == 0 || !alive(devPID) {
		t.Fatal("no userspace device process for n1")
	}
	hs := p21.LastHandshakeTime
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var pingOut bytes.Buffer
	pinger := exec.CommandContext(ctx, "ip", "netns", "exec", n1.ns, "ping", "-c", "100", "-i", "0.05", "-W", "1", nf2.Gateway)
	pinger.Stdout, pinger.Stderr = &pingOut, &pingOut
	if err := pinger.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1 * time.Second)
	l.stop(n1, syscall.SIGKILL)
	if !alive(devPID) {
		t.Fatal("userspace device process died with the daemon")
	}
	l.start(n1)
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
	l.waitFor(20*time.Second, "restarted n1 adopted its lease", func() bool {
		b, _ := os.ReadFile(n1.logf)
		return bytes.Contains(b, []byte("how=adopted")) && bytes.Contains(b, []byte("full sync done"))
	})
	if l.devicePID(n1) != devPID {
		t.Fatalf("device process changed: %d -> %d", devPID, l.devicePID(n1))
	}
	if nf := readNode(t, n1); nf.PodCIDR != nf1.PodCIDR {
		t.Fatalf("CIDR changed across restart: %s -> %s", nf1.PodCIDR, nf.PodCIDR)
	}
	if priv, _ := nodeKey(t, n1); priv != priv1 {
		t.Fatal("key changed across restart")
	}
	if p := peerFor(device(t, wg, n2.dev), pub1); p == nil || !p.LastHandshakeTime.Equal(hs) && p.LastHandshakeTime.Before(hs) {
		t.Fatalf("n2 lost its peer for n1 across the restart")
	}
	if d := device(t, wg, n1.dev); d.PrivateKey.String() != priv1 || peerFor(d, pub2) == nil {
		t.Fatal("n1 device lost key or peer across restart")
	}

	// The private key never reaches etcd or the logs.
	dump := l.etcdctl("get", prefix, "--prefix")
	if strings.Contains(dump, priv1) {
		t.Fatal("private key found in etcd")
	}
	for _, f := range []string{n1.logf, n2.logf} {
		if b, _ := os.ReadFile(f); bytes.Contains(b, []byte(priv1)) {
			t.Fatalf("private key found in %s", f)
		}
	}

	// Node loss: n2's daemon stops (SIGTERM keeps everything), its device
	// process is killed and its namespace deleted. Only after the lease TTL
	// does n1 drop the peer and the route.
	// The clock starts when the daemon stops renewing: removing the node
	// can take a second on a loaded machine, and the lease (renewed every
	// TTL/3) expires 2/3 TTL to TTL after the last renewal, not after that.
	lost := time.Now()
	l.stop(n2, syscall.SIGTERM)
	l.removeNode(n2)
	l.waitFor(30*time.Second, "n1 removes n2's peer and route", func() bool {
		return peerFor(device(t, wg, n1.dev), pub2) == nil && !routeExists(n1, nf2.PodCIDR)
	})
	took := time.Since(lost)
	t.Logf("n1 removed n2 %s after n2 vanished (lease TTL %s)", took.Round(100*time.Millisecond), ttl)
	if took < 2*time.Second {
		t.Fatalf("peer removed after %s, before the %s lease could expire", took, ttl)
	}
	if out, err := exec.Command("ip", "-n", n1.ns, "route", "get", nf2.Gateway).CombinedOutput(); err == nil {
		t.Fatalf("n2's CIDR still routable from n1 after removal: %s", out)
	}

	// cleanup removes everything n1's daemon created.
	l.stop(n1, syscall.SIGTERM)
	cl := exec.Command("ip", "netns", "exec", n1.ns, l.bin, "cleanup", "--etcd-endpoints", "http://"+etcdIP+":2379",
		"--node-name", "n1", "--device", n1.dev, "--bridge", "wgd-br", "--state-dir", n1.state, "--run-dir", n1.run, "--endpoint-ip", n1.ip)
	if out, err := cl.CombinedOutput(); err != nil {
		t.Fatalf("wgcnid cleanup: %v\n%s", err, out)
	}
	if alive(devPID) {
		t.Fatal("cleanup left the device process running")
	}
	links := run(t, "ip", "-n", n1.ns, "link")
	routes := run(t, "ip", "-n", n1.ns, "route", "show", "table", "all", "proto", "87")
	if strings.Contains(links, n1.dev) || strings.Contains(links, "wgd-br") || strings.TrimSpace(routes) != "" {
		t.Fatalf("cleanup left links/routes:\n%s\n%s", links, routes)
	}
	if _, err := os.Stat(nodefile.Path(n1.run)); err == nil {
		t.Fatal("cleanup left the node file")
	}
	if kvs := l.etcdctl("get", prefix+"/subnets/", "--prefix", "--keys-only"); strings.TrimSpace(kvs) != "" {
		t.Fatalf("cleanup left records: %s", kvs)
	}
}
