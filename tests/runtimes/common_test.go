// Package runtimes runs real container runtimes (podman with its CNI
// backend, containerd's CRI plugin) on nodes of the namespace cluster
// with the shipped wgcni conflist, and checks that containers on two
// nodes reach each other through WireGuard and that stopping them
// releases their addresses. The runtimes are Debian packages
// (tests/deps.sh installs them when missing); a test skips only when its
// runtime is not installed and cannot be.
package runtimes

import (
	"archive/tar"
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/ipam/nodeipam"
	"github.com/wgcni/wgcni/tests/harness"
)

// Tag prefixes this package's temp dirs and container names.
const Tag = "wgo"

// needTools skips the test (even under WGCNI_E2E_REQUIRE=1) when a
// runtime package is not installed: installing it is tests/deps.sh's job,
// which does not fail when the package cannot be installed here.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			harness.Missing(t, "%s is not installed (tests/deps.sh installs it): %v", tool, err)
		}
	}
}

// tempDir makes a private directory for a runtime's config and state,
// removed (after unmounting whatever the runtime left mounted there) at
// the end of the test.
func tempDir(t *testing.T, what string) string {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	dir := filepath.Join(os.TempDir(), Tag+"-"+what+"-"+hex.EncodeToString(b))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unmountUnder(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// unmountUnder lazily unmounts every mount below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			mounts = append(mounts, fields[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", m, err)
		}
	}
}

// busyboxRootfs writes a tar of a minimal root filesystem: Debian's static
// busybox and the applets the tests use.
func busyboxRootfs(t *testing.T, path string) {
	t.Helper()
	bb := ""
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if out, err := exec.Command("file", "-L", p).Output(); err == nil && strings.Contains(string(out), "statically linked") {
			bb = p
			break
		}
	}
	if bb == "" {
		harness.Missing(t, "no static busybox (Debian busybox-static; tests/deps.sh installs it)")
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	now := time.Now()
	for _, d := range []string{"bin/", "tmp/", "proc/", "sys/", "dev/", "etc/"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: now})
	}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(data)), ModTime: now})
	tw.Write(data)
	for _, applet := range []string{"sh", "nc", "sleep", "echo", "cat", "ip", "hostname", "true"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777, ModTime: now})
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// allocations lists a node's IPAM allocations (every network's store).
func allocations(t *testing.T, n *harness.Node) []nodeipam.Allocation {
	t.Helper()
	nf, err := n.NodeFile()
	if err != nil {
		t.Fatal(err)
	}
	nets, _ := os.ReadDir(nf.IPAMDir)
	var out []nodeipam.Allocation
	for _, d := range nets {
		if !d.IsDir() {
			continue
		}
		a, err := nodeipam.List(filepath.Join(nf.IPAMDir, d.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a...)
	}
	return out
}

// peerBytes returns the WireGuard rx+tx bytes of n's peers.
func peerBytes(t *testing.T, n *harness.Node) int64 {
	t.Helper()
	d, err := n.WGDevice()
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, p := range d.Peers {
		sum += p.ReceiveBytes + p.TransmitBytes
	}
	return sum
}
