package etcdboot

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/wgcni/wgcni/daemon/pki"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startTLSEtcd runs an embedded etcd the way conf/kubernetes/15-etcd.yaml
// runs etcd: TLS with client-cert-auth, the files writeEtcdFiles wrote.
func startTLSEtcd(t *testing.T, o *Options) {
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{"/dev/null"}
	cfg.UnsafeNoFsync = true
	cu, _ := url.Parse("https://127.0.0.1:" + strconv.Itoa(o.ClientPort))
	pu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(freePort(t)))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.ClientTLSInfo = transport.TLSInfo{
		CertFile: filepath.Join(o.Dir, ServerCertFile), KeyFile: filepath.Join(o.Dir, ServerKeyFile),
		TrustedCAFile: filepath.Join(o.Dir, CAFile), ClientCertAuth: true,
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}
}

// clientAs connects with a certificate of ca for user (the CommonName).
func clientAs(t *testing.T, ca *pki.CA, o *Options, user string) *clientv3.Client {
	crt, key, err := ca.Issue(pki.Spec{CommonName: user, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://127.0.0.1:" + strconv.Itoa(o.ClientPort)},
		TLS: &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestAuthLeastPrivilege: after Auth (twice: a restarted container), the
// user reaches its prefix only, an unknown certificate nothing.
func TestAuthLeastPrivilege(t *testing.T) {
	o := &Options{HostIP: netip.MustParseAddr("127.0.0.1"), ClientPort: freePort(t), Dir: t.TempDir(),
		User: "wgcni-node", Role: "wgcni", Prefix: "/wgcni", CertValidity: time.Hour}
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeEtcdFiles(ca, o); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ServerKeyFile, RootKeyFile} {
		if st, err := os.Stat(filepath.Join(o.Dir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, st.Mode())
		}
	}
	startTLSEtcd(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := 0; i < 2; i++ {
		if err := Auth(ctx, o, log); err != nil {
			t.Fatalf("Auth run %d: %v", i+1, err)
		}
	}
	node := clientAs(t, ca, o, o.User)
	if _, err := node.Put(ctx, "/wgcni/subnets/x", "v"); err != nil {
		t.Errorf("wgcni-node cannot write its prefix: %v", err)
	}
	if _, err := node.Lease.Grant(ctx, 10); err != nil {
		t.Errorf("wgcni-node cannot grant a lease: %v", err)
	}
	for _, k := range []string{"/wgcnix", "/registry/secrets"} {
		if _, err := node.Put(ctx, k, "v"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("wgcni-node writing %s: %v, want permission denied", k, err)
		}
	}
	if _, err := clientAs(t, ca, o, "stranger").Get(ctx, "/wgcni/subnets/x"); err == nil {
		t.Error("a certificate for an unknown user read /wgcni/")
	}
}
