// Package etcdboot bootstraps the etcd that conf/kubernetes/ brings for
// wgcni (wgcnid etcd-bootstrap), so that `kubectl apply -f
// conf/kubernetes/` is the whole install on a fresh cluster:
//
//   - certs (an init container of the etcd pod): the CA lives in the
//     Secret wgcni-etcd-ca, made once (create-if-absent, so two racing
//     pods agree on one CA); the Secret wgcni-etcd that wgcnid mounts gets
//     the endpoint and a client certificate for the least-privilege etcd
//     user (CommonName wgcni-node); etcd's serving certificate (for the
//     node's IP) and a root client certificate go to a directory shared
//     with the etcd container only.
//   - auth (a container beside etcd): once etcd answers, the role wgcni
//     (read-write on the prefix only), the users root and wgcni-node, and
//     authentication on; every step idempotent.
//
// A Secret wgcni-etcd that this package did not write is an operator's
// external etcd (docs/operating.md): certs refuses to touch it.
package etcdboot

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/wgcni/wgcni/daemon/kubeapi"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/pki"
)

// ManagedBy labels the Secrets this package writes.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "wgcnid-etcd-bootstrap"
)

// Files in Options.Dir.
const (
	CAFile         = "ca.crt"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
	RootCertFile   = "root.crt"
	RootKeyFile    = "root.key"
)

// Options are the flags of wgcnid etcd-bootstrap.
type Options struct {
	Namespace    string
	CASecret     string // the CA (certificate and key)
	ClientSecret string // what wgcnid mounts: endpoints, ca.crt, tls.crt, tls.key
	HostIP       netip.Addr
	ClientPort   int
	Dir          string // etcd's serving certificate and the root client certificate
	User, Role   string
	Prefix       string // wgcnid's --etcd-prefix
	CAValidity   time.Duration
	CertValidity time.Duration
}

// Endpoint is the client URL wgcnid gets.
func (o *Options) Endpoint() string {
	return "https://" + netip.AddrPortFrom(o.HostIP, uint16(o.ClientPort)).String()
}

func (o *Options) labels() map[string]string {
	return map[string]string{ManagedByLabel: ManagedBy, "app.kubernetes.io/part-of": "wgcni"}
}

// Certs makes or loads the CA, makes sure the client Secret matches it and
// the endpoint, and writes etcd's serving and root client certificates.
func Certs(ctx context.Context, api *kubeapi.Client, o *Options, log *slog.Logger) error {
	ca, err := ensureCA(ctx, api, o, log)
	if err != nil {
		return err
	}
	if err := ensureClientSecret(ctx, api, o, ca, log); err != nil {
		return err
	}
	if err := writeEtcdFiles(ca, o); err != nil {
		return err
	}
	log.Info("etcd certificates written", "dir", o.Dir, "endpoint", o.Endpoint())
	return nil
}

// writeEtcdFiles writes the CA certificate, etcd's serving certificate
// (the node's IP and loopback) and the root client certificate into o.Dir.
func writeEtcdFiles(ca *pki.CA, o *Options) error {
	srv, srvKey, err := ca.Issue(pki.Spec{CommonName: "wgcni-etcd", Server: true, Validity: o.CertValidity,
		IPs: []netip.Addr{o.HostIP, netip.MustParseAddr("127.0.0.1")}, DNSNames: []string{"localhost"}})
	if err != nil {
		return err
	}
	root, rootKey, err := ca.Issue(pki.Spec{CommonName: "root", Validity: o.CertValidity})
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{CAFile: ca.CertPEM, ServerCertFile: srv, ServerKeyFile: srvKey, RootCertFile: root, RootKeyFile: rootKey} {
		if err := nodefile.WriteFileAtomic(filepath.Join(o.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// ensureCA returns the CA of the CA Secret, creating both if absent.
func ensureCA(ctx context.Context, api *kubeapi.Client, o *Options, log *slog.Logger) (*pki.CA, error) {
	for {
		s, err := api.GetSecret(ctx, o.Namespace, o.CASecret)
		if err == nil {
			ca, err := pki.LoadCA(s.Data["ca.crt"], s.Data["ca.key"])
			if err != nil {
				return nil, fmt.Errorf("Secret %s/%s: %w", o.Namespace, o.CASecret, err)
			}
			return ca, nil
		}
		if !errors.Is(err, kubeapi.ErrNotFound) {
			return nil, err
		}
		ca, err := pki.NewCA("wgcni-etcd-ca", o.CAValidity)
		if err != nil {
			return nil, err
		}
		err = api.CreateSecret(ctx, kubeapi.NewSecret(o.Namespace, o.CASecret, o.labels(),
			map[string][]byte{"ca.crt": ca.CertPEM, "ca.key": ca.KeyPEM}))
		if err == nil {
			log.Info("etcd CA created", "secret", o.Namespace+"/"+o.CASecret)
			return ca, nil
		}
		if !errors.Is(err, kubeapi.ErrConflict) {
			return nil, err
		}
		// Another pod created it first: use that one.
	}
}

// ensureClientSecret makes the client Secret hold the endpoint and a
// certificate of ca for the user, creating or replacing it as needed.
func ensureClientSecret(ctx context.Context, api *kubeapi.Client, o *Options, ca *pki.CA, log *slog.Logger) error {
	for {
		cur, err := api.GetSecret(ctx, o.Namespace, o.ClientSecret)
		if err != nil && !errors.Is(err, kubeapi.ErrNotFound) {
			return err
		}
		if cur != nil {
			if cur.Metadata.Labels[ManagedByLabel] != ManagedBy {
				return fmt.Errorf("Secret %s/%s exists and was not written by wgcnid etcd-bootstrap: it points wgcnid at an external etcd, "+
					"so the bundled etcd must not run (apply conf/kubernetes/ with -l 'app.kubernetes.io/component!=etcd', docs/operating.md)",
					o.Namespace, o.ClientSecret)
			}
			if clientSecretValid(cur, o, ca) {
				return nil
			}
		}
		crt, key, err := ca.Issue(pki.Spec{CommonName: o.User, Validity: o.CertValidity})
		if err != nil {
			return err
		}
		s := kubeapi.NewSecret(o.Namespace, o.ClientSecret, o.labels(), map[string][]byte{
			"endpoints": []byte(o.Endpoint()), "ca.crt": ca.CertPEM, "tls.crt": crt, "tls.key": key})
		if cur == nil {
			err = api.CreateSecret(ctx, s)
		} else {
			s.Metadata.ResourceVersion = cur.Metadata.ResourceVersion
			err = api.ReplaceSecret(ctx, s)
		}
		if err == nil {
			log.Info("etcd client Secret written", "secret", o.Namespace+"/"+o.ClientSecret, "endpoint", o.Endpoint(), "user", o.User)
			return nil
		}
		if !errors.Is(err, kubeapi.ErrConflict) {
			return err
		}
	}
}

// clientSecretValid: same endpoint, same CA, a certificate of that CA for
// the user, valid for at least a tenth of its life more.
func clientSecretValid(s *kubeapi.Secret, o *Options, ca *pki.CA) bool {
	if string(s.Data["endpoints"]) != o.Endpoint() || !bytes.Equal(s.Data["ca.crt"], ca.CertPEM) {
		return false
	}
	pair, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
	if err != nil {
		return false
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil || leaf.Subject.CommonName != o.User {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return false
	}
	return time.Until(leaf.NotAfter) > leaf.NotAfter.Sub(leaf.NotBefore)/10
}

// Auth connects to the local etcd as root (waiting until it answers) and
// sets up the role, the users and authentication, idempotently.
func Auth(ctx context.Context, o *Options, log *slog.Logger) error {
	pair, err := tls.LoadX509KeyPair(filepath.Join(o.Dir, RootCertFile), filepath.Join(o.Dir, RootKeyFile))
	if err != nil {
		return fmt.Errorf("root client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(o.Dir, CAFile))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"https://127.0.0.1:" + strconv.Itoa(o.ClientPort)},
		TLS:         &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialTimeout: 5 * time.Second,
		Logger:      nil,
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cli.Status(c, cli.Endpoints()[0])
		cancel()
		if err == nil {
			break
		}
		log.Info("waiting for etcd", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	prefix := o.Prefix + "/"
	steps := []struct {
		what string
		do   func() error
	}{
		{"user add root", func() error {
			_, err := cli.UserAddWithOptions(ctx, "root", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		}},
		{"grant root", func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err }},
		{"role add " + o.Role, func() error { _, err := cli.RoleAdd(ctx, o.Role); return err }},
		{"role grant-permission " + o.Role, func() error {
			_, err := cli.RoleGrantPermission(ctx, o.Role, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"user add " + o.User, func() error {
			_, err := cli.UserAddWithOptions(ctx, o.User, "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		}},
		{"grant " + o.User, func() error { _, err := cli.UserGrantRole(ctx, o.User, o.Role); return err }},
		{"auth enable", func() error { _, err := cli.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
			return fmt.Errorf("etcd auth setup: %s: %w", s.what, err)
		}
	}
	log.Info("etcd authentication on", "user", o.User, "role", o.Role, "prefix", prefix)
	return nil
}
