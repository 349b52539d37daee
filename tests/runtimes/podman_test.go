package runtimes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// podman is one node's podman: private containers.conf, storage and CNI
// config dir, run inside the node's network namespace (nsenter --net, so
// runc sees the host's /sys and cgroups).
type podman struct {
	t    *testing.T
	node *harness.Node
	dir  string
	env  []string
}

const podmanImage = "localhost/" + Tag + "-busybox:latest"

func newPodman(t *testing.T, c *harness.Cluster, n *harness.Node, base, rootfs string) *podman {
	dir := filepath.Join(base, n.Name)
	netd := filepath.Join(dir, "net.d")
	for _, d := range []string{netd, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The node's conflist as the harness wrote it (shipped conflist,
	// runDir pointed at this node), in a dir only this podman reads: the
	// podman package's own default conflist in /etc/cni/net.d stays unseen.
	conf, err := os.ReadFile(filepath.Join(n.ConfDir, "10-wgcni.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(netd, "10-wgcni.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	plugins := strings.Split(c.CNIPath(), ":")
	containersConf := fmt.Sprintf(`[containers]
# Root here lacks CAP_SYS_RESOURCE: podman's default ulimits exceed the hard limits.
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = [%q, %q]
network_config_dir = %q
default_network = "wgcni"

[engine]
# No systemd here, and hybrid cgroups (crun 1.8 refuses them; runc works).
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
`, plugins[0], plugins[1], netd, filepath.Join(dir, "events.log"), filepath.Join(dir, "tmp"))
	storageConf := fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n", filepath.Join(dir, "root"), filepath.Join(dir, "runroot"))
	for name, data := range map[string]string{"containers.conf": containersConf, "storage.conf": storageConf} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := &podman{t: t, node: n, dir: dir, env: append(os.Environ(),
		"CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"),
	)}
	t.Cleanup(func() {
		if out, err := p.run(60*time.Second, "rm", "--all", "--force", "--time", "0"); err != nil {
			t.Logf("podman rm on %s: %v %s", n.Name, err, out)
		}
	})
	if out, err := p.run(60*time.Second, "import", "--change", "CMD=/bin/sh", rootfs, podmanImage); err != nil {
		t.Fatalf("podman import on %s: %v\n%s", n.Name, err, out)
	}
	return p
}

func (p *podman) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := p.node.NsenterCommand(ctx, append([]string{"podman"}, args...)...)
	cmd.Env = p.env
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (p *podman) must(args ...string) string {
	p.t.Helper()
	out, err := p.run(90*time.Second, args...)
	if err != nil {
		p.t.Fatalf("podman %s on %s: %v\n%s", strings.Join(args, " "), p.node.Name, err, out)
	}
	return out
}

func TestPodman(t *testing.T) {
	needTools(t, "podman", "runc", "conmon", "nsenter")
	c := harness.Start(t, harness.Config{}, 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	base := tempDir(t, "podman")
	rootfs := filepath.Join(base, "busybox.tar")
	busyboxRootfs(t, rootfs)
	p1 := newPodman(t, c, n1, base, rootfs)
	p2 := newPodman(t, c, n2, base, rootfs)
	t.Logf("podman: %s", p1.must("version", "--format", "{{.Client.Version}}"))

	// A server on n1 that answers every connection with a fixed line.
	const msg = "hello-from-podman-on-n1"
	id := p1.must("run", "-d", "--name", Tag+"-srv", "--network", "wgcni", podmanImage,
		"sh", "-c", "while true; do echo "+msg+" | nc -l -p 7777; done")
	ip := p1.must("inspect", "--format", "{{(index .NetworkSettings.Networks \"wgcni\").IPAddress}}", Tag+"-srv")
	nf1, _ := n1.NodeFile()
	t.Logf("server container %.12s on n1 has %s (n1 PodCIDR %s)", id, ip, nf1.PodCIDR)
	if !strings.HasPrefix(ip, strings.TrimSuffix(nf1.PodCIDR, "0/24")) {
		t.Fatalf("container address %s is not in n1's PodCIDR %s", ip, nf1.PodCIDR)
	}
	a := allocations(t, n1)
	if len(a) != 1 || a[0].IP.String() != ip || a[0].ContainerID != id {
		t.Fatalf("n1 IPAM store after podman run: %+v, want %s for container %s", a, ip, id)
	}

	// A client container on n2 connects across nodes.
	wgBefore := peerBytes(t, n2)
	var out string
	err := harness.WaitFor(30*time.Second, "podman client on n2 reaches the server on n1", func() (bool, error) {
		var err error
		out, err = p2.run(60*time.Second, "run", "--rm", "--network", "wgcni", podmanImage, "nc", "-w", "3", ip, "7777")
		return err == nil && strings.Contains(out, msg), nil
	})
	if err != nil {
		t.Fatalf("%v; last output: %s", err, out)
	}
	if got := peerBytes(t, n2) - wgBefore; got <= 0 {
		t.Fatalf("no bytes through n2's WireGuard peers during the exchange")
	}
	t.Logf("n2 container got %q from %s through WireGuard (%d bytes on n2's peers)", out, ip, peerBytes(t, n2)-wgBefore)
	if a := allocations(t, n2); len(a) != 0 {
		t.Fatalf("n2 IPAM store after `podman run --rm` exited: %+v, want empty", a)
	}

	// stop releases the address (CNI DEL), rm leaves nothing.
	p1.must("stop", "--time", "1", Tag+"-srv")
	if a := allocations(t, n1); len(a) != 0 {
		t.Fatalf("n1 IPAM store after podman stop: %+v, want empty", a)
	}
	p1.must("rm", Tag+"-srv")
	out, err = n1.Exec("ip", "-o", "link", "show", "master", "wgcni0")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("bridge ports left on n1 after podman rm: %v %s", err, out)
	}
}
