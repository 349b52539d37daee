package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// Worker is a node that runs pods: containerd 2 with runc, kubelet and
// kube-proxy, each inside the node's namespaces.
type Worker struct {
	*host
	Containerd, Kubelet, KubeProxy *harness.Process
}

// PauseImage is the sandbox image kubelet 1.34 and containerd 2.4 expect.
const PauseImage = "registry.k8s.io/pause:3.10.1"

// containerdConfig is containerd 2's config (version 3) for a lab node.
// Debian's containernetworking-plugins (/usr/lib/cni) provide loopback,
// which containerd runs for every pod, as kubeadm's kubernetes-cni
// package does in /opt/cni/bin.
// Its socket and shims live in the node's private /run; its root in the
// run directory. runc cannot raise the OOM score without
// CAP_SYS_RESOURCE, which this machine lacks (restrict_oom_score_adj).
const containerdConfig = `version = 3
root = '%[1]s/containerd'
state = '/run/containerd'
disabled_plugins = ['io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs', 'io.containerd.snapshotter.v1.devmapper', 'io.containerd.snapshotter.v1.blockfile', 'io.containerd.snapshotter.v1.erofs']
[grpc]
  address = '/run/containerd/containerd.sock'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '%[2]s'
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '%[3]s'
        Root = '/run/containerd/runc'
        SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.reference]
      runtime_type = 'io.containerd.runc.v2'
      cni_conf_dir = '/etc/cni/reference.d'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.reference.options]
        BinaryName = '%[3]s'
        Root = '/run/containerd/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/opt/cni/bin', '/usr/lib/cni']
    conf_dir = '/etc/cni/net.d'
`

// ReferenceRuntimeClass runs a pod with the reference conflist (the
// bridge and host-local plugins of Debian's containernetworking-plugins)
// instead of wgcni: containerd's runtime handler "reference" reads its
// own CNI config dir. Pod start figures compare the two on one cluster.
const ReferenceRuntimeClass = "reference"

const referenceConflist = `{"cniVersion": "1.0.0", "name": "reference", "plugins": [
  {"type": "bridge", "bridge": "cni-ref0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.250.%d.0/24"}]]}}]}
`

// kubeletConfig is kubeadm's KubeletConfiguration with what a node in a
// namespace needs on top: cgroupfs under the node's own cgroup root,
// cgroup v1 accepted, swap ignored, no iptables chains of its own.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[1]s}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: %[2]s
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
clusterDNS: [%[3]s]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
readOnlyPort: 0
rotateCertificates: false
volumePluginDir: %[4]s/volume-plugins
enforceNodeAllocatable: [pods]
makeIPTablesUtilChains: false
resolvConf: %[4]s/resolv.conf
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi"}
serializeImagePulls: false
`

// kubeProxyConfig: iptables mode; no conntrack table sizes or timeouts,
// which are machine-wide sysctls.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %[1]s}
mode: iptables
clusterCIDR: %[2]s
hostnameOverride: %[3]s
healthzBindAddress: ""
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

// AddWorker adds a worker: namespaces, containerd with the lab's images,
// kubelet and kube-proxy; it returns once the node is registered.
func (l *Lab) AddWorker() (*Worker, error) {
	h, err := l.newHost()
	if err != nil {
		return nil, err
	}
	w := &Worker{host: h}
	l.mu.Lock()
	l.Workers = append(l.Workers, w)
	l.mu.Unlock()
	dir := filepath.Join(h.Dir, "k8s")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return w, err
	}
	write := func(name, data string) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, []byte(data), 0o600)
	}
	ctrConf, err := write("containerd.toml", fmt.Sprintf(containerdConfig, dir, PauseImage, "/usr/sbin/runc"))
	if err != nil {
		return w, err
	}
	// containerd finds its shim on PATH.
	path := l.Bin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if w.Containerd, err = h.Start("containerd", "env", "PATH="+path, l.bin("containerd"), "--config", ctrConf); err != nil {
		return w, err
	}
	if err := harness.WaitFor(30*time.Second, "containerd on "+h.Name, func() (bool, error) {
		_, err := h.Run(5*time.Second, l.bin("ctr"), "--address", "/run/containerd/containerd.sock", "version")
		return err == nil, nil
	}); err != nil {
		return w, err
	}
	refDir := h.Root("/etc/cni/reference.d")
	if err := os.MkdirAll(refDir, 0o755); err != nil {
		return w, err
	}
	if err := os.WriteFile(filepath.Join(refDir, "10-reference.conflist"), []byte(fmt.Sprintf(referenceConflist, h.Index)), 0o644); err != nil {
		return w, err
	}
	if err := l.importImages(w); err != nil {
		return w, err
	}
	if _, err := write("resolv.conf", "nameserver "+h.UnderlayIP.String()+"\n"); err != nil {
		return w, err
	}
	kc, err := write("kubelet.yaml", fmt.Sprintf(kubeletConfig, l.pki.CACert, h.cgroup, ClusterDNS, dir))
	if err != nil {
		return w, err
	}
	nodeKC, err := l.pki.kubeconfig("kubelet-"+h.Name, l.APIServer, "system:node:"+h.Name, "system:nodes")
	if err != nil {
		return w, err
	}
	if w.Kubelet, err = h.Start("kubelet", "env", "PATH="+path, l.bin("kubelet"), "--config", kc, "--kubeconfig", nodeKC,
		"--root-dir", filepath.Join(dir, "kubelet"), "--cert-dir", filepath.Join(dir, "kubelet-pki"),
		"--hostname-override", h.Name, "--node-ip", h.UnderlayIP.String(), "--v", "1"); err != nil {
		return w, err
	}
	proxyKC, err := l.pki.kubeconfig("kube-proxy-"+h.Name, l.APIServer, "system:kube-proxy")
	if err != nil {
		return w, err
	}
	pc, err := write("kube-proxy.yaml", fmt.Sprintf(kubeProxyConfig, proxyKC, ClusterCIDR, h.Name))
	if err != nil {
		return w, err
	}
	if w.KubeProxy, err = h.Start("kube-proxy", l.bin("kube-proxy"), "--config", pc); err != nil {
		return w, err
	}
	err = harness.WaitFor(90*time.Second, "node "+h.Name+" registered", func() (bool, error) {
		if !w.Kubelet.Running() {
			return false, fmt.Errorf("kubelet on %s exited: %s", h.Name, tail(w.Kubelet.LogPath, 20))
		}
		_, err := l.Kubectl(10*time.Second, "get", "node", h.Name)
		return err == nil, nil
	})
	if err == nil {
		l.Cfg.Logf("lab: worker %s registered (%s)", h.Name, h.UnderlayIP)
	}
	return w, err
}

// Ctr runs containerd's ctr on the worker in the k8s.io namespace.
func (w *Worker) Ctr(l *Lab, args ...string) (string, error) {
	return w.Run(2*time.Minute, append([]string{l.bin("ctr"), "--address", "/run/containerd/containerd.sock", "-n", "k8s.io"}, args...)...)
}

// importImages loads every image of the lab into the worker's containerd.
func (l *Lab) importImages(w *Worker) error {
	for _, tarball := range l.Images {
		if _, err := w.Ctr(l, "images", "import", "--platform", "linux/amd64", tarball); err != nil {
			return fmt.Errorf("import %s on %s: %w", filepath.Base(tarball), w.Name, err)
		}
	}
	return nil
}

// RemoveWorker takes a worker away as if the machine died: every process
// of it killed, its namespaces and cgroups removed. Its Node object and
// its etcd lease are left to expire.
func (l *Lab) RemoveWorker(w *Worker) {
	w.stop()
	w.Shutdown()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Workers = slices.DeleteFunc(l.Workers, func(x *Worker) bool { return x == w })
}
