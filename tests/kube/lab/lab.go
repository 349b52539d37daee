// Package lab builds a real Kubernetes cluster out of network namespaces
// on one machine: a control-plane node (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) and workers, each with its own
// containerd 2 + runc, kubelet and kube-proxy, configured the way kubeadm
// configures them, joined by the tests/harness underlay and with no route
// out. Images are built here from local binaries (no registry is
// reachable) and imported into every node's containerd.
//
// The Kubernetes binaries come from bin/kube (make kube-build builds
// them from the module proxy, tests/kube/build).
package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// Tag prefixes the lab's namespaces, cgroups and run directory, apart from
// the namespace suites' "wge".
const Tag = "wg8s"

// Cluster-wide ranges, kubeadm's defaults (--pod-network-cidr as the
// README tells kubeadm users).
const (
	ClusterCIDR = "10.244.0.0/16"
	ServiceCIDR = "10.96.0.0/12"
	ClusterDNS  = "10.96.0.10"
	// Version is the Kubernetes version tests/kube/build builds.
	Version = "v1.34.4"
)

// Config describes the lab.
type Config struct {
	Workers int // default 2
	// EtcdTLS gives the harness etcd (the wgcni etcd outside the cluster)
	// TLS and the least-privilege wgcni user.
	EtcdTLS bool
	Logf    func(string, ...any)
	KeepDir bool
}

// Lab is a running cluster.
type Lab struct {
	Cfg  Config
	C    *harness.Cluster
	Repo string
	// Bin is where the Kubernetes binaries are (bin/kube).
	Bin          string
	ControlPlane *host
	Workers      []*Worker
	APIServer    string // https://<control-plane IP>:6443
	Admin        string // the admin kubeconfig
	Images       []string

	pki      *pki
	mu       sync.Mutex
	cleanups []func()
}

// Binaries the lab needs in bin/kube.
var Binaries = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl",
	"containerd", "containerd-shim-runc-v2", "ctr", "coredns", "pause",
	"image/wgcnid", "image/wgcnictl", "image/wgcni", "image/wgcni-ipam", "image/portmap"}

// Missing lists what the lab needs and does not find.
func Missing(repo string) []string {
	missing := harness.Prereqs(repo)
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(repo, "bin", "kube", b)); err != nil {
			missing = append(missing, "bin/kube/"+b+" (make kube-build)")
		}
	}
	for _, t := range []string{"runc", "busybox", "iptables", "nsenter", "unshare"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if _, err := os.Stat(filepath.Join(cgroupFS, "memory")); err != nil {
		missing = append(missing, "cgroup v1 memory hierarchy")
	}
	return missing
}

// New builds the cluster: underlay, control plane, workers with their
// images imported, and waits until the API server answers and every
// worker is registered (NotReady until a network plugin is installed).
func New(cfg Config) (_ *Lab, err error) {
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	sweepCgroups(cfg.Logf)
	c, err := harness.New(harness.Config{Tag: Tag, EtcdTLS: cfg.EtcdTLS, Logf: cfg.Logf, KeepDir: cfg.KeepDir})
	if err != nil {
		return nil, err
	}
	l := &Lab{Cfg: cfg, C: c, Repo: c.Cfg.Repo, Bin: filepath.Join(c.Cfg.Repo, "bin", "kube")}
	defer func() {
		if err != nil {
			cfg.Logf("lab: %v\n%s", err, l.C.DumpLogs(30))
			l.Close()
		}
	}()
	if l.ControlPlane, err = l.newHost(); err != nil {
		return l, err
	}
	cpIP := l.ControlPlane.UnderlayIP
	l.APIServer = "https://" + cpIP.String() + ":6443"
	if l.pki, err = newPKI(filepath.Join(c.Dir, "pki"), cpIP, netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("127.0.0.1")); err != nil {
		return l, err
	}
	if l.Admin, err = l.pki.kubeconfig("admin", l.APIServer, "kubernetes-admin", "system:masters"); err != nil {
		return l, err
	}
	if err := l.startControlPlane(); err != nil {
		return l, err
	}
	if err := l.buildImages(); err != nil {
		return l, err
	}
	for i := 0; i < cfg.Workers; i++ {
		if _, err := l.AddWorker(); err != nil {
			return l, err
		}
	}
	return l, nil
}

func (l *Lab) onClose(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cleanups = append(l.cleanups, f)
}

// Close stops every component and removes every namespace, cgroup, mount
// and file of the lab.
func (l *Lab) Close() {
	l.mu.Lock()
	cl := l.cleanups
	l.cleanups = nil
	l.mu.Unlock()
	for i := len(cl) - 1; i >= 0; i-- {
		cl[i]()
	}
	l.C.Close()
}

// bin is the path of a Kubernetes binary.
func (l *Lab) bin(name string) string { return filepath.Join(l.Bin, name) }

// startControlPlane runs etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler in the control-plane namespace, with kubeadm's flags.
func (l *Lab) startControlPlane() error {
	cp := l.ControlPlane
	p := l.pki
	dir := filepath.Join(cp.Dir, "control-plane")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// The API server's own etcd (kubeadm's stacked etcd): loopback only.
	if _, err := cp.Start("etcd", "etcd", "--name", cp.Name, "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:12379", "--advertise-client-urls", "http://127.0.0.1:12379",
		"--listen-peer-urls", "http://127.0.0.1:12380", "--initial-advertise-peer-urls", "http://127.0.0.1:12380",
		"--initial-cluster", cp.Name+"=http://127.0.0.1:12380"); err != nil {
		return err
	}
	apiserver, err := cp.Start("kube-apiserver", l.bin("kube-apiserver"),
		"--advertise-address", cp.UnderlayIP.String(),
		"--secure-port", "6443",
		"--etcd-servers", "http://127.0.0.1:12379",
		"--client-ca-file", p.CACert,
		"--tls-cert-file", p.ServerCert, "--tls-private-key-file", p.ServerKey,
		"--kubelet-client-certificate", p.KubeletClientCert, "--kubelet-client-key", p.KubeletClientKey,
		"--kubelet-preferred-address-types", "InternalIP",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", p.SAPub, "--service-account-signing-key-file", p.SAKey,
		"--service-cluster-ip-range", ServiceCIDR,
		"--authorization-mode", "Node,RBAC",
		"--enable-admission-plugins", "NodeRestriction",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--cert-dir", filepath.Join(dir, "apiserver-certs"),
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	if err := harness.WaitFor(90*time.Second, "kube-apiserver /readyz", func() (bool, error) {
		if !apiserver.Running() {
			return false, fmt.Errorf("kube-apiserver exited: %s", tail(apiserver.LogPath, 5))
		}
		_, err := l.Kubectl(10*time.Second, "get", "--raw", "/readyz")
		return err == nil, nil
	}); err != nil {
		return err
	}
	kcm, err := p.kubeconfig("controller-manager", l.APIServer, "system:kube-controller-manager")
	if err != nil {
		return err
	}
	if _, err := cp.Start("kube-controller-manager", l.bin("kube-controller-manager"),
		"--kubeconfig", kcm, "--authentication-kubeconfig", kcm, "--authorization-kubeconfig", kcm,
		"--bind-address", "127.0.0.1",
		"--allocate-node-cidrs=true", "--cluster-cidr", ClusterCIDR, "--node-cidr-mask-size", "24",
		"--service-cluster-ip-range", ServiceCIDR,
		"--cluster-signing-cert-file", p.CACert, "--cluster-signing-key-file", p.CAKey,
		"--root-ca-file", p.CACert, "--service-account-private-key-file", p.SAKey,
		"--use-service-account-credentials=true",
		"--controllers", "*,bootstrapsigner,tokencleaner",
		"--leader-elect=false",
		// A lost node is noticed sooner than kubeadm's 40 s.
		"--node-monitor-grace-period", "20s",
	); err != nil {
		return err
	}
	sched, err := p.kubeconfig("scheduler", l.APIServer, "system:kube-scheduler")
	if err != nil {
		return err
	}
	if _, err := cp.Start("kube-scheduler", l.bin("kube-scheduler"),
		"--kubeconfig", sched, "--authentication-kubeconfig", sched, "--authorization-kubeconfig", sched,
		"--bind-address", "127.0.0.1", "--leader-elect=false"); err != nil {
		return err
	}
	// The controller-manager makes the default ServiceAccount of every
	// namespace; pods cannot be created before it exists.
	if err := harness.WaitFor(90*time.Second, "default ServiceAccount", func() (bool, error) {
		_, err := l.Kubectl(10*time.Second, "get", "serviceaccount", "default")
		return err == nil, nil
	}); err != nil {
		return err
	}
	_, err = l.KubectlIn(time.Minute, "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: "+ReferenceRuntimeClass+"}\nhandler: "+ReferenceRuntimeClass+"\n", "apply", "-f", "-")
	return err
}

// Kubectl runs kubectl as the cluster admin (inside the control-plane
// namespace: the API server is only reachable on the underlay).
func (l *Lab) Kubectl(timeout time.Duration, args ...string) (string, error) {
	return l.KubectlIn(timeout, "", args...)
}

// KubectlCmd is a kubectl command as the admin, to be started by the
// caller (e.g. a watch).
func (l *Lab) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	return l.ControlPlane.NsenterCommand(ctx, append([]string{l.bin("kubectl"), "--kubeconfig", l.Admin}, args...)...)
}

// KubectlIn is Kubectl with stdin.
func (l *Lab) KubectlIn(timeout time.Duration, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := l.KubectlCmd(ctx, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// sweepCgroups removes the cgroups (and the processes in them) of lab
// runs whose owner is gone; harness.SweepTag then removes their
// namespaces and directories.
func sweepCgroups(logf func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(cgroupFS, "memory", Tag+"-*"))
	for _, d := range dirs {
		parts := strings.SplitN(filepath.Base(d), "-", 3)
		if len(parts) < 3 {
			continue
		}
		owner := filepath.Join(os.TempDir(), Tag+"-"+parts[1], "owner.pid")
		if b, err := os.ReadFile(owner); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
				continue
			}
		}
		logf("lab: sweeping leftover cgroup %s", filepath.Base(d))
		removeCgroup("/" + filepath.Base(d))
	}
}
