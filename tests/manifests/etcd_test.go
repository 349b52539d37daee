package manifests

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"sigs.k8s.io/yaml"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestEtcdExampleAndRole starts a real 3-member etcd cluster from
// conf/systemd/etcd.conf.yml (only names, addresses, ports and file paths
// replaced so it runs on loopback), applies the least-privilege role the
// README documents, and checks that a wgcni-node certificate can do what
// wgcnid does under /wgcni/ and nothing else, and that clients without a
// certificate from the CA are refused.
func TestEtcdExampleAndRole(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		harness.Missing(t, "etcd binary (Debian etcd-server; make deps)")
	}
	example, err := os.ReadFile(filepath.Join(repoRoot(t), "conf", "systemd", "etcd.conf.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var base map[string]any
	if err := yaml.UnmarshalStrict(example, &base); err != nil {
		t.Fatalf("etcd.conf.yml: %v", err)
	}
	for _, sec := range []string{"client-transport-security", "peer-transport-security"} {
		s, _ := base[sec].(map[string]any)
		if s == nil || s["client-cert-auth"] != true {
			t.Fatalf("etcd.conf.yml: %s.client-cert-auth must be true", sec)
		}
	}

	dir, err := os.MkdirTemp("", "wgm-etcd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ca, rogue := newCA(t, "wgm-etcd-ca"), newCA(t, "wgm-rogue-ca")
	if err := ca.WriteCert(filepath.Join(dir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	rootCert := issue(t, ca, dir, "root", false)
	nodeCert := issue(t, ca, dir, "wgcni-node", false)
	rogueCert := issue(t, rogue, dir, "wgcni-node-rogue", false)

	const members = 3
	ports := freePorts(t, 2*members)
	var cluster, endpoints []string
	for i := range members {
		cluster = append(cluster, fmt.Sprintf("etcd-%d=https://127.0.0.1:%d", i+1, ports[2*i+1]))
		endpoints = append(endpoints, fmt.Sprintf("https://127.0.0.1:%d", ports[2*i]))
	}
	for i := range members {
		name := fmt.Sprintf("etcd-%d", i+1)
		server := issue(t, ca, dir, name, true)
		cfg := replaceKeys(t, base, map[string]any{
			"name":                        name,
			"data-dir":                    filepath.Join(dir, name+".data"),
			"listen-peer-urls":            fmt.Sprintf("https://127.0.0.1:%d", ports[2*i+1]),
			"initial-advertise-peer-urls": fmt.Sprintf("https://127.0.0.1:%d", ports[2*i+1]),
			"listen-client-urls":          endpoints[i],
			"advertise-client-urls":       endpoints[i],
			"initial-cluster":             strings.Join(cluster, ","),
		})
		for _, sec := range []string{"client-transport-security", "peer-transport-security"} {
			cfg[sec] = replaceKeys(t, cfg[sec].(map[string]any), map[string]any{
				"cert-file":       server + ".crt",
				"key-file":        server + ".key",
				"trusted-ca-file": filepath.Join(dir, "ca.crt"),
			})
		}
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		cfgFile := filepath.Join(dir, name+".yml")
		if err := os.WriteFile(cfgFile, out, 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(etcdBin, "--config-file", cfgFile)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill() // by PID: the process this test started
			_ = cmd.Wait()
			logf.Close()
			if t.Failed() {
				if b, err := os.ReadFile(logf.Name()); err == nil {
					t.Logf("%s log (tail):\n%s", name, tail(string(b), 2000))
				}
			}
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	root := client(t, ca, rootCert, endpoints)
	waitHealthy(ctx, t, root, endpoints)

	// The README's "Least privilege: etcd" commands, through the same API
	// etcdctl uses.
	steps := []struct {
		what string
		do   func() error
	}{
		{"user add root --no-password", func() error {
			_, err := root.UserAddWithOptions(ctx, "root", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		}},
		{"user grant-role root root", func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err }},
		{"role add wgcni", func() error { _, err := root.RoleAdd(ctx, "wgcni"); return err }},
		{"role grant-permission wgcni --prefix=true readwrite /wgcni/", func() error {
			_, err := root.RoleGrantPermission(ctx, "wgcni", "/wgcni/", clientv3.GetPrefixRangeEnd("/wgcni/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"user add wgcni-node --no-password", func() error {
			_, err := root.UserAddWithOptions(ctx, "wgcni-node", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		}},
		{"user grant-role wgcni-node wgcni", func() error { _, err := root.UserGrantRole(ctx, "wgcni-node", "wgcni"); return err }},
		{"auth enable", func() error { _, err := root.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}

	node := client(t, ca, nodeCert, endpoints)
	// Allowed: what wgcnid does (contracts: etcd data model).
	cfgKey, subnetKey := "/wgcni/config", "/wgcni/subnets/10.244.3.0-24"
	wch := node.Watch(ctx, "/wgcni/", clientv3.WithPrefix())
	lease, err := node.Grant(ctx, 60)
	if err != nil {
		t.Fatalf("wgcni-node: lease grant: %v", err)
	}
	for _, k := range []string{cfgKey, subnetKey} {
		resp, err := node.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(k), "=", 0)).
			Then(clientv3.OpPut(k, `{"node":"n1"}`, clientv3.WithLease(lease.ID))).
			Commit()
		if err != nil || !resp.Succeeded {
			t.Fatalf("wgcni-node: create-if-absent %s: succeeded=%v err=%v", k, resp != nil && resp.Succeeded, err)
		}
	}
	if _, err := node.KeepAliveOnce(ctx, lease.ID); err != nil {
		t.Errorf("wgcni-node: keepalive: %v", err)
	}
	if resp, err := node.Get(ctx, "/wgcni/subnets/", clientv3.WithPrefix()); err != nil || resp.Count != 1 {
		t.Errorf("wgcni-node: list /wgcni/subnets/: %v (count %v)", err, resp)
	}
	select {
	case ev := <-wch:
		if ev.Err() != nil || len(ev.Events) == 0 {
			t.Errorf("wgcni-node: watch /wgcni/: %v", ev.Err())
		}
	case <-ctx.Done():
		t.Error("wgcni-node: no watch event under /wgcni/")
	}

	// Denied: everything outside /wgcni/.
	denied := map[string]func() error{
		"put /registry/x": func() error { _, err := node.Put(ctx, "/registry/x", "v"); return err },
		"get / prefix":    func() error { _, err := node.Get(ctx, "/", clientv3.WithPrefix()); return err },
		"put /wgcnix":     func() error { _, err := node.Put(ctx, "/wgcnix", "v"); return err },
		"get /wgcni (no trailing slash) prefix": func() error {
			_, err := node.Get(ctx, "/wgcni", clientv3.WithPrefix())
			return err
		},
		"role add": func() error { _, err := node.RoleAdd(ctx, "evil"); return err },
	}
	for what, do := range denied {
		if err := do(); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("wgcni-node: %s: want permission denied, got %v", what, err)
		}
	}

	// Refused at TLS: a certificate from another CA, and no certificate.
	for what, cert := range map[string]string{"foreign CA": rogueCert, "no client cert": ""} {
		c := client(t, ca, cert, endpoints[:1])
		sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := c.Get(sctx, "/wgcni/config")
		scancel()
		if err == nil {
			t.Errorf("%s: request succeeded, want refused", what)
		}
	}
}

// replaceKeys returns a copy of m with the given keys replaced; every key must
// already exist, so the test runs the example's structure, not its own.
func replaceKeys(t *testing.T, m map[string]any, with map[string]any) map[string]any {
	t.Helper()
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	for k, v := range with {
		if _, ok := m[k]; !ok {
			t.Fatalf("etcd.conf.yml has no key %q", k)
		}
		out[k] = v
	}
	return out
}

func newCA(t *testing.T, cn string) *harness.CA {
	t.Helper()
	ca, err := harness.NewCA(cn)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue writes <dir>/<cn>.crt and .key and returns the path without suffix.
func issue(t *testing.T, ca *harness.CA, dir, cn string, server bool) string {
	t.Helper()
	crt, _, err := ca.Issue(dir, cn, server, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(crt, ".crt")
}

// client connects with the given client certificate ("" for none).
func client(t *testing.T, ca *harness.CA, certPath string, endpoints []string) *clientv3.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certPath != "" {
		kp, err := tls.LoadX509KeyPair(certPath+".crt", certPath+".key")
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func waitHealthy(ctx context.Context, t *testing.T, c *clientv3.Client, endpoints []string) {
	t.Helper()
	for _, ep := range endpoints {
		for {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := c.Status(sctx, ep)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("etcd member %s never became healthy: %v", ep, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// A quorum read proves the members formed one cluster.
	if _, err := c.Get(ctx, "health"); err != nil {
		t.Fatalf("etcd cluster: %v", err)
	}
}

// freePorts reserves n distinct loopback ports (released just before use).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
