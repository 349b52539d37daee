package security

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestKeysNeverLeakAndRotation runs a full cluster, rotates one node's key
// under two 100/s ping streams (towards and away from the rotating node),
// prints the packets lost, checks every peer switched to the new key and
// dropped the old one, and finally searches everything the run produced
// (daemon logs, etcd's contents and data files, node files, CNI results,
// command outputs, process command lines and environments) for every
// private key the nodes ever had, as base64, hex and raw bytes.
func TestKeysNeverLeakAndRotation(t *testing.T) {
	// Debug level: the daemons log every reconcile step and the userspace
	// devices WireGuard's handshake events, which a stalled rotation needs.
	conf := cfg()
	conf.DaemonArgs = []string{"--log-level", "debug"}
	c := harness.Start(t, conf, 3)
	nodes := c.Nodes()
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	p1, p2, p3 := n1.MustAddPod(t), n2.MustAddPod(t), n3.MustAddPod(t)

	// Files: key 0600 in a 0700 directory.
	for _, n := range nodes {
		fi, err := os.Stat(filepath.Join(n.StateDir, "privatekey"))
		if err != nil {
			t.Fatal(err)
		}
		di, err := os.Stat(n.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
			t.Fatalf("%s: private key mode %v in dir mode %v, want 0600 in 0700", n.Name, fi.Mode().Perm(), di.Mode().Perm())
		}
	}
	var secrets []wgtypes.Key
	for _, n := range nodes {
		secrets = append(secrets, n.MustPrivateKey(t))
	}
	var outputs []string // everything our commands printed
	for _, p := range []*harness.Pod{p1, p2, p3} {
		outputs = append(outputs, p.Result)
	}

	harness.Connect(t, p1.NS, p2.IP, "p1 -> p2", 3)
	harness.Connect(t, p2.NS, p3.IP, "p2 -> p3", 3)

	// rotateOnce rotates n2's key under the two ping streams and returns
	// the loss in each direction.
	rotateOnce := func(t *testing.T) (lossIn, lossOut int, oldPub, newPub wgtypes.Key, newPriv wgtypes.Key) {
		oldPriv := n2.MustPrivateKey(t)
		oldPub = oldPriv.PublicKey()
		// ping -i 0.01 manages only ~60/s on a loaded 2-core machine; -i
		// 0.006 gives at least the 100/s the figure is quoted for (the
		// measured rate is printed).
		const count, interval = 1300, 6 * time.Millisecond // ~8 s; rotation at ~2.5 s
		var wg sync.WaitGroup
		res := make([]harness.PingResult, 2)
		errs := make([]error, 2)
		durs := make([]time.Duration, 2)
		for i, pair := range [][2]*harness.Pod{{p1, p2}, {p2, p3}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				res[i], errs[i] = pair[0].Ping(pair[1].IP, count, interval)
				durs[i] = time.Since(t0)
			}()
		}
		time.Sleep(2500 * time.Millisecond)
		t0 := time.Now()
		argv := append([]string{c.Bin("wgcnid"), "rotate-key"}, n2.DaemonArgs()...)
		out, err := n2.ExecTimeout(90*time.Second, argv...)
		took := time.Since(t0)
		outputs = append(outputs, out)
		if err != nil {
			t.Fatalf("wgcnid rotate-key: %v", err)
		}
		t.Logf("wgcnid rotate-key (%v): %s", took.Round(time.Millisecond), strings.TrimSpace(out))
		wg.Wait()
		for i := range errs {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
		}
		newPriv = n2.MustPrivateKey(t)
		secrets = append(secrets, newPriv)
		newPub = newPriv.PublicKey()
		if newPub == oldPub {
			t.Fatal("the key did not change")
		}
		if !strings.Contains(out, newPub.String()) {
			t.Fatalf("rotate-key printed %q, not the new public key %s", out, newPub)
		}
		lossIn, lossOut = res[0].Loss(), res[1].Loss()
		fmt.Printf("KEY ROTATION: packets lost during a rotation of n2's key under two ping streams (measured %.0f/s and %.0f/s): towards n2 %d/%d, from n2 %d/%d\n",
			float64(res[0].Sent)/durs[0].Seconds(), float64(res[1].Sent)/durs[1].Seconds(), lossIn, res[0].Sent, lossOut, res[1].Sent)
		t.Logf("loss towards rotating node %d/%d, from it %d/%d", lossIn, res[0].Sent, lossOut, res[1].Sent)
		if lossIn+lossOut > 5 {
			// The daemons log at debug level and the devices WireGuard's
			// handshake events: what a stalled rotation needs explained.
			for _, n := range nodes {
				for _, f := range []string{filepath.Join(n.RunDir, n.Device+".log"), filepath.Join(n.RunDir, "..", "wgcnid.log")} {
					b, _ := os.ReadFile(f)
					t.Logf("----- %s %s\n%s", n.Name, f, b)
				}
			}
		}
		return lossIn, lossOut, oldPub, newPub, newPriv
	}
	t.Run("rotation under 100/s ping", func(t *testing.T) {
		lossIn, lossOut, oldPub, newPub, newPriv := rotateOnce(t)
		// etcd has the new key; every peer uses it and has no entry for
		// the old one.
		l, err := c.LeaseOf(n2.Name)
		if err != nil || l == nil {
			t.Fatalf("n2 record: %v %v", l, err)
		}
		if l.PublicKey != newPub.String() {
			t.Fatalf("n2 record publishes %s, want the new key %s", l.PublicKey, newPub)
		}
		for _, n := range []*harness.Node{n1, n3} {
			err := harness.WaitFor(10*time.Second, n.Name+" to use n2's new key only", func() (bool, error) {
				dev, err := n.WGDevice()
				if err != nil {
					return false, err
				}
				hasNew := false
				for _, p := range dev.Peers {
					if p.PublicKey == oldPub {
						return false, nil
					}
					if p.PublicKey == newPub {
						hasNew = !p.LastHandshakeTime.IsZero()
					}
				}
				return hasNew, nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if lossIn+lossOut > 5 {
			t.Fatalf("lost %d+%d packets during the rotation; target 0, at most a handful", lossIn, lossOut)
		}
		// The node and its peers still talk with the new key after a restart.
		if err := n2.RestartDaemon(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if _, err := n2.WaitReady(20 * time.Second); err != nil {
			t.Fatal(err)
		}
		if k := n2.MustPrivateKey(t); k != newPriv {
			t.Fatal("restart changed the key again")
		}
		harness.Connect(t, p1.NS, p2.IP, "p1 -> p2 after rotation and restart", 3)
	})

	t.Run("rotation with handshake messages lost", func(t *testing.T) {
		// n3 drops the first WireGuard handshake initiation (message type
		// 1) and the first response (type 2) it gets from n2 from now on:
		// n2's own attempt with its new key, and n2's answer to the
		// handshake n3 starts when it learns that key. WireGuard alone
		// would retry only after 5 s on both sides (~700 pings held or
		// lost); n3's daemon sees no handshake and re-creates the peer
		// entry, which initiates again at once (daemon/mesh/rekey.go).
		rule := fmt.Sprintf(`table inet wgtest {
	set seen1 { type ipv4_addr; }
	set seen2 { type ipv4_addr; }
	chain in {
		type filter hook input priority -10;
		ip saddr %[1]s udp sport %[2]d @th,64,8 1 ip saddr @seen1 accept
		ip saddr %[1]s udp sport %[2]d @th,64,8 1 add @seen1 { ip saddr } counter drop
		ip saddr %[1]s udp sport %[2]d @th,64,8 2 ip saddr @seen2 accept
		ip saddr %[1]s udp sport %[2]d @th,64,8 2 add @seen2 { ip saddr } counter drop
	}
}`, n2.UnderlayIP, wgPort)
		ruleFile := filepath.Join(t.TempDir(), "drop-first-response.nft")
		if err := os.WriteFile(ruleFile, []byte(rule), 0o644); err != nil {
			t.Fatal(err)
		}
		defer n3.Exec("nft", "delete", "table", "inet", "wgtest")
		logPath := filepath.Join(n3.RunDir, "..", "wgcnid.log")
		recreations := func() int {
			b, _ := os.ReadFile(logPath)
			return bytes.Count(b, []byte("re-creating it to initiate again")) // daemon/mesh/rekey.go
		}
		// The scenario needs n2's answer to n3 to be the first response
		// n3 sees after the rule is in place. If the exchange went
		// another way (n3 dropped no response, or never had to
		// re-create the entry), the rotation proved nothing about lost
		// messages: say how it went and rotate again.
		const tries = 3
		for try := 1; ; try++ {
			n3.Exec("nft", "delete", "table", "inet", "wgtest")
			if out, err := n3.Exec("nft", "-f", ruleFile); err != nil {
				t.Fatalf("nft: %v\n%s", err, out)
			}
			before := recreations()
			lossIn, lossOut, _, _, _ := rotateOnce(t)
			fmt.Printf("KEY ROTATION: with n2's first handshake response to n3 dropped: lost towards n2 %d, from n2 %d (WireGuard alone: ~5 s of traffic)\n", lossIn, lossOut)
			if lossIn+lossOut > 5 {
				t.Fatalf("lost %d+%d packets during a rotation with handshake messages dropped", lossIn, lossOut)
			}
			out, err := n3.Exec("nft", "list", "table", "inet", "wgtest")
			if err != nil {
				t.Fatalf("nft list: %v\n%s", err, out)
			}
			// The response is the one that matters: n2's initiation, sent
			// before n3 knew the key, would have been refused anyway.
			dropped := strings.Contains(out, "@th,64,8 0x2 add @seen2 { ip saddr } counter packets 1 ")
			recreated := recreations() > before
			if dropped && recreated {
				return
			}
			t.Logf("try %d did not exercise the lost response (response dropped: %v, entry re-created: %v); n3's rules:\n%s", try, dropped, recreated, out)
			if try == tries {
				t.Fatalf("in %d rotations n3 never had to recover from a lost handshake response; the test cannot show the recovery", tries)
			}
		}
	})

	t.Run("no private key in any output", func(t *testing.T) {
		// CLI outputs: wgcnid cleanup is run by the harness at Close;
		// run the read-only commands operators use here.
		for _, n := range nodes {
			if out, err := n.WGShow(); err == nil {
				outputs = append(outputs, out)
			}
		}
		var procs []string
		for _, n := range nodes {
			if p := n.Daemon(); p != nil {
				procs = append(procs, fmt.Sprint(p.PID()))
			}
			if b, err := os.ReadFile(filepath.Join(n.RunDir, n.Device+".pid")); err == nil {
				procs = append(procs, strings.TrimSpace(string(b)))
			}
		}
		for _, pid := range procs {
			for _, f := range []string{"cmdline", "environ"} {
				if b, err := os.ReadFile(filepath.Join("/proc", pid, f)); err == nil {
					outputs = append(outputs, string(b))
				}
			}
		}
		dump := c.Etcd.MustDump(t)
		outputs = append(outputs, dump)

		search := harness.SecretSearch{Keep: func(path string) bool {
			return filepath.Base(path) == "privatekey" && filepath.Base(filepath.Dir(path)) == "state" // the one place the key belongs
		}}
		for i, k := range secrets {
			search.Secrets = append(search.Secrets, harness.Secret{Name: fmt.Sprintf("key #%d", i), Bytes: k[:]})
		}
		for i, o := range outputs {
			search.Check(fmt.Sprintf("command/CNI/etcd output #%d", i), []byte(o))
		}
		if err := search.Walk(c.Dir); err != nil {
			t.Fatal(err)
		}
		t.Logf("searched %d files and %d outputs (%d bytes incl. etcd data files, %d etcd keys dumped) for %d private keys in 5 forms: %d hits",
			search.Files, len(outputs), search.Scanned, strings.Count(dump, "\n"), len(secrets), len(search.Hits))
		fmt.Printf("KEY LEAK SEARCH: %d files + %d outputs, %d bytes, %d private keys x 5 encodings: %d hits\n", search.Files, len(outputs), search.Scanned, len(secrets), len(search.Hits))
		for _, h := range search.Hits {
			t.Errorf("private key found in %s (%s)", h.Where, h.What)
		}
		if !search.Works() {
			t.Fatal("the search cannot find a planted key")
		}
	})
}
