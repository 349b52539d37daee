package harness

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/pki"
)

// EtcdTLS is a certificate authority made at test time and the files a
// TLS etcd and its clients need. The cluster runs etcd with client-cert
// auth and etcd auth on: a client certificate's CommonName is its etcd
// user, and the daemons' user holds only the least-privilege role that
// docs/security.md documents.
type EtcdTLS struct {
	Dir string
	CA  string // CA certificate (PEM), what every side trusts
	// Server certificate for etcd (SANs: the underlay gateway, 127.0.0.1).
	ServerCert, ServerKey string
	// Root: the harness's own client (etcd user root).
	RootCert, RootKey string
	// Node: what wgcnid presents (etcd user NodeUser, role Role).
	NodeCert, NodeKey string
	// Rogue: a well-formed client certificate from a CA etcd does not trust.
	RogueCert, RogueKey string
	// PasswordUser is an etcd user with the same role, authenticated by
	// password (PasswordFile) instead of the certificate's CommonName.
	PasswordUser, PasswordFile string

	ca *CA
}

// Users and role the TLS cluster sets up.
const (
	EtcdNodeUser = "wgcni-node"
	EtcdRole     = "wgcni"
)

// newEtcdTLS writes a fresh CA and certificates into dir.
func newEtcdTLS(dir string, serverIPs ...netip.Addr) (*EtcdTLS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	t := &EtcdTLS{Dir: dir, PasswordUser: "wgcni-pw", PasswordFile: filepath.Join(dir, "wgcni-pw.password")}
	var err error
	if t.ca, err = NewCA(Tag + "-etcd-ca"); err != nil {
		return nil, err
	}
	t.CA = filepath.Join(dir, "ca.crt")
	if err := t.ca.WriteCert(t.CA); err != nil {
		return nil, err
	}
	if t.ServerCert, t.ServerKey, err = t.ca.Issue(dir, "etcd-server", true, serverIPs...); err != nil {
		return nil, err
	}
	if t.RootCert, t.RootKey, err = t.ca.Issue(dir, "root", false); err != nil {
		return nil, err
	}
	if t.NodeCert, t.NodeKey, err = t.ca.Issue(dir, EtcdNodeUser, false); err != nil {
		return nil, err
	}
	rogue, err := NewCA(Tag + "-rogue-ca")
	if err != nil {
		return nil, err
	}
	if t.RogueCert, t.RogueKey, err = rogue.Issue(filepath.Join(dir, "rogue"), EtcdNodeUser, false); err != nil {
		return nil, err
	}
	pw := make([]byte, 12)
	if _, err := rand.Read(pw); err != nil {
		return nil, err
	}
	if err := os.WriteFile(t.PasswordFile, []byte(hex.EncodeToString(pw)+"\n"), 0o600); err != nil {
		return nil, err
	}
	return t, nil
}

// NodeArgs are the wgcnid flags for a node with a valid certificate.
func (t *EtcdTLS) NodeArgs() []string {
	return []string{"--etcd-cafile", t.CA, "--etcd-certfile", t.NodeCert, "--etcd-keyfile", t.NodeKey}
}

// setupAuth creates the role and users and turns etcd auth on, through a
// root client (the same steps as docs/security.md's etcdctl commands).
func (t *EtcdTLS) setupAuth(ctx context.Context, root *clientv3.Client, prefix string) error {
	pw, err := os.ReadFile(t.PasswordFile)
	if err != nil {
		return err
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"user add root", func() error {
			_, err := root.UserAddWithOptions(ctx, "root", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		}},
		{"grant root", func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err }},
		{"role add " + EtcdRole, func() error { _, err := root.RoleAdd(ctx, EtcdRole); return err }},
		{"role grant-permission", func() error {
			_, err := root.RoleGrantPermission(ctx, EtcdRole, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"user add " + EtcdNodeUser, func() error {
			_, err := root.UserAddWithOptions(ctx, EtcdNodeUser, "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		}},
		{"grant " + EtcdNodeUser, func() error { _, err := root.UserGrantRole(ctx, EtcdNodeUser, EtcdRole); return err }},
		{"user add " + t.PasswordUser, func() error {
			_, err := root.UserAdd(ctx, t.PasswordUser, string(trimNL(pw)))
			return err
		}},
		{"grant " + t.PasswordUser, func() error { _, err := root.UserGrantRole(ctx, t.PasswordUser, EtcdRole); return err }},
		{"auth enable", func() error { _, err := root.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("etcd auth setup: %s: %w", s.what, err)
		}
	}
	return nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// CA is a throw-away certificate authority for test clusters: the
// product's (daemon/pki) writing files.
type CA struct {
	Cert *x509.Certificate
	ca   *pki.CA
}

// caValidity: a day is longer than any test run.
const caValidity = 24 * time.Hour

// NewCA makes a self-signed CA valid for a day.
func NewCA(cn string) (*CA, error) {
	ca, err := pki.NewCA(cn, caValidity)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: ca.Cert, ca: ca}, nil
}

// WriteCert writes the CA certificate (PEM) to path.
func (ca *CA) WriteCert(path string) error { return os.WriteFile(path, ca.ca.CertPEM, 0o600) }

// Issue writes <dir>/<cn>.crt and .key signed by ca and returns their
// paths: a client certificate, or with server a server+client one for
// localhost and ips.
func (ca *CA) Issue(dir, cn string, server bool, ips ...netip.Addr) (string, string, error) {
	spec := CertSpec{CommonName: cn, Server: server, IPs: ips}
	if server {
		spec.DNSNames = []string{"localhost"}
	}
	return ca.IssueCert(dir, cn, spec)
}

// CertSpec is what a certificate says: Kubernetes reads the user from
// CommonName and the groups from Organizations.
type CertSpec struct {
	CommonName    string
	Organizations []string
	// Server makes a server+client certificate for DNSNames and IPs.
	Server   bool
	DNSNames []string
	IPs      []netip.Addr
}

// IssueCert writes <dir>/<name>.crt and .key for spec, signed by ca, and
// returns their paths.
func (ca *CA) IssueCert(dir, name string, spec CertSpec) (string, string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	crtPEM, keyPEM, err := ca.ca.Issue(pki.Spec{CommonName: spec.CommonName, Organizations: spec.Organizations,
		Server: spec.Server, DNSNames: spec.DNSNames, IPs: spec.IPs, Validity: caValidity})
	if err != nil {
		return "", "", err
	}
	crt, kf := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(crt, crtPEM, 0o600); err != nil {
		return "", "", err
	}
	return crt, kf, os.WriteFile(kf, keyPEM, 0o600)
}

// WriteKey writes the CA's private key (PKCS#8 PEM, 0600) to path, for
// programs that sign with it (kube-controller-manager's CSR signer).
func (ca *CA) WriteKey(path string) error { return os.WriteFile(path, ca.ca.KeyPEM, 0o600) }
