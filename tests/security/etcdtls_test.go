package security

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestEtcdTLSAndAuth runs the cluster against etcd with TLS, client
// certificate auth and etcd auth on. The daemons' certificate maps to a
// user holding only the documented least-privilege role (readwrite on
// /wgcni/), so the cluster working proves the role is enough; one node
// authenticates by password instead. Daemons with no certificate, a
// certificate from another CA, an untrusted server, or a wrong password
// are refused, say why in their log, and write nothing to etcd.
func TestEtcdTLSAndAuth(t *testing.T) {
	conf := cfg()
	conf.EtcdTLS = true
	c := harness.Start(t, conf, 2)
	tlsf := c.Etcd.TLS
	if !strings.HasPrefix(c.Etcd.Endpoint, "https://") || tlsf == nil {
		t.Fatalf("etcd endpoint %s is not TLS", c.Etcd.Endpoint)
	}
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	// n3 authenticates with user/password (and still needs a certificate
	// for the TLS handshake: etcd runs with client-cert-auth).
	n3, err := c.AddNode("--etcd-username", tlsf.PasswordUser, "--etcd-password-file", tlsf.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	p1, p2, p3 := n1.MustAddPod(t), n2.MustAddPod(t), n3.MustAddPod(t)
	harness.Connect(t, p1.NS, p2.IP, "p1 -> p2 over TLS-etcd cluster", 3)
	harness.Connect(t, p3.NS, p1.IP, "p3 (password auth node) -> p1", 3)
	log3, _ := os.ReadFile(n3.LogPath)
	if strings.Contains(string(log3), strings.TrimSpace(readFile(t, tlsf.PasswordFile))) {
		t.Fatal("the etcd password appears in the daemon log")
	}

	// Plain http to a TLS etcd must not work either (sanity of the setup).
	refused := []struct {
		name string
		args []string
		want string
	}{
		{"no client certificate", []string{"--etcd-certfile=", "--etcd-keyfile="}, "requires a client certificate and none was given"},
		{"certificate from a rogue CA", []string{"--etcd-certfile", tlsf.RogueCert, "--etcd-keyfile", tlsf.RogueKey}, "refused our client certificate"},
		{"server not trusted (no --etcd-cafile)", []string{"--etcd-cafile="}, "server certificate is not trusted (--etcd-cafile)"},
		{"wrong password", []string{"--etcd-username", tlsf.PasswordUser, "--etcd-password-file", writeTemp(t, "wrong-password\n")}, "etcd refused our credentials"},
	}
	for _, r := range refused {
		t.Run("refused: "+r.name, func(t *testing.T) {
			n, err := c.AddBareNode()
			if err != nil {
				t.Fatal(err)
			}
			n.ExtraArgs = r.args
			if err := n.StartDaemon(); err != nil {
				t.Fatal(err)
			}
			log := n.WaitLog(t, 30*time.Second, r.want)
			line := ""
			for _, l := range strings.Split(log, "\n") {
				if strings.Contains(l, r.want) {
					line = l
					break
				}
			}
			t.Logf("%s: daemon says: %s", r.name, line)
			if _, err := n.NodeFile(); err == nil {
				t.Fatalf("%s: daemon wrote a node file without etcd access", r.name)
			}
			if l, _ := c.LeaseOf(n.Name); l != nil {
				t.Fatalf("%s: a lease record for %s exists: %+v", r.name, n.Name, l)
			}
			n.Shutdown()
		})
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f, err := os.CreateTemp("", "wgs-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(f.Name()) })
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return f.Name()
}
