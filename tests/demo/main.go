// Command wgcni-demo (`make demo`) builds a 3-node wgcni cluster out of
// network namespaces on this machine, shows what it does, and keeps it
// running until Ctrl-C or `make demo-down`, then removes everything.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/wgcni/wgcni/tests/capture"
	"github.com/wgcni/wgcni/tests/harness"
)

func main() {
	nodes := flag.Int("nodes", 3, "number of nodes")
	podsPer := flag.Int("pods", 2, "pods per node")
	pidFile := flag.String("pidfile", "/tmp/wge-demo.pid", "pid file (make demo-down signals this pid)")
	noWait := flag.Bool("no-wait", false, "clean up right after the tour instead of waiting for Ctrl-C")
	iperfSecs := flag.Int("iperf-seconds", 5, "duration of the iperf3 run")
	sweep := flag.Bool("sweep", false, "only remove what crashed earlier runs left behind, then exit")
	flag.Parse()
	if *sweep {
		harness.Sweep(func(f string, a ...any) { fmt.Printf(f+"\n", a...) })
		return
	}
	// With stdout piped (make demo | tee), Ctrl-C kills the reader first;
	// a write must then fail instead of killing us before the cleanup.
	signal.Ignore(syscall.SIGPIPE)
	if err := run(*nodes, *podsPer, *pidFile, *noWait, time.Duration(*iperfSecs)*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func section(title string) { fmt.Printf("\n\033[1m== %s\033[0m\n", title) }

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	return "   " + strings.ReplaceAll(s, "\n", "\n   ")
}

func run(nodeCount, podsPer int, pidFile string, noWait bool, iperfDur time.Duration) error {
	repo, err := harness.FindRepo()
	if err != nil {
		return err
	}
	if missing := harness.Prereqs(repo); len(missing) > 0 {
		return fmt.Errorf("missing: %s (run as root; `make deps build`)", strings.Join(missing, ", "))
	}
	if err := writePidFile(pidFile); err != nil {
		return err
	}
	defer os.Remove(pidFile)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	section("building the cluster (namespaces only; nothing leaves this machine)")
	c, err := harness.New(harness.Config{
		Repo:     repo,
		LeaseTTL: 30 * time.Second,
		Logf:     func(f string, a ...any) { fmt.Printf("   "+f+"\n", a...) },
	})
	if err != nil {
		return err
	}
	defer func() {
		section("cleaning up")
		c.Close()
	}()
	var pods [][]*harness.Pod
	for i := 0; i < nodeCount; i++ {
		if ctx.Err() != nil {
			return errors.New("interrupted")
		}
		n, err := c.AddNode()
		if err != nil {
			return err
		}
		var ps []*harness.Pod
		for j := 0; j < podsPer; j++ {
			p, err := n.AddPod()
			if err != nil {
				return err
			}
			ps = append(ps, p)
		}
		pods = append(pods, ps)
	}
	nodes := c.Nodes()
	// Let every node see every other before the tour.
	for _, n := range nodes {
		err := harness.WaitFor(20*time.Second, "peers of "+n.Name, func() (bool, error) {
			d, err := n.WGDevice()
			return err == nil && len(d.Peers) == len(nodes)-1, err
		})
		if err != nil {
			return err
		}
	}

	section("PodCIDR leases in etcd (" + c.Etcd.Endpoint + harness.Prefix + "/subnets/)")
	leases, err := c.Leases()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "   NODE\tPODCIDR\tENDPOINT\tPUBLIC KEY\tTTL LEFT")
	for _, l := range leases {
		fmt.Fprintf(tw, "   %s\t%s\t%s:%d\t%s\t%ds\n", l.Node, l.CIDR, l.Endpoint, l.Port, l.PublicKey, l.TTL)
	}
	tw.Flush()

	for _, n := range nodes {
		section(fmt.Sprintf("node %s: wg show %s   (ip netns exec %s ...)", n.Name, n.Device, n.NS.Name))
		out, err := n.WGShow()
		if err != nil {
			return err
		}
		fmt.Println(indent(out))
	}

	section("pods")
	for _, ps := range pods {
		for _, p := range ps {
			fmt.Printf("   %-6s on %s  %-15s netns %s\n", p.Name, p.Node.Name, p.IP, p.NS.Name)
		}
	}

	src, dst := pods[0][0], pods[1%len(pods)][0]
	cp, err := capture.Start(c.Underlay.Path(), "", c.Classifier(), capture.Options{Samples: 6})
	if err != nil {
		return err
	}
	section(fmt.Sprintf("cross-node ping %s (%s) -> %s (%s)", src.Name, src.IP, dst.Name, dst.IP))
	if _, err := src.Ping(dst.IP, 1, 200*time.Millisecond); err != nil {
		return err
	}
	out, err := src.ExecTimeout(20*time.Second, "ping", "-c", "4", "-i", "0.2", dst.IP.String())
	fmt.Println(indent(out))
	if err != nil {
		return fmt.Errorf("cross-node ping failed: %w", err)
	}

	section(fmt.Sprintf("iperf3 %s -> %s, %v, through userspace WireGuard", src.Name, dst.Name, iperfDur))
	ir, err := harness.Iperf3(src.NS, dst.NS, dst.IP, 5201, iperfDur, 1)
	if err != nil {
		return err
	}
	fmt.Printf("   %.2f Gbit/s (%d retransmits)\n", ir.BitsPerSecond/1e9, ir.Retransmits)

	rep, err := cp.Stop()
	if err != nil {
		return err
	}
	section("what the underlay saw meanwhile (AF_PACKET capture in " + c.Underlay.Name + ")")
	fmt.Println("   " + rep.String())
	fmt.Println(indent(rep.Excerpt(12)))
	if rep.PlainPod() == 0 {
		fmt.Println("   => no pod address ever crossed the underlay in plain text: only WireGuard UDP.")
	} else {
		return fmt.Errorf("%d plaintext pod packets on the underlay", rep.PlainPod())
	}

	if noWait {
		return nil
	}
	section("cluster is running")
	fmt.Printf("   try:  ip netns exec %s ping %s\n", src.NS.Name, dst.IP)
	fmt.Printf("         ip netns exec %s wg show\n", nodes[0].NS.Name)
	fmt.Printf("   logs: %s/*/wgcnid.log\n", c.Dir)
	fmt.Printf("   stop: Ctrl-C, or `make demo-down` (pid %d in %s)\n", os.Getpid(), pidFile)
	<-ctx.Done()
	return nil
}

func writePidFile(path string) error {
	if b, err := os.ReadFile(path); err == nil {
		var pid int
		if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 && syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("a demo is already running (pid %d, %s); stop it with `make demo-down`", pid, path)
		}
	}
	return os.WriteFile(path, []byte(fmt.Sprintln(os.Getpid())), 0o644)
}
