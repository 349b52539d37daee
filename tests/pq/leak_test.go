package pq

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/pqkeys"
	"github.com/wgcni/wgcni/tests/harness"
)

// TestSecretsNeverInOutput runs two nodes rotating every second with debug
// logging, restarts one, and searches everything the run produced (daemon
// and device logs, etcd's contents and data files, node and status files,
// wgcnictl and wg outputs, process command lines and environments) for
// every WireGuard private key, every ML-KEM seed and every PSK the devices
// held, in five encodings.
func TestSecretsNeverInOutput(t *testing.T) {
	c := start(t, 2, "--post-quantum", "on", "--pq-interval", "1s", "--log-level", "debug")
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	harness.WaitMesh(t, c.Nodes(), 30*time.Second)
	p1, p2 := n1.MustAddPod(t), n2.MustAddPod(t)
	connect(t, p1, p2)
	var outputs []string
	for _, p := range []*harness.Pod{p1, p2} {
		outputs = append(outputs, p.Result)
	}

	psks := map[wgtypes.Key]bool{}
	sample := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			for _, n := range c.Nodes() {
				if dev, err := n.WGDevice(); err == nil {
					for _, p := range dev.Peers {
						if p.PresharedKey != (wgtypes.Key{}) {
							psks[p.PresharedKey] = true
						}
					}
				}
			}
		}
	}
	sample(5 * time.Second)
	if err := n2.RestartDaemon(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sample(5 * time.Second)
	if len(psks) < 5 {
		t.Fatalf("only %d PSKs seen in 10 s at --pq-interval 1s", len(psks))
	}

	for _, n := range c.Nodes() {
		for _, args := range [][]string{{"status"}, {"status", "-o", "json"}} {
			out, err := n.ExecTimeout(20*time.Second, append(append([]string{c.Bin("wgcnictl")}, args...), n.DaemonArgs()...)...)
			if err != nil {
				t.Fatalf("wgcnictl %v on %s: %v\n%s", args, n.Name, err, out)
			}
			outputs = append(outputs, out)
		}
		if out, err := n.WGShow(); err == nil {
			outputs = append(outputs, out)
		}
		for _, pid := range []int{n.Daemon().PID(), n.MustDeviceHost(t)} {
			for _, f := range []string{"cmdline", "environ"} {
				if b, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), f)); err == nil {
					outputs = append(outputs, string(b))
				}
			}
		}
	}
	outputs = append(outputs, c.Etcd.MustDump(t))

	search := harness.SecretSearch{Keep: func(path string) bool {
		// The two places keys belong.
		base := filepath.Base(path)
		return filepath.Base(filepath.Dir(path)) == "state" && (base == "privatekey" || base == pqkeys.FileName)
	}}
	for _, n := range c.Nodes() {
		k := n.MustPrivateKey(t)
		search.Secrets = append(search.Secrets, harness.Secret{Name: n.Name + " WireGuard key", Bytes: k[:]})
		b, err := os.ReadFile(filepath.Join(n.StateDir, pqkeys.FileName))
		if err != nil {
			t.Fatal(err)
		}
		seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(seed) != 64 {
			t.Fatalf("%s: ML-KEM key file is not a base64 64-byte seed", n.Name)
		}
		search.Secrets = append(search.Secrets, harness.Secret{Name: n.Name + " ML-KEM seed", Bytes: seed})
	}
	i := 0
	for k := range psks {
		i++
		search.Secrets = append(search.Secrets, harness.Secret{Name: fmt.Sprintf("PSK #%d", i), Bytes: k[:]})
	}
	for i, o := range outputs {
		search.Check(fmt.Sprintf("output #%d", i), []byte(o))
	}
	if err := search.Walk(c.Dir); err != nil {
		t.Fatal(err)
	}
	for _, h := range search.Hits {
		t.Errorf("secret found in %s (%s)", h.Where, h.What)
	}
	if !search.Works() {
		t.Fatal("the search cannot find a planted secret")
	}
	harness.Result(t, "searched %d files and %d outputs (%d bytes, debug logs, one restart) for 2 WireGuard keys, 2 ML-KEM seeds and %d PSKs in 5 encodings: %d hits",
		search.Files, len(outputs), search.Scanned, len(psks), len(search.Hits))
}
