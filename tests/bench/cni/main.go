// Command cni benchmarks CNI ADD and DEL latency through cnitool, for
// wgcni + wgcni-ipam and for Debian's reference bridge + host-local, in
// the same run on the same machine, and prints p50/p99 for each and the
// ratio wgcni/reference (target <= 1.0). The reference runs twice: as
// configured for the comparison (ipMasq off) and as a user's usual bridge
// conflist (ipMasq on); each side's configuration is printed.
//
// Run as root from the repository root:
//
//	go run ./tests/bench/cni [-n 100] [-rounds 2] [-conc 20] [-cnitool PATH] [-portmap]
//
// -portmap chains portmap on every side, like for like with the shipped
// conflist (conf/examples/10-wgcni.conflist).
//
// -trace N prints where one DEL's time goes instead (trace.go).
//
// Each side gets its own "node" network namespace (wgp-bench-*); pods are
// namespaces too, each with one interface per side (eth0 wgcni, eth1
// reference, eth2 reference with ipMasq). cnitool runs inside the node
// namespace via nsenter for every side alike. Everything created is
// removed on exit.
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
	"github.com/wgcni/wgcni/tests/netnsdir"
)

type side struct {
	label   string
	ifName  string // each side has its own interface in the shared pod netns
	net     string // network name in the conflist
	cniPath string
	netDir  string
	nodeNS  string
	// conflist is what the side runs with, printed at the start.
	conflist map[string]any
	// plugin, if set, is the main plugin's binary for -trace (default:
	// its type in cniPath).
	plugin string
}

type sample struct {
	side, op, mode string
	d              time.Duration
}

// options are the command line.
type options struct {
	n, rounds, conc  int
	cnitool, refDir  string
	masq, portmap    bool
	trace            int    // > 0: trace that many DELs per side instead of benchmarking
	traceWgcniBefore string // another wgcni binary to trace beside the one built here
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 100, "pods per phase")
	flag.IntVar(&o.rounds, "rounds", 2, "rounds; the order of the sides rotates per round")
	flag.IntVar(&o.conc, "conc", 20, "parallel cnitool invocations in the concurrent phase")
	flag.StringVar(&o.cnitool, "cnitool", "", "cnitool binary (default: go install github.com/containernetworking/cni/cnitool@v1.3.1 into a temp dir)")
	flag.BoolVar(&o.masq, "ipmasq", true, "ipMasq for wgcni (the product default)")
	flag.StringVar(&o.refDir, "ref-plugins", "/usr/lib/cni", "directory with the reference bridge, host-local and portmap plugins")
	flag.BoolVar(&o.portmap, "portmap", false, "chain Debian's portmap after the main plugin on every side, as the shipped conflist does")
	flag.IntVar(&o.trace, "trace", 0, "instead of benchmarking, run this many DELs of each side's main plugin under strace and print where the time goes, step by step (median ms)")
	flag.StringVar(&o.traceWgcniBefore, "trace-wgcni", "", "with -trace: also trace this wgcni binary (e.g. one built from an older commit), interleaved")
	flag.Parse()
	if err := run(o); err != nil {
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

func run(o options) error {
	n, rounds, conc, cnitool, refDir, masq, portmap := o.n, o.rounds, o.conc, o.cnitool, o.refDir, o.masq, o.portmap
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	for _, p := range []string{"bridge", "host-local", "portmap"} {
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
		if err := netnsdir.Prepare(); err != nil {
			return "", err
		}
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			return "", fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
		}
		cl.add(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		return "/run/netns/" + name, nil
	}
	id := fmt.Sprintf("%d", os.Getpid())

	// Every side: its own node namespace, network directory and pod
	// interface name.
	newSide := func(label, ifName, netName, cniPath string, conflist map[string]any) (side, error) {
		s := side{label: label, ifName: ifName, net: netName, cniPath: cniPath, netDir: filepath.Join(tmp, "net-"+netName), conflist: conflist}
		var err error
		if s.nodeNS, err = newNS("wgp-bench-" + netName + "-" + id); err != nil {
			return s, err
		}
		conflist["name"] = netName
		if portmap {
			// Without port mappings in the runtime config portmap's ADD
			// passes the result through; its DEL still tears down.
			// Debian's portmap implements CNI up to 1.0.0, the shipped
			// conflist's cniVersion.
			conflist["cniVersion"] = "1.0.0"
			conflist["plugins"] = append(conflist["plugins"].([]any),
				map[string]any{"type": "portmap", "capabilities": map[string]any{"portMappings": true}, "snat": true})
		}
		return s, writeConflist(s.netDir, conflist)
	}

	// wgcni side: a node file as wgcnid would write it.
	runDir := filepath.Join(tmp, "run")
	node := &nodefile.Node{Name: "bench", PodCIDR: "10.244.3.0/24", Gateway: "10.244.3.1", ClusterCIDR: "10.244.0.0/16",
		MTU: 1420, Bridge: "wgcni0", Device: "wgp-bench-wg", IPAMDir: filepath.Join(tmp, "ipam-wgcni")}
	if err := nodefile.Write(runDir, node); err != nil {
		return err
	}
	wgPath := bin
	if portmap {
		wgPath += string(os.PathListSeparator) + refDir
	}
	wg, err := newSide("wgcni", "eth0", "wg", wgPath, map[string]any{
		"cniVersion": "1.1.0",
		"plugins":    []any{map[string]any{"type": "wgcni", "runDir": runDir, "ipMasq": masq, "ipam": map[string]any{"type": "wgcni-ipam"}}},
	})
	if err != nil {
		return err
	}

	// Reference sides: the bridge a flannel-style setup uses, at the
	// newest CNI version Debian's plugins implement; once without ipMasq
	// (the comparison the target is about) and once with it, as a user's
	// usual bridge conflist has it (iptables masquerade per pod).
	refConf := func(ipMasq bool, dataDir string) map[string]any {
		return map[string]any{
			"cniVersion": "1.0.0",
			"plugins": []any{map[string]any{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": ipMasq, "mtu": 1420,
				"ipam": map[string]any{"type": "host-local", "dataDir": filepath.Join(tmp, dataDir),
					"ranges": [][]map[string]string{{{"subnet": "10.244.3.0/24"}}}, "routes": []map[string]string{{"dst": "0.0.0.0/0"}}}}},
		}
	}
	ref, err := newSide("reference", "eth1", "ref", refDir, refConf(false, "ipam-ref"))
	if err != nil {
		return err
	}
	refMasq, err := newSide("ref+ipMasq", "eth2", "refmasq", refDir, refConf(true, "ipam-refmasq"))
	if err != nil {
		return err
	}
	sides := []side{wg, ref, refMasq}

	pods := make([]string, n)
	for i := range pods {
		if pods[i], err = newNS(fmt.Sprintf("wgp-bench-p%d-%s", i, id)); err != nil {
			return err
		}
	}

	fmt.Printf("CNI latency through cnitool: %d pods per phase, %d rounds, concurrency %d; load average %s\n", n, rounds, conc, loadavg())
	for _, s := range sides {
		b, _ := json.Marshal(s.conflist)
		fmt.Printf("  %-10s plugins from %s, CNI_IFNAME %s, conflist %s\n", s.label+":", s.cniPath, s.ifName, b)
	}

	// Warm-up: page cache, bridge creation, first-time nft table.
	for _, s := range sides {
		if _, err := cnitoolRun(cnitool, s, "add", pods[0]); err != nil {
			return err
		}
		if _, err := cnitoolRun(cnitool, s, "del", pods[0]); err != nil {
			return err
		}
	}

	if o.trace > 0 {
		traced := []side{wg}
		if o.traceWgcniBefore != "" {
			before := wg
			before.label, before.plugin = "wgcni-before", o.traceWgcniBefore
			traced = append(traced, before)
		}
		return traceDEL(o.trace, append(traced, ref), pods)
	}

	// The machine is shared, so background load drifts. The sides are
	// interleaved finely (every pod in sequential mode, every batch of
	// conc in concurrent mode, the leading side rotating) so that all
	// see the same load; each pod gets one interface per side.
	var samples []sample
	order := func(k int) []side {
		out := make([]side, len(sides))
		for i := range sides {
			out[i] = sides[(i+k)%len(sides)]
		}
		return out
	}
	for r := 0; r < rounds; r++ {
		for _, op := range []string{"add", "del"} {
			for i, p := range pods {
				for _, s := range order(i + r) {
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
				for _, s := range order(b + r) {
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
	report(samples, conc, wg.label, ref.label, refMasq.label)
	fmt.Printf("load average at the end: %s\n", loadavg())
	return nil
}

// loadavg is the 1, 5 and 15 minute load average: the machine is shared,
// and absolute figures mean little without it.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
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

// report prints p50/p99 per side and the ratios of the first side to each
// of the others; the target (<= 1.00) is against the second.
func report(samples []sample, conc int, labels ...string) {
	group := map[string][]time.Duration{}
	for _, s := range samples {
		k := s.side + "|" + s.op + "|" + s.mode
		group[k] = append(group[k], s.d)
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%7.2f", float64(d)/float64(time.Millisecond)) }
	fmt.Println()
	head := fmt.Sprintf("%-4s %-14s %7s", "op", "mode", "samples")
	sub := fmt.Sprintf("%-4s %-14s %7s", "", "", "")
	for _, l := range labels {
		head += fmt.Sprintf(" | %-15s", l+" ms")
		sub += fmt.Sprintf(" | %7s %7s", "p50", "p99")
	}
	for _, l := range labels[1:] {
		head += fmt.Sprintf(" | %-13s", "x "+l)
		sub += fmt.Sprintf(" | %6s %6s", "p50", "p99")
	}
	fmt.Println(head)
	fmt.Println(sub)
	fmt.Println(strings.Repeat("-", len(sub)))
	worst50, worst99 := 0.0, 0.0
	for _, mode := range []string{"sequential", fmt.Sprintf("concurrent-%d", conc)} {
		for _, op := range []string{"add", "del"} {
			ds := make([][]time.Duration, len(labels))
			line := fmt.Sprintf("%-4s %-14s %7d", strings.ToUpper(op), mode, len(group[labels[0]+"|"+op+"|"+mode]))
			for i, l := range labels {
				ds[i] = group[l+"|"+op+"|"+mode]
				line += fmt.Sprintf(" | %s %s", ms(percentile(ds[i], .5)), ms(percentile(ds[i], .99)))
			}
			for i := range labels[1:] {
				x50 := float64(percentile(ds[0], .5)) / float64(percentile(ds[i+1], .5))
				x99 := float64(percentile(ds[0], .99)) / float64(percentile(ds[i+1], .99))
				if i == 0 {
					worst50, worst99 = max(worst50, x50), max(worst99, x99)
				}
				line += fmt.Sprintf(" | %6.2f %6.2f", x50, x99)
			}
			fmt.Println(line)
		}
	}
	verdict := func(x float64) string {
		if x > 1.0 {
			return "MISSED"
		}
		return "MET"
	}
	fmt.Printf("\nworst ratio %s/%s: p50 %.2f (target <= 1.00: %s), p99 %.2f (target <= 1.00: %s)\n",
		labels[0], labels[1], worst50, verdict(worst50), worst99, verdict(worst99))
}
