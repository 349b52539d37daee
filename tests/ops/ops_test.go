// Package ops tests what an operator sees of a live namespace cluster:
// wgcnid's Prometheus metrics (scraped from the daemon), wgcnictl's
// tables and JSON, and the daemon's JSON log. It skips unless run as root
// with the tools present (WGCNI_E2E_REQUIRE=1 turns that into a failure).
package ops

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/wgcni/wgcni/daemon/ctl"
	"github.com/wgcni/wgcni/daemon/keys"
	"github.com/wgcni/wgcni/tests/harness"
)

const (
	metricsAddr = "127.0.0.1:9586" // per node namespace: no clash between nodes
	leaseTTL    = 6 * time.Second
)

// get does an HTTP GET inside the node's namespace. The connection is
// dialled inside NS.Do (http.Transport would dial on another thread).
func get(n *harness.Node, path string) (int, string, error) {
	var conn net.Conn
	if err := n.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", metricsAddr, 2*time.Second)
		return err
	}); err != nil {
		return 0, "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	req, _ := http.NewRequest("GET", "http://"+metricsAddr+path, nil)
	req.Close = true
	if err := req.Write(conn); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

type scrape map[string]*dto.MetricFamily

func scrapeNode(t *testing.T, n *harness.Node) scrape {
	t.Helper()
	code, body, err := get(n, "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("scrape %s: %d %v\n%s", n.Name, code, err, body)
	}
	var p expfmt.TextParser
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse metrics of %s: %v\n%s", n.Name, err, body)
	}
	return mfs
}

// value returns the value of the series of name whose labels include
// want; ok is false if there is none.
func (s scrape) value(name string, want map[string]string) (float64, bool) {
	mf := s[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func (s scrape) must(t *testing.T, node, name string, want map[string]string) float64 {
	t.Helper()
	v, ok := s.value(name, want)
	if !ok {
		t.Fatalf("%s: no %s%v in scrape", node, name, want)
	}
	return v
}

func wgcnictl(t *testing.T, c *harness.Cluster, n *harness.Node, cmd string, json bool) string {
	t.Helper()
	argv := append([]string{c.Bin("wgcnictl"), cmd}, n.DaemonArgs()...)
	if json {
		argv = append(argv, "-o", "json")
	}
	out, err := n.ExecTimeout(20*time.Second, argv...)
	if err != nil {
		t.Fatalf("wgcnictl %s on %s: %v\n%s", cmd, n.Name, err, out)
	}
	return out
}

func decode[T any](t *testing.T, out string) *T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, out)
	}
	return &v
}

func TestOperatorView(t *testing.T) {
	c := harness.Start(t, harness.Config{
		LeaseTTL:   leaseTTL,
		DaemonArgs: []string{"--metrics-addr", metricsAddr, "--log-format", "json", "--log-level", "info"},
	}, 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	for _, n := range []*harness.Node{n1, n2} {
		if err := harness.WaitFor(20*time.Second, n.Name+" /readyz", func() (bool, error) {
			code, _, err := get(n, "/readyz")
			return err == nil && code == 200, nil
		}); err != nil {
			t.Fatal(err)
		}
		if code, body, err := get(n, "/healthz"); err != nil || code != 200 {
			t.Fatalf("%s /healthz: %d %v %s", n.Name, code, err, body)
		}
	}
	nf1, _ := n1.NodeFile()
	nf2, _ := n2.NodeFile()
	if err := n1.WaitPeerCIDRs([]string{nf2.PodCIDR}, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	peer2 := map[string]string{"peer_node": "n2", "peer_cidr": nf2.PodCIDR}
	logLinesBefore := countLines(t, n1.LogPath)

	// Before any pod traffic: the peer is configured, nothing was sent.
	s0 := scrapeNode(t, n1)
	if v := s0.must(t, "n1", "wgcni_peers", nil); v != 1 {
		t.Fatalf("n1 wgcni_peers = %v, want 1", v)
	}
	rx0 := s0.must(t, "n1", "wgcni_peer_receive_bytes_total", peer2)
	tx0 := s0.must(t, "n1", "wgcni_peer_transmit_bytes_total", peer2)
	if v := s0.must(t, "n1", "wgcni_ipam_store_readable", nil); v != 1 {
		t.Fatalf("IPAM store not readable: %v", v)
	}

	p1 := n1.MustAddPod(t)
	p2 := n2.MustAddPod(t)
	if err := harness.WaitFor(15*time.Second, "ping p1 -> p2", func() (bool, error) {
		r, err := p1.Ping(p2.IP, 1, 200*time.Millisecond)
		return err == nil && r.Received == 1, nil
	}); err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	if _, err := harness.TCPTransfer(p1.NS, p2.NS, p2.IP, 5201, size, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// After traffic: handshake recent, status up, bytes grew by at least
	// the transfer, IPAM counts the pod, lease TTL within (0, TTL].
	now := float64(time.Now().Unix())
	s1 := scrapeNode(t, n1)
	hs := s1.must(t, "n1", "wgcni_peer_last_handshake_timestamp_seconds", peer2)
	if hs <= 0 || hs > now+1 || now-hs > 60 {
		t.Fatalf("handshake timestamp %v, now %v", hs, now)
	}
	if v := s1.must(t, "n1", "wgcni_peer_connection_status", peer2); v != 1 {
		t.Fatalf("connection_status %v after traffic", v)
	}
	if est := s1.must(t, "n1", "wgcni_peer_connection_established_timestamp_seconds", peer2); est <= 0 || est > hs {
		t.Fatalf("established %v, handshake %v", est, hs)
	}
	rx1 := s1.must(t, "n1", "wgcni_peer_receive_bytes_total", peer2)
	tx1 := s1.must(t, "n1", "wgcni_peer_transmit_bytes_total", peer2)
	if tx1-tx0 < size || rx1 <= rx0 {
		t.Fatalf("bytes did not grow with a %d-byte transfer: tx %v -> %v, rx %v -> %v", size, tx0, tx1, rx0, rx1)
	}
	s2 := scrapeNode(t, n2)
	if rx := s2.must(t, "n2", "wgcni_peer_receive_bytes_total", map[string]string{"peer_node": "n1"}); rx < size {
		t.Fatalf("n2 received %v bytes from n1, want >= %d", rx, size)
	}
	if v := s1.must(t, "n1", "wgcni_lease_info", map[string]string{"node": "n1", "cidr": nf1.PodCIDR}); v != 1 {
		t.Fatal("lease_info")
	}
	if ttl := s1.must(t, "n1", "wgcni_lease_ttl_seconds", nil); ttl <= 0 || ttl > leaseTTL.Seconds() {
		t.Fatalf("lease TTL left %v, want (0, %v]", ttl, leaseTTL.Seconds())
	}
	if exp := s1.must(t, "n1", "wgcni_lease_expiry_timestamp_seconds", nil); exp < now-1 || exp > now+leaseTTL.Seconds()+1 {
		t.Fatalf("lease expiry %v, now %v", exp, now)
	}
	net, _ := n1.NetworkName()
	if used := s1.must(t, "n1", "wgcni_ipam_addresses_used", map[string]string{"network": net}); used != 1 {
		t.Fatalf("IPAM used %v, want 1", used)
	}
	if free := s1.must(t, "n1", "wgcni_ipam_addresses_free", map[string]string{"network": net}); free != 252 {
		t.Fatalf("IPAM free %v, want 252 (/24 minus network, gateway, broadcast, one pod)", free)
	}
	if v := s1.must(t, "n1", "wgcni_wireguard_mode", map[string]string{"mode": "userspace"}); v != 1 {
		t.Fatal("mode")
	}
	if n := s1.must(t, "n1", "wgcni_reconcile_duration_seconds", map[string]string{"kind": "resync"}); n < 1 {
		t.Fatalf("resync reconciles %v, want >= 1 (the initial sync)", n)
	}
	for _, name := range []string{"wgcni_reconcile_errors_total", "wgcni_etcd_watch_restarts_total", "wgcni_bad_records_total",
		"wgcni_peers_without_handshake", "wgcni_peer_handshake_stalls_total", "wgcni_key_rotations_total",
		"wgcni_device_recreations_total"} {
		if v := s1.must(t, "n1", name, nil); v != 0 {
			t.Errorf("%s = %v on a healthy cluster", name, v)
		}
	}
	t.Logf("n1 -> n2 after 1 MiB: handshake %.0fs ago, tx %.0f -> %.0f B, rx %.0f -> %.0f B, lease TTL left %.1fs",
		max(0, now-hs), tx0, tx1, rx0, rx1, s1.must(t, "n1", "wgcni_lease_ttl_seconds", nil))

	// wgcnictl, JSON and table, against the same live nodes.
	priv1 := readFile(t, filepath.Join(n1.StateDir, keys.FileName))
	st := decode[ctl.StatusReport](t, wgcnictl(t, c, n1, "status", true))
	if st.Node != "n1" || st.PodCIDR != nf1.PodCIDR || st.MTU != nf1.MTU || st.Device.Mode != "userspace" || st.Device.Name != n1.Device ||
		st.Lease == nil || st.Lease.TTLSeconds <= 0 || st.Lease.TTLSeconds > int64(leaseTTL.Seconds()) || len(st.Peers) != 1 {
		t.Fatalf("status: %+v (lease %+v)", st, st.Lease)
	}
	pe := st.Peers[0]
	if pe.Node != "n2" || pe.Status != "up" || pe.TxBytes < size || pe.HandshakeAgeSecs == nil || *pe.HandshakeAgeSecs > 60 ||
		!strings.HasPrefix(pe.Endpoint, n2.UnderlayIP.String()+":") || len(pe.AllowedIPs) != 1 || pe.AllowedIPs[0] != nf2.PodCIDR {
		t.Fatalf("status peer: %+v", pe)
	}
	table := wgcnictl(t, c, n1, "status", false)
	for _, want := range []string{"node:     n1", nf1.PodCIDR, "userspace", fmt.Sprintf("mtu:      %d", nf1.MTU), "STATUS", " up "} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
	t.Logf("wgcnictl status:\n%s", table)

	nodes := decode[ctl.NodesReport](t, wgcnictl(t, c, n1, "nodes", true))
	if len(nodes.Nodes) != 2 {
		t.Fatalf("nodes: %+v", nodes)
	}
	for _, nl := range nodes.Nodes {
		want := map[string]string{"n1": nf1.PodCIDR, "n2": nf2.PodCIDR}[nl.Node]
		if nl.PodCIDR != want || !nl.Alive || nl.TTLSeconds <= 0 || nl.TTLSeconds > int64(leaseTTL.Seconds()) || nl.Self != (nl.Node == "n1") {
			t.Fatalf("nodes entry %+v", nl)
		}
	}
	ntable := wgcnictl(t, c, n1, "nodes", false)
	if !strings.Contains(ntable, "n1 (self)") || !strings.Contains(ntable, nf2.PodCIDR) {
		t.Errorf("nodes table:\n%s", ntable)
	}
	t.Logf("wgcnictl nodes:\n%s", ntable)

	ip := decode[ctl.IPAMReport](t, wgcnictl(t, c, n1, "ipam", true))
	if ip.Used != 1 || ip.Free != 252 || len(ip.Allocations) != 1 || ip.Allocations[0].IP != p1.IP.String() ||
		ip.Allocations[0].IfName != "eth0" || ip.Allocations[0].ContainerID == "" {
		t.Fatalf("ipam: %+v", ip)
	}
	itable := wgcnictl(t, c, n1, "ipam", false)
	if !strings.Contains(itable, p1.IP.String()) || !strings.Contains(itable, ip.Allocations[0].ContainerID) {
		t.Errorf("ipam table:\n%s", itable)
	}
	t.Logf("wgcnictl ipam:\n%s", itable)
	for _, out := range []string{table, ntable, itable} {
		if strings.Contains(out, priv1) {
			t.Fatal("wgcnictl printed the private key")
		}
	}

	// A node that stops renewing: its TTL counts down in `nodes`.
	n2.StopDaemon(9)
	time.Sleep(2 * time.Second)
	nodes = decode[ctl.NodesReport](t, wgcnictl(t, c, n1, "nodes", true))
	for _, nl := range nodes.Nodes {
		if nl.Node == "n2" && nl.TTLSeconds > int64(leaseTTL.Seconds())-2 {
			t.Errorf("n2 stopped 2s ago but its TTL is %ds of %v", nl.TTLSeconds, leaseTTL)
		}
	}

	checkLog(t, n1, "n2", priv1, logLinesBefore)
	checkLog(t, n2, "n1", readFile(t, filepath.Join(n2.StateDir, keys.FileName)), -1)
}

// checkLog parses n1's JSON log: every line a JSON object with time, level
// and msg; one line for each meaningful event; no line per packet (the
// 1 MiB transfer added none); the private key never appears.
func checkLog(t *testing.T, n *harness.Node, peer, priv string, linesBeforeTraffic int) {
	data := readFile(t, n.LogPath)
	if strings.Contains(data, priv) {
		t.Fatal("private key in the daemon log")
	}
	var events []map[string]any
	for i, line := range strings.Split(strings.TrimSpace(data), "\n") {
		if strings.HasPrefix(line, "=== ") {
			continue // the harness's start/exit markers
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %d is not JSON: %v: %q", i+1, err, line)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("log line %d lacks %q: %q", i+1, k, line)
			}
		}
		for _, k := range []string{"public_key", "old_public_key"} {
			if v, ok := m[k]; ok {
				if s, isStr := v.(string); !isStr || len(s) != 44 {
					t.Errorf("log line %d: %s is not a base64 key string: %v", i+1, k, v)
				}
			}
		}
		events = append(events, m)
	}
	count := func(msg string, attrs map[string]string) int {
		c := 0
	next:
		for _, e := range events {
			if e["msg"] != msg {
				continue
			}
			for k, v := range attrs {
				if fmt.Sprint(e[k]) != v {
					continue next
				}
			}
			c++
		}
		return c
	}
	nf, _ := n.NodeFile()
	if nf == nil {
		// n2's daemon was stopped; its node file stays.
		t.Fatalf("node file of %s gone", n.Name)
	}
	for _, ev := range []struct {
		msg   string
		attrs map[string]string
		want  int
	}{
		// cidrs: every family's PodCIDR, as a JSON list.
		{"PodCIDR lease held", map[string]string{"cidrs": "[" + strings.Join(nf.PodCIDRs, " ") + "]", "node": n.Name}, 1},
		{"WireGuard key ready", nil, 1},
		{"WireGuard device ready", nil, 1},
		// n1 learns n2 from the watch, n2 learns n1 in its first sync: one
		// line each way, with the peer's name and its key as a string.
		{"peer configured", map[string]string{"node": n.Name, "peer_node": peer}, 1},
		{"serving metrics and health", nil, 1},
	} {
		if got := count(ev.msg, ev.attrs); got != ev.want {
			t.Errorf("log: %d lines %q %v, want %d", got, ev.msg, ev.attrs, ev.want)
		}
	}
	// The traffic above (ping + 1 MiB) happened after linesBeforeTraffic;
	// anything logged since must be about something else than packets.
	if extra := len(events) - linesBeforeTraffic; linesBeforeTraffic >= 0 && extra > 5 {
		t.Errorf("%d log lines during pod traffic (per-packet logging?):\n%s", extra, data)
	}
	t.Logf("daemon log: %d JSON lines, events present, no private key", len(events))
}

// countLines counts the daemon's log lines (not the harness's markers).
func countLines(t *testing.T, path string) int {
	n := 0
	for _, l := range strings.Split(readFile(t, path), "\n") {
		if l != "" && !strings.HasPrefix(l, "=== ") {
			n++
		}
	}
	return n
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
