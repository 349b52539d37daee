package security

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// capNetAdmin is CAP_NET_ADMIN's bit in /proc/PID/status Cap* masks.
const capNetAdmin = 1 << 12

func procCaps(t *testing.T, pid int) (uid string, eff, bnd uint64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Uid:":
			uid = f[1]
		case "CapEff:":
			eff, _ = strconv.ParseUint(f[1], 16, 64)
		case "CapBnd:":
			bnd, _ = strconv.ParseUint(f[1], 16, 64)
		}
	}
	return uid, eff, bnd
}

// TestLeastPrivilege runs wgcnid with CAP_NET_ADMIN and nothing else, the
// way the shipped manifests do: as root with every other capability
// dropped from the bounding set (Kubernetes DaemonSet), and as an
// unprivileged user holding CAP_NET_ADMIN as an ambient capability
// (systemd unit: User=wgcni, AmbientCapabilities=CAP_NET_ADMIN, with its
// own /run/wireguard). Both nodes must join the mesh, run pods that reach
// pods on a normal node, and the daemon and its userspace WireGuard
// process must hold exactly CAP_NET_ADMIN.
func TestLeastPrivilege(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	c := harness.Start(t, cfg(), 1)
	n1 := c.Nodes()[0]
	p1 := n1.MustAddPod(t)
	const drop = "--inh-caps=-all,+net_admin"
	variants := []struct {
		name    string
		uid     int
		wrapper func(n *harness.Node) []string
	}{
		{"root, bounding set = CAP_NET_ADMIN (DaemonSet)", 0, func(*harness.Node) []string {
			return []string{"setpriv", drop, "--bounding-set=-all,+net_admin", "--"}
		}},
		{"uid 65534, ambient CAP_NET_ADMIN (systemd unit)", 65534, func(n *harness.Node) []string {
			// The unit gets /run/wireguard as its RuntimeDirectory; here
			// a private tmpfs owned by the user stands in for it.
			script := "mount -t tmpfs -o mode=0755,uid=65534,gid=65534 wgs-wg /var/run/wireguard && exec setpriv --reuid=65534 --regid=65534 --clear-groups " +
				drop + " --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin -- \"$@\""
			return []string{"unshare", "-m", "--propagation", "private", "sh", "-c", script, "wgcnid"}
		}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			n, err := c.AddBareNode()
			if err != nil {
				t.Fatal(err)
			}
			if v.uid != 0 {
				for _, d := range []string{n.StateDir, n.RunDir} {
					if err := os.Chown(d, v.uid, v.uid); err != nil {
						t.Fatal(err)
					}
				}
				// The plugins (root, run by the runtime) read the node file
				// and write IPAM state under the state dir: that is fine
				// for root. The dirs' parents must be traversable.
				if err := os.Chmod(n.Dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(c.Dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			n.Wrapper = v.wrapper(n)
			if err := n.StartDaemon(); err != nil {
				t.Fatal(err)
			}
			if _, err := n.WaitReady(30 * time.Second); err != nil {
				b, _ := os.ReadFile(n.LogPath)
				t.Fatalf("%v\n%s", err, tail(string(b), 3000))
			}
			uid, eff, bnd := procCaps(t, n.Daemon().PID())
			t.Logf("wgcnid pid %d: uid %s CapEff %#x CapBnd %#x", n.Daemon().PID(), uid, eff, bnd)
			if eff != capNetAdmin || bnd != capNetAdmin || uid != strconv.Itoa(v.uid) {
				t.Fatalf("wgcnid runs with uid %s CapEff %#x CapBnd %#x, want uid %d and only CAP_NET_ADMIN (%#x)", uid, eff, bnd, v.uid, capNetAdmin)
			}
			if b, err := os.ReadFile(filepath.Join(n.RunDir, n.Device+".pid")); err == nil {
				pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
				u, e, _ := procCaps(t, pid)
				t.Logf("userspace WireGuard host pid %d: uid %s CapEff %#x", pid, u, e)
				if e&^uint64(capNetAdmin) != 0 {
					t.Fatalf("userspace device has capabilities %#x beyond CAP_NET_ADMIN", e)
				}
			}
			p := n.MustAddPod(t)
			harness.Connect(t, p.NS, p1.IP, "pod on the least-privilege node -> pod on n1", 3)
			harness.Connect(t, p1.NS, p.IP, "pod on n1 -> pod on the least-privilege node", 3)
			if fi, err := os.Stat(filepath.Join(n.StateDir, "privatekey")); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("private key: %v %v", fi, err)
			}
			b, _ := os.ReadFile(n.LogPath)
			for _, bad := range []string{"permission denied", "operation not permitted"} {
				if strings.Contains(strings.ToLower(string(b)), bad) {
					t.Errorf("daemon log mentions %q:\n%s", bad, tail(string(b), 2000))
				}
			}
			fmt.Printf("LEAST PRIVILEGE %s: ready, pods connected, CapEff %#x\n", v.name, eff)
		})
	}
}
