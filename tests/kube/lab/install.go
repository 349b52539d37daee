package lab

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// ControlPlaneLabel is the label kubeadm puts on control-plane nodes;
// wgcni's bundled etcd (conf/kubernetes/15-etcd.yaml) runs on such a node.
const ControlPlaneLabel = "node-role.kubernetes.io/control-plane"

// ExternalEtcdSelector is the documented switch to an external etcd:
// `kubectl apply -f conf/kubernetes/ -l ExternalEtcdSelector` leaves the
// bundled etcd out.
const ExternalEtcdSelector = "app.kubernetes.io/component!=etcd"

// InstallWgcni installs wgcni the way docs/operating.md tells a kubeadm
// user to: `kubectl apply -f conf/kubernetes/` and nothing else (wgcni's
// own etcd bootstraps itself), or with external, the harness's TLS etcd
// (Config.EtcdTLS) as an external etcd: the wgcni-etcd Secret with its
// endpoint and least-privilege client certificate, then the apply with
// the bundled etcd left out. The lab's control plane is no kubelet node,
// so the first worker carries kubeadm's control-plane label for the
// bundled etcd. It returns once every worker is Ready and the DaemonSet
// has rolled out, and how long that took from the apply.
func (l *Lab) InstallWgcni(external bool) (time.Duration, error) {
	conf := filepath.Join(l.Repo, "conf", "kubernetes")
	apply := []string{"apply", "-f", conf}
	if external {
		tls := l.C.Etcd.TLS
		if tls == nil {
			return 0, fmt.Errorf("lab: an external etcd needs the TLS etcd (Config.EtcdTLS)")
		}
		if _, err := l.Kubectl(time.Minute, "apply", "-f", filepath.Join(conf, "00-namespace.yaml")); err != nil {
			return 0, err
		}
		if _, err := l.Kubectl(time.Minute, "-n", "wgcni-system", "create", "secret", "generic", "wgcni-etcd",
			"--from-literal=endpoints="+l.C.Etcd.Endpoint,
			"--from-file=ca.crt="+tls.CA, "--from-file=tls.crt="+tls.NodeCert, "--from-file=tls.key="+tls.NodeKey); err != nil {
			return 0, err
		}
		apply = append(apply, "-l", ExternalEtcdSelector)
	} else if _, err := l.Kubectl(time.Minute, "label", "node", l.Workers[0].Name, ControlPlaneLabel+"="); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := l.Kubectl(time.Minute, apply...); err != nil {
		return 0, err
	}
	if err := l.WaitNodesReady(4 * time.Minute); err != nil {
		return 0, err
	}
	took := time.Since(start)
	err := harness.WaitFor(2*time.Minute, "ds/wgcnid rolled out", func() (bool, error) {
		_, err := l.Kubectl(20*time.Second, "-n", "wgcni-system", "rollout", "status", "ds/wgcnid", "--timeout=15s")
		return err == nil, nil
	})
	return took, err
}

// WaitNodesReady waits until every worker is Ready.
func (l *Lab) WaitNodesReady(timeout time.Duration) error {
	var last string
	err := harness.WaitFor(timeout, "every node Ready", func() (bool, error) {
		out, err := l.Kubectl(20*time.Second, "get", "nodes", "--no-headers")
		last = out
		return err == nil && strings.Count(out, " Ready ") == len(l.Workers), nil
	})
	if err != nil {
		pods, _ := l.Kubectl(20*time.Second, "get", "pods", "-A", "-o", "wide")
		return fmt.Errorf("%w\n%s\n%s", err, last, pods)
	}
	return nil
}

// WebDeployment is a Deployment of busybox httpd pods answering their
// own name on port 8080, spread evenly over the workers.
func WebDeployment(name string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s}
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: %[1]s}}}
      containers:
      - name: web
        image: %[3]s
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
        ports: [{containerPort: 8080}]
`, name, replicas, ToolboxImage)
}
