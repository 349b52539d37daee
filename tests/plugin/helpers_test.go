// Package plugin_test drives the wgcni and wgcni-ipam binaries the way a
// container runtime does: built into a temp dir, executed with CNI_*
// environment variables inside a "node" network namespace the test creates,
// against "pod" namespaces it creates. Everything runs as root in
// namespaces named wgp-*, and is removed again, also when a test fails.
package plugin_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/wgcni/wgcni/tests/harness"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/tests/netnsdir"
)

// binDir holds the plugins built once for the whole package (TestMain).
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		return m.Run() // every test skips itself
	}
	dir, err := os.MkdirTemp("", "wgp-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	for _, pkg := range []string{
		"github.com/wgcni/wgcni/plugins/wgcni",
		"github.com/wgcni/wgcni/ipam/wgcni-ipam",
		"github.com/containernetworking/plugins/plugins/meta/portmap",
	} {
		cmd := exec.Command("go", "build", "-o", dir+"/", pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", pkg, err)
			return 1
		}
	}
	binDir = dir
	return m.Run()
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			harness.Missing(t, "%s (make deps)", tool)
		}
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newNetns creates a named netns (so ip/ping can enter it) and deletes it
// when the test ends.
func newNetns(t *testing.T, role string) string {
	t.Helper()
	name := "wgp-" + role + "-" + randHex(4)
	if err := netnsdir.Prepare(); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

func delNetns(t *testing.T, path string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "del", filepath.Base(path)).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", path, err, out)
	}
}

// testNode is one simulated node: its namespace and the node file wgcnid
// would have written.
type testNode struct {
	NS     string
	RunDir string
	Node   *nodefile.Node
}

func newNode(t *testing.T, podCIDR, gateway string) *testNode {
	t.Helper()
	dir := t.TempDir()
	n := &testNode{
		NS:     newNetns(t, "node"),
		RunDir: filepath.Join(dir, "run"),
		Node: &nodefile.Node{
			Name:        "n1",
			PodCIDR:     podCIDR,
			Gateway:     gateway,
			ClusterCIDR: "10.244.0.0/16",
			MTU:         1420,
			Bridge:      "wgcni0",
			Device:      "wgp-wg0",
			IPAMDir:     filepath.Join(dir, "ipam"),
		},
	}
	if err := nodefile.Write(n.RunDir, n.Node); err != nil {
		t.Fatal(err)
	}
	return n
}

// conf is the network config a runtime would pass to wgcni.
func (n *testNode) conf(version string, extra map[string]any) []byte {
	c := map[string]any{
		"cniVersion": version,
		"name":       "wgcni",
		"type":       "wgcni",
		"runDir":     n.RunDir,
		"ipMasq":     true,
		"ipam":       map[string]any{"type": "wgcni-ipam"},
	}
	for k, v := range extra {
		c[k] = v
	}
	b, _ := json.Marshal(c)
	return b
}

// withPrev adds prevResult (raw JSON) to a config.
func withPrev(conf, prev []byte) []byte {
	var c map[string]any
	_ = json.Unmarshal(conf, &c)
	c["prevResult"] = json.RawMessage(prev)
	b, _ := json.Marshal(c)
	return b
}

type cniArgs struct {
	ContainerID, Netns, IfName string
}

// cniCall runs binary (in binDir) in the node namespace exactly as a
// runtime does. cniErr is the decoded error JSON when it exits non-zero.
func (n *testNode) cniCall(t *testing.T, binary, command string, a cniArgs, stdin []byte) (stdout []byte, cniErr *types.Error) {
	t.Helper()
	out, cerr, err := n.cniCallErr(binary, command, a, stdin)
	if err != nil {
		t.Fatal(err)
	}
	return out, cerr
}

func (n *testNode) cniCallErr(binary, command string, a cniArgs, stdin []byte) ([]byte, *types.Error, error) {
	cmd := exec.Command("nsenter", "--net="+n.NS, filepath.Join(binDir, binary))
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + a.ContainerID,
		"CNI_NETNS=" + a.Netns,
		"CNI_IFNAME=" + a.IfName,
		"CNI_PATH=" + binDir,
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		var e types.Error
		if jerr := json.Unmarshal(stdout.Bytes(), &e); jerr != nil {
			return nil, nil, fmt.Errorf("%s %s exited %v with non-JSON stdout %q, stderr %q", binary, command, err, stdout.String(), stderr.String())
		}
		return nil, &e, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("run %s %s: %v (stderr %q)", binary, command, err, stderr.String())
	}
	return stdout.Bytes(), nil, nil
}

// mustCNI runs a command that must succeed.
func (n *testNode) mustCNI(t *testing.T, command string, a cniArgs, stdin []byte) []byte {
	t.Helper()
	out, cerr := n.cniCall(t, "wgcni", command, a, stdin)
	if cerr != nil {
		t.Fatalf("wgcni %s %+v: code %d: %s (%s)", command, a, cerr.Code, cerr.Msg, cerr.Details)
	}
	return out
}

// wantCNIError runs a command that must fail with code and a message
// containing every string in contains.
func (n *testNode) wantCNIError(t *testing.T, command string, a cniArgs, stdin []byte, code uint, contains ...string) *types.Error {
	t.Helper()
	out, cerr := n.cniCall(t, "wgcni", command, a, stdin)
	if cerr == nil {
		t.Fatalf("wgcni %s succeeded, want error code %d; output %s", command, code, out)
	}
	if cerr.Code != code {
		t.Fatalf("wgcni %s: code %d (%s), want %d", command, cerr.Code, cerr.Msg, code)
	}
	for _, s := range contains {
		if !strings.Contains(cerr.Msg, s) {
			t.Fatalf("wgcni %s: message %q does not mention %q", command, cerr.Msg, s)
		}
	}
	return cerr
}

// inNS runs f with the calling thread in the namespace at path.
func inNS(t *testing.T, path string, f func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// allocations lists the IP files in the node's wgcni-ipam store.
func (n *testNode) allocations(t *testing.T) map[string]string {
	t.Helper()
	dir := filepath.Join(n.Node.IPAMDir, "wgcni")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if e.Name() == "lock" || strings.HasPrefix(e.Name(), "last_reserved_ip") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = strings.ReplaceAll(string(b), "\r\n", "/")
	}
	return out
}

// ping runs ping inside netns path.
func ping(path, dst string) error {
	out, err := exec.Command("nsenter", "--net="+path, "ping", "-c", "1", "-W", "2", dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", dst, path, err, out)
	}
	return nil
}
