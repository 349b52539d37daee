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

// tunNodeScript gives the wrapped command its own /dev/net/tun of the
// given mode, in a private mount namespace: the test proves both kinds of
// host (udev's 0666, devtmpfs/container 0600) whatever this machine has.
func tunNodeScript(mode string) string {
	return "mount -t tmpfs -o mode=0755 wgs-devnet /dev/net && mknod -m " + mode + " /dev/net/tun c 10 200 && "
}

// unitTUNAccess is the shipped unit's ExecStartPre=+ (run as root before
// the daemon), with this build's wgcnid and the test's stand-in group for
// the unit's Group=wgcni.
func unitTUNAccess(t *testing.T, c *harness.Cluster, gid int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Cfg.Repo, "conf", "systemd", "wgcnid.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStartPre=+/usr/local/bin/wgcnid "); ok {
			v = strings.Replace(v, "--group wgcni", "--group "+strconv.Itoa(gid), 1)
			return c.Bin("wgcnid") + " " + v
		}
	}
	t.Fatal("conf/systemd/wgcnid.service has no ExecStartPre=+/usr/local/bin/wgcnid ...")
	return ""
}

// TestLeastPrivilege runs wgcnid with CAP_NET_ADMIN and nothing else, the
// way the shipped manifests do: as root with every other capability
// dropped from the bounding set (Kubernetes DaemonSet), and as an
// unprivileged user holding CAP_NET_ADMIN as an ambient capability
// (systemd unit: User=wgcni, AmbientCapabilities=CAP_NET_ADMIN, with its
// own /run/wireguard, after the unit's root ExecStartPre). Each runs on a
// host whose /dev/net/tun is 0600 (devtmpfs, containers, hardened images)
// and on one where it is 0666 (udev on a desktop), each node with a TUN
// node of its own. Every node must join the mesh, run pods that reach
// pods on a normal node, and the daemon and its userspace WireGuard
// process must hold exactly CAP_NET_ADMIN. Without the unit's
// ExecStartPre on a 0600 host, wgcnid must fail saying why and how to fix
// it.
func TestLeastPrivilege(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) not installed")
	}
	c := harness.Start(t, cfg(), 1)
	n1 := c.Nodes()[0]
	p1 := n1.MustAddPod(t)
	const (
		nobody = 65534
		drop   = "--inh-caps=-all,+net_admin"
	)
	daemonSet := func(tun string) []string {
		return []string{"unshare", "-m", "--propagation", "private", "sh", "-c",
			tunNodeScript(tun) + "exec setpriv " + drop + " --bounding-set=-all,+net_admin -- \"$@\"", "wgcnid"}
	}
	unit := func(tun, pre string) []string {
		// The unit gets /run/wireguard as its RuntimeDirectory; here a
		// private tmpfs owned by the user stands in for it.
		if pre != "" {
			pre += " && "
		}
		script := tunNodeScript(tun) + pre +
			"mount -t tmpfs -o mode=0755,uid=65534,gid=65534 wgs-wg /var/run/wireguard && exec setpriv --reuid=65534 --regid=65534 --clear-groups " +
			drop + " --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin -- \"$@\""
		return []string{"unshare", "-m", "--propagation", "private", "sh", "-c", script, "wgcnid"}
	}
	pre := unitTUNAccess(t, c, nobody)
	variants := []struct {
		name    string
		uid     int
		wrapper []string
		fails   bool // wgcnid must exit naming the device node, its mode and the fix
	}{
		{"root, bounding set = CAP_NET_ADMIN (DaemonSet), tun 0600", 0, daemonSet("0600"), false},
		{"root, bounding set = CAP_NET_ADMIN (DaemonSet), tun 0666", 0, daemonSet("0666"), false},
		{"uid 65534, ambient CAP_NET_ADMIN (systemd unit), tun 0600", nobody, unit("0600", pre), false},
		{"uid 65534, ambient CAP_NET_ADMIN (systemd unit), tun 0666", nobody, unit("0666", pre), false},
		{"uid 65534 without the unit's tun-access, tun 0600", nobody, unit("0600", ""), true},
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
			n.Wrapper = v.wrapper
			if err := n.StartDaemon(); err != nil {
				t.Fatal(err)
			}
			if v.fails {
				select {
				case <-n.Daemon().Exited():
				case <-time.After(30 * time.Second):
					t.Fatal("wgcnid kept running without access to a 0600 /dev/net/tun")
				}
				b, _ := os.ReadFile(n.LogPath)
				for _, want := range []string{"/dev/net/tun (crw------- root:root)", "uid 65534", "tun-access --group"} {
					if !strings.Contains(string(b), want) {
						t.Errorf("wgcnid's error does not name %q:\n%s", want, tail(string(b), 2000))
					}
				}
				fmt.Printf("LEAST PRIVILEGE %s: refused as expected, naming the node, its mode and the fix\n", v.name)
				return
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
