// Package kube runs wgcni under a real Kubernetes (tests/kube/lab):
// upstream kube-apiserver, controller-manager, scheduler, kubelet,
// kube-proxy and containerd 2 in namespaces, wgcni installed with
// `kubectl apply -f conf/kubernetes/`, and what a Kubernetes user does
// first checked through it. `make kube-test` runs it (WGCNI_KUBE=1);
// `make test` does not (it needs bin/kube, `make kube-build`).
package kube

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
	"github.com/wgcni/wgcni/tests/kube/lab"
)

// KubeEnv turns the suite on (make kube-test sets it).
const KubeEnv = "WGCNI_KUBE"

func requireLab(t *testing.T) string {
	t.Helper()
	if os.Getenv(KubeEnv) != "1" {
		t.Skipf("the Kubernetes suite runs with %s=1 (make kube-test)", KubeEnv)
	}
	repo, err := harness.FindRepo()
	if err != nil {
		t.Fatal(err)
	}
	if m := lab.Missing(repo); len(m) > 0 {
		t.Fatalf("the Kubernetes lab needs: %v", m)
	}
	return repo
}

// figure prints one check's result in a fixed shape the report greps.
func figure(t *testing.T, name, format string, args ...any) {
	t.Helper()
	t.Logf("FIGURE %-34s %s", name, fmt.Sprintf(format, args...))
}

func TestKubernetes(t *testing.T) {
	repo := requireLab(t)
	start := time.Now()
	l, err := lab.New(lab.Config{Workers: 2, EtcdTLS: true, Logf: t.Logf})
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	defer l.Close()
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", l.C.DumpLogs(40))
		}
	}()
	figure(t, "cluster up (2 workers registered)", "%v", time.Since(start).Round(time.Second))
	k := kubectl{t: t, l: l}

	if out := k.run("get", "nodes", "--no-headers"); strings.Contains(out, " Ready") {
		t.Fatalf("a node is Ready before any network plugin is installed:\n%s", out)
	}

	// The install: wgcni's etcd credentials (the external-etcd switch:
	// the harness etcd with TLS and the least-privilege wgcni user), then
	// one kubectl apply of conf/kubernetes/.
	tls := l.C.Etcd.TLS
	installed := time.Now()
	k.run("apply", "-f", filepath.Join(repo, "conf/kubernetes/00-namespace.yaml"))
	k.run("-n", "wgcni-system", "create", "secret", "generic", "wgcni-etcd",
		"--from-literal=endpoints="+l.C.Etcd.Endpoint,
		"--from-file=ca.crt="+tls.CA, "--from-file=tls.crt="+tls.NodeCert, "--from-file=tls.key="+tls.NodeKey)
	k.run("apply", "-f", filepath.Join(repo, "conf/kubernetes/"))
	k.waitFor(3*time.Minute, "every node Ready", func() bool {
		out := k.run("get", "nodes", "--no-headers")
		return strings.Count(out, " Ready ") == len(l.Workers)
	})
	figure(t, "kubectl apply -> all nodes Ready", "%v", time.Since(installed).Round(100*time.Millisecond))
	k.waitFor(2*time.Minute, "ds/wgcnid rolled out", func() bool {
		_, err := l.Kubectl(20*time.Second, "-n", "wgcni-system", "rollout", "status", "ds/wgcnid", "--timeout=15s")
		return err == nil
	})

	leases := map[string]netip.Prefix{}
	for _, w := range l.Workers {
		nf, err := nodefile.Read(w.Root("/run/wgcni"))
		if err != nil {
			t.Fatalf("node file of %s: %v", w.Name, err)
		}
		leases[w.Name] = netip.MustParsePrefix(nf.PodCIDR)
		figure(t, "PodCIDR lease "+w.Name, "%s (wgcnid), %s (controller-manager)", nf.PodCIDR,
			k.run("get", "node", w.Name, "-o", "jsonpath={.spec.podCIDR}"))
	}

	t.Run("pods", func(t *testing.T) { testPods(t, l, k.with(t), leases) })
}

// testPods: a Deployment of 6 pods spread over the workers, pod IPs from
// each node's lease, pod to pod across nodes (ICMP and TCP), and no
// plaintext pod packet on the underlay while it runs.
func testPods(t *testing.T, l *lab.Lab, k kubectl, leases map[string]netip.Prefix) {
	cls := &capture.Classifier{PodNets: []netip.Prefix{netip.MustParsePrefix(lab.ClusterCIDR)}, WGPorts: []uint16{51820}}
	cp, err := capture.Start(l.C.Underlay.Path(), "", cls, capture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k.applyYAML(webDeployment("web", 6))
	k.waitFor(3*time.Minute, "deployment web available", func() bool {
		_, err := l.Kubectl(20*time.Second, "rollout", "status", "deploy/web", "--timeout=15s")
		return err == nil
	})
	pods := k.pods("app=web")
	if len(pods) != 6 {
		t.Fatalf("%d pods of web, want 6", len(pods))
	}
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Node]++
		lease, ok := leases[p.Node]
		if !ok || !lease.Contains(p.IP) {
			t.Errorf("pod %s on %s has %s, outside the node's lease %s", p.Name, p.Node, p.IP, lease)
		}
	}
	if len(perNode) != len(l.Workers) {
		t.Errorf("pods on %d nodes (%v), want all %d workers", len(perNode), perNode, len(l.Workers))
	}
	figure(t, "deployment web", "6 pods, per node %v", perNode)
	var a, b pod
	for _, p := range pods[1:] {
		if p.Node != pods[0].Node {
			a, b = pods[0], p
			break
		}
	}
	out := k.run("exec", a.Name, "--", "ping", "-c", "5", "-i", "0.2", "-W", "2", b.IP.String())
	if !strings.Contains(out, " 0% packet loss") {
		t.Errorf("ping %s (%s) -> %s (%s):\n%s", a.Name, a.Node, b.Name, b.Node, out)
	}
	figure(t, "pod->pod ICMP across nodes", "%s", lastLine(out, "round-trip"))
	got := k.run("exec", a.Name, "--", "wget", "-qO-", "-T", "5", "http://"+b.IP.String()+":8080/")
	if strings.TrimSpace(got) != b.Name {
		t.Errorf("TCP %s -> %s:8080 answered %q, want %q", a.Name, b.IP, got, b.Name)
	}
	figure(t, "pod->pod TCP across nodes", "%s -> %s: %q", a.Node, b.Node, strings.TrimSpace(got))
	rep, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}
	figure(t, "underlay capture", "%s", rep)
	if rep.PlainPod() != 0 {
		t.Errorf("%d plaintext pod packets on the underlay:\n%s", rep.PlainPod(), rep.Excerpt(20))
	}
	if rep.WireGuard() == 0 {
		t.Errorf("no WireGuard packet on the underlay while pods talked across nodes")
	}
}

func webDeployment(name string, replicas int) string {
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
`, name, replicas, lab.ToolboxImage)
}

func lastLine(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return strings.TrimSpace(out)
}

// kubectl runs kubectl as the admin, failing the test on error.
type kubectl struct {
	t *testing.T
	l *lab.Lab
}

func (k kubectl) with(t *testing.T) kubectl { return kubectl{t: t, l: k.l} }

func (k kubectl) run(args ...string) string {
	k.t.Helper()
	out, err := k.l.Kubectl(2*time.Minute, args...)
	if err != nil {
		k.t.Fatal(err)
	}
	return out
}

func (k kubectl) applyYAML(y string) {
	k.t.Helper()
	if _, err := k.l.KubectlIn(time.Minute, y, "apply", "-f", "-"); err != nil {
		k.t.Fatal(err)
	}
}

func (k kubectl) waitFor(timeout time.Duration, what string, cond func() bool) {
	k.t.Helper()
	if err := harness.WaitFor(timeout, what, func() (bool, error) { return cond(), nil }); err != nil {
		out, _ := k.l.Kubectl(30*time.Second, "get", "pods", "-A", "-o", "wide")
		ev, _ := k.l.Kubectl(30*time.Second, "get", "events", "-A", "--sort-by=.lastTimestamp")
		k.t.Fatalf("%v\n%s\n%s", err, out, ev)
	}
}

type pod struct {
	Name, Node string
	IP         netip.Addr
}

func (k kubectl) pods(selector string) []pod {
	k.t.Helper()
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Spec     struct{ NodeName string }
			Status   struct{ PodIP string }
		}
	}
	if err := json.Unmarshal([]byte(k.run("get", "pods", "-l", selector, "-o", "json")), &list); err != nil {
		k.t.Fatal(err)
	}
	var out []pod
	for _, it := range list.Items {
		ip, err := netip.ParseAddr(it.Status.PodIP)
		if err != nil {
			k.t.Fatalf("pod %s: IP %q: %v", it.Metadata.Name, it.Status.PodIP, err)
		}
		out = append(out, pod{Name: it.Metadata.Name, Node: it.Spec.NodeName, IP: ip})
	}
	return out
}
