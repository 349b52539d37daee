package manifests

import (
	"maps"
	"path/filepath"
	"strings"
	"testing"
)

// mutation breaks one thing in a copy of a shipped file. old must occur in the
// file exactly once, so a mutation that no longer applies fails loudly instead
// of silently testing nothing.
type mutation struct {
	name, file, old, new, want string
}

// applyMutation returns a copy of files with m applied.
func applyMutation(t *testing.T, files map[string][]byte, m mutation) map[string][]byte {
	t.Helper()
	src, ok := files[m.file]
	if !ok {
		t.Fatalf("no file %s", m.file)
	}
	if n := strings.Count(string(src), m.old); n != 1 {
		t.Fatalf("%q occurs %d times in %s, want exactly 1", m.old, n, m.file)
	}
	out := maps.Clone(files)
	out[m.file] = []byte(strings.Replace(string(src), m.old, m.new, 1))
	return out
}

// TestChecksCatchBrokenFiles proves the Kubernetes checks can fail: each
// mutation is a realistic mistake, and the checks must name it.
func TestChecksCatchBrokenFiles(t *testing.T) {
	root := repoRoot(t)
	files, err := readYAMLTree(filepath.Join(root, "conf", "kubernetes"))
	if err != nil {
		t.Fatal(err)
	}
	example := loadExampleConflist(t, root)
	const ds, cm, ns, sa, secret = "20-daemonset.yaml", "10-cni-config.yaml", "00-namespace.yaml", "01-serviceaccount.yaml", "examples/etcd-secret.yaml"
	initSecurity := "readOnlyRootFilesystem: true\n            runAsUser: 0\n            runAsNonRoot: false\n            capabilities:\n              drop: [\"ALL\"]\n            seccompProfile"
	for _, m := range []mutation{
		{"extra capability", ds, `add: ["NET_ADMIN"]`, `add: ["NET_ADMIN", "NET_RAW"]`, "capabilities.add"},
		{"capability missing", ds, `add: ["NET_ADMIN"]`, `add: []`, "capabilities.add"},
		{"drop not ALL", ds, "drop: [\"ALL\"]\n              add:", "drop: [\"NET_RAW\"]\n              add:", "want [ALL]"},
		{"privileged", ds, "privileged: false\n            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            # Root", "privileged: true\n            allowPrivilegeEscalation: false\n            readOnlyRootFilesystem: true\n            # Root", "privileged must be explicitly false"},
		{"writable root fs in init", ds, initSecurity, strings.Replace(initSecurity, "true", "false", 1), "readOnlyRootFilesystem"},
		{"misspelt field", ds, "readOnlyRootFilesystem: true\n            # Root", "readOnlyRootFileSystem: true\n            # Root", "strict decode"},
		{"duplicate key", ds, "hostNetwork: true", "hostNetwork: true\n      hostNetwork: true", "strict decode"},
		{"wrong type", ds, "maxUnavailable: 1", "maxUnavailable: [1]", "strict decode"},
		{"unknown kind", sa, "kind: ServiceAccount\nmetadata:", "kind: ServiceAcount\nmetadata:", "no decoder"},
		{"wgcnid may list nodes", sa, `verbs: ["get"]`, `verbs: ["get", "list"]`, "get nodes only"},
		{"token in install-cni", ds, "            - name: cni-bin\n              mountPath: /host/opt/cni/bin\n", "            - name: cni-bin\n              mountPath: /host/opt/cni/bin\n            - name: api-token\n              mountPath: /var/run/secrets/kubernetes.io/serviceaccount\n", "only wgcnid reads the API"},
		{"no hostNetwork", ds, "hostNetwork: true", "hostNetwork: false", "hostNetwork must be true"},
		{"hostPID", ds, "hostPID: false", "hostPID: true", "hostPID"},
		{"toleration too narrow", ds, "        - operator: Exists", "        - key: node-role.kubernetes.io/control-plane\n          operator: Exists", "toleration"},
		{"no priority class", ds, "priorityClassName: system-node-critical", "priorityClassName: system-cluster-critical", "priorityClassName"},
		{"token mounted", ds, "automountServiceAccountToken: false", "automountServiceAccountToken: true", "automountServiceAccountToken"},
		{"etcd object unlabelled", "15-etcd.yaml", "kind: RoleBinding\nmetadata:\n  name: wgcni-etcd-bootstrap\n  namespace: wgcni-system\n  labels:\n    app.kubernetes.io/name: wgcni-etcd\n    app.kubernetes.io/component: etcd\n", "kind: RoleBinding\nmetadata:\n  name: wgcni-etcd-bootstrap\n  namespace: wgcni-system\n  labels:\n    app.kubernetes.io/name: wgcni-etcd\n", "external-etcd switch"},
		{"etcd role lists secrets", "15-etcd.yaml", `verbs: ["get", "update"]`, `verbs: ["get", "update", "list"]`, "verb list"},
		{"etcd port mismatch", "15-etcd.yaml", "https://127.0.0.1:2479\n", "https://127.0.0.1:2379\n", "not https on port 2479"},
		{"etcd without client certs", "15-etcd.yaml", "--client-cert-auth=true", "--client-cert-auth=false", "client-cert-auth"},
		{"token in etcd container", "15-etcd.yaml", "            - name: data\n              mountPath: /var/lib/wgcni-etcd\n", "            - name: data\n              mountPath: /var/lib/wgcni-etcd\n            - name: api-token\n              mountPath: /var/run/secrets/kubernetes.io/serviceaccount\n", "only certs talks to the API"},
		{"PSA baseline", ns, "enforce: privileged", "enforce: baseline", "pod-security"},
		{"conflist runDir", cm, `"runDir": "/run/wgcni"`, `"runDir": "/run/elsewhere"`, "differs from wgcnid --run-dir"},
		{"conflist broken JSON", cm, `"cniVersion": "1.0.0",`, `"cniVersion": "1.0.0"`, "ConfigMap wgcni-cni-config"},
		{"conflist only 1.1.0", cm, `"cniVersion": "1.0.0",`, `"cniVersion": "1.1.0",`, "containerd 1.6"},
		{"conflist without cniVersions", cm, `"cniVersions": ["1.0.0", "1.1.0"],`, ``, "cniVersions"},
		{"run-dir without mount", ds, "--run-dir=/run/wgcni", "--run-dir=/run/wgcni2", "no mount at /run/wgcni2"},
		{"unknown flag", ds, "--log-level=info", "--log-levl=info", "unknown wgcnid flag --log-levl"},
		{"bad flag value", ds, "- --wireguard=auto", "- --wireguard=fast", "want one of"},
		{"flag without =", ds, "- --listen-port=51820", "- --listen-port\n            - \"51820\"", "--name=value"},
		{"liveness on readyz", ds, "path: /healthz", "path: /readyz", "livenessProbe path"},
		{"probe port differs", ds, "--metrics-addr=$(WGCNI_HOST_IP):9586", "--metrics-addr=$(WGCNI_HOST_IP):9587", "not --metrics-addr's port"},
		{"undefined env var", ds, "--endpoint-ip=$(WGCNI_HOST_IP)", "--endpoint-ip=$(HOST_IP)", "not in env"},
		{"node name not from spec.nodeName", ds, "fieldPath: spec.nodeName", "fieldPath: metadata.name", "spec.nodeName"},
		{"cluster CIDR differs from kubeadm", ds, "--cluster-cidr=10.244.0.0/16", "--cluster-cidr=10.96.0.0/12", "pod-network-cidr"},
		{"state dir host path differs", ds, "path: /var/lib/wgcni", "path: /var/lib/wgcni-x", "host and container paths must be equal"},
		{"state dir read-only", ds, "- name: state\n              mountPath: /var/lib/wgcni", "- name: state\n              mountPath: /var/lib/wgcni\n              readOnly: true", "must be writable"},
		{"tun not a char device", ds, "type: CharDevice", "type: File", "must have type CharDevice"},
		{"wireguard sockets elsewhere", ds, "mountPath: /var/run/wireguard", "mountPath: /run/wireguard", "no mount at /var/run/wireguard"},
		{"key readable by others", ds, "defaultMode: 0400", "defaultMode: 0444", "defaultMode"},
		{"secret writable", ds, "mountPath: /etc/wgcni/etcd\n              readOnly: true", "mountPath: /etc/wgcni/etcd\n              readOnly: false", "readOnly"},
		{"TLS file not in secret", ds, "--etcd-keyfile=/etc/wgcni/etcd/tls.key", "--etcd-keyfile=/etc/wgcni/etcd/client.key", "no item with path"},
		{"plain-text etcd", secret, "endpoints: https://10.0.0.11:2379,", "endpoints: http://10.0.0.11:2379,", "not https"},
		{"portmap not installed", ds, "for b in wgcni wgcni-ipam portmap; do", "for b in wgcni wgcni-ipam; do", "the conflist needs"},
		{"conflist written elsewhere", ds, "mountPath: /host/etc/cni/net.d", "mountPath: /host/etc/cni", "--cni-conf-dir=/host/etc/cni/net.d is not a mount of hostPath /etc/cni/net.d"},
		{"conflist not installed by wgcnid", ds, "            - --cni-conflist=/etc/wgcni/cni/10-wgcni.conflist\n", "", "no --cni-conflist"},
		{"conflist from elsewhere", ds, "--cni-conflist=/etc/wgcni/cni/10-wgcni.conflist", "--cni-conflist=/etc/wgcni/10-wgcni.conflist", "is not 10-wgcni.conflist in a ConfigMap mount"},
		{"init container writes the conflist", ds, "            - name: cni-bin\n              mountPath: /host/opt/cni/bin\n", "            - name: cni-bin\n              mountPath: /host/opt/cni/bin\n            - name: cni-net-d\n              mountPath: /host/etc/cni/net.d\n", "only wgcnid may write the conflist"},
		{"cni bin not DirectoryOrCreate", ds, "path: /opt/cni/bin\n            type: DirectoryOrCreate", "path: /opt/cni/bin\n            type: Directory", "DirectoryOrCreate"},
		{"CPU limit on daemon", ds, "limits:\n              memory: 256Mi", "limits:\n              cpu: 500m\n              memory: 256Mi", "no CPU limit"},
		{"unpinned image", ds, "image: ghcr.io/wgcni/wgcni:v0.1.0\n          imagePullPolicy: IfNotPresent\n          command: [\"/opt", "image: ghcr.io/wgcni/wgcni:latest\n          imagePullPolicy: IfNotPresent\n          command: [\"/opt", "pin a version tag"},
	} {
		t.Run(m.name, func(t *testing.T) {
			broken := applyMutation(t, files, m)
			b, err := decodeBundle(broken)
			var got []string
			if err != nil {
				got = []string{err.Error()}
			} else {
				got = checkBundle(b, example)
			}
			for _, g := range got {
				if strings.Contains(g, m.want) {
					t.Logf("caught: %s", g)
					return
				}
			}
			t.Errorf("mutation not caught: want a problem containing %q, got %q", m.want, got)
		})
	}
}
