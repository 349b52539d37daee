package runtimes

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/wgcni/wgcni/tests/harness"
)

const pauseImage = "localhost/" + Tag + "-pause:latest"

// pauseSource is the sandbox's only process: it waits for a signal.
const pauseSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
`

// buildPauseArchive builds a static pause binary and packs it as an OCI
// image layout tar (uncompressed layer), named pauseImage.
func buildPauseArchive(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "pause-src")
	os.MkdirAll(src, 0o700)
	os.WriteFile(filepath.Join(src, "main.go"), []byte(pauseSource), 0o600)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module pause\n\ngo 1.21\n"), 0o600)
	bin := filepath.Join(dir, "pause")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	lw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "pause", Mode: 0o755, Size: int64(len(exe)), ModTime: time.Unix(0, 0)})
	lw.Write(exe)
	lw.Close()
	digest := func(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }
	layerDigest := digest(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/pause"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	desc := func(mt string, b []byte) map[string]any {
		return map[string]any{"mediaType": mt, "digest": digest(b), "size": len(b)}
	}
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc("application/vnd.oci.image.config.v1+json", config),
		"layers": []any{desc("application/vnd.oci.image.layer.v1.tar", layer.Bytes())},
	})
	md := desc("application/vnd.oci.image.manifest.v1+json", manifest)
	md["annotations"] = map[string]string{"io.containerd.image.name": pauseImage, "org.opencontainers.image.ref.name": "latest"}
	md["platform"] = map[string]string{"architecture": "amd64", "os": "linux"}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{md}})

	path := filepath.Join(dir, "pause-oci.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	add := func(name string, b []byte) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0)})
		tw.Write(b)
	}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "blobs/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "blobs/sha256/", Mode: 0o755})
	add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	add("index.json", index)
	for _, b := range [][]byte{layer.Bytes(), config, manifest} {
		add("blobs/sha256/"+strings.TrimPrefix(digest(b), "sha256:"), b)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// containerd is one node's containerd with a private config, root, state
// and socket, running in the node's network namespace; its CRI plugin
// uses the node's wgcni conflist.
type containerd struct {
	node *harness.Node
	dir  string
	sock string
	proc *exec.Cmd
	done chan struct{}
	rt   cri.RuntimeServiceClient
	conn *grpc.ClientConn
}

func startContainerd(t *testing.T, c *harness.Cluster, n *harness.Node, base, pauseArchive string) *containerd {
	t.Helper()
	dir := filepath.Join(base, n.Name)
	netd, bind := filepath.Join(dir, "net.d"), filepath.Join(dir, "cni-bin")
	for _, d := range []string{netd, bind} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	conf, err := os.ReadFile(filepath.Join(n.ConfDir, "10-wgcni.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(netd, "10-wgcni.conflist"), conf, 0o644)
	// containerd 1.6 takes one plugin dir: link in what the conflist uses,
	// and the loopback plugin the CRI plugin runs for every sandbox
	// (Debian's reference plugins).
	loopback := "/usr/lib/cni/loopback"
	if _, err := os.Stat(loopback); err != nil {
		harness.Missing(t, "CRI needs the loopback CNI plugin (Debian containernetworking-plugins): %v", err)
	}
	for _, p := range []string{c.Bin("wgcni"), c.Bin("wgcni-ipam"), filepath.Join(filepath.Dir(c.Bin("x")), "ext", "portmap"), loopback} {
		if err := os.Symlink(p, filepath.Join(bind, filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
	}
	cd := &containerd{node: n, dir: dir, sock: filepath.Join(dir, "containerd.sock"), done: make(chan struct{})}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Root here lacks CAP_SYS_RESOURCE: never lower an OOM score.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # No systemd here.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), cd.sock, cd.sock+".ttrpc", pauseImage, bind, netd)
	cfgPath := filepath.Join(dir, "config.toml")
	os.WriteFile(cfgPath, []byte(config), 0o600)
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := n.NsenterCommand(context.Background(), "containerd", "--config", cfgPath, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cd.proc = cmd
	go func() { cmd.Wait(); logf.Close(); close(cd.done) }()
	t.Cleanup(func() { cd.stop(t) })

	if err := harness.WaitFor(20*time.Second, "containerd socket on "+n.Name, func() (bool, error) {
		select {
		case <-cd.done:
			log, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			return false, fmt.Errorf("containerd exited: %s", log)
		default:
		}
		_, err := os.Stat(cd.sock)
		return err == nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	cd.conn, err = grpc.NewClient("unix://"+cd.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	cd.rt = cri.NewRuntimeServiceClient(cd.conn)
	out, err := exec.Command("ctr", "--address", cd.sock, "-n", "k8s.io", "images", "import", "--snapshotter", "native", pauseArchive).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr import on %s: %v\n%s", n.Name, err, out)
	}
	return cd
}

// stop removes every sandbox (so the shims and pause processes exit) and
// stops containerd.
func (cd *containerd) stop(t *testing.T) {
	if cd.rt != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if list, err := cd.rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{}); err == nil {
			for _, s := range list.Items {
				cd.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: s.Id})
				cd.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: s.Id})
			}
		}
		cancel()
		cd.conn.Close()
	}
	cd.proc.Process.Signal(syscall.SIGTERM)
	select {
	case <-cd.done:
	case <-time.After(10 * time.Second):
		cd.proc.Process.Kill()
		<-cd.done
	}
}

func (cd *containerd) runSandbox(t *testing.T, name string) (id string, ip netip.Addr, netns string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logDir := filepath.Join(cd.dir, "pods", name)
	os.MkdirAll(logDir, 0o700)
	resp, err := cd.rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: &cri.PodSandboxConfig{
		Metadata:     &cri.PodSandboxMetadata{Name: name, Uid: Tag + "-" + name, Namespace: "default"},
		Hostname:     name,
		LogDirectory: logDir,
		Linux:        &cri.LinuxPodSandboxConfig{},
	}})
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(cd.dir, "containerd.log"))
		t.Fatalf("RunPodSandbox %s on %s: %v\ncontainerd log:\n%s", name, cd.node.Name, err, log)
	}
	st, err := cd.rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: resp.PodSandboxId, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	ip, err = netip.ParseAddr(st.Status.GetNetwork().GetIp())
	if err != nil {
		t.Fatalf("sandbox %s: no IP in status: %v", name, err)
	}
	var info struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string }
			}
		}
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatalf("sandbox info: %v", err)
	}
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			netns = ns.Path
		}
	}
	if netns == "" {
		t.Fatalf("sandbox %s: no network namespace path in %s", name, st.Info["info"])
	}
	return resp.PodSandboxId, ip, netns
}

func TestContainerdCRI(t *testing.T) {
	needTools(t, "containerd", "containerd-shim-runc-v2", "ctr", "runc", "nsenter", "go")
	c := harness.Start(t, harness.Config{}, 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	base := tempDir(t, "containerd")
	archive := buildPauseArchive(t, base)
	cd1 := startContainerd(t, c, n1, base, archive)
	cd2 := startContainerd(t, c, n2, base, archive)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	v, err := cd1.rt.Version(ctx, &cri.VersionRequest{})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CRI: %s %s (API %s)", v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)

	id1, ip1, ns1 := cd1.runSandbox(t, "s1")
	id2, ip2, ns2 := cd2.runSandbox(t, "s2")
	nf1, _ := n1.NodeFile()
	nf2, _ := n2.NodeFile()
	p1, p2 := netip.MustParsePrefix(nf1.PodCIDR), netip.MustParsePrefix(nf2.PodCIDR)
	if !p1.Contains(ip1) || !p2.Contains(ip2) {
		t.Fatalf("sandbox IPs %s, %s not in the nodes' PodCIDRs %s, %s", ip1, ip2, p1, p2)
	}
	t.Logf("sandbox %.12s on n1: %s (netns %s); %.12s on n2: %s (netns %s)", id1, ip1, ns1, id2, ip2, ns2)
	for _, x := range []struct {
		n  *harness.Node
		id string
		ip netip.Addr
	}{{n1, id1, ip1}, {n2, id2, ip2}} {
		a := allocations(t, x.n)
		if len(a) != 1 || a[0].IP.String() != x.ip.String() || a[0].ContainerID != x.id {
			t.Fatalf("%s IPAM store: %+v, want %s for sandbox %s", x.n.Name, a, x.ip, x.id)
		}
	}

	// Sandbox to sandbox across nodes, through WireGuard.
	s1 := harness.NS{Name: filepath.Base(ns1)}
	if filepath.Dir(ns1) != harness.NetnsDir && filepath.Dir(ns1) != "/var/run/netns" {
		t.Fatalf("sandbox netns %s is not under %s", ns1, harness.NetnsDir)
	}
	before := peerBytes(t, n1)
	if err := harness.WaitFor(15*time.Second, "ping s1 -> s2", func() (bool, error) {
		r, err := s1.Ping(ip2, 1, 200*time.Millisecond)
		return err == nil && r.Received == 1, nil
	}); err != nil {
		t.Fatal(err)
	}
	r, err := s1.Ping(ip2, 5, 100*time.Millisecond)
	if err != nil || r.Loss() != 0 {
		t.Fatalf("s1 -> s2: %d/%d: %v", r.Received, r.Sent, err)
	}
	if peerBytes(t, n1) <= before {
		t.Fatal("no bytes through n1's WireGuard peers during the ping")
	}
	t.Logf("s1 (n1) -> s2 (n2): %d/%d replies through WireGuard", r.Received, r.Sent)

	// StopPodSandbox tears the network down: CNI DEL releases the IP.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, x := range []struct {
		cd *containerd
		id string
		n  *harness.Node
	}{{cd1, id1, n1}, {cd2, id2, n2}} {
		if _, err := x.cd.rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: x.id}); err != nil {
			t.Fatal(err)
		}
		if a := allocations(t, x.n); len(a) != 0 {
			t.Fatalf("%s IPAM store after StopPodSandbox: %+v, want empty", x.n.Name, a)
		}
		if _, err := x.cd.rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: x.id}); err != nil {
			t.Fatal(err)
		}
		out, err := x.n.Exec("ip", "-o", "link", "show", "master", "wgcni0")
		if err != nil || strings.TrimSpace(out) != "" {
			t.Fatalf("bridge ports left on %s: %v %s", x.n.Name, err, out)
		}
	}
}
