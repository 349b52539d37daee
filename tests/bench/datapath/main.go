// Command datapath measures cross-node TCP throughput (iperf3, 1 and 4
// streams) through wgcni — pod to pod across two nodes of the harness
// cluster — against references measured in the same run, interleaved
// round by round, on the same underlay (same bridge, same MTU, same kind
// of node namespaces):
//
//   - wgref: a plain pair of userspace WireGuard devices built from the
//     same golang.zx2c4.com/wireguard version (tests/bench/datapath/wgref),
//     node to node. The target is wgcni/wgref >= 0.95.
//   - Debian's wireguard-go binary (if installed), node to node.
//   - the raw underlay veth (through the underlay bridge): the ceiling.
//
// To attribute what wgcni itself costs it also measures node to node
// through wgcni's own device (no pod veth, no bridge), pod to pod with
// the node's nftables masquerade table removed, and pods wired by hand
// behind another wgref pair (pods.go): bridged like wgcni's, routed
// without a bridge, and bridged with wgcni's nftables tables added. Those
// separate what any pod behind a veth costs from what wgcni adds.
//
// Run as root from the repository root after `make build`:
//
//	go run ./tests/bench/datapath [-mtu 1500,9000] [-t 5s] [-rounds 2]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/tests/harness"
)

// Options select what to measure.
type Options struct {
	MTUs    []int
	Dur     time.Duration
	Rounds  int
	Streams []int
	Only    *regexp.Regexp // cases to run (nil: all)
	// PerfDir, if set, gets a system-wide `perf record -g` of the first
	// sample of every case (to see where the CPU time goes).
	PerfDir string
	Logf    func(string, ...any)
}

// Case is one measured path.
type Case struct {
	Name   string
	Client harness.NS
	Server harness.NS
	Addr   netip.Addr
	// Before/After run around each measurement (e.g. remove and restore
	// the masquerade table).
	Before, After func() error
	// PIDs are the WireGuard processes on the path (none for the veth).
	PIDs []int
}

// Result holds every sample per case and stream count for one MTU.
type Result struct {
	MTU, PodMTU int
	Samples     map[string][]float64 // "case/streams" -> Gbit/s
	// Eff is Gbit per CPU-second spent by iperf3 (both ends, including
	// the kernel work done in their context) and the WireGuard processes:
	// what a path costs, largely independent of the machine's other load.
	Eff      map[string][]float64
	Notes    []string
	Offloads string
}

func main() {
	mtus := flag.String("mtu", "1500,9000", "underlay MTUs")
	dur := flag.Duration("t", 5*time.Second, "iperf3 duration per sample")
	rounds := flag.Int("rounds", 2, "rounds; the case order reverses every round (A/B/B/A)")
	only := flag.String("only", "", "regexp: run only the matching cases")
	streams := flag.String("P", "1,4", "iperf3 parallel streams to measure")
	perfDir := flag.String("perf", "", "directory for perf record data of each case's first sample")
	flag.Parse()
	o := Options{Dur: *dur, Rounds: *rounds, PerfDir: *perfDir}
	if *only != "" {
		o.Only = regexp.MustCompile(*only)
	}
	for _, s := range strings.Split(*streams, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || p < 1 {
			fmt.Fprintf(os.Stderr, "datapath: -P: bad stream count %q\n", s)
			os.Exit(2)
		}
		o.Streams = append(o.Streams, p)
	}
	for _, s := range strings.Split(*mtus, ",") {
		m, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || m < 1280 {
			fmt.Fprintf(os.Stderr, "datapath: -mtu: bad MTU %q\n", s)
			os.Exit(2)
		}
		o.MTUs = append(o.MTUs, m)
	}
	o.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	var all []Result
	for _, m := range o.MTUs {
		r, err := Run(m, o)
		if err != nil {
			fmt.Fprintf(os.Stderr, "datapath: MTU %d: %v\n", m, err)
			Print(os.Stdout, all)
			os.Exit(1)
		}
		all = append(all, r)
	}
	Print(os.Stdout, all)
}

// Run builds one cluster with underlay MTU mtu and measures every case.
func Run(mtu int, o Options) (res Result, err error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	res = Result{MTU: mtu, Samples: map[string][]float64{}, Eff: map[string][]float64{}}
	c, err := harness.New(harness.Config{UnderlayMTU: mtu, Logf: o.Logf})
	if err != nil {
		return res, err
	}
	defer c.Close()
	nodes, err := c.AddNodes(2)
	if err != nil {
		return res, err
	}
	p1, err := nodes[0].AddPod()
	if err != nil {
		return res, err
	}
	p2, err := nodes[1].AddPod()
	if err != nil {
		return res, err
	}
	nf2, err := nodes[1].NodeFile()
	if err != nil {
		return res, err
	}
	res.PodMTU = nf2.MTU
	if err := harness.WaitFor(30*time.Second, "pod to pod ping", func() (bool, error) {
		r, err := p1.Ping(p2.IP, 1, 200*time.Millisecond)
		return err == nil && r.Received == 1, nil
	}); err != nil {
		return res, err
	}
	res.Offloads = offloads(nodes[0].NS, nodes[0].Device)

	// Reference nodes: same underlay, no wgcnid.
	r1, err := c.AddBareNode()
	if err != nil {
		return res, err
	}
	r2, err := c.AddBareNode()
	if err != nil {
		return res, err
	}
	wgMTU := mtu - 60
	refBin := filepath.Join(c.Dir, "wgref")
	build := exec.Command("go", "build", "-o", refBin, "./tests/bench/datapath/wgref")
	build.Dir = c.Cfg.Repo
	if out, err := build.CombinedOutput(); err != nil {
		return res, fmt.Errorf("build wgref: %v: %s", err, out)
	}
	pairOn := func(on [2]*harness.Node, tag string, subnet byte, port int, start func(n *harness.Node, dev string) error) ([2]netip.Addr, error) {
		r1, r2 := on[0], on[1]
		var addrs [2]netip.Addr
		devs := [2]string{"wgb-" + c.RunID + "-" + tag + "1", "wgb-" + c.RunID + "-" + tag + "2"}
		keys := [2]wgtypes.Key{}
		for i, n := range []*harness.Node{r1, r2} {
			if err := start(n, devs[i]); err != nil {
				return addrs, err
			}
			k, err := wgtypes.GeneratePrivateKey()
			if err != nil {
				return addrs, err
			}
			keys[i] = k
			addrs[i] = netip.AddrFrom4([4]byte{10, 250, subnet, byte(i + 1)})
		}
		for i, n := range []*harness.Node{r1, r2} {
			other := []*harness.Node{r1, r2}[1-i]
			err := n.Do(func() error {
				wg, err := wgctrl.New()
				if err != nil {
					return err
				}
				defer wg.Close()
				_, ipn, _ := net.ParseCIDR(fmt.Sprintf("10.250.%d.%d/32", subnet, 2-i))
				ep := net.UDPAddrFromAddrPort(netip.AddrPortFrom(other.UnderlayIP, uint16(port+1-i)))
				lp := port + i
				if err := wg.ConfigureDevice(devs[i], wgtypes.Config{PrivateKey: &keys[i], ListenPort: &lp,
					Peers: []wgtypes.PeerConfig{{PublicKey: keys[1-i].PublicKey(), Endpoint: ep, AllowedIPs: []net.IPNet{*ipn}}}}); err != nil {
					return fmt.Errorf("configure %s: %w", devs[i], err)
				}
				l, err := netlink.LinkByName(devs[i])
				if err != nil {
					return err
				}
				if err := netlink.LinkSetMTU(l, wgMTU); err != nil {
					return err
				}
				a, _ := netlink.ParseAddr(fmt.Sprintf("10.250.%d.%d/24", subnet, i+1))
				if err := netlink.AddrAdd(l, a); err != nil {
					return err
				}
				return netlink.LinkSetUp(l)
			})
			if err != nil {
				return addrs, err
			}
		}
		return addrs, nil
	}
	pair := func(tag string, subnet byte, port int, start func(n *harness.Node, dev string) error) ([2]netip.Addr, error) {
		return pairOn([2]*harness.Node{r1, r2}, tag, subnet, port, start)
	}
	pids := map[string]int{}
	startProc := func(n *harness.Node, dev string, argv ...string) error {
		cmd := n.Command(context.Background(), argv...)
		cmd.Env = append(os.Environ(), "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", "LOG_LEVEL=error")
		// Every device runs in its own session, as wgcnid's device host
		// does and as WireGuard does in any deployment (a service or a
		// pod apart from the workloads): with the scheduler's autogroups
		// (kernel.sched_autogroup_enabled) a device sharing the session of
		// iperf3 is scheduled differently and costs ~10 % less CPU per
		// byte, which is the lab, not the device ("wgref same session").
		if !strings.HasSuffix(dev, "-q1") && !strings.HasSuffix(dev, "-q2") {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		}
		lf, err := os.Create(filepath.Join(c.Dir, dev+".log"))
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = lf, lf
		if err := cmd.Start(); err != nil {
			lf.Close()
			return fmt.Errorf("start %v: %w", argv, err)
		}
		// Processes in the node namespace are killed by PID when the
		// cluster removes the namespace; reap it when that happens.
		go func() { _ = cmd.Wait(); lf.Close() }()
		pids[dev] = cmd.Process.Pid // ip netns exec execs: same pid
		return harness.WaitFor(10*time.Second, dev, func() (bool, error) {
			_, err := os.Stat(filepath.Join("/var/run/wireguard", dev+".sock"))
			return err == nil, nil
		})
	}
	refAddrs, err := pair("g", 1, 51830, func(n *harness.Node, dev string) error {
		return startProc(n, dev, refBin, dev, strconv.Itoa(wgMTU))
	})
	if err != nil {
		return res, fmt.Errorf("wgref pair: %w", err)
	}
	defer removeSockets(c.RunID)
	var wgPIDs []int
	for _, n := range nodes {
		pid, err := readPID(filepath.Join(n.RunDir, n.Device+".pid"))
		if err != nil {
			return res, err
		}
		wgPIDs = append(wgPIDs, pid)
	}
	pidsOf := func(tag string) []int {
		return []int{pids["wgb-"+c.RunID+"-"+tag+"1"], pids["wgb-"+c.RunID+"-"+tag+"2"]}
	}
	cases := []Case{
		{Name: "wgcni pod->pod", Client: p1.NS, Server: p2.NS, Addr: p2.IP, PIDs: wgPIDs},
		{Name: "wgref node->node", Client: r1.NS, Server: r2.NS, Addr: refAddrs[1], PIDs: pidsOf("g")},
	}
	// Post-quantum preshared keys (#17): two more wgcni nodes with
	// --post-quantum=on, so their pair holds a PSK (rotated by wgcnid
	// during the run), against the pair without one above. A PSK only
	// enters the handshake, so the target is a ratio of 1 within noise.
	if want(o, "wgcni pod->pod post-quantum") {
		pq, err := pqPair(c)
		if err != nil {
			return res, err
		}
		cases = append(cases, pq)
	}
	// The pod hop without wgcnid: two more bare nodes with a wgref pair
	// and pods wired by hand (pods.go), bridged like wgcni's and routed
	// without a bridge; then the bridged ones with wgcni's nftables
	// tables added. wgcni pod->pod against these tells what wgcni adds
	// from what any pod behind a veth costs.
	if want(o, "wgref pod->pod", "wgref pod->pod routed", "wgref pod->pod +wgcni nft") {
		r3, err := c.AddBareNode()
		if err != nil {
			return res, err
		}
		r4, err := c.AddBareNode()
		if err != nil {
			return res, err
		}
		on := [2]*harness.Node{r3, r4}
		if _, err := pairOn(on, "p", 6, 51880, func(n *harness.Node, dev string) error {
			return startProc(n, dev, refBin, dev, strconv.Itoa(wgMTU))
		}); err != nil {
			return res, fmt.Errorf("wgref pod pair: %w", err)
		}
		devs := [2]string{"wgb-" + c.RunID + "-p1", "wgb-" + c.RunID + "-p2"}
		bp, err := barePods(c, on, "bp", podPlan{Bridged: true, Second: 251, Dev: devs, MTU: wgMTU})
		if err != nil {
			return res, err
		}
		rp, err := barePods(c, on, "rp", podPlan{Second: 249, Dev: devs, MTU: wgMTU})
		if err != nil {
			return res, err
		}
		cluster := netip.MustParsePrefix("10.251.0.0/16")
		add1, rm1 := wgcniFilters(r3, bp[0], netip.MustParsePrefix("10.251.1.0/24"), cluster)
		add2, rm2 := wgcniFilters(r4, bp[1], netip.MustParsePrefix("10.251.2.0/24"), cluster)
		cases = append(cases,
			Case{Name: "wgref pod->pod", Client: bp[0].NS, Server: bp[1].NS, Addr: bp[1].IP, PIDs: pidsOf("p")},
			Case{Name: "wgref pod->pod routed", Client: rp[0].NS, Server: rp[1].NS, Addr: rp[1].IP, PIDs: pidsOf("p")},
			Case{Name: "wgref pod->pod +wgcni nft", Client: bp[0].NS, Server: bp[1].NS, Addr: bp[1].IP, PIDs: pidsOf("p"),
				Before: func() error { return errors.Join(add1(), add2()) },
				After:  func() error { return errors.Join(rm1(), rm2()) }},
		)
	}
	sameAddrs, err := pair("q", 5, 51870, func(n *harness.Node, dev string) error {
		return startProc(n, dev, refBin, dev, strconv.Itoa(wgMTU))
	})
	if err != nil {
		return res, fmt.Errorf("wgref same-session pair: %w", err)
	}
	cases = append(cases, Case{Name: "wgref same session", Client: r1.NS, Server: r2.NS, Addr: sameAddrs[1], PIDs: pidsOf("q")})
	// The device host wgcnid itself runs (wgcnid userspace-device) on a
	// bare node: tells the device apart from the node setup around it.
	devAddrs, err := pair("w", 3, 51850, func(n *harness.Node, dev string) error {
		return startProc(n, dev, c.Bin("wgcnid"), "userspace-device", "--name", dev, "--mtu", strconv.Itoa(wgMTU), "--run-dir", filepath.Join(c.Dir, dev))
	})
	if err != nil {
		return res, fmt.Errorf("wgcnid userspace-device pair: %w", err)
	}
	cases = append(cases, Case{Name: "wgcnid-device node->node", Client: r1.NS, Server: r2.NS, Addr: devAddrs[1], PIDs: pidsOf("w")})
	// The same pair with one piece of a wgcni node's setup added at a
	// time: IP forwarding on, and a NAT chain (which turns on conntrack).
	onBoth := func(argvs ...[]string) func() error {
		return func() error {
			for _, n := range []*harness.Node{r1, r2} {
				for _, argv := range argvs {
					if _, err := n.Exec(argv...); err != nil {
						return err
					}
				}
			}
			return nil
		}
	}
	cases = append(cases,
		Case{Name: "wgcnid-device +forwarding", Client: r1.NS, Server: r2.NS, Addr: devAddrs[1], PIDs: pidsOf("w"),
			Before: onBoth([]string{"sysctl", "-qw", "net.ipv4.ip_forward=1"}), After: onBoth([]string{"sysctl", "-qw", "net.ipv4.ip_forward=0"})},
		Case{Name: "wgcnid-device +nat", Client: r1.NS, Server: r2.NS, Addr: devAddrs[1], PIDs: pidsOf("w"),
			Before: onBoth([]string{"nft", "add", "table", "ip", "wgb"}, []string{"nft", "add chain ip wgb post { type nat hook postrouting priority srcnat; }"}),
			After:  onBoth([]string{"nft", "delete", "table", "ip", "wgb"})},
	)
	if _, err := exec.LookPath("wireguard-go"); err == nil {
		debAddrs, err := pair("d", 2, 51840, func(n *harness.Node, dev string) error {
			return startProc(n, dev, "wireguard-go", "-f", dev)
		})
		if err != nil {
			return res, fmt.Errorf("Debian wireguard-go pair: %w", err)
		}
		cases = append(cases, Case{Name: "debian wireguard-go", Client: r1.NS, Server: r2.NS, Addr: debAddrs[1], PIDs: pidsOf("d")})
	} else {
		res.Notes = append(res.Notes, "Debian wireguard-go not installed (apt-get install wireguard-go): skipped")
	}
	gw2 := netip.MustParseAddr(nf2.Gateway)
	cases = append(cases,
		Case{Name: "veth underlay (ceiling)", Client: r1.NS, Server: r2.NS, Addr: r2.UnderlayIP},
		Case{Name: "wgcni node->node", Client: nodes[0].NS, Server: nodes[1].NS, Addr: gw2, PIDs: wgPIDs},
	)
	if _, err := exec.LookPath("nft"); err == nil {
		var saved [2]string
		cases = append(cases, Case{Name: "wgcni pod->pod no masq", Client: p1.NS, Server: p2.NS, Addr: p2.IP, PIDs: wgPIDs,
			Before: func() error {
				for i, n := range nodes {
					out, err := n.Exec("nft", "list", "table", "ip", "wgcni")
					if err != nil {
						return err
					}
					saved[i] = out
					if _, err := n.Exec("nft", "delete", "table", "ip", "wgcni"); err != nil {
						return err
					}
				}
				return nil
			},
			After: func() error {
				for i, n := range nodes {
					f := filepath.Join(c.Dir, fmt.Sprintf("nft-%d", i))
					if err := os.WriteFile(f, []byte(saved[i]), 0o600); err != nil {
						return err
					}
					if _, err := n.Exec("nft", "-f", f); err != nil {
						return err
					}
				}
				return nil
			}})
	}

	if o.Only != nil {
		cases = slices.DeleteFunc(cases, func(c Case) bool { return !o.Only.MatchString(c.Name) })
	}
	if len(o.Streams) == 0 {
		o.Streams = []int{1, 4}
	}
	port := 5201
	for round := 0; round < o.Rounds; round++ {
		order := slices.Clone(cases)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, cs := range order {
			for _, st := range o.Streams {
				if cs.Before != nil {
					if err := cs.Before(); err != nil {
						return res, fmt.Errorf("%s: %w", cs.Name, err)
					}
				}
				port++
				var stopPerf func()
				if o.PerfDir != "" && round == 0 {
					stopPerf = perfRecord(filepath.Join(o.PerfDir, fmt.Sprintf("%d-%s-P%d.data", mtu, strings.NewReplacer(" ", "_", ">", "", "(", "", ")", "").Replace(cs.Name), st)), o.Dur)
				}
				cpu0 := cpuOf(cs.PIDs)
				r, err := harness.Iperf3(cs.Client, cs.Server, cs.Addr, port, o.Dur, st)
				wgCPU := cpuOf(cs.PIDs) - cpu0
				if stopPerf != nil {
					stopPerf()
				}
				if cs.After != nil {
					if aerr := cs.After(); aerr != nil {
						return res, fmt.Errorf("%s: restore: %w", cs.Name, aerr)
					}
				}
				if err != nil {
					return res, fmt.Errorf("%s, %d streams: %w", cs.Name, st, err)
				}
				key := fmt.Sprintf("%s/%d", cs.Name, st)
				res.Samples[key] = append(res.Samples[key], r.BitsPerSecond/1e9)
				cpu := (r.CPU + wgCPU).Seconds()
				eff := r.BitsPerSecond * r.Seconds / 1e9 / cpu
				res.Eff[key] = append(res.Eff[key], eff)
				o.Logf("MTU %d round %d: %-26s P%d %6.2f Gbit/s (retr %d) cpu %5.2fs (WireGuard %5.2fs) %5.2f Gbit/cpu-s  load %s",
					mtu, round+1, cs.Name, st, r.BitsPerSecond/1e9, r.Retransmits, cpu, wgCPU.Seconds(), eff, loadavg())
			}
		}
	}
	// Where packets were dropped on wgcni's path, if anywhere (the
	// retransmits iperf3 reports come from these).
	for _, n := range nodes {
		for _, dev := range []string{n.Device, "eth0"} {
			if out, err := n.Exec("tc", "-s", "qdisc", "show", "dev", dev); err == nil {
				res.Notes = append(res.Notes, fmt.Sprintf("%s %s: %s", n.Name, dev, qdiscDrops(out)))
			}
		}
	}
	return res, nil
}

// want reports whether any of the cases named is measured (-only), so
// setting up what only filtered-out cases use can be skipped.
func want(o Options, names ...string) bool {
	return o.Only == nil || slices.ContainsFunc(names, o.Only.MatchString)
}

// qdiscDrops condenses `tc -s qdisc show` to "qdisc ... sent/dropped".
func qdiscDrops(out string) string {
	var parts []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "qdisc ") {
			f := strings.Fields(l)
			parts = append(parts, strings.Join(f[:min(2, len(f))], " "))
		}
		if strings.HasPrefix(l, "Sent ") {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// offloads reports the TUN device's offload features (ethtool -k) and the
// userspace device's batch size from its log.
func offloads(n harness.NS, dev string) string {
	out, err := n.Exec("ethtool", "-k", dev)
	if err != nil {
		return "ethtool -k unavailable: " + strings.SplitN(err.Error(), "\n", 2)[0]
	}
	var on []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		for _, f := range []string{"tx-checksumming:", "tcp-segmentation-offload:", "tx-tcp-segmentation:", "tx-tcp6-segmentation:", "generic-segmentation-offload:", "generic-receive-offload:", "tx-udp-segmentation:", "rx-gro-list:", "rx-udp-gro-forwarding:"} {
			if strings.HasPrefix(l, f) {
				on = append(on, strings.TrimSuffix(f, ":")+"="+strings.Fields(strings.TrimPrefix(l, f))[0])
			}
		}
	}
	return strings.Join(on, " ")
}

// perfRecord samples the whole machine with call graphs for about d,
// starting now; the returned func waits for it to finish.
func perfRecord(out string, d time.Duration) func() {
	_ = os.MkdirAll(filepath.Dir(out), 0o755)
	cmd := exec.Command("perf", "record", "-a", "-g", "-q", "-o", out, "--", "sleep", strconv.Itoa(max(1, int(d.Seconds())-1)))
	if err := cmd.Start(); err != nil {
		return func() {}
	}
	return func() { _ = cmd.Wait() }
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// cpuOf sums utime+stime of pids (clock ticks of 10 ms).
func cpuOf(pids []int) time.Duration {
	var t time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		t += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return t
}

func removeSockets(runID string) {
	socks, _ := filepath.Glob(filepath.Join("/var/run/wireguard", "wgb-"+runID+"-*.sock"))
	for _, s := range socks {
		_ = os.Remove(s)
	}
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Print writes a table of medians and the ratios.
func Print(w io.Writer, res []Result) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "data path benchmark  %s  host %s  %d cores  load %s\n", time.Now().Format(time.RFC3339), host, numCPU(), loadavg())
	for _, r := range res {
		fmt.Fprintf(w, "underlay MTU %d, pod/WireGuard MTU %d; wgcni TUN offloads: %s\n", r.MTU, r.PodMTU, r.Offloads)
		var names []string
		var streams []string
		for k := range r.Samples {
			name, st, _ := strings.Cut(k, "/")
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
			if !slices.Contains(streams, st) {
				streams = append(streams, st)
			}
		}
		slices.Sort(streams)
		slices.SortStableFunc(names, func(a, b string) int { return caseOrder(a) - caseOrder(b) })
		fmt.Fprintf(w, "  %-26s", "path (median)")
		for _, st := range streams {
			fmt.Fprintf(w, " %8s %10s", "P"+st+" Gb/s", "Gb/cpu-s")
		}
		fmt.Fprintf(w, "   samples Gbit/s\n")
		for _, n := range names {
			fmt.Fprintf(w, "  %-26s", n)
			var all []string
			for _, st := range streams {
				fmt.Fprintf(w, " %8.2f %10.2f", median(r.Samples[n+"/"+st]), median(r.Eff[n+"/"+st]))
				all = append(all, fmtS(r.Samples[n+"/"+st]))
			}
			fmt.Fprintf(w, "   %s\n", strings.Join(all, " "))
		}
		for _, st := range streams {
			ratio := func(a, b string, m map[string][]float64) string {
				x := pairedRatio(m[a+"/"+st], m[b+"/"+st])
				if x == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2f", x)
			}
			both := func(a, b string) string {
				return ratio(a, b, r.Samples) + " (per CPU-s " + ratio(a, b, r.Eff) + ")"
			}
			fmt.Fprintf(w, "  P%s ratios (median of per-round ratios): wgcni pod->pod / wgref node->node: %s (target >= 0.95); wgcni node->node / wgref node->node: %s; wgcni / debian wireguard-go: %s; masq cost: pod->pod / no masq per CPU-s %s\n",
				st, both("wgcni pod->pod", "wgref node->node"), both("wgcni node->node", "wgref node->node"),
				ratio("wgcni pod->pod", "debian wireguard-go", r.Samples), ratio("wgcni pod->pod", "wgcni pod->pod no masq", r.Eff))
			fmt.Fprintf(w, "  P%s post-quantum: wgcni pod->pod post-quantum / wgcni pod->pod: %s (target >= 0.98)\n",
				st, both("wgcni pod->pod post-quantum", "wgcni pod->pod"))
			fmt.Fprintf(w, "  P%s the pod hop: wgcni pod->pod / wgref pod->pod (same hop, no wgcnid): %s; wgref pod->pod / wgref node->node (what a bridged pod hop costs): %s; routed pod hop / wgref node->node: %s; wgref pod->pod +wgcni nft / wgref pod->pod: %s\n",
				st, both("wgcni pod->pod", "wgref pod->pod"), both("wgref pod->pod", "wgref node->node"),
				both("wgref pod->pod routed", "wgref node->node"), both("wgref pod->pod +wgcni nft", "wgref pod->pod"))
		}
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
	}
}

// pairedRatio is the median over rounds of a[i]/b[i]: both samples of a
// round were taken minutes apart at most, so a change in the machine's
// other load cancels out better than in a ratio of medians.
func pairedRatio(a, b []float64) float64 {
	var r []float64
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			r = append(r, a[i]/b[i])
		}
	}
	return median(r)
}

func caseOrder(name string) int {
	i := slices.Index([]string{"wgcni pod->pod", "wgref node->node", "wgref pod->pod", "wgref pod->pod +wgcni nft", "wgref pod->pod routed", "wgref same session", "debian wireguard-go", "veth underlay (ceiling)", "wgcni node->node", "wgcnid-device node->node", "wgcnid-device +forwarding", "wgcnid-device +nat", "wgcni pod->pod no masq"}, name)
	if i < 0 {
		return 99
	}
	return i
}

func fmtS(v []float64) string {
	var s []string
	for _, x := range v {
		s = append(s, strconv.FormatFloat(x, 'f', 2, 64))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}
