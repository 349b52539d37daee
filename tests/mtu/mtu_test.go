// Package mtu checks that wgcni derives every MTU on the pod path from the
// underlay (WireGuard over IPv4 adds 60 bytes: IPv4 20 + UDP 8 + WireGuard
// 32), so the largest packet a pod may send fits the underlay after
// encapsulation: no fragmentation, no PMTU black hole. It runs in the
// namespace cluster (tests/harness) with a 1500-byte and a 9000-byte
// (jumbo) underlay.
package mtu

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/daemon/agent"
	"github.com/wgcni/wgcni/tests/harness"
)

// The formula itself, including the IPv6 underlay (-80: IPv6 header 40);
// the IPv6 data path is covered by the IPv6 work (issue 9).
func TestWireGuardMTUFormula(t *testing.T) {
	for _, c := range []struct {
		underlay int
		ep       string
		want     int
	}{
		{1500, "10.0.0.1", 1440}, {9000, "10.0.0.1", 8940},
		{1500, "fd00::1", 1420}, {9000, "fd00::1", 8920},
	} {
		if got := agent.WireGuardMTU(c.underlay, netip.MustParseAddr(c.ep)); got != c.want {
			t.Errorf("WireGuardMTU(%d, %s) = %d, want %d", c.underlay, c.ep, got, c.want)
		}
	}
}

func TestPathMTU(t *testing.T) {
	for _, underlay := range []int{1500, 9000} {
		t.Run(strconv.Itoa(underlay), func(t *testing.T) { testPathMTU(t, underlay) })
	}
}

func testPathMTU(t *testing.T, underlay int) {
	c := harness.Start(t, harness.Config{UnderlayMTU: underlay}, 2)
	n1, n2 := c.Nodes()[0], c.Nodes()[1]
	want := underlay - 60
	p1 := n1.MustAddPod(t)
	p2 := n2.MustAddPod(t)

	// Every hop of the pod path carries the derived MTU.
	for _, n := range []*harness.Node{n1, n2} {
		nf, err := n.NodeFile()
		if err != nil {
			t.Fatal(err)
		}
		if nf.MTU != want {
			t.Errorf("%s: node file MTU %d, want %d (underlay %d - 60)", n.Name, nf.MTU, want, underlay)
		}
		for _, dev := range []string{n.Device, nf.Bridge} {
			if got := linkMTU(t, n.NS, dev); got != want {
				t.Errorf("%s: %s MTU %d, want %d", n.Name, dev, got, want)
			}
		}
	}
	for _, p := range []*harness.Pod{p1, p2} {
		if got := linkMTU(t, p.NS, p.IfName); got != want {
			t.Errorf("pod %s: %s MTU %d, want %d", p.Name, p.IfName, got, want)
		}
	}

	// First contact (handshake), then the checks.
	if err := harness.WaitFor(20*time.Second, "pod to pod ping", func() (bool, error) {
		r, err := p1.Ping(p2.IP, 1, 200*time.Millisecond)
		return err == nil && r.Received == 1, nil
	}); err != nil {
		t.Fatal(err)
	}
	frag0 := fragCreates(t, n1.NS)

	// The largest ICMP echo a pod can send with DF set (MTU - IPv4 20 -
	// ICMP 8) crosses the tunnel both ways; one byte more is refused by
	// the pod's own interface, never sent into a black hole.
	maxPayload := want - 28
	err := harness.WaitFor(20*time.Second, "max-size DF ping", func() (bool, error) {
		r, err := p1.PingSize(p2.IP, 3, 200*time.Millisecond, maxPayload)
		if err != nil {
			return false, err
		}
		return r.Received == r.Sent, nil
	})
	if err != nil {
		t.Fatalf("payload %d with DF (pod MTU %d): %v", maxPayload, want, err)
	}
	r, err := p1.PingSize(p2.IP, 1, 200*time.Millisecond, maxPayload+1)
	if err == nil && r.Received != 0 {
		t.Errorf("payload %d (over pod MTU %d) with DF got through: %s", maxPayload+1, want, r.Output)
	}

	// A 1 MB TCP transfer, checked end to end by SHA-256.
	res, err := harness.TCPTransfer(p1.NS, p2.NS, p2.IP, 7000, 1<<20, 60*time.Second)
	if err != nil {
		t.Fatalf("1 MB TCP transfer pod to pod at underlay MTU %d: %v", underlay, err)
	}
	t.Logf("underlay %d, pod MTU %d: max DF ping %d bytes ok; 1 MB TCP in %v (%.0f Mbit/s)", underlay, want, maxPayload, res.Duration.Round(time.Millisecond), res.Mbps())

	// Encapsulated full-size packets fit the underlay: the sending node
	// never fragmented anything.
	if d := fragCreates(t, n1.NS) - frag0; d != 0 {
		t.Errorf("node %s created %d IP fragments: WireGuard packets exceed the underlay MTU %d", n1.Name, d, underlay)
	}
}

func linkMTU(t *testing.T, ns harness.NS, name string) int {
	t.Helper()
	var mtu int
	err := ns.Do(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		mtu = l.Attrs().MTU
		return nil
	})
	if err != nil {
		t.Fatalf("link %s in %s: %v", name, ns.Name, err)
	}
	return mtu
}

// fragCreates reads Ip: FragCreates of the namespace's /proc/net/snmp.
func fragCreates(t *testing.T, ns harness.NS) int64 {
	t.Helper()
	var v int64 = -1
	err := ns.Do(func() error {
		// /proc/self/net follows the calling thread's network namespace.
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		var head []string
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Ip:" {
				continue
			}
			if head == nil {
				head = fields
				continue
			}
			for i, h := range head {
				if h == "FragCreates" && i < len(fields) {
					v, err = strconv.ParseInt(fields[i], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no Ip: FragCreates in snmp")
	})
	if err != nil {
		t.Fatalf("read snmp in %s: %v", ns.Name, err)
	}
	return v
}
