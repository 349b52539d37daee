package capture

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// Options tune a capture.
type Options struct {
	// Snaplen is how many bytes of each frame are kept (default 256:
	// enough for every header the classifier reads, including one level of
	// encapsulation).
	Snaplen int
	// Samples is how many packets of each kind are kept for display
	// (default 20). Every plaintext pod packet is kept up to 1000.
	Samples int
}

// Packet is one captured frame.
type Packet struct {
	Time     time.Time
	Ifname   string
	Outgoing bool
	Link     LinkType
	Len      int    // length on the wire
	Data     []byte // at most Snaplen bytes
	Result   Result
}

func (p Packet) String() string {
	dir := "In "
	if p.Outgoing {
		dir = "Out"
	}
	return fmt.Sprintf("%s %-12s %s %-13s %s", p.Time.Format("15:04:05.000000"), p.Ifname, dir, p.Result.Kind, p.Result.Summary)
}

// Report is what a capture saw.
type Report struct {
	Total   int
	Counts  map[Kind]int
	WGTypes map[byte]int // WireGuard message type -> count
	// Drops is the kernel's count of frames the socket could not queue;
	// a non-zero value means the classification may have missed frames.
	Drops   uint64
	Samples []Packet // the first Options.Samples packets of each kind
	Plain   []Packet // every plaintext pod packet (up to 1000)
}

// WireGuard returns the number of WireGuard packets seen.
func (r *Report) WireGuard() int { return r.Counts[KindWireGuard] }

// PlainPod returns the number of plaintext pod packets seen.
func (r *Report) PlainPod() int { return r.Counts[KindPlainPod] }

// String summarises the counts in one line.
func (r *Report) String() string {
	return fmt.Sprintf("%d frames: %d wireguard (init %d, response %d, cookie %d, data %d), %d plaintext pod, %d other, %d dropped by kernel",
		r.Total, r.Counts[KindWireGuard], r.WGTypes[WGHandshakeInit], r.WGTypes[WGHandshakeResponse],
		r.WGTypes[WGCookieReply], r.WGTypes[WGTransportData], r.Counts[KindPlainPod], r.Counts[KindOther], r.Drops)
}

// Excerpt formats up to n lines: every plaintext pod packet first, then
// samples of the other kinds in arrival order.
func (r *Report) Excerpt(n int) string {
	lines := make([]string, 0, n)
	for _, p := range r.Plain {
		lines = append(lines, p.String())
	}
	for _, p := range r.Samples {
		if p.Result.Kind != KindPlainPod {
			lines = append(lines, p.String())
		}
	}
	if len(lines) > n {
		lines = lines[:n]
	}
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// Capture is a running capture.
type Capture struct {
	fd      int
	cls     *Classifier
	opt     Options
	ifnames map[int]string
	stop    chan struct{}
	done    chan struct{}

	mu     sync.Mutex
	report Report
	err    error
}

const maxPlain = 1000

// htons converts to network byte order, as AF_PACKET protocol numbers are.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Start opens an AF_PACKET socket inside the network namespace at nsPath,
// bound to ifname (every interface of the namespace when ifname is ""), and
// classifies every frame until Stop. The socket is bound before Start
// returns, so any frame sent afterwards is seen.
func Start(nsPath, ifname string, cls *Classifier, opt Options) (*Capture, error) {
	if opt.Snaplen <= 0 {
		opt.Snaplen = 256
	}
	if opt.Samples <= 0 {
		opt.Samples = 20
	}
	c := &Capture{
		fd:      -1,
		cls:     cls,
		opt:     opt,
		ifnames: map[int]string{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		report:  Report{Counts: map[Kind]int{}, WGTypes: map[byte]int{}},
	}
	netns, err := ns.GetNS(nsPath)
	if err != nil {
		return nil, fmt.Errorf("capture: open netns %s: %w", nsPath, err)
	}
	defer netns.Close()
	err = netns.Do(func(ns.NetNS) error {
		ifs, err := net.Interfaces()
		if err != nil {
			return fmt.Errorf("list interfaces: %w", err)
		}
		for _, i := range ifs {
			c.ifnames[i.Index] = i.Name
		}
		ifindex := 0
		if ifname != "" {
			i, err := net.InterfaceByName(ifname)
			if err != nil {
				return fmt.Errorf("interface %s: %w", ifname, err)
			}
			ifindex = i.Index
		}
		// The socket belongs to the namespace it is created in, whichever
		// thread reads it later.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = fd
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
			return fmt.Errorf("bind AF_PACKET to %q: %w", ifname, err)
		}
		return nil
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		return nil, fmt.Errorf("capture in %s: %w", nsPath, err)
	}
	// Reset statistics so drops count only from here on.
	_, _ = unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	go c.loop(ifname)
	return c, nil
}

func (c *Capture) loop(ifname string) {
	defer close(c.done)
	buf := make([]byte, c.opt.Snaplen)
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}}
	draining := false
	for {
		if !draining {
			select {
			case <-c.stop:
				// Read what is already queued, then finish.
				draining = true
			default:
			}
		}
		n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if draining {
				return
			}
			_, _ = unix.Poll(fds, 50)
			continue
		}
		if err != nil {
			c.mu.Lock()
			c.err = fmt.Errorf("capture recvfrom: %w", err)
			c.mu.Unlock()
			return
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok {
			continue
		}
		name := c.ifnames[ll.Ifindex]
		if name == "" {
			name = fmt.Sprintf("if%d", ll.Ifindex)
		}
		c.record(ll, name, buf[:min(n, len(buf))], n)
	}
}

func (c *Capture) record(ll *unix.SockaddrLinklayer, ifname string, data []byte, wireLen int) {
	lt := LinkRawIP
	if ll.Hatype == unix.ARPHRD_ETHER || ll.Hatype == unix.ARPHRD_LOOPBACK {
		lt = LinkEthernet
	}
	res := c.cls.Classify(lt, data)
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &c.report
	r.Total++
	r.Counts[res.Kind]++
	if res.Kind == KindWireGuard {
		r.WGTypes[res.WGType]++
	}
	keepSample := r.Counts[res.Kind] <= c.opt.Samples
	keepPlain := res.Kind == KindPlainPod && len(r.Plain) < maxPlain
	if !keepSample && !keepPlain {
		return
	}
	p := Packet{
		Time:     time.Now(),
		Ifname:   ifname,
		Outgoing: ll.Pkttype == unix.PACKET_OUTGOING,
		Link:     lt,
		Len:      wireLen,
		Data:     append([]byte(nil), data...),
		Result:   res,
	}
	if keepSample {
		r.Samples = append(r.Samples, p)
	}
	if keepPlain {
		r.Plain = append(r.Plain, p)
	}
}

// Snapshot returns the counts so far without stopping.
func (c *Capture) Snapshot() Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.report
	r.Counts = map[Kind]int{}
	for k, v := range c.report.Counts {
		r.Counts[k] = v
	}
	r.WGTypes = map[byte]int{}
	for k, v := range c.report.WGTypes {
		r.WGTypes[k] = v
	}
	r.Samples = append([]Packet(nil), c.report.Samples...)
	r.Plain = append([]Packet(nil), c.report.Plain...)
	return r
}

// Stop drains what is queued, closes the socket and returns the report.
// Stop may be called more than once.
func (c *Capture) Stop() (*Report, error) {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd >= 0 {
		if st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			c.report.Drops += uint64(st.Drops)
		}
		unix.Close(c.fd)
		c.fd = -1
	}
	r := c.report
	return &r, c.err
}
