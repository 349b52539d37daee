// Command controlplane benchmarks wgcnid's control plane at scale: a real
// wgcnid (userspace WireGuard device, in a node namespace of the harness
// cluster) against the harness's real etcd holding N synthetic node records
// written directly (valid keys, endpoints on the underlay). For each N it
// prints cold start to all peers and routes configured, per-event latency
// (new / changed / deleted record -> change applied on device and routes,
// from the daemon's own "peer configured|removed" log line carrying the
// etcd revision), CPU time per event, RSS, and etcd requests (from etcd's
// grpc_server_handled_total) during cold start and per minute at steady
// state, next to the flannel v0.28.9 reference figures.
//
// Run as root from the repository root after `make build`:
//
//	go run ./tests/bench/controlplane [-n 100,1000,5000] [-events 200] [-steady 60s]
package main

import (
	"bufio"
	"context"
	"crypto/mlkem"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/pqkeys"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/daemon/route"
	"github.com/wgcni/wgcni/tests/harness"
)

// Flannel v0.28.9, etcd mode, vxlan backend, same lab shape (issue 11).
var flannel = struct {
	cold         map[int]float64 // seconds to all routes
	p50, p99     float64         // ms per event
	rss1000      float64         // MB
	coldRequests func(n int) int
}{
	cold: map[int]float64{1000: 0.95, 5000: 4.25},
	p50:  2.6, p99: 6, rss1000: 43,
	coldRequests: func(n int) int { return 2*n + 9 },
}

// Options select what to measure.
type Options struct {
	Sizes  []int
	Events int
	Steady time.Duration
	// PQ also runs every size with an ML-KEM-768 key in each record (what
	// --post-quantum publishes, ~1.6 KB more per record), right after the
	// plain run, for the record growth's cost next to today's figures.
	PQ   bool
	Logf func(string, ...any)
	// ProbesOff adds, for every size, a second daemon run with
	// --probe-port 0: the reference for the liveness probes' overhead
	// (docs/self-healing.md), measured in the same run.
	ProbesOff bool
}

// Result is one size's figures.
type Result struct {
	N    int
	PQ   bool // records carry an ML-KEM key
	Cold time.Duration
	// ColdCPU and ColdDevCPU are the CPU time the daemon and the device
	// process spent from start to "full sync done": less sensitive than
	// Cold to what else the machine runs.
	ColdCPU, ColdDevCPU time.Duration
	ColdRequests        map[string]float64         // per gRPC method
	Lat                 map[string][]time.Duration // from the write call to applied
	Commit              []time.Duration            // the etcd write itself (call to ack)
	AfterAck            []time.Duration            // from the write's ack to applied (>= 0)
	CPUPerEvent         time.Duration              // daemon
	DevCPUPerEvent      time.Duration              // userspace device process
	RSS, DevRSS         int64                      // bytes, after the events
	SteadyPerMin        float64                    // unary requests per minute
	SteadyMethods       map[string]float64
	OpenStreams         map[string]float64
	// Probes: "off" for the --probe-port 0 reference run. Steady-state CPU
	// of the daemon and the device process, and liveness probes sent, per
	// minute (from the daemon's peer state file).
	Probes                  string
	SteadyCPU, SteadyDevCPU time.Duration
	ProbesPerMin            float64
}

func main() {
	var o Options
	sizes := flag.String("n", "100,1000,5000", "comma-separated node record counts")
	events := flag.Int("events", 200, "events per size (new/changed/deleted in turn)")
	steady := flag.Duration("steady", 60*time.Second, "steady-state observation window")
	flag.BoolVar(&o.PQ, "pq", false, "also run each size with an ML-KEM key in every record (--post-quantum's record growth)")
	probesOff := flag.Bool("probes-off", false, "also run each size with --probe-port 0, the reference for the liveness probes' overhead")
	flag.Parse()
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "controlplane: -n: bad size %q\n", s)
			os.Exit(2)
		}
		o.Sizes = append(o.Sizes, n)
	}
	o.Events, o.Steady = *events, *steady
	o.ProbesOff = *probesOff
	o.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	res, err := Run(o)
	Print(os.Stdout, res)
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

const (
	clusterCIDR = "10.128.0.0/10" // 16384 /24s: room for 5000 nodes plus events
	prefix      = harness.Prefix
)

// Run measures every size in o.Sizes on one harness cluster (one etcd),
// each size with a fresh node and daemon and a fresh set of records.
func Run(o Options) ([]Result, error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Events < 3 {
		o.Events = 3
	}
	c, err := harness.New(harness.Config{KeepDir: os.Getenv("WGB_KEEP") != "", ClusterCIDR: clusterCIDR, LeaseTTL: time.Hour, ResyncInterval: time.Hour, Logf: o.Logf})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cli, err := c.Etcd.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	var out []Result
	variants := []variant{{probes: "on"}}
	if o.ProbesOff {
		variants = append(variants, variant{probes: "off"})
	}
	if o.PQ {
		variants = append(variants, variant{pq: true, probes: "on"})
	}
	for _, n := range o.Sizes {
		for _, v := range variants {
			r, err := runSize(c, cli, n, v, o)
			if err != nil {
				return out, fmt.Errorf("N=%d %s: %w", n, v, err)
			}
			out = append(out, r)
		}
	}
	return out, nil
}

type synth struct {
	cidr netip.Prefix
	rec  record.Lease
}

func runSize(c *harness.Cluster, cli *clientv3.Client, n int, v variant, o Options) (Result, error) {
	pq, probes := v.pq, v.probes
	res := Result{N: n, PQ: pq, Lat: map[string][]time.Duration{}, Probes: probes}
	ctx := context.Background()
	if _, err := cli.Delete(ctx, prefix+"/", clientv3.WithPrefix()); err != nil {
		return res, err
	}
	cluster, err := record.NewCluster(clusterCIDR, 24)
	if err != nil {
		return res, err
	}
	// Synthetic records from the top of the cluster CIDR down, so the
	// daemon's own lease (random free CIDR) and new-record events use
	// distinct ones.
	all := cidrs(cluster.Primary().CIDR, 24)
	slices.Reverse(all)
	lease, err := cli.Grant(ctx, 7200)
	if err != nil {
		return res, err
	}
	recs := make([]synth, 0, n)
	next := 0
	mk := func() (synth, error) {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return synth{}, err
		}
		cidr := all[next]
		next++
		u := c.Underlay.Prefix.Addr().As4()
		ep := netip.AddrFrom4([4]byte{u[0], u[1], byte(next >> 8), byte(next)})
		s := synth{cidr: cidr, rec: record.Lease{
			Node: fmt.Sprintf("syn-%d", next), PublicKey: k.PublicKey(), Endpoint: netip.AddrPortFrom(ep, 51820),
		}}
		if pq {
			dk, err := mlkem.GenerateKey768()
			if err != nil {
				return synth{}, err
			}
			s.rec.PQPublicKey = pqkeys.EncodePublic(dk.EncapsulationKey())
		}
		return s, nil
	}
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := cli.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	for i := 0; i < n; i++ {
		s, err := mk()
		if err != nil {
			return res, err
		}
		recs = append(recs, s)
		ops = append(ops, clientv3.OpPut(record.SubnetKey(prefix, s.cidr), string(s.rec.Encode()), clientv3.WithLease(lease.ID)))
		if len(ops) == 100 { // under etcd's default --max-txn-ops 128
			if err := flush(); err != nil {
				return res, err
			}
		}
	}
	if err := flush(); err != nil {
		return res, err
	}
	o.Logf("N=%d: %d records written", n, n)

	node, err := c.AddBareNode()
	if err != nil {
		return res, err
	}
	defer node.Shutdown()
	if probes == "off" {
		node.ExtraArgs = []string{"--probe-port", "0"}
	}
	before, err := scrape(c)
	if err != nil {
		return res, err
	}
	args := append([]string{c.Bin("wgcnid")}, node.DaemonArgs()...)
	args = append(args, "--log-format", "json")
	cmd := node.Command(context.Background(), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return res, err
	}
	logf, err := os.Create(filepath.Join(node.Dir, "wgcnid.log"))
	if err != nil {
		return res, err
	}
	defer logf.Close()
	lines := make(chan logLine, 1024)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	done := make(chan struct{})
	defer func() {
		_ = cmd.Process.Kill()
		<-done
	}()
	go func() {
		defer close(done)
		defer close(lines)
		readLog(io.TeeReader(stderr, logf), lines)
		_ = cmd.Wait()
	}()

	synced, err := waitMsg(lines, "full sync done", 120*time.Second, nil)
	if err != nil {
		return res, err
	}
	res.Cold = synced.Time.Sub(t0)
	after, err := scrape(c)
	if err != nil {
		return res, err
	}
	res.ColdRequests = after.unaryDelta(before)
	// Check the claim: the device has every peer, the table every route.
	if err := checkApplied(node, n); err != nil {
		return res, err
	}
	o.Logf("N=%d: cold start %v, %d peers and routes verified", n, res.Cold.Round(time.Millisecond), n)
	pid := cmd.Process.Pid
	devPID, err := readPID(filepath.Join(node.RunDir, node.Device+".pid"))
	if err != nil {
		return res, err
	}
	// Read after the check above, which adds a device read and a route
	// dump: an upper bound on the cold start's CPU, never an under-count.
	res.ColdCPU, res.ColdDevCPU = cpuTime(pid), cpuTime(devPID)

	// Events: new, changed (endpoint), deleted, in turn; one at a time,
	// each waited for before the next.
	cpu0, dcpu0 := cpuTime(pid), cpuTime(devPID)
	live := slices.Clone(recs)
	for i := 0; i < o.Events; i++ {
		kind := []string{"new", "changed", "deleted"}[i%3]
		var op clientv3.Op
		var cidr netip.Prefix
		switch kind {
		case "new":
			s, err := mk()
			if err != nil {
				return res, err
			}
			live = append(live, s)
			cidr = s.cidr
			op = clientv3.OpPut(record.SubnetKey(prefix, s.cidr), string(s.rec.Encode()), clientv3.WithLease(lease.ID))
		case "changed":
			j := rand.N(len(live))
			s := &live[j]
			ep := s.rec.Endpoint
			s.rec.Endpoint = netip.AddrPortFrom(ep.Addr(), ep.Port()+1)
			cidr = s.cidr
			op = clientv3.OpPut(record.SubnetKey(prefix, s.cidr), string(s.rec.Encode()), clientv3.WithLease(lease.ID))
		case "deleted":
			j := rand.N(len(live))
			cidr = live[j].cidr
			live = slices.Delete(live, j, j+1)
			op = clientv3.OpDelete(record.SubnetKey(prefix, cidr))
		}
		start := time.Now()
		resp, err := cli.Do(ctx, op)
		if err != nil {
			return res, err
		}
		acked := time.Now()
		var rev int64
		switch {
		case resp.Put() != nil:
			rev = resp.Put().Header.Revision
		case resp.Del() != nil:
			rev = resp.Del().Header.Revision
		}
		want := "peer configured"
		if kind == "deleted" {
			want = "peer removed"
		}
		l, err := waitMsg(lines, want, 10*time.Second, func(l logLine) bool { return l.Rev == rev && l.CIDR == cidr.String() })
		if err != nil {
			return res, fmt.Errorf("%s event %d (%s, rev %d): %w", kind, i, cidr, rev, err)
		}
		res.Lat[kind] = append(res.Lat[kind], l.Time.Sub(start))
		res.Commit = append(res.Commit, acked.Sub(start))
		res.AfterAck = append(res.AfterAck, max(0, l.Time.Sub(acked)))
	}
	res.CPUPerEvent = (cpuTime(pid) - cpu0) / time.Duration(o.Events)
	res.DevCPUPerEvent = (cpuTime(devPID) - dcpu0) / time.Duration(o.Events)
	res.RSS, res.DevRSS = rss(pid), rss(devPID)
	if err := checkApplied(node, len(live)); err != nil {
		return res, fmt.Errorf("after events: %w", err)
	}

	// Steady state: nothing changes; count what the daemon still asks.
	s0, err := scrape(c)
	if err != nil {
		return res, err
	}
	cpu1, dcpu1, pr1 := cpuTime(pid), cpuTime(devPID), probesSent(node)
	time.Sleep(o.Steady)
	res.SteadyCPU = time.Duration(float64(cpuTime(pid)-cpu1) / o.Steady.Minutes())
	res.SteadyDevCPU = time.Duration(float64(cpuTime(devPID)-dcpu1) / o.Steady.Minutes())
	res.ProbesPerMin = float64(probesSent(node)-pr1) / o.Steady.Minutes()
	s1, err := scrape(c)
	if err != nil {
		return res, err
	}
	res.SteadyMethods = s1.unaryDelta(s0)
	var total float64
	for _, v := range res.SteadyMethods {
		total += v
	}
	res.SteadyPerMin = total / o.Steady.Minutes()
	res.OpenStreams = s1.openStreams()
	// Drain anything left so the reader never blocks.
	go func() {
		for range lines {
		}
	}()
	return res, nil
}

// cidrs lists every /bits block of p in order.
func cidrs(p netip.Prefix, bits int) []netip.Prefix {
	var out []netip.Prefix
	a := p.Masked().Addr()
	step := uint32(1) << (32 - bits)
	for p.Contains(a) {
		out = append(out, netip.PrefixFrom(a, bits))
		v := a.As4()
		u := uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])
		u += step
		if u == 0 {
			break
		}
		a = netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
	}
	return out
}

type logLine struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
	Rev  int64     `json:"rev"`
	CIDR string    `json:"cidr"`
	Err  string    `json:"err"`
	raw  string
}

func readLog(r io.Reader, out chan<- logLine) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			l.Msg, l.Time = sc.Text(), time.Now()
		}
		l.raw = sc.Text()
		out <- l
	}
}

// waitMsg returns the first line with message msg (and matching match),
// failing if the daemon logs an error or exits first.
func waitMsg(lines <-chan logLine, msg string, timeout time.Duration, match func(logLine) bool) (logLine, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return logLine{}, fmt.Errorf("wgcnid exited while waiting for %q", msg)
			}
			if l.Msg == "wgcnid failed" {
				return logLine{}, fmt.Errorf("wgcnid failed: %s", l.raw)
			}
			if l.Msg == msg && (match == nil || match(l)) {
				return l, nil
			}
		case <-t.C:
			return logLine{}, fmt.Errorf("no %q log line within %v", msg, timeout)
		}
	}
}

func checkApplied(node *harness.Node, n int) error {
	dev, err := node.WGDevice()
	if err != nil {
		return err
	}
	var routes int
	err = node.Do(func() error {
		peers, _, err := route.Ours(netlink.FAMILY_V4)
		routes = len(peers)
		return err
	})
	if err != nil {
		return err
	}
	if len(dev.Peers) != n || routes != n {
		return fmt.Errorf("device has %d peers and %d peer routes, want %d", len(dev.Peers), routes, n)
	}
	return nil
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// probesSent is the liveness probes the node's daemon has sent, answered
// or lost, from its peer state file (0 when it has none).
func probesSent(node *harness.Node) int64 {
	st, err := heal.ReadState(heal.StateFile(node.RunDir))
	if err != nil {
		return 0
	}
	var n int64
	for _, p := range st.Peers {
		n += p.ProbesAnswered + p.ProbesLost
	}
	return n
}

// cpuTime is utime+stime of pid (clock ticks of 10 ms).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// metrics are etcd's gRPC counters by (kind, method, type).
type metrics map[string]float64

// scrape reads etcd's /metrics (served on its client URL) from inside the
// underlay namespace.
func scrape(c *harness.Cluster) (metrics, error) {
	var conn net.Conn
	err := c.Underlay.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", strings.TrimPrefix(c.Etcd.Endpoint, "http://"), 5*time.Second)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial etcd metrics: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "GET /metrics HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n"); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		var kind string
		switch {
		case strings.HasPrefix(l, "grpc_server_handled_total{"):
			kind = "handled"
		case strings.HasPrefix(l, "grpc_server_started_total{"):
			kind = "started"
		default:
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil || v == 0 {
			continue
		}
		labels := l[strings.IndexByte(l, '{')+1 : strings.LastIndexByte(l[:i], '}')]
		m[kind+" "+label(labels, "grpc_method")+" "+label(labels, "grpc_type")] += v
	}
	return m, sc.Err()
}

func label(labels, name string) string {
	for _, kv := range strings.Split(labels, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// unaryDelta is the number of calls per method between m0 and m: unary
// calls as handled, streams as started.
func (m metrics) unaryDelta(m0 metrics) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		f := strings.Fields(k)
		if len(f) != 3 {
			continue
		}
		kind, method, typ := f[0], f[1], f[2]
		if (typ == "unary" && kind == "handled") || (typ != "unary" && kind == "started") {
			if d := v - m0[k]; d > 0 {
				out[method] += d
			}
		}
	}
	return out
}

// openStreams is started - handled per streaming method.
func (m metrics) openStreams() map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		f := strings.Fields(k)
		if len(f) == 3 && f[0] == "started" && f[2] != "unary" {
			if open := v - m["handled "+f[1]+" "+f[2]]; open > 0 {
				out[f[1]] = open
			}
		}
	}
	return out
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1)*p + 0.5)
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }

func sum(m map[string]float64) float64 {
	var t float64
	for _, v := range m {
		t += v
	}
	return t
}

func fmtMethods(m map[string]float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%g ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

// Print writes the results table and the comparison with flannel.
func Print(w io.Writer, res []Result) {
	load, _ := os.ReadFile("/proc/loadavg")
	host, _ := os.Hostname()
	fmt.Fprintf(w, "control plane benchmark  %s  host %s  load %s\n", time.Now().Format(time.RFC3339), host, strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Fprintf(w, "%8s %9s %8s %8s %8s %8s %8s %9s %9s %8s %8s %9s %10s\n",
		"N", "cold_s", "flannel", "p50_ms", "p99_ms", "new_p99", "chg_p99", "del_p99", "cpu_ev_ms", "dev_ms", "rss_MiB", "dev_MiB", "cold_reqs")
	for _, r := range res {
		var all []time.Duration
		for _, k := range []string{"new", "changed", "deleted"} {
			all = append(all, r.Lat[k]...)
		}
		fl := "-"
		if v, ok := flannel.cold[r.N]; ok {
			fl = fmt.Sprintf("%.2f", v)
		}
		fmt.Fprintf(w, "%8s %9.3f %8s %8s %8s %8s %8s %9s %9s %8s %8.1f %9.1f %10g\n",
			r.name(), r.Cold.Seconds(), fl, ms(pct(all, .5)), ms(pct(all, .99)),
			ms(pct(r.Lat["new"], .99)), ms(pct(r.Lat["changed"], .99)), ms(pct(r.Lat["deleted"], .99)),
			ms(r.CPUPerEvent), ms(r.DevCPUPerEvent), float64(r.RSS)/(1<<20), float64(r.DevRSS)/(1<<20), sum(r.ColdRequests))
	}
	for _, r := range res {
		fmt.Fprintf(w, "N=%s event latency breakdown: etcd write (call to ack) p50 %s p99 %s ms; ack to applied p50 %s p99 %s ms\n",
			r.name(), ms(pct(r.Commit, .5)), ms(pct(r.Commit, .99)), ms(pct(r.AfterAck, .5)), ms(pct(r.AfterAck, .99)))
		fmt.Fprintf(w, "N=%s cold-start etcd requests: %g (flannel 2N+9 = %d): %s\n", r.name(), sum(r.ColdRequests), flannel.coldRequests(r.N), fmtMethods(r.ColdRequests))
		fmt.Fprintf(w, "N=%s steady state: %.1f requests/min (%s); open streams: %s\n", r.name(), r.SteadyPerMin, fmtMethods(r.SteadyMethods), fmtMethods(r.OpenStreams))
		fmt.Fprintf(w, "N=%s probes %s: steady-state CPU daemon %.2f%% of a core, device %.2f%%; %.0f liveness probes/min (%.2f per peer)\n",
			r.name(), r.Probes, 100*r.SteadyCPU.Minutes(), 100*r.SteadyDevCPU.Minutes(), r.ProbesPerMin, r.ProbesPerMin/float64(r.N))
	}
	for _, r := range res {
		fmt.Fprintf(w, "N=%s cold-start CPU: daemon %s ms, device %s ms\n", r.name(), ms(r.ColdCPU), ms(r.ColdDevCPU))
	}
	for i := 1; i < len(res); i++ {
		plain, pq := res[i-1], res[i]
		if plain.N == pq.N && !plain.PQ && pq.PQ && plain.Probes == pq.Probes {
			fmt.Fprintf(w, "N=%d ML-KEM key in every record: cold %+.3f s (%.2fx), cold-start CPU daemon %+.0f ms (%.2fx), device %+.0f ms (same run, right after the plain run)\n",
				pq.N, (pq.Cold - plain.Cold).Seconds(), pq.Cold.Seconds()/plain.Cold.Seconds(),
				float64(pq.ColdCPU-plain.ColdCPU)/1e6, float64(pq.ColdCPU)/float64(max(plain.ColdCPU, 1)), float64(pq.ColdDevCPU-plain.ColdDevCPU)/1e6)
		}
	}
	for i := 1; i < len(res); i++ {
		on, off := res[i-1], res[i]
		if on.N == off.N && on.PQ == off.PQ && on.Probes == "on" && off.Probes == "off" {
			fmt.Fprintf(w, "N=%s probe overhead: daemon %+.2f%% of a core, device %+.2f%% (probes on minus off, same run); target <= 1%% and <= 1 probe per peer per minute\n",
				on.name(), 100*(on.SteadyCPU-off.SteadyCPU).Minutes(), 100*(on.SteadyDevCPU-off.SteadyDevCPU).Minutes())
		}
	}
	fmt.Fprintf(w, "flannel reference: cold 0.95 s @1000, 4.25 s @5000; per-event p50 %.1f ms p99 %.0f ms; RSS %.0f MB @1000\n", flannel.p50, flannel.p99, flannel.rss1000)
	fmt.Fprintf(w, "targets: cold <= 0.5 s @1000, <= 2 s @5000; p99 <= 6 ms; daemon RSS <= 40 MiB @1000; cold O(1) requests; steady: 1 KeepAlive stream, no lists\n")
	for _, r := range res {
		var all []time.Duration
		for _, k := range []string{"new", "changed", "deleted"} {
			all = append(all, r.Lat[k]...)
		}
		fmt.Fprintf(w, "ratios N=%s: p50 %.2f p99 %.2f vs flannel", r.name(), float64(pct(all, .5))/1e6/flannel.p50, float64(pct(all, .99))/1e6/flannel.p99)
		if v, ok := flannel.cold[r.N]; ok {
			fmt.Fprintf(w, "; cold %.2f", r.Cold.Seconds()/v)
		}
		if r.N == 1000 {
			fmt.Fprintf(w, "; rss %.2f", float64(r.RSS)/1e6/flannel.rss1000)
		}
		fmt.Fprintln(w)
	}
}

// variant is one daemon run of a size: records with ML-KEM keys or not,
// liveness probes on or off (--probe-port 0).
type variant struct {
	pq     bool
	probes string
}

func (v variant) String() string { return fmt.Sprintf("pq=%v probes=%s", v.pq, v.probes) }

// name is the size, marked "+pq" when the records carry ML-KEM keys.
func (r Result) name() string {
	if r.PQ {
		return fmt.Sprintf("%d+pq", r.N)
	}
	return fmt.Sprint(r.N)
}
