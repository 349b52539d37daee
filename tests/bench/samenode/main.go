// Command samenode benchmarks same-node encryption in the namespace
// cluster, in one run on one machine: same-node pod -> pod TCP throughput
// (iperf3) on a node with --same-node-encryption against a node without it
// (the plain bridge path), and the CNI ADD/DEL latency on both. It prints
// the figures and the ratios on/off (throughput target >= 0.5), and the
// ceiling this machine's cipher puts on the encrypted path (ceiling.go).
//
// Run as root from the repository root after `make build`:
//
//	go run ./tests/bench/samenode [-t 5s] [-rounds 2] [-streams 1] [-n 30]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

func main() {
	dur := flag.Duration("t", 5*time.Second, "iperf3 duration per measurement")
	rounds := flag.Int("rounds", 2, "throughput rounds; on/off order alternates")
	streams := flag.Int("streams", 1, "iperf3 parallel streams")
	n := flag.Int("n", 30, "CNI ADD/DEL cycles per node")
	flag.Parse()
	if err := run(*dur, *rounds, *streams, *n); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type node struct {
	label string
	n     *harness.Node
	a, b  *harness.Pod
	bps   []float64
	add   []time.Duration
	del   []time.Duration
}

func run(dur time.Duration, rounds, streams, cycles int) error {
	c, err := harness.New(harness.Config{ClusterCIDR: "10.244.0.0/22", ListenPort: 51820})
	if err != nil {
		return err
	}
	defer c.Close()
	on := &node{label: "on"}
	off := &node{label: "off"}
	if on.n, err = c.AddNode("--same-node-encryption"); err != nil {
		return err
	}
	if off.n, err = c.AddNode(); err != nil {
		return err
	}
	nodes := []*node{on, off}
	for _, x := range nodes {
		if x.a, err = x.n.AddPod(); err != nil {
			return err
		}
		if x.b, err = x.n.AddPod(); err != nil {
			return err
		}
		// Warm up (handshakes) before measuring.
		if err := harness.WaitFor(20*time.Second, "ping "+x.label, func() (bool, error) {
			r, err := x.a.Ping(x.b.IP, 1, 200*time.Millisecond)
			return err == nil && r.Received == 1, nil
		}); err != nil {
			return err
		}
	}
	nf, _ := on.n.NodeFile()
	fmt.Printf("same-node encryption benchmark: pod MTU %d, userspace WireGuard, iperf3 %v x %d stream(s), %d rounds\n", nf.MTU, dur, streams, rounds)
	for r := 0; r < rounds; r++ {
		order := nodes
		if r%2 == 1 {
			order = []*node{off, on}
		}
		for _, x := range order {
			res, err := harness.Iperf3(x.a.NS, x.b.NS, x.b.IP, 5201, dur, streams)
			if err != nil {
				return fmt.Errorf("iperf3 on %s: %w", x.label, err)
			}
			x.bps = append(x.bps, res.BitsPerSecond)
			fmt.Printf("  round %d  %-3s  %8.0f Mbit/s  (retransmits %d)\n", r+1, x.label, res.BitsPerSecond/1e6, res.Retransmits)
		}
	}
	// CNI latency: DEL then timed ADD of the same pod, alternating nodes.
	for i := 0; i < cycles; i++ {
		for _, x := range nodes {
			t0 := time.Now()
			if out, err := x.b.CNI("del"); err != nil {
				return fmt.Errorf("DEL on %s: %w %s", x.label, err, out)
			}
			x.del = append(x.del, time.Since(t0))
			t0 = time.Now()
			if out, err := x.b.CNI("add"); err != nil {
				return fmt.Errorf("ADD on %s: %w %s", x.label, err, out)
			}
			x.add = append(x.add, time.Since(t0))
		}
	}
	mOn, mOff := median(on.bps), median(off.bps)
	fmt.Println()
	fmt.Printf("same-node pod->pod TCP throughput (median of %d):\n", rounds)
	fmt.Printf("  option off (plain bridge): %8.0f Mbit/s\n", mOff/1e6)
	fmt.Printf("  option on  (WireGuard):    %8.0f Mbit/s\n", mOn/1e6)
	fmt.Printf("  ratio on/off:              %8.3f   (target >= 0.5)\n", mOn/mOff)
	// The device MTU is 65000: the cipher works on ~64 KB packets.
	rate := aeadRate(65000, time.Second)
	ceil := ceiling(rate)
	fmt.Printf("  cipher ceiling: ChaCha20-Poly1305 %.0f MB/s per core x %d cores / 4 passes = %.0f Mbit/s = ratio %.3f of off\n",
		rate/1e6, runtime.NumCPU(), ceil/1e6, ceil/mOff)
	fmt.Printf("  on / ceiling:              %8.3f   (what the implementation reaches of what the cipher allows)\n", mOn/ceil)
	fmt.Println()
	fmt.Printf("CNI latency through cnitool (%d cycles per node):\n", cycles)
	for _, op := range []string{"ADD", "DEL"} {
		sOn, sOff := on.add, off.add
		if op == "DEL" {
			sOn, sOff = on.del, off.del
		}
		p50on, p99on := pct(sOn, 50), pct(sOn, 99)
		p50off, p99off := pct(sOff, 50), pct(sOff, 99)
		fmt.Printf("  %s  off p50 %6.1f ms p99 %6.1f ms | on p50 %6.1f ms p99 %6.1f ms | ratio on/off p50 %.2f p99 %.2f\n",
			op, ms(p50off), ms(p99off), ms(p50on), ms(p99on), float64(p50on)/float64(p50off), float64(p99on)/float64(p99off))
	}
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func pct(v []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
