package manifests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/wgcni/wgcni/tests/harness"
)

// What the manifests must agree with. The capability sets are the ones the
// README's least-privilege table documents; change both together.
const (
	// kubeadmPodNetworkCIDR is the value the README's kubeadm walkthrough
	// passes to `kubeadm init --pod-network-cidr`.
	kubeadmPodNetworkCIDR = "10.244.0.0/16"
	wgcniNamespace        = "wgcni-system"
	daemonSetName         = "wgcnid"
	daemonContainer       = "wgcnid"
	wireguardSocketDir    = "/var/run/wireguard"
	tunDevice             = "/dev/net/tun"
	cniBinDir             = "/opt/cni/bin"
	cniConfDir            = "/etc/cni/net.d"
	conflistFile          = "10-wgcni.conflist"
	defaultRunDir         = "/run/wgcni" // the plugins' default when runDir is absent
)

var wantCaps = map[string][]string{
	"wgcnid":      {"NET_ADMIN"},
	"install-cni": {},
	"wireguard":   {"NET_ADMIN"}, // conf/patches/userspace-sidecar.yaml
}

// requiredDaemonFlags must be passed explicitly in the DaemonSet: their
// defaults are wrong or meaningless in a pod (hostname, plain-HTTP localhost
// etcd, no TLS).
var requiredDaemonFlags = []string{
	"etcd-endpoints", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
	"node-name", "cluster-cidr", "state-dir", "run-dir",
}

type manifest struct {
	file string
	kind string
	name string
	ns   string
}

type bundle struct {
	docs            []manifest
	namespaces      map[string]*corev1.Namespace
	serviceAccounts map[string]*corev1.ServiceAccount
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	daemonSets      map[string]*appsv1.DaemonSet
	deployments     map[string]*appsv1.Deployment
	roles           map[string]*rbacv1.Role
	roleBindings    map[string]*rbacv1.RoleBinding
	clusterRoles    map[string]*rbacv1.ClusterRole
	clusterBindings map[string]*rbacv1.ClusterRoleBinding
	// labels are every object's metadata.labels, by "Kind/name".
	labels map[string]map[string]string
}

// repoRoot finds the module root from the test's working directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := harness.FindRepo()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// readYAMLTree returns every *.yaml/*.yml file under dir, keyed by its path
// relative to dir.
func readYAMLTree(dir string) (map[string][]byte, error) {
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !(strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		files[rel] = data
		return nil
	})
	if err == nil && len(files) == 0 {
		err = fmt.Errorf("no YAML files under %s", dir)
	}
	return files, err
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeBundle decodes every document strictly into its k8s.io/api type:
// unknown fields, duplicate keys, wrong types and unknown kinds are errors.
func decodeBundle(files map[string][]byte) (*bundle, error) {
	b := &bundle{
		namespaces:      map[string]*corev1.Namespace{},
		serviceAccounts: map[string]*corev1.ServiceAccount{},
		configMaps:      map[string]*corev1.ConfigMap{},
		secrets:         map[string]*corev1.Secret{},
		daemonSets:      map[string]*appsv1.DaemonSet{},
		deployments:     map[string]*appsv1.Deployment{},
		roles:           map[string]*rbacv1.Role{},
		roleBindings:    map[string]*rbacv1.RoleBinding{},
		clusterRoles:    map[string]*rbacv1.ClusterRole{},
		clusterBindings: map[string]*rbacv1.ClusterRoleBinding{},
		labels:          map[string]map[string]string{},
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, file := range names {
		for i, doc := range docSeparator.Split(string(files[file]), -1) {
			var probe map[string]any
			if err := yaml.Unmarshal([]byte(doc), &probe); err != nil {
				return nil, fmt.Errorf("%s doc %d: %w", file, i, err)
			}
			if len(probe) == 0 {
				continue // only comments
			}
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				return nil, fmt.Errorf("%s doc %d: %w", file, i, err)
			}
			var obj interface {
				GetName() string
				GetNamespace() string
				GetLabels() map[string]string
			}
			var register func() error
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 Namespace":
				o := &corev1.Namespace{}
				obj, register = o, func() error { return put(b.namespaces, o.Name, o) }
			case "v1 ServiceAccount":
				o := &corev1.ServiceAccount{}
				obj, register = o, func() error { return put(b.serviceAccounts, o.Name, o) }
			case "v1 ConfigMap":
				o := &corev1.ConfigMap{}
				obj, register = o, func() error { return put(b.configMaps, o.Name, o) }
			case "v1 Secret":
				o := &corev1.Secret{}
				obj, register = o, func() error { return put(b.secrets, o.Name, o) }
			case "apps/v1 DaemonSet":
				o := &appsv1.DaemonSet{}
				obj, register = o, func() error { return put(b.daemonSets, o.Name, o) }
			case "apps/v1 Deployment":
				o := &appsv1.Deployment{}
				obj, register = o, func() error { return put(b.deployments, o.Name, o) }
			case "rbac.authorization.k8s.io/v1 Role":
				o := &rbacv1.Role{}
				obj, register = o, func() error { return put(b.roles, o.Name, o) }
			case "rbac.authorization.k8s.io/v1 RoleBinding":
				o := &rbacv1.RoleBinding{}
				obj, register = o, func() error { return put(b.roleBindings, o.Name, o) }
			case "rbac.authorization.k8s.io/v1 ClusterRole":
				o := &rbacv1.ClusterRole{}
				obj, register = o, func() error { return put(b.clusterRoles, o.Name, o) }
			case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
				o := &rbacv1.ClusterRoleBinding{}
				obj, register = o, func() error { return put(b.clusterBindings, o.Name, o) }
			default:
				return nil, fmt.Errorf("%s doc %d: no decoder for apiVersion %q kind %q (add it to the test)", file, i, tm.APIVersion, tm.Kind)
			}
			if err := decodeStrict([]byte(doc), obj); err != nil {
				return nil, fmt.Errorf("%s doc %d (%s): strict decode: %w", file, i, tm.Kind, err)
			}
			if obj.GetName() == "" {
				return nil, fmt.Errorf("%s doc %d (%s): metadata.name is empty", file, i, tm.Kind)
			}
			if err := register(); err != nil {
				return nil, fmt.Errorf("%s doc %d: %w", file, i, err)
			}
			b.docs = append(b.docs, manifest{file: file, kind: tm.Kind, name: obj.GetName(), ns: obj.GetNamespace()})
			b.labels[tm.Kind+"/"+obj.GetName()] = obj.GetLabels()
		}
	}
	return b, nil
}

// decodeStrict decodes like the API server with field validation "Strict":
// duplicate keys, unknown fields and fields differing only in case are errors.
// (sigs.k8s.io/yaml's UnmarshalStrict goes through encoding/json, which
// matches field names case-insensitively and so accepts
// "readOnlyRootFileSystem".)
func decodeStrict(doc []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := sigsjson.UnmarshalStrict(j, obj, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func put[T any](m map[string]T, name string, o T) error {
	if _, dup := m[name]; dup {
		return fmt.Errorf("%T %q defined twice", o, name)
	}
	m[name] = o
	return nil
}

type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

// checkBundle runs every semantic check. exampleConflist is the contract's
// conf/examples/10-wgcni.conflist, or nil when it does not exist yet.
func checkBundle(b *bundle, exampleConflist []byte) problems {
	var p problems

	ns, ok := b.namespaces[wgcniNamespace]
	if !ok {
		p.add("no Namespace %q", wgcniNamespace)
	} else if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		p.add("Namespace %s: label pod-security.kubernetes.io/enforce must be \"privileged\" (hostNetwork, hostPath and NET_ADMIN are refused by baseline)", wgcniNamespace)
	}
	for _, d := range b.docs {
		if d.kind != "Namespace" && !strings.HasPrefix(d.kind, "Cluster") && d.ns != wgcniNamespace {
			p.add("%s: %s/%s is in namespace %q, want %q", d.file, d.kind, d.name, d.ns, wgcniNamespace)
		}
	}

	ds, ok := b.daemonSets[daemonSetName]
	if !ok {
		p.add("no DaemonSet %q", daemonSetName)
		return p
	}
	ps := &ds.Spec.Template.Spec
	checkPod(&p, b, ds)

	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	used := map[string]bool{}
	var images []string
	all := append(append([]corev1.Container{}, ps.InitContainers...), ps.Containers...)
	for _, c := range all {
		checkContainerSecurity(&p, ps, c)
		checkResources(&p, c)
		images = append(images, c.Image)
		for _, m := range c.VolumeMounts {
			used[m.Name] = true
			if _, ok := vols[m.Name]; !ok {
				p.add("container %s: volumeMount %q has no volume", c.Name, m.Name)
			}
		}
	}
	for name := range vols {
		if !used[name] {
			p.add("volume %q is mounted by no container", name)
		}
	}
	for _, img := range images {
		if img != images[0] {
			p.add("containers use different images (%s, %s): the installed plugins and the daemon must come from one build", images[0], img)
		}
		if !strings.Contains(img, ":") || strings.HasSuffix(img, ":latest") {
			p.add("image %q: pin a version tag", img)
		}
	}

	daemon := findContainer(ps.Containers, daemonContainer)
	if daemon == nil {
		p.add("DaemonSet %s: no container %q", ds.Name, daemonContainer)
		return p
	}
	flags := checkDaemonFlags(&p, b, vols, daemon)

	runDir := flags["run-dir"]
	stateDir := flags["state-dir"]
	requireHostMount(&p, *daemon, vols, stateDir, corev1.HostPathDirectoryOrCreate, "--state-dir: key and IPAM dir; the host plugins use the same path")
	requireHostMount(&p, *daemon, vols, runDir, corev1.HostPathDirectoryOrCreate, "--run-dir: node.json for the host plugins")
	requireHostMount(&p, *daemon, vols, wireguardSocketDir, corev1.HostPathDirectoryOrCreate, "userspace WireGuard UAPI sockets")
	requireHostMount(&p, *daemon, vols, tunDevice, corev1.HostPathCharDev, "TUN for userspace WireGuard")

	checkProbes(&p, *daemon, flags["metrics-addr"])

	binaries := checkConflist(&p, b, ps, runDir, exampleConflist)
	checkInstaller(&p, ps, vols, binaries)
	checkConflistInstall(&p, ps, daemon, vols, flags)
	checkBundledEtcd(&p, b, vols, images[0])
	return p
}

// checkProbes: with --metrics-addr the daemon serves /healthz (liveness:
// the process answers) and /readyz (readiness: lease held, first sync
// done); both probes must use them, on the metrics port. Liveness must
// not be /readyz: an etcd outage would make the kubelet restart wgcnid,
// which in userspace mode takes the node's tunnel down.
func checkProbes(p *problems, c corev1.Container, metricsAddr string) {
	if metricsAddr == "" {
		if c.LivenessProbe != nil || c.ReadinessProbe != nil {
			p.add("container %s: probes need --metrics-addr (wgcnid serves /healthz and /readyz there)", c.Name)
		}
		return
	}
	i := strings.LastIndex(metricsAddr, ":")
	port, err := strconv.Atoi(metricsAddr[i+1:])
	if i < 0 || err != nil {
		p.add("container %s: --metrics-addr %q has no numeric port", c.Name, metricsAddr)
		return
	}
	host := metricsAddr[:i]
	for _, pr := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			p.add("container %s: %s must be an httpGet of %s", c.Name, pr.kind, pr.path)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != pr.path {
			p.add("container %s: %s path %q, want %s", c.Name, pr.kind, g.Path, pr.path)
		}
		got := g.Port.IntValue()
		if g.Port.Type == intstr.String {
			got = 0
			for _, cp := range c.Ports {
				if cp.Name == g.Port.StrVal {
					got = int(cp.ContainerPort)
				}
			}
		}
		if got != port {
			p.add("container %s: %s port %s is not --metrics-addr's port %d", c.Name, pr.kind, g.Port.String(), port)
		}
		// The kubelet probes the pod IP (the node IP with hostNetwork)
		// unless told otherwise: a loopback listener needs host 127.0.0.1.
		if strings.HasPrefix(host, "127.") && g.Host != host {
			p.add("container %s: %s must set host %s (wgcnid listens on loopback only)", c.Name, pr.kind, host)
		}
	}
}

func findContainer(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func checkPod(p *problems, b *bundle, ds *appsv1.DaemonSet) {
	ps := &ds.Spec.Template.Spec
	if ds.Spec.Selector == nil {
		p.add("DaemonSet %s: no selector", ds.Name)
	} else {
		for k, v := range ds.Spec.Selector.MatchLabels {
			if ds.Spec.Template.Labels[k] != v {
				p.add("DaemonSet %s: selector %s=%s does not match the pod template labels", ds.Name, k, v)
			}
		}
	}
	if !ps.HostNetwork {
		p.add("DaemonSet %s: hostNetwork must be true (device, bridge and routes live in the host namespace)", ds.Name)
	}
	if ps.HostPID || ps.HostIPC {
		p.add("DaemonSet %s: hostPID/hostIPC must be false (hostPID does not keep userspace WireGuard alive and exposes host processes)", ds.Name)
	}
	if ps.HostNetwork && ps.DNSPolicy != corev1.DNSDefault {
		p.add("DaemonSet %s: dnsPolicy %q, want Default (cluster DNS needs pod networking, which needs us)", ds.Name, ps.DNSPolicy)
	}
	if ps.PriorityClassName != "system-node-critical" {
		p.add("DaemonSet %s: priorityClassName %q, want system-node-critical", ds.Name, ps.PriorityClassName)
	}
	tolerateAll := false
	for _, t := range ps.Tolerations {
		if t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == "" {
			tolerateAll = true
		}
	}
	if !tolerateAll {
		p.add("DaemonSet %s: needs a toleration {operator: Exists} (no key, no effect) to run on control-plane and not-ready nodes", ds.Name)
	}
	if _, ok := b.serviceAccounts[ps.ServiceAccountName]; !ok {
		p.add("DaemonSet %s: serviceAccountName %q is not defined in the manifests", ds.Name, ps.ServiceAccountName)
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		p.add("DaemonSet %s: automountServiceAccountToken must be false (only the wgcnid container gets a token, projected)", ds.Name)
	}
	checkAPIAccess(p, b, ds)
}

func checkContainerSecurity(p *problems, ps *corev1.PodSpec, c corev1.Container) {
	want, documented := wantCaps[c.Name]
	if !documented {
		p.add("container %s: no documented capability set (add it to wantCaps and the README table)", c.Name)
	}
	sc := c.SecurityContext
	if sc == nil {
		p.add("container %s: no securityContext", c.Name)
		return
	}
	if sc.Privileged == nil || *sc.Privileged {
		p.add("container %s: privileged must be explicitly false", c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		p.add("container %s: allowPrivilegeEscalation must be false", c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		p.add("container %s: readOnlyRootFilesystem must be true", c.Name)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && ps.SecurityContext != nil {
		seccomp = ps.SecurityContext.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		p.add("container %s: seccompProfile must be RuntimeDefault", c.Name)
	}
	if sc.Capabilities == nil {
		p.add("container %s: capabilities must drop ALL", c.Name)
		return
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		p.add("container %s: capabilities.drop = %v, want [ALL]", c.Name, sc.Capabilities.Drop)
	}
	var got []string
	for _, c := range sc.Capabilities.Add {
		got = append(got, strings.TrimPrefix(string(c), "CAP_"))
	}
	sort.Strings(got)
	w := slices.Clone(want)
	sort.Strings(w)
	if documented && !slices.Equal(got, w) {
		p.add("container %s: capabilities.add = %v, documented %v", c.Name, got, w)
	}
}

func checkResources(p *problems, c corev1.Container) {
	r := c.Resources
	if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() {
		p.add("container %s: cpu and memory requests must be set", c.Name)
	}
	if r.Limits.Memory().IsZero() {
		p.add("container %s: memory limit must be set", c.Name)
	}
	if c.Name == daemonContainer && !r.Limits.Cpu().IsZero() {
		p.add("container %s: no CPU limit (userspace WireGuard encrypts in this container; throttling caps the node's throughput)", c.Name)
	}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkDaemonFlags parses the wgcnid container's command line against the
// contract's flag set and checks every value that can be checked statically.
// It returns the effective flag values (defaults filled in for paths).
func checkDaemonFlags(p *problems, b *bundle, vols map[string]corev1.Volume, c *corev1.Container) map[string]string {
	if len(c.Command) == 0 || path.Base(c.Command[0]) != "wgcnid" {
		p.add("container %s: command %v does not run wgcnid", c.Name, c.Command)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	flags := map[string]string{}
	rest := append(slices.Clone(c.Command[min(1, len(c.Command)):]), c.Args...)
	for _, a := range rest {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			p.add("container %s: argument %q: write flags as --name=value", c.Name, a)
			continue
		}
		if _, dup := flags[name]; dup {
			p.add("container %s: flag --%s given twice", c.Name, name)
		}
		flags[name] = value
		for _, m := range varRef.FindAllStringSubmatch(value, -1) {
			if _, ok := env[m[1]]; !ok {
				p.add("container %s: --%s uses $(%s), which is not in env", c.Name, name, m[1])
			}
		}
		if varRef.MatchString(value) {
			if _, known := wgcnidFlags[name]; !known {
				p.add("container %s: unknown wgcnid flag --%s", c.Name, name)
			}
			continue // value known only at run time
		}
		if err := checkFlagValue(name, value); err != nil {
			p.add("container %s: %v", c.Name, err)
		}
	}
	for _, f := range requiredDaemonFlags {
		if _, ok := flags[f]; !ok {
			p.add("container %s: --%s must be set explicitly", c.Name, f)
		}
	}
	if _, ok := flags["config"]; ok {
		p.add("container %s: use flags, not --config, so this test can see the values", c.Name)
	}

	// Node identity from the downward API.
	if v, ok := envFrom(env, flags["node-name"]); !ok || v.ValueFrom == nil || v.ValueFrom.FieldRef == nil || v.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		p.add("container %s: --node-name must be $(VAR) with VAR from fieldRef spec.nodeName", c.Name)
	}

	// Cluster CIDR and node prefix agree with kubeadm.
	if cc := flags["cluster-cidr"]; cc != kubeadmPodNetworkCIDR {
		p.add("container %s: --cluster-cidr=%s, but the kubeadm walkthrough uses --pod-network-cidr=%s", c.Name, cc, kubeadmPodNetworkCIDR)
	} else if pl, ok := flags["node-prefix-len"]; ok {
		_, n, _ := net.ParseCIDR(cc)
		ones, bits := n.Mask.Size()
		if l, err := strconv.Atoi(pl); err != nil || l <= ones || l > bits-2 {
			p.add("container %s: --node-prefix-len=%s does not fit inside %s", c.Name, pl, cc)
		}
	}

	// etcd: endpoints and TLS files from one Secret, mounted read-only.
	secretName := ""
	if e := flags["etcd-endpoints"]; varRef.MatchString(e) {
		v, ok := envFrom(env, e)
		if !ok || v.ValueFrom == nil || v.ValueFrom.SecretKeyRef == nil {
			p.add("container %s: --etcd-endpoints must come from a Secret (secretKeyRef)", c.Name)
		} else {
			secretName = v.ValueFrom.SecretKeyRef.Name
			if s, ok := b.secrets[secretName]; ok {
				val := s.StringData[v.ValueFrom.SecretKeyRef.Key]
				if val == "" {
					val = string(s.Data[v.ValueFrom.SecretKeyRef.Key])
				}
				checkHTTPSEndpoints(p, "Secret "+secretName, val)
			}
		}
	} else {
		checkHTTPSEndpoints(p, "--etcd-endpoints", e)
	}
	for _, f := range []string{"etcd-cafile", "etcd-certfile", "etcd-keyfile"} {
		file := flags[f]
		if file == "" {
			continue
		}
		var mount *corev1.VolumeMount
		for i := range c.VolumeMounts {
			if c.VolumeMounts[i].MountPath == path.Dir(file) {
				mount = &c.VolumeMounts[i]
			}
		}
		if mount == nil {
			p.add("container %s: --%s=%s is not inside any mount", c.Name, f, file)
			continue
		}
		v := vols[mount.Name]
		if v.Secret == nil {
			p.add("container %s: --%s=%s: volume %q is not a Secret", c.Name, f, file, mount.Name)
			continue
		}
		if !mount.ReadOnly {
			p.add("container %s: Secret volume %q must be mounted readOnly", c.Name, mount.Name)
		}
		if secretName != "" && v.Secret.SecretName != secretName {
			p.add("container %s: --%s reads Secret %q but --etcd-endpoints reads %q", c.Name, f, v.Secret.SecretName, secretName)
		}
		if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o077 != 0 {
			p.add("container %s: Secret volume %q: defaultMode must not give group/other access (private key)", c.Name, mount.Name)
		}
		found := false
		for _, it := range v.Secret.Items {
			if it.Path == path.Base(file) {
				found = true
				if s, ok := b.secrets[v.Secret.SecretName]; ok {
					if _, ok := s.StringData[it.Key]; !ok {
						if _, ok := s.Data[it.Key]; !ok {
							p.add("Secret %s: no key %q (needed for --%s)", s.Name, it.Key, f)
						}
					}
				}
			}
		}
		if !found {
			p.add("container %s: --%s=%s: Secret volume %q has no item with path %q", c.Name, f, file, mount.Name, path.Base(file))
		}
	}

	if flags["run-dir"] == "" {
		flags["run-dir"] = defaultRunDir
	}
	if flags["state-dir"] == "" {
		flags["state-dir"] = "/var/lib/wgcni"
	}
	return flags
}

func envFrom(env map[string]corev1.EnvVar, value string) (corev1.EnvVar, bool) {
	m := varRef.FindStringSubmatch(value)
	if m == nil || m[0] != value {
		return corev1.EnvVar{}, false
	}
	v, ok := env[m[1]]
	return v, ok
}

func checkHTTPSEndpoints(p *problems, where, list string) {
	if err := endpointList(list); err != nil {
		p.add("%s: etcd endpoints %q: %v", where, list, err)
		return
	}
	for _, e := range strings.Split(list, ",") {
		if !strings.HasPrefix(e, "https://") {
			p.add("%s: etcd endpoint %q is not https (the TLS files would be ignored)", where, e)
		}
	}
}

// requireHostMount checks that hostPath `path` is mounted writable at the same
// path in c: wgcnid writes paths into node.json that host processes follow.
func requireHostMount(p *problems, c corev1.Container, vols map[string]corev1.Volume, want string, typ corev1.HostPathType, why string) {
	for _, m := range c.VolumeMounts {
		if m.MountPath != want {
			continue
		}
		v := vols[m.Name]
		switch {
		case v.HostPath == nil:
			p.add("container %s: %s is mounted from %q, which is not a hostPath (%s)", c.Name, want, m.Name, why)
		case v.HostPath.Path != want:
			p.add("container %s: hostPath %s is mounted at %s; host and container paths must be equal (%s)", c.Name, v.HostPath.Path, want, why)
		case v.HostPath.Type == nil || *v.HostPath.Type != typ:
			p.add("container %s: hostPath %s must have type %s", c.Name, want, typ)
		}
		if m.ReadOnly {
			p.add("container %s: %s must be writable (%s)", c.Name, want, why)
		}
		return
	}
	p.add("container %s: no mount at %s (%s)", c.Name, want, why)
}

type cniPlugin struct {
	Type   string `json:"type"`
	RunDir string `json:"runDir"`
	IPAM   *struct {
		Type   string `json:"type"`
		RunDir string `json:"runDir"`
	} `json:"ipam"`
}

// checkCNIVersions: "cniVersion" is 1.0.0 so that libcni older than 1.2
// (containerd 1.6/1.7, which reject 1.1.0 results) loads the list, and
// "cniVersions" offers 1.1.0, which newer libcni (picked is what it chose)
// then uses.
func checkCNIVersions(p *problems, where string, raw []byte, picked string) {
	var v struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		p.add("%s: %v", where, err)
		return
	}
	if v.CNIVersion != "1.0.0" {
		p.add("%s: cniVersion %q, want 1.0.0 (containerd 1.6's libcni cannot load 1.1.0)", where, v.CNIVersion)
	}
	if !slices.Contains(v.CNIVersions, "1.0.0") || !slices.Contains(v.CNIVersions, "1.1.0") {
		p.add("%s: cniVersions %q, want [1.0.0 1.1.0]", where, v.CNIVersions)
	}
	if picked != "1.1.0" {
		p.add("%s: libcni %s picks cniVersion %q, want 1.1.0", where, "v1.3", picked)
	}
}

// checkConflist finds the ConfigMap key holding the conflist, parses it with
// libcni (what the runtime does) and checks runDir against the daemon. It
// returns the binaries the conflist needs installed.
func checkConflist(p *problems, b *bundle, ps *corev1.PodSpec, runDir string, example []byte) []string {
	var cm *corev1.ConfigMap
	for _, c := range b.configMaps {
		if _, ok := c.Data[conflistFile]; ok {
			cm = c
		}
	}
	if cm == nil {
		p.add("no ConfigMap with key %s", conflistFile)
		return nil
	}
	raw := []byte(cm.Data[conflistFile])
	list, err := libcni.NetworkConfFromBytes(raw)
	if err != nil {
		p.add("ConfigMap %s: %s: %v", cm.Name, conflistFile, err)
		return nil
	}
	checkCNIVersions(p, "ConfigMap "+cm.Name, raw, list.CNIVersion)
	var binaries []string
	for i, pl := range list.Plugins {
		var c cniPlugin
		dec := json.NewDecoder(bytes.NewReader(pl.Bytes))
		if err := dec.Decode(&c); err != nil {
			p.add("ConfigMap %s: plugin %d: %v", cm.Name, i, err)
			continue
		}
		binaries = append(binaries, c.Type)
		if c.IPAM != nil && c.IPAM.Type != "" {
			binaries = append(binaries, c.IPAM.Type)
		}
		if c.Type != "wgcni" {
			continue
		}
		rd := c.RunDir
		if rd == "" {
			rd = defaultRunDir
		}
		if rd != runDir {
			p.add("ConfigMap %s: wgcni runDir %q differs from wgcnid --run-dir %q", cm.Name, rd, runDir)
		}
		if c.IPAM == nil || c.IPAM.Type != "wgcni-ipam" {
			p.add("ConfigMap %s: wgcni plugin must use ipam type wgcni-ipam", cm.Name)
		} else if c.IPAM.RunDir != "" && c.IPAM.RunDir != runDir {
			p.add("ConfigMap %s: ipam runDir %q differs from wgcnid --run-dir %q", cm.Name, c.IPAM.RunDir, runDir)
		}
	}
	if len(binaries) == 0 || binaries[0] != "wgcni" {
		p.add("ConfigMap %s: the first plugin must be wgcni, got %v", cm.Name, binaries)
	}
	if example != nil {
		var a, e any
		if err := json.Unmarshal(raw, &a); err != nil {
			p.add("ConfigMap %s: %v", cm.Name, err)
		} else if err := json.Unmarshal(example, &e); err != nil {
			p.add("conf/examples/%s: %v", conflistFile, err)
		} else if !reflect.DeepEqual(a, e) {
			p.add("ConfigMap %s: conflist differs from conf/examples/%s (the contract's conflist)", cm.Name, conflistFile)
		}
	}

	// The ConfigMap must be what the installer reads.
	mounted := false
	for _, v := range ps.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == cm.Name {
			mounted = true
		}
	}
	if !mounted {
		p.add("ConfigMap %s is not mounted by the DaemonSet", cm.Name)
	}
	sort.Strings(binaries)
	return slices.Compact(binaries)
}

var installLoop = regexp.MustCompile(`for b in ([^;\n]+);`)

// checkInstaller finds the init container that writes /opt/cni/bin on the
// host and checks that its script installs exactly the binaries the
// conflist names.
func checkInstaller(p *problems, ps *corev1.PodSpec, vols map[string]corev1.Volume, binaries []string) {
	var inst *corev1.Container
	var binMount string
	for i := range ps.InitContainers {
		c := &ps.InitContainers[i]
		for _, m := range c.VolumeMounts {
			if v := vols[m.Name]; v.HostPath != nil && v.HostPath.Path == cniBinDir {
				inst, binMount = c, m.MountPath
				checkWritableDir(p, c, m, v)
			}
		}
	}
	if inst == nil {
		p.add("no init container mounts hostPath %s", cniBinDir)
		return
	}
	script := strings.Join(append(slices.Clone(inst.Command), inst.Args...), "\n")
	m := installLoop.FindStringSubmatch(script)
	if m == nil {
		p.add("container %s: no `for b in ...;` install loop in its script", inst.Name)
	} else {
		got := strings.Fields(m[1])
		sort.Strings(got)
		if !slices.Equal(got, binaries) {
			p.add("container %s: installs %v, the conflist needs %v", inst.Name, got, binaries)
		}
	}
	if !strings.Contains(script, binMount+"/$b") {
		p.add("container %s: script never uses %s", inst.Name, binMount+"/$b")
	}
}

// checkConflistInstall checks that wgcnid installs the conflist
// (--cni-conflist, --cni-conf-dir): from the ConfigMap mounted read-only in
// its container into a writable mount of the host's /etc/cni/net.d. Only
// wgcnid may write it, once the node holds its lease: a conflist written
// earlier (by an init container) turns the node Ready while every CNI ADD
// still fails.
func checkConflistInstall(p *problems, ps *corev1.PodSpec, daemon *corev1.Container, vols map[string]corev1.Volume, flags map[string]string) {
	for _, c := range append(slices.Clone(ps.InitContainers), ps.Containers...) {
		if c.Name == daemon.Name {
			continue
		}
		for _, m := range c.VolumeMounts {
			if v := vols[m.Name]; v.HostPath != nil && v.HostPath.Path == cniConfDir {
				p.add("container %s mounts %s: only wgcnid may write the conflist, once the node can serve CNI ADDs", c.Name, cniConfDir)
			}
		}
	}
	src, dir := flags["cni-conflist"], flags["cni-conf-dir"]
	if src == "" {
		p.add("container %s: no --cni-conflist: nothing installs the conflist", daemon.Name)
		return
	}
	if dir == "" {
		dir = cniConfDir
	}
	var fromConfigMap, toHost bool
	for _, m := range daemon.VolumeMounts {
		v := vols[m.Name]
		switch {
		case v.ConfigMap != nil && src == m.MountPath+"/"+conflistFile:
			fromConfigMap = true
			if !m.ReadOnly {
				p.add("container %s: ConfigMap volume %q must be mounted readOnly", daemon.Name, m.Name)
			}
		case v.HostPath != nil && v.HostPath.Path == cniConfDir && m.MountPath == dir:
			toHost = true
			checkWritableDir(p, daemon, m, v)
		}
	}
	if !fromConfigMap {
		p.add("container %s: --cni-conflist=%s is not %s in a ConfigMap mount", daemon.Name, src, conflistFile)
	}
	if !toHost {
		p.add("container %s: --cni-conf-dir=%s is not a mount of hostPath %s", daemon.Name, dir, cniConfDir)
	}
}

func checkWritableDir(p *problems, c *corev1.Container, m corev1.VolumeMount, v corev1.Volume) {
	if m.ReadOnly {
		p.add("container %s: %s must be writable", c.Name, v.HostPath.Path)
	}
	if v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
		p.add("container %s: hostPath %s must be DirectoryOrCreate (a fresh node may not have it)", c.Name, v.HostPath.Path)
	}
}

func loadExampleConflist(t *testing.T, root string) []byte {
	data, err := os.ReadFile(filepath.Join(root, "conf", "examples", conflistFile))
	if os.IsNotExist(err) {
		t.Logf("conf/examples/%s does not exist yet: not comparing with it", conflistFile)
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestKubernetesManifests(t *testing.T) {
	root := repoRoot(t)
	files, err := readYAMLTree(filepath.Join(root, "conf", "kubernetes"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := decodeBundle(files)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("decoded %d documents from %d files", len(b.docs), len(files))
	for _, pr := range checkBundle(b, loadExampleConflist(t, root)) {
		t.Error(pr)
	}
}
