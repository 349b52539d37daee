package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// host is a lab machine: a harness node namespace (network) plus a mount
// and UTS namespace held by a sleeping process, in which the node's
// components run. The mount namespace gives the node private, writable
// views of the host paths Kubernetes writes to (/etc, /var, /opt,
// /usr/libexec as overlays whose upper layers live in the run directory;
// /run as a tmpfs), so nothing is ever written to the machine's own
// /etc/cni, /opt/cni, /var/lib/kubelet or /etc/kubernetes.
type host struct {
	*harness.Node
	holder *harness.Process
	// mntNS is the holder's mount namespace (as /proc/PID/ns/mnt reads),
	// recorded once it is set up: stop kills by it, never by a PID that
	// may have been reused. mntRef holds that namespace open until stop
	// is done: a namespace's id is an inode number the kernel hands out
	// again (lowest free first) as soon as the namespace is gone, and
	// every `ip netns exec` of the other test suites makes a mount
	// namespace; without the reference a late stop would SIGKILL whatever
	// process got the id next.
	mntNS  string
	mntRef *os.File
	// cgroup is the node's cgroup root (kubelet's cgroupRoot), made in
	// every cgroup v1 hierarchy and removed with everything in it.
	cgroup string
}

// sysctls kubelet insists on (it writes them when they differ). They are
// machine-wide, so each node sees files holding these values bind-mounted
// over them in its mount namespace, and the machine's own stay untouched.
var sysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

const holderScript = `set -eu
D="$1"; NAME="$2"
hostname "$NAME"
for d in /etc /var /opt /usr/libexec; do
  [ -d "$d" ] || continue
  mkdir -p "$D/root$d/upper" "$D/root$d/work"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$D/root$d/upper,workdir=$D/root$d/work" "$d"
done
# A fresh node: no CNI configuration or plugins of the machine's own (e.g.
# podman's bridge conflist), removed in the overlay only.
rm -rf /etc/cni/net.d /opt/cni
mount -t tmpfs -o mode=0755 tmpfs /run
for f in "$D"/sysctl/*; do
  mount --bind "$f" "/proc/sys/$(basename "$f" | tr . /)"
done
touch "$D/holder.ready"
exec sleep infinity
`

// newHost adds a node namespace and starts its holder.
func (l *Lab) newHost() (*host, error) {
	n, err := l.C.AddBareNode()
	if err != nil {
		return nil, err
	}
	h := &host{Node: n, cgroup: "/" + l.C.Cfg.Tag + "-" + l.C.RunID + "-" + n.Name}
	sd := filepath.Join(n.Dir, "sysctl")
	if err := os.MkdirAll(sd, 0o755); err != nil {
		return nil, err
	}
	for k, v := range sysctls {
		if err := os.WriteFile(filepath.Join(sd, strings.ReplaceAll(k, "/", ".")), []byte(v+"\n"), 0o644); err != nil {
			return nil, err
		}
	}
	// nsenter --net, not `ip netns exec`: the latter remounts /sys and
	// hides the cgroup hierarchies that kubelet and runc need.
	cmd := n.NsenterCommand(context.Background(), "unshare", "--mount", "--uts", "--propagation", "private",
		"/bin/sh", "-c", holderScript, "holder", n.Dir, n.Name)
	if h.holder, err = n.StartCmd("holder", cmd); err != nil {
		return nil, err
	}
	l.onClose(h.stop)
	if err := harness.WaitFor(10*time.Second, "mount namespace of "+n.Name, func() (bool, error) {
		if !h.holder.Running() {
			return false, fmt.Errorf("holder exited: %v (%s)", h.holder.Err(), tail(filepath.Join(n.Dir, "holder.log"), 10))
		}
		_, err := os.Stat(filepath.Join(n.Dir, "holder.ready"))
		return err == nil, nil
	}); err != nil {
		return nil, err
	}
	own, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return nil, err
	}
	nsPath := fmt.Sprintf("/proc/%d/ns/mnt", h.holder.PID())
	if h.mntRef, err = os.Open(nsPath); err != nil {
		return nil, fmt.Errorf("holder of %s: hold its mount namespace: %w", n.Name, err)
	}
	if h.mntNS, err = os.Readlink(nsPath); err != nil || h.mntNS == own {
		h.mntRef.Close()
		h.mntRef = nil
		return nil, fmt.Errorf("holder of %s: no mount namespace of its own (%q, %v)", n.Name, h.mntNS, err)
	}
	if err := h.makeCgroups(); err != nil {
		return nil, err
	}
	// kubeadm's preflight demands these of every node (a kubeadm user
	// sets them in /etc/sysctl.d); they are per network namespace.
	if _, err := h.Run(10*time.Second, "sysctl", "-w", "net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"); err != nil {
		return nil, err
	}
	return h, nil
}

// Command runs argv inside the node: its network, mount and UTS
// namespaces.
func (h *host) Command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(h.holder.PID()), "-m", "-n", "-u", "--"}, argv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// Run runs argv inside the node and returns its combined output.
func (h *host) Run(timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := h.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("on %s: %v: %w: %s", h.Name, argv, err, out)
	}
	return string(out), nil
}

// Start starts a long-running component inside the node.
func (h *host) Start(name string, argv ...string) (*harness.Process, error) {
	return h.StartCmd(name, h.Command(context.Background(), argv...))
}

const cgroupFS = "/sys/fs/cgroup"

// v1Hierarchies are the mounted cgroup v1 hierarchies (cpu, memory, ...,
// name=systemd).
func v1Hierarchies() ([]string, error) {
	ents, err := os.ReadDir(cgroupFS)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && e.Name() != "unified" {
			out = append(out, filepath.Join(cgroupFS, e.Name()))
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no cgroup v1 hierarchy under " + cgroupFS)
	}
	return out, nil
}

// makeCgroups creates the node's cgroup root in every v1 hierarchy;
// cpuset needs its cpus and mems filled in before anything can join.
func (h *host) makeCgroups() error {
	hs, err := v1Hierarchies()
	if err != nil {
		return err
	}
	for _, hier := range hs {
		dir := filepath.Join(hier, h.cgroup)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if filepath.Base(hier) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(hier, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return fmt.Errorf("%s/%s: %w", dir, f, err)
				}
			}
		}
	}
	return nil
}

// stop kills every process of the node: those in its cgroup root (the
// containers), then those in its mount namespace (containerd, shims,
// kubelet, kube-proxy, the holder), each by PID; then removes its cgroups.
func (h *host) stop() {
	removeCgroup(h.cgroup)
	if h.mntNS != "" && h.mntRef != nil {
		killMountNS(h.mntNS)
	}
	if h.holder != nil {
		h.holder.Kill()
	}
	removeCgroup(h.cgroup)
	if h.mntRef != nil {
		h.mntRef.Close() // only now may the id go to another namespace
		h.mntRef = nil
	}
}

// removeCgroup kills the processes in cgroup root (every hierarchy,
// cgroup2's unified tree too) and removes its directories, deepest first.
func removeCgroup(root string) {
	// An empty root would be every hierarchy's top: every process on the
	// machine.
	if strings.Trim(root, "/") == "" {
		return
	}
	hs, _ := v1Hierarchies()
	hs = append(hs, filepath.Join(cgroupFS, "unified"))
	for attempt := 0; attempt < 50; attempt++ {
		left := 0
		for _, hier := range hs {
			var dirs []string
			_ = filepath.WalkDir(filepath.Join(hier, root), func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				data, _ := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs"))
				for _, f := range strings.Fields(string(data)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
				if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
					left++
				}
			}
		}
		if left == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killMountNS SIGKILLs every process whose mount namespace is want (a
// node's, never ours), by PID, and waits for them to go.
func killMountNS(want string) {
	if own, err := os.Readlink("/proc/self/ns/mnt"); err != nil || own == want {
		return
	}
	for attempt := 0; attempt < 50; attempt++ {
		ents, _ := os.ReadDir("/proc")
		found := 0
		for _, e := range ents {
			p, err := strconv.Atoi(e.Name())
			if err != nil || p == os.Getpid() {
				continue
			}
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p)); err == nil && ns == want {
				_ = syscall.Kill(p, syscall.SIGKILL)
				found++
			}
		}
		if found == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tail returns the last lines of a file.
func tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// Root is path as the node sees it (through its mount namespace), for
// reading files in its private /run or overlays from the test.
func (h *host) Root(path string) string {
	return fmt.Sprintf("/proc/%d/root%s", h.holder.PID(), path)
}
