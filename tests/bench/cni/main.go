// Command cni benchmarks CNI ADD and DEL latency through cnitool, for
// wgcni + wgcni-ipam and for Debian's reference bridge + host-local, in
// the same run on the same machine, and prints p50/p99 for both and the
// ratio wgcni/reference (target <= 1.0).
//
// Run as root from the repository root:
//
//	go run ./tests/bench/cni [-n 100] [-rounds 2] [-conc 20] [-cnitool PATH]
//
// Each side gets its own "node" network namespace (wgp-bench-*); pods are
// namespaces too, each with one interface per side (eth0 wgcni, eth1
// reference). cnitool runs inside the node namespace via nsenter for
// both sides alike. Everything created is removed on exit.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

type side struct {
	label   string
	ifName  string // each side has its own interface in the shared pod netns
	net     string // network name in the conflist
	cniPath string
	netDir  string
	nodeNS  string
}

type sample struct {
	side, op, mode string
	d              time.Duration
}

func main() {
	n := flag.Int("n", 100, "pods per phase")
	rounds := flag.Int("rounds", 2, "rounds; the order of the two sides alternates per round")
	conc := flag.Int("conc", 20, "parallel cnitool invocations in the concurrent phase")
	cnitool := flag.String("cnitool", "", "cnitool binary (default: go install github.com/containernetworking/cni/cnitool@v1.3.1 into a temp dir)")
	masq := flag.Bool("ipmasq", true, "ipMasq for wgcni (the product default)")
	refDir := flag.String("ref-plugins", "/usr/lib/cni", "directory with the reference bridge and host-local plugins")
	flag.Parse()
	if err := run(*n, *rounds, *conc, *cnitool, *refDir, *masq); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// cleanup runs registered undo steps in reverse, once.
type cleanup struct {
	mu    sync.Mutex
	steps []func()
}

func (c *cleanup) add(f func()) { c.mu.Lock(); c.steps = append(c.steps, f); c.mu.Unlock() }
func (c *cleanup) run() {
	c.mu.Lock()
	steps := c.steps
	c.steps = nil
	c.mu.Unlock()
	for i := len(steps) - 1; i >= 0; i-- {
		steps[i]()
	}
}

func run(n, rounds, conc int, cnitool, refDir string, masq bool) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(refDir, p)); err != nil {
			return fmt.Errorf("reference plugin %s: %w (apt-get install containernetworking-plugins)", p, err)
		}
	}
	var cl cleanup
	defer cl.run()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; cl.run(); os.Exit(130) }()

	tmp, err := os.MkdirTemp("", "wgp-bench-")
	if err != nil {
		return err
	}
	cl.add(func() { os.RemoveAll(tmp) })
	bin := filepath.Join(tmp, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	// Built as shipped: static, stripped (see the Makefile's build flags).
	for _, pkg := range []string{"./plugins/wgcni", "./ipam/wgcni-ipam"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin+"/", pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v: %s", pkg, err, out)
		}
	}
	if cnitool == "" {
		cmd := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@v1.3.1")
		cmd.Env = append(os.Environ(), "GOBIN="+bin)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("install cnitool: %v: %s", err, out)
		}
		cnitool = filepath.Join(bin, "cnitool")
	}

	newNS := func(name string) (string, error) {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			return "", fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
		}
		cl.add(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		return "/run/netns/" + name, nil
	}
	id := fmt.Sprintf("%d", os.Getpid())

	// wgcni side: a node file as wgcnid would write it.
	wg := side{label: "wgcni", ifName: "eth0", net: "wgcni-bench", cniPath: bin, netDir: filepath.Join(tmp, "net-wgcni")}
	if wg.nodeNS, err = newNS("wgp-bench-wg-" + id); err != nil {
		return err
	}
	runDir := filepath.Join(tmp, "run")
	node := &nodefile.Node{Name: "bench", PodCIDR: "10.244.3.0/24", Gateway: "10.244.3.1", ClusterCIDR: "10.244.0.0/16",
		MTU: 1420, Bridge: "wgcni0", Device: "wgp-bench-wg", IPAMDir: filepath.Join(tmp, "ipam-wgcni")}
	if err := nodefile.Write(runDir, node); err != nil {
		return err
	}
	if err := writeConflist(wg.netDir, map[string]any{
		"cniVersion": "1.1.0", "name": wg.net,
		"plugins": []any{map[string]any{"type": "wgcni", "runDir": runDir, "ipMasq": masq, "ipam": map[string]any{"type": "wgcni-ipam"}}},
	}); err != nil {
		return err
	}

	// Reference side: the bridge a flannel-style setup uses.
	ref := side{label: "reference", ifName: "eth1", net: "ref-bench", cniPath: refDir, netDir: filepath.Join(tmp, "net-ref")}
	if ref.nodeNS, err = newNS("wgp-bench-ref-" + id); err != nil {
		return err
	}
	if err := writeConflist(ref.netDir, map[string]any{
		"cniVersion": "1.0.0", "name": ref.net,
		"plugins": []any{map[string]any{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "mtu": 1420,
			"ipam": map[string]any{"type": "host-local", "dataDir": filepath.Join(tmp, "ipam-ref"),
				"ranges": [][]map[string]string{{{"subnet": "10.244.3.0/24"}}}, "routes": []map[string]string{{"dst": "0.0.0.0/0"}}}}},
	}); err != nil {
		return err
	}

	pods := make([]string, n)
	for i := range pods {
		if pods[i], err = newNS(fmt.Sprintf("wgp-bench-p%d-%s", i, id)); err != nil {
			return err
		}
	}

	fmt.Printf("CNI latency through cnitool: %d pods per phase, %d rounds, concurrency %d\n", n, rounds, conc)
	fmt.Printf("  wgcni:     wgcni + wgcni-ipam (cniVersion 1.1.0, ipMasq %v) from %s\n", masq, bin)
	fmt.Printf("  reference: bridge + host-local (cniVersion 1.0.0, isGateway, ipMasq off) from %s\n", refDir)

	// Warm-up: page cache, bridge creation, first-time nft table.
	for _, s := range []side{wg, ref} {
		if _, err := cnitoolRun(cnitool, s, "add", pods[0]); err != nil {
			return err
		}
		if _, err := cnitoolRun(cnitool, s, "del", pods[0]); err != nil {
			return err
		}
	}

	// The machine is shared, so background load drifts. The two sides are
	// interleaved finely (every pod in sequential mode, every batch of
	// conc in concurrent mode, the leading side alternating) so that both
	// see the same load; each pod gets one interface per side.
	var samples []sample
	both := func(k int) []side {
		if k%2 == 0 {
			return []side{wg, ref}
		}
		return []side{ref, wg}
	}
	for r := 0; r < rounds; r++ {
		for _, op := range []string{"add", "del"} {
			for i, p := range pods {
				for _, s := range both(i + r) {
					d, err := cnitoolRun(cnitool, s, op, p)
					if err != nil {
						return err
					}
					samples = append(samples, sample{s.label, op, "sequential", d})
				}
			}
		}
		mode := fmt.Sprintf("concurrent-%d", conc)
		for _, op := range []string{"add", "del"} {
			for b := 0; b*conc < len(pods); b++ {
				batch := pods[b*conc : min(len(pods), (b+1)*conc)]
				for _, s := range both(b + r) {
					ds, err := parallel(cnitool, s, op, batch, conc)
					if err != nil {
						return err
					}
					for _, d := range ds {
						samples = append(samples, sample{s.label, op, mode, d})
					}
				}
			}
		}
	}
	report(samples, conc)
	return nil
}

func writeConflist(dir string, v any) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	return os.WriteFile(filepath.Join(dir, "10-bench.conflist"), b, 0o644)
}

// cnitoolRun times one cnitool invocation in the side's node namespace.
func cnitoolRun(cnitool string, s side, op, podNS string) (time.Duration, error) {
	cmd := exec.Command("nsenter", "--net="+s.nodeNS, cnitool, op, s.net, podNS)
	cmd.Env = []string{"CNI_PATH=" + s.cniPath, "NETCONFPATH=" + s.netDir, "CNI_IFNAME=" + s.ifName, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%s: cnitool %s %s: %v: %s", s.label, op, podNS, err, out.String())
	}
	return d, nil
}

func parallel(cnitool string, s side, op string, pods []string, conc int) ([]time.Duration, error) {
	work := make(chan string)
	var mu sync.Mutex
	var ds []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				d, err := cnitoolRun(cnitool, s, op, p)
				mu.Lock()
				ds = append(ds, d)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	for _, p := range pods {
		work <- p
	}
	close(work)
	wg.Wait()
	return ds, firstErr
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	idx := int(p*float64(len(s))+0.5) - 1
	if idx < 0 {
		idx = 0
	}
	if idx >= len(s) {
		idx = len(s) - 1
	}
	return s[idx]
}

func report(samples []sample, conc int) {
	group := map[string][]time.Duration{}
	for _, s := range samples {
		k := s.side + "|" + s.op + "|" + s.mode
		group[k] = append(group[k], s.d)
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%7.2f", float64(d)/float64(time.Millisecond)) }
	fmt.Println()
	fmt.Printf("%-6s %-14s %8s | %-9s %-9s | %-9s %-9s | %-7s %-7s\n", "op", "mode", "samples", "wgcni p50", "wgcni p99", "ref p50", "ref p99", "p50 x", "p99 x")
	fmt.Println(strings.Repeat("-", 100))
	worst := 0.0
	for _, mode := range []string{"sequential", fmt.Sprintf("concurrent-%d", conc)} {
		for _, op := range []string{"add", "del"} {
			w := group["wgcni|"+op+"|"+mode]
			r := group["reference|"+op+"|"+mode]
			w50, w99, r50, r99 := percentile(w, .5), percentile(w, .99), percentile(r, .5), percentile(r, .99)
			x50, x99 := float64(w50)/float64(r50), float64(w99)/float64(r99)
			worst = max(worst, x50, x99)
			fmt.Printf("%-6s %-14s %8d | %s ms %s ms | %s ms %s ms | %7.2f %7.2f\n", strings.ToUpper(op), mode, len(w), ms(w50), ms(w99), ms(r50), ms(r99), x50, x99)
		}
	}
	verdict := "MET"
	if worst > 1.0 {
		verdict = "MISSED"
	}
	fmt.Printf("\nworst ratio wgcni/reference: %.2f (target <= 1.00: %s)\n", worst, verdict)
}
