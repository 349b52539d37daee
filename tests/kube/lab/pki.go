package lab

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/wgcni/wgcni/tests/harness"
)

// pki is the cluster's certificate authority and the files kubeadm would
// write under /etc/kubernetes/pki: one CA for every component (kubeadm
// has three; one is enough for a lab), the API server's serving
// certificate, the service-account key pair and a client certificate per
// identity. Kubernetes reads the user from the CommonName and the groups
// from the Organizations.
type pki struct {
	dir    string
	ca     *harness.CA
	CACert string
	CAKey  string
	// SAKey signs service-account tokens; SAPub (a certificate holding
	// the public key) verifies them.
	SAKey, SAPub string
	// Server is the API server's serving certificate and key.
	ServerCert, ServerKey string
	// KubeletClient is what the API server presents to kubelets.
	KubeletClientCert, KubeletClientKey string
}

func newPKI(dir string, apiserverIPs ...netip.Addr) (*pki, error) {
	ca, err := harness.NewCA("kubernetes")
	if err != nil {
		return nil, err
	}
	p := &pki{dir: dir, ca: ca, CACert: filepath.Join(dir, "ca.crt"), CAKey: filepath.Join(dir, "ca.key"), SAKey: filepath.Join(dir, "sa.key"), SAPub: filepath.Join(dir, "sa.crt")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := ca.WriteCert(p.CACert); err != nil {
		return nil, err
	}
	if err := ca.WriteKey(p.CAKey); err != nil {
		return nil, err
	}
	// A second throw-away CA's key is a fine service-account signing key.
	sa, err := harness.NewCA("service-accounts")
	if err != nil {
		return nil, err
	}
	if err := sa.WriteKey(p.SAKey); err != nil {
		return nil, err
	}
	if err := sa.WriteCert(p.SAPub); err != nil {
		return nil, err
	}
	if p.ServerCert, p.ServerKey, err = ca.IssueCert(dir, "apiserver", harness.CertSpec{
		CommonName: "kube-apiserver", Server: true, IPs: apiserverIPs,
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}); err != nil {
		return nil, err
	}
	if p.KubeletClientCert, p.KubeletClientKey, err = ca.IssueCert(dir, "apiserver-kubelet-client", harness.CertSpec{
		CommonName: "kube-apiserver-kubelet-client", Organizations: []string{"system:masters"},
	}); err != nil {
		return nil, err
	}
	return p, nil
}

// kubeconfig writes <dir>/<name>.kubeconfig for user (CommonName) in
// groups, talking to server.
func (p *pki) kubeconfig(name, server, user string, groups ...string) (string, error) {
	crt, key, err := p.ca.IssueCert(p.dir, name, harness.CertSpec{CommonName: user, Organizations: groups})
	if err != nil {
		return "", err
	}
	ca, err := os.ReadFile(p.CACert)
	if err != nil {
		return "", err
	}
	path := filepath.Join(p.dir, name+".kubeconfig")
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: lab
  context: {cluster: lab, user: %s}
current-context: lab
`, server, base64.StdEncoding.EncodeToString(ca), name, crt, key, name)
	return path, os.WriteFile(path, []byte(data), 0o600)
}
