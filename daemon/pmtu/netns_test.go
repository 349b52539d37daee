package pmtu

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wgcni/wgcni/daemon/internal/netnstest"
)

// node is a network namespace made for one test, with a netlink handle
// into it.
type node struct {
	ns   ns.NetNS
	name string
	h    *netlink.Handle
}

func newNode(t *testing.T, prefix string) *node {
	t.Helper()
	n, name := netnstest.New(t, prefix)
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())))
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	t.Cleanup(h.Close)
	return &node{ns: n, name: name, h: h}
}

// family is the addressing of one test topology.
type family struct {
	name string
	// net(i) is the i-th link's prefix; host(i, j) the j-th address in it.
	base netip.Prefix
}

func (f family) host(link, host int) netip.Prefix {
	a := f.base.Addr().As16()
	if f.base.Addr().Is4() {
		a4 := f.base.Addr().As4()
		a4[2], a4[3] = byte(link), byte(host)
		return netip.PrefixFrom(netip.AddrFrom4(a4), 24)
	}
	a[7], a[15] = byte(link), byte(host)
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

var families = []family{
	{"ipv4", netip.MustParsePrefix("10.97.0.0/16")},
	{"ipv6", netip.MustParsePrefix("fd97::/48")},
}

// link joins a and b with a veth pair (aName in a with MTU aMTU, bName in
// b with bMTU), addresses them, and brings both ends up.
func link(t *testing.T, f family, idx int, a *node, aName string, aMTU int, b *node, bName string, bMTU int) (netip.Prefix, netip.Prefix) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName, MTU: aMTU}, PeerName: bName,
		PeerMTU: uint32(bMTU), PeerNamespace: netlink.NsFd(int(b.ns.Fd()))}
	if err := a.h.LinkAdd(v); err != nil {
		t.Fatalf("veth %s(%s)-%s(%s): %v", aName, a.name, bName, b.name, err)
	}
	aAddr, bAddr := f.host(idx, 1), f.host(idx, 2)
	for _, e := range []struct {
		n    *node
		dev  string
		addr netip.Prefix
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		l, err := e.n.h.LinkByName(e.dev)
		if err != nil {
			t.Fatalf("%s in %s: %v", e.dev, e.n.name, err)
		}
		ipn := &net.IPNet{IP: e.addr.Addr().AsSlice(), Mask: net.CIDRMask(e.addr.Bits(), e.addr.Addr().BitLen())}
		if err := e.n.h.AddrAdd(l, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatalf("address %s on %s: %v", e.addr, e.dev, err)
		}
		if err := e.n.h.LinkSetUp(l); err != nil {
			t.Fatalf("up %s: %v", e.dev, err)
		}
	}
	return aAddr, bAddr
}

func routeVia(t *testing.T, n *node, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	r := &netlink.Route{Dst: &net.IPNet{IP: dst.Masked().Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}, Gw: gw.AsSlice()}
	if err := n.h.RouteAdd(r); err != nil {
		t.Fatalf("route %s via %s in %s: %v", dst, gw, n.name, err)
	}
}

func sysctl(t *testing.T, n *node, path, val string) {
	t.Helper()
	err := n.ns.Do(func(ns.NetNS) error { return os.WriteFile(path, []byte(val), 0o644) })
	if err != nil {
		t.Fatalf("%s=%s in %s: %v", path, val, n.name, err)
	}
}

// serve runs a responder on addr inside n until the test ends.
func serve(t *testing.T, n *node, addr netip.Addr) netip.AddrPort {
	t.Helper()
	var r *Responder
	err := n.ns.Do(func(ns.NetNS) error {
		var err error
		r, err = Listen(netip.AddrPortFrom(addr, 0))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.Serve(ctx); err != nil {
			t.Errorf("responder: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return r.Addr()
}

// ackWait is how long a test probe waits for its ack: generous, so a
// loaded machine (the tests share it) does not turn a late ack into a
// smaller MTU; a size counts as too big only after three such waits.
const ackWait = time.Second

// dial opens a prober from inside n to dst, closed when the test ends.
func dial(t *testing.T, n *node, dst netip.AddrPort) *Prober {
	t.Helper()
	var p *Prober
	if err := n.ns.Do(func(ns.NetNS) error {
		var err error
		p, err = Dial(dst, ackWait)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// search runs the prober from inside n against dst, with the MTU of n's
// device dev as ceiling.
func search(t *testing.T, n *node, dev string, dst netip.AddrPort) (int, error) {
	t.Helper()
	l, err := n.h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	p := dial(t, n, dst)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return Search(ctx, p, Floor, l.Attrs().MTU, 3)
}

// expectPathMTU searches from n's device dev to the responder at dst and
// fails unless it finds want.
func expectPathMTU(t *testing.T, n *node, dev string, dst netip.AddrPort, want int) int {
	t.Helper()
	got, err := search(t, n, dev, dst)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("path MTU %d, want %d", got, want)
	}
	return got
}

// network is node a — router r — node b; a's link is 1500 bytes, b's
// farMTU, and r drops its too-big messages (dropTooBig).
type network struct {
	a, r, b      *node
	aAddr, bAddr netip.Addr
}

func routed(t *testing.T, f family, farMTU int) network {
	t.Helper()
	a, r, b := newNode(t, "pmtu-a"), newNode(t, "pmtu-r"), newNode(t, "pmtu-b")
	aAddr, raAddr := link(t, f, 1, a, "a0", 1500, r, "r0", 1500)
	rbAddr, bAddr := link(t, f, 2, r, "r1", farMTU, b, "b0", farMTU)
	routeVia(t, a, f.host(2, 0), raAddr.Addr())
	routeVia(t, b, f.host(1, 0), rbAddr.Addr())
	if f.base.Addr().Is4() {
		sysctl(t, r, "/proc/sys/net/ipv4/ip_forward", "1")
	} else {
		sysctl(t, r, "/proc/sys/net/ipv6/conf/all/forwarding", "1")
	}
	dropTooBig(t, r)
	return network{a: a, r: r, b: b, aAddr: aAddr.Addr(), bAddr: bAddr.Addr()}
}

// dropTooBig makes router n drop the ICMP messages it sends to say a
// packet was too big to forward (IPv4 fragmentation needed, IPv6 packet
// too big), counting them: a PMTU black hole.
func dropTooBig(t *testing.T, n *node) {
	t.Helper()
	rules := `table inet pmtutest {
	chain out {
		type filter hook output priority 0; policy accept;
		icmp type destination-unreachable icmp code frag-needed counter drop
		icmpv6 type packet-too-big counter drop
	}
}
`
	cmd := exec.Command("ip", "netns", "exec", n.name, nftPath(t), "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", n.name, err, out)
	}
}

// tooBigDropped is how many too-big messages dropTooBig's rules dropped.
func tooBigDropped(t *testing.T, n *node) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", n.name, nftPath(t), "list", "table", "inet", "pmtutest").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list in %s: %v: %s", n.name, err, out)
	}
	dropped := 0
	for _, m := range regexp.MustCompile(`counter packets (\d+)`).FindAllStringSubmatch(string(out), -1) {
		c, _ := strconv.Atoi(m[1])
		dropped += c
	}
	return dropped
}

func nftPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("nft")
	if err != nil {
		t.Fatal("nft not found: install the nftables package (make deps)")
	}
	return p
}

// A router between two nodes forwards onto a 1400-byte link and its ICMP
// "fragmentation needed" / "packet too big" is dropped (nftables, counted):
// a PMTU black hole. The prober finds exactly 1400: the router's check is
// on the IP packet size, and nothing was fragmented (the drop counter
// proves the router had to refuse our don't-fragment probes).
func TestBlackHoleBehindRouter(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel() // namespaces of its own; no shared names
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			nw := routed(t, f, 1400)
			got := expectPathMTU(t, nw.a, "a0", serve(t, nw.b, nw.bAddr), 1400)
			dropped := tooBigDropped(t, nw.r)
			if dropped == 0 {
				t.Fatal("no ICMP too-big message dropped at the router: were the probes fragmented instead?")
			}
			t.Logf("%s: path MTU %d found; %d ICMP too-big messages dropped at the router", f.name, got, dropped)
		})
	}
}

// Two nodes on one veth pair with different MTUs: the receiving end drops
// larger frames without a word (no ICMP at all). The receiver accepts a
// frame up to its MTU plus a VLAN tag's 4 bytes (is_skb_forwardable), so
// the path carries IP packets of 1404 bytes.
func TestSilentMTUMismatch(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel() // namespaces of its own; no shared names
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			a, b := newNode(t, "pmtu-a"), newNode(t, "pmtu-b")
			_, bAddr := link(t, f, 1, a, "a0", 1500, b, "b0", 1400)
			expectPathMTU(t, a, "a0", serve(t, b, bAddr.Addr()), 1404)
		})
	}
}

// A full-MTU path costs one probe's round trip and finds the device MTU;
// the smallest probe (liveness) is answered; a dead peer (no responder) is
// an error naming it, not a small MTU.
func TestFullPathAndNoResponder(t *testing.T) {
	netnstest.RequireRoot(t)
	t.Parallel() // namespaces of its own; no shared names
	f := families[0]
	a, b := newNode(t, "pmtu-a"), newNode(t, "pmtu-b")
	_, bAddr := link(t, f, 1, a, "a0", 1500, b, "b0", 1500)
	dst := serve(t, b, bAddr.Addr())
	expectPathMTU(t, a, "a0", dst, 1500)
	if ok, err := dial(t, a, dst).Ping(context.Background()); !ok || err != nil {
		t.Fatalf("ping: %v, %v", ok, err)
	}
	_, err := search(t, a, "a0", netip.AddrPortFrom(bAddr.Addr(), dst.Port()+1))
	if err == nil || !strings.Contains(err.Error(), "no probe responder") {
		t.Fatalf("no responder: err %v", err)
	}
}
