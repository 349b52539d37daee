package manifests

import (
	"net/url"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The bundled etcd (conf/kubernetes/15-etcd.yaml, daemon/etcdboot).
const (
	etcdFile        = "15-etcd.yaml"
	etcdDeployment  = "wgcni-etcd"
	componentLabel  = "app.kubernetes.io/component"
	controlPlaneKey = "node-role.kubernetes.io/control-plane"
	// defaults of wgcnid etcd-bootstrap's --client-secret and --ca-secret
	clientSecret = "wgcni-etcd"
	caSecret     = "wgcni-etcd-ca"
)

func init() {
	wantCaps["certs"] = []string{}
	wantCaps["etcd"] = []string{}
	wantCaps["auth"] = []string{}
}

// argMap reads --name=value arguments.
func argMap(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "="); ok && strings.HasPrefix(a, "--") {
			m[k] = v
		}
	}
	return m
}

// checkBundledEtcd: the external-etcd switch (`kubectl apply -f
// conf/kubernetes/ -l app.kubernetes.io/component!=etcd`) leaves out
// exactly the bundled etcd's objects; the bootstrap writes the Secret the
// DaemonSet mounts, with the port etcd listens on, for the prefix wgcnid
// uses, and may touch nothing else; every container is least privilege.
func checkBundledEtcd(p *problems, b *bundle, dsVols map[string]corev1.Volume, image string) {
	for _, d := range b.docs {
		labelled := b.labels[d.kind+"/"+d.name][componentLabel] == "etcd"
		if (d.file == etcdFile) != labelled {
			p.add("%s: %s/%s: %s=etcd must be on every object of %s and on nothing else (the external-etcd switch selects on it)", d.file, d.kind, d.name, componentLabel, etcdFile)
		}
	}
	dep, ok := b.deployments[etcdDeployment]
	if !ok {
		p.add("no Deployment %q (wgcni's own etcd)", etcdDeployment)
		return
	}
	ps := &dep.Spec.Template.Spec
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 || dep.Spec.Strategy.Type != "Recreate" {
		p.add("Deployment %s: one replica, strategy Recreate (one member on one data dir and host port)", dep.Name)
	}
	if !ps.HostNetwork || ps.DNSPolicy != corev1.DNSDefault {
		p.add("Deployment %s: hostNetwork with dnsPolicy Default (no pod network before wgcni)", dep.Name)
	}
	if _, ok := ps.NodeSelector[controlPlaneKey]; !ok {
		p.add("Deployment %s: nodeSelector %s (its data stays on that node)", dep.Name, controlPlaneKey)
	}
	if !slices.ContainsFunc(ps.Tolerations, func(t corev1.Toleration) bool {
		return t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == ""
	}) {
		p.add("Deployment %s: needs a toleration {operator: Exists} (control-plane taint, not-ready nodes)", dep.Name)
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		p.add("Deployment %s: automountServiceAccountToken must be false (only the certs init container gets a token)", dep.Name)
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	all := append(slices.Clone(ps.InitContainers), ps.Containers...)
	byName := map[string]corev1.Container{}
	for _, c := range all {
		checkContainerSecurity(p, ps, c)
		checkResources(p, c)
		byName[c.Name] = c
		for _, m := range c.VolumeMounts {
			if v := vols[m.Name]; v.Projected != nil && c.Name != "certs" {
				p.add("Deployment %s: container %s mounts the API token; only certs talks to the API", dep.Name, c.Name)
			}
		}
	}
	certs, cok := byName["certs"]
	auth, aok := byName["auth"]
	etcd, eok := byName["etcd"]
	if !cok || !aok || !eok || !slices.ContainsFunc(ps.InitContainers, func(c corev1.Container) bool { return c.Name == "certs" }) {
		p.add("Deployment %s: want init container certs and containers etcd and auth", dep.Name)
		return
	}
	for _, c := range []struct {
		c     corev1.Container
		phase string
	}{{certs, "certs"}, {auth, "auth"}} {
		if c.c.Image != image {
			p.add("Deployment %s: container %s runs %s, not the DaemonSet's %s (one build)", dep.Name, c.c.Name, c.c.Image, image)
		}
		if !slices.Equal(c.c.Command, []string{"/opt/wgcni/bin/wgcnid", "etcd-bootstrap", c.phase}) {
			p.add("Deployment %s: container %s: command %v, want wgcnid etcd-bootstrap %s", dep.Name, c.c.Name, c.c.Command, c.phase)
		}
	}
	ca, aa, ea := argMap(certs.Args), argMap(auth.Args), argMap(etcd.Args)
	if ea["client-cert-auth"] != "true" || ea["trusted-ca-file"] == "" {
		p.add("Deployment %s: etcd needs --client-cert-auth=true and --trusted-ca-file (the user is the certificate's CommonName)", dep.Name)
	}
	port := ca["client-port"]
	if port == "" || aa["client-port"] != port {
		p.add("Deployment %s: certs and auth must both say --client-port (got %q, %q)", dep.Name, port, aa["client-port"])
	}
	for _, u := range strings.Split(ea["listen-client-urls"], ",") {
		if pu, err := url.Parse(u); err != nil || pu.Scheme != "https" || pu.Port() != port {
			p.add("Deployment %s: etcd --listen-client-urls %q is not https on port %s", dep.Name, u, port)
		}
	}
	if ca["dir"] == "" || ca["dir"] != aa["dir"] || !strings.HasPrefix(ea["cert-file"], ca["dir"]+"/") {
		p.add("Deployment %s: certs writes %q, auth reads %q, etcd's --cert-file is %q: one directory", dep.Name, ca["dir"], aa["dir"], ea["cert-file"])
	}
	if ds := b.daemonSets[daemonSetName]; ds != nil {
		for _, c := range ds.Spec.Template.Spec.Containers {
			if c.Name == daemonContainer && argMap(c.Args)["etcd-prefix"] != aa["etcd-prefix"] {
				p.add("Deployment %s: auth grants --etcd-prefix %q, wgcnid uses %q", dep.Name, aa["etcd-prefix"], argMap(c.Args)["etcd-prefix"])
			}
		}
	}
	if v, ok := dsVols["etcd-tls"]; !ok || v.Secret == nil || v.Secret.SecretName != clientSecret {
		p.add("DaemonSet %s: volume etcd-tls must be the Secret %s that wgcnid etcd-bootstrap writes", daemonSetName, clientSecret)
	}
	// RBAC: the Deployment's ServiceAccount may create Secrets and get and
	// update only the two it owns.
	sa := ps.ServiceAccountName
	bound := false
	for _, rb := range b.roleBindings {
		for _, s := range rb.Subjects {
			if s.Kind == "ServiceAccount" && s.Name == sa {
				bound = true
				role, ok := b.roles[rb.RoleRef.Name]
				if rb.RoleRef.Kind != "Role" || !ok {
					p.add("RoleBinding %s: binds %s to %s %s, not a Role of the manifests", rb.Name, sa, rb.RoleRef.Kind, rb.RoleRef.Name)
					continue
				}
				for _, r := range role.Rules {
					if !slices.Equal(r.Resources, []string{"secrets"}) {
						p.add("Role %s: grants %v; the bootstrap needs secrets only", role.Name, r.Resources)
					}
					for _, v := range r.Verbs {
						named := v == "get" || v == "update"
						if !(v == "create" && len(r.ResourceNames) == 0) && !(named && slices.Equal(r.ResourceNames, []string{clientSecret, caSecret})) {
							p.add("Role %s: verb %s on %v: want create, and get/update on exactly %s and %s", role.Name, v, r.ResourceNames, clientSecret, caSecret)
						}
					}
				}
			}
		}
	}
	if !bound {
		p.add("Deployment %s: ServiceAccount %q is bound to no Role", dep.Name, sa)
	}
}

// checkAPIAccess: wgcnid reads its Node (--pod-cidr-from-node) and nothing
// else: a projected token in the wgcnid container only, a ClusterRole
// with get on nodes only.
func checkAPIAccess(p *problems, b *bundle, ds *appsv1.DaemonSet) {
	ps := &ds.Spec.Template.Spec
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	for _, c := range append(slices.Clone(ps.InitContainers), ps.Containers...) {
		for _, m := range c.VolumeMounts {
			if vols[m.Name].Projected != nil && c.Name != daemonContainer {
				p.add("DaemonSet %s: container %s mounts the API token; only wgcnid reads the API", ds.Name, c.Name)
			}
		}
	}
	for _, crb := range b.clusterBindings {
		for _, s := range crb.Subjects {
			if s.Kind != "ServiceAccount" || s.Name != ps.ServiceAccountName {
				continue
			}
			cr, ok := b.clusterRoles[crb.RoleRef.Name]
			if !ok {
				p.add("ClusterRoleBinding %s: ClusterRole %s is not in the manifests", crb.Name, crb.RoleRef.Name)
				continue
			}
			for _, r := range cr.Rules {
				if !slices.Equal(r.Resources, []string{"nodes"}) || !slices.Equal(r.Verbs, []string{"get"}) {
					p.add("ClusterRole %s: %v on %v; wgcnid needs get nodes only", cr.Name, r.Verbs, r.Resources)
				}
			}
		}
	}
}
