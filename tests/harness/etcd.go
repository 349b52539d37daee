package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Etcd is a real etcd server (Debian's etcd binary) running inside the
// underlay namespace, listening on the underlay gateway address (where the
// nodes reach it) and on that namespace's loopback.
type Etcd struct {
	NS      NS
	Dir     string
	LogPath string
	// Endpoint is the client URL the nodes use, e.g. http://10.99.37.1:2379.
	Endpoint string
	// TLS is set when the cluster runs etcd with TLS, client-cert auth
	// and etcd auth (Config.EtcdTLS).
	TLS  *EtcdTLS
	port int
	host string
	proc *Process
	logf func(string, ...any)
}

func (c *Cluster) startEtcd() (*Etcd, error) {
	if _, err := exec.LookPath("etcd"); err != nil {
		return nil, fmt.Errorf("etcd binary not found (apt-get install etcd-server): %w", err)
	}
	e := &Etcd{
		NS:      c.Underlay.NS,
		Dir:     filepath.Join(c.Dir, "etcd"),
		LogPath: filepath.Join(c.Dir, "etcd.log"),
		port:    c.Cfg.EtcdPort,
		host:    c.Underlay.Gateway.String(),
		logf:    c.Cfg.Logf,
	}
	e.Endpoint = "http://" + net.JoinHostPort(e.host, strconv.Itoa(e.port))
	if err := os.MkdirAll(e.Dir, 0o700); err != nil {
		return nil, err
	}
	if c.Cfg.EtcdTLS {
		t, err := newEtcdTLS(filepath.Join(c.Dir, "etcd-pki"), c.Underlay.Gateway, netip.MustParseAddr("127.0.0.1"))
		if err != nil {
			return nil, fmt.Errorf("etcd certificates: %w", err)
		}
		e.TLS = t
		e.Endpoint = "https://" + net.JoinHostPort(e.host, strconv.Itoa(e.port))
	}
	c.onClose(e.Stop)
	if err := e.Start(); err != nil {
		return nil, err
	}
	if e.TLS != nil {
		cli, err := e.Client()
		if err != nil {
			return nil, err
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := e.TLS.setupAuth(ctx, cli, "/wgcni/"); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Start launches etcd (again, after Stop: same data directory) and waits
// until it serves requests.
func (e *Etcd) Start() error {
	if e.proc != nil && e.proc.Running() {
		return nil
	}
	peer := fmt.Sprintf("http://127.0.0.1:%d", e.port+1)
	scheme := "http"
	var tlsArgs []string
	if e.TLS != nil {
		scheme = "https"
		tlsArgs = []string{"--cert-file", e.TLS.ServerCert, "--key-file", e.TLS.ServerKey,
			"--client-cert-auth", "--trusted-ca-file", e.TLS.CA}
	}
	argv := append([]string{"etcd",
		"--name", "wge",
		"--data-dir", filepath.Join(e.Dir, "data"),
		"--listen-client-urls", fmt.Sprintf("%s://%s,%s://127.0.0.1:%d", scheme, net.JoinHostPort(e.host, strconv.Itoa(e.port)), scheme, e.port),
		"--advertise-client-urls", e.Endpoint,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "wge=" + peer,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-level", "warn",
	}, tlsArgs...)
	cmd := e.NS.Command(context.Background(), argv...)
	p, err := startProcess("etcd", cmd, e.LogPath)
	if err != nil {
		return err
	}
	e.proc = p
	cli, err := e.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = cli.Get(ctx, "health")
		cancel()
		if err == nil {
			e.logf("harness: etcd serving at %s (pid %d)", e.Endpoint, p.PID())
			return nil
		}
		if !p.Running() || time.Now().After(deadline) {
			e.Stop()
			return fmt.Errorf("etcd did not come up at %s: %v (log %s)", e.Endpoint, err, e.LogPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop terminates etcd (SIGTERM, then SIGKILL), keeping its data: Start
// brings the same cluster back. Used to simulate etcd outages.
func (e *Etcd) Stop() {
	if e.proc != nil {
		e.proc.Stop(5 * time.Second)
	}
}

// Kill stops etcd with SIGKILL.
func (e *Etcd) Kill() {
	if e.proc != nil {
		e.proc.Kill()
	}
}

// Running reports whether etcd is running.
func (e *Etcd) Running() bool { return e.proc != nil && e.proc.Running() }

// Client returns an etcd v3 client for the test process. The harness runs
// in the root namespace, which cannot reach the underlay, so every TCP
// connection is made from inside the underlay namespace: a socket stays in
// the namespace it was created in.
func (e *Etcd) Client() (*clientv3.Client, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := e.NS.Do(func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
	var tlsCfg *tls.Config
	if e.TLS != nil {
		var err error
		info := transport.TLSInfo{TrustedCAFile: e.TLS.CA, CertFile: e.TLS.RootCert, KeyFile: e.TLS.RootKey}
		if tlsCfg, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("etcd client TLS: %w", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{e.Endpoint},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		Logger:      zap.NewNop(),
		TLS:         tlsCfg,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", e.Endpoint, err)
	}
	return cli, nil
}

// MustClient is Client for tests: a failure ends the test, and the client
// is closed when the test ends.
func (e *Etcd) MustClient(tb testing.TB) *clientv3.Client {
	tb.Helper()
	cli, err := e.Client()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

// MustDump returns every key in etcd with its value, "key=value" a line:
// what anyone with a copy of etcd's data would read.
func (e *Etcd) MustDump(tb testing.TB) string {
	tb.Helper()
	cli, err := e.Client()
	if err != nil {
		tb.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		tb.Fatalf("etcd dump: %v", err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
	}
	return b.String()
}
