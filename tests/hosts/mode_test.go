package hosts

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// A host-only peer starts through the same path as a pod node (agent.Run
// in host-only mode), so every option reaches it. These tests pin what the
// separate host-only start-up path once got wrong.

// TestHostOnlyPeerEtcdPasswordAuth: a host-only peer authenticates to etcd
// with --etcd-username/--etcd-password-file like a node. A wrong password
// is refused, says so and writes nothing; the right one joins the mesh.
// (The certificate alone would be accepted as the node user, so a daemon
// that dropped the password would get in with the wrong one.)
func TestHostOnlyPeerEtcdPasswordAuth(t *testing.T) {
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, ListenPort: wgPort, EtcdTLS: true}, 1)
	tlsf := c.Etcd.TLS
	node := c.Nodes()[0]

	wrong := t.TempDir() + "/wrong-password"
	if err := os.WriteFile(wrong, []byte("wrong-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad, err := c.AddBareNode()
	if err != nil {
		t.Fatal(err)
	}
	bad.ExtraArgs = []string{"--host-only", "--host-cidr", hostCIDR, "--etcd-username", tlsf.PasswordUser, "--etcd-password-file", wrong}
	if err := bad.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	const refused = "etcd refused our credentials"
	err = harness.WaitFor(30*time.Second, "host-only peer with a wrong etcd password to be refused", func() (bool, error) {
		b, _ := os.ReadFile(bad.LogPath)
		return strings.Contains(string(b), refused), nil
	})
	if err != nil {
		b, _ := os.ReadFile(bad.LogPath)
		t.Fatalf("%v\nlog of %s:\n%s", err, bad.Name, b)
	}
	if l, _ := c.LeaseOf(bad.Name); l != nil {
		t.Fatalf("host-only peer with a wrong password wrote a record: %+v", l)
	}
	bad.Shutdown()

	h, addr := startHost(t, c, "--etcd-username", tlsf.PasswordUser, "--etcd-password-file", tlsf.PasswordFile)
	if err := node.WaitPeerCIDRs([]string{addr.String() + "/32"}, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitPeerCIDRs([]string{node.MustPodCIDR(t)}, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	pw, err := os.ReadFile(tlsf.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(h.LogPath); strings.Contains(string(b), strings.TrimSpace(string(pw))) {
		t.Fatal("the etcd password appears in the host-only peer's log")
	}
	p := node.MustAddPod(t)
	harness.Connect(t, h.NS, p.IP, "password-authenticated host -> pod", 5)
}

// TestHostOnlyPeerDualStack: in a dual-stack cluster a host-only peer
// installs the strict route of both families before anything else, and
// `wgcnid cleanup --host-only` removes our routes of both families.
func TestHostOnlyPeerDualStack(t *testing.T) {
	const v6 = "fd00:244::/56"
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR + "," + v6, NodePrefixLenV6: 64, LeaseTTL: leaseTTL, ListenPort: wgPort}, 1)
	node := c.Nodes()[0]
	h, addr := startHost(t, c)
	nf, err := node.NodeFile()
	if err != nil {
		t.Fatal(err)
	}
	// The host's one peer is allowed the node's PodCIDRs of both families.
	want := slices.Sorted(slices.Values(nf.PodCIDRs))
	err = harness.WaitFor(20*time.Second, "host's peer with "+strings.Join(want, ","), func() (bool, error) {
		peers, err := h.PeerAllowedIPs()
		if err != nil || len(peers) != 1 {
			return false, fmt.Errorf("peers %v: %v", peers, err)
		}
		for _, ips := range peers {
			if !slices.Equal(ips, want) {
				return false, fmt.Errorf("peer allowed %v", ips)
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	p := node.MustAddPod(t)
	harness.Connect(t, h.NS, p.IP, "host -> pod (IPv4)", 5)

	ours := func(fam string) string {
		out, err := h.Exec("ip", fam, "route", "show", "table", "all", "proto", "87")
		if err != nil {
			t.Fatalf("ip %s route: %v %s", fam, err, out)
		}
		return out
	}
	t.Run("strict routes of both families", func(t *testing.T) {
		for fam, cidr := range map[string]string{"-4": clusterCIDR, "-6": v6} {
			if out := ours(fam); !strings.Contains(out, "unreachable "+cidr) {
				t.Errorf("host-only peer %s (%s): no strict route for %s; our routes:\n%s", h.Name, addr, cidr, out)
			}
		}
	})

	t.Run("cleanup removes both families", func(t *testing.T) {
		h.StopDaemon(syscall.SIGTERM)
		// Whoever installed them (this daemon, or an earlier run), our
		// routes of every family of the cluster must go.
		for fam, cidr := range map[string]string{"-4": clusterCIDR, "-6": v6} {
			if out, err := h.Exec("ip", fam, "route", "replace", "unreachable", cidr, "proto", "87"); err != nil {
				t.Fatalf("ip %s route replace: %v %s", fam, err, out)
			}
		}
		if out, err := h.Cleanup(); err != nil {
			t.Fatalf("wgcnid cleanup --host-only: %v\n%s", err, out)
		}
		for _, fam := range []string{"-4", "-6"} {
			if out := ours(fam); strings.TrimSpace(out) != "" {
				t.Errorf("after cleanup, our %s routes remain on %s:\n%s", fam, h.Name, out)
			}
		}
	})
}

// TestHostOnlyPeerMetricsAndRotation: --metrics-addr and `wgcnid
// rotate-key` work on a host-only peer as on a node: /readyz turns ready
// and /metrics counts its peer; a rotated key reaches the node, which
// peers with the new key, and the host still reaches a pod.
func TestHostOnlyPeerMetricsAndRotation(t *testing.T) {
	const metricsAddr = "127.0.0.1:9586" // loopback of the host's own namespace
	c := harness.Start(t, harness.Config{ClusterCIDR: clusterCIDR, LeaseTTL: leaseTTL, ListenPort: wgPort}, 1)
	node := c.Nodes()[0]
	h, addr := startHost(t, c, "--metrics-addr", metricsAddr)
	if err := node.WaitPeerCIDRs([]string{addr.String() + "/32"}, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	var body string
	err := harness.WaitFor(20*time.Second, "host-only peer's /readyz and /metrics", func() (bool, error) {
		if out, err := h.Exec("curl", "-sf", "http://"+metricsAddr+"/readyz"); err != nil {
			return false, fmt.Errorf("/readyz: %v %s", err, out)
		}
		var err error
		body, err = h.Exec("curl", "-sf", "http://"+metricsAddr+"/metrics")
		return err == nil && strings.Contains(body, "\nwgcni_peers 1\n"), err
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, body)
	}

	p := node.MustAddPod(t)
	wgKey := func() string {
		d, err := h.WGDevice()
		if err != nil {
			t.Fatal(err)
		}
		return d.PublicKey.String()
	}
	oldKey := wgKey()
	argv := append([]string{c.Bin("wgcnid"), "rotate-key"}, h.DaemonArgs()...)
	out, err := h.ExecTimeout(90*time.Second, argv...)
	if err != nil {
		t.Fatalf("wgcnid rotate-key on the host-only peer: %v %s", err, out)
	}
	newKey := wgKey()
	if newKey == oldKey || !strings.Contains(out, newKey) {
		t.Fatalf("rotate-key printed %q; device key %s (was %s)", out, newKey, oldKey)
	}
	err = harness.WaitFor(20*time.Second, "node to peer with the host's new key", func() (bool, error) {
		peers, err := node.PeerAllowedIPs()
		_, ok := peers[newKey]
		return ok && len(peers) == 1, err
	})
	if err != nil {
		t.Fatal(err)
	}
	harness.Connect(t, h.NS, p.IP, "host -> pod after the host's key rotation", 5)
}
