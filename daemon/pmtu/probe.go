package pmtu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Overhead is the IP plus UDP header size in front of a probe's payload:
// a probe of IP size n carries n-Overhead(family) payload bytes.
func Overhead(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 20 + 8
	}
	return 40 + 8
}

// Prober sends probes to one responder over a connected UDP socket whose
// packets are never fragmented: IP_PMTUDISC_PROBE (IPv6: the same, plus
// IPV6_DONTFRAG) sets the don't-fragment bit and also ignores the PMTU the
// kernel may have cached from an ICMP message, so a size is tried as asked
// and is refused locally (TooBig) only above the outgoing device's MTU.
type Prober struct {
	conn    *net.UDPConn
	dst     netip.AddrPort
	timeout time.Duration
	id      uint32
	buf     []byte
	rbuf    []byte
}

// Dial opens a prober to dst from the current network namespace; timeout
// is how long each probe waits for its ack.
func Dial(dst netip.AddrPort, timeout time.Duration) (*Prober, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	network := "udp6"
	if dst.Addr().Is4() {
		network = "udp4"
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error { return noFragment(c, dst.Addr().Is4()) }}
	c, err := d.Dial(network, dst.String())
	if err != nil {
		return nil, fmt.Errorf("open probe socket to %s: %w", dst, err)
	}
	return &Prober{conn: c.(*net.UDPConn), dst: dst, timeout: timeout, rbuf: make([]byte, 64)}, nil
}

func noFragment(c syscall.RawConn, v4 bool) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if v4 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DONTFRAG, 1)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set don't-fragment on probe socket: %w", serr)
	}
	return nil
}

// Close closes the socket.
func (p *Prober) Close() error { return p.conn.Close() }

// Probe sends one probe of IP packet size size and waits for its ack.
// Acks of earlier (timed-out) probes are skipped.
func (p *Prober) Probe(ctx context.Context, size int) (Result, error) {
	p.id++
	var err error
	p.buf, err = appendProbe(p.buf, p.id, size-Overhead(p.dst.Addr()))
	if err != nil {
		return Lost, err
	}
	if _, err := p.conn.Write(p.buf); err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			return TooBig, nil
		}
		return Lost, fmt.Errorf("send probe to %s: %w", p.dst, err)
	}
	deadline := time.Now().Add(p.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := p.conn.SetReadDeadline(deadline); err != nil {
		return Lost, err
	}
	for {
		n, err := p.conn.Read(p.rbuf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				// ICMP port unreachable: the host is there, its
				// responder is not. Not a size question.
				return Lost, fmt.Errorf("no probe responder at %s: %w", p.dst, err)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return Lost, nil
			}
			return Lost, fmt.Errorf("read ack from %s: %w", p.dst, err)
		}
		m, err := Decode(p.rbuf[:n])
		if err != nil || !m.Ack || m.ID != p.id {
			continue // stray or late datagram
		}
		if m.Len != len(p.buf) {
			return Lost, fmt.Errorf("responder %s got %d of %d probe bytes", p.dst, m.Len, len(p.buf))
		}
		return Acked, nil
	}
}

// MinSize is the smallest probe, as an IP packet size: the liveness probe,
// as cheap as a probe gets (its ack is no larger).
func MinSize(a netip.Addr) int { return Overhead(a) + ackLen }

// Ping sends one smallest probe: whether the responder answered within the
// timeout.
func (p *Prober) Ping(ctx context.Context) (bool, error) {
	r, err := p.Probe(ctx, MinSize(p.dst.Addr()))
	return r == Acked, err
}

// Responder answers probes with acks. Each node runs one, on its gateway
// address, so probes reach it only through the tunnel.
type Responder struct {
	conn *net.UDPConn
}

// Listen opens a responder on addr in the current network namespace.
func Listen(addr netip.AddrPort) (*Responder, error) {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("listen for path probes on %s: %w", addr, err)
	}
	return &Responder{conn: c}, nil
}

// Addr is the address the responder listens on.
func (r *Responder) Addr() netip.AddrPort {
	return r.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Close stops Serve.
func (r *Responder) Close() error { return r.conn.Close() }

// Serve answers probes until ctx ends or the responder is closed. Anything
// that is not a probe is ignored: only probes get an answer, and the
// answer is never larger than the probe.
func (r *Responder) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { r.conn.Close() })
	defer stop()
	buf := make([]byte, 1<<16)
	var ack []byte
	for {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read probe on %s: %w", r.Addr(), err)
		}
		m, err := Decode(buf[:n])
		if err != nil || m.Ack {
			continue
		}
		ack = appendAck(ack, m.ID, n)
		// A lost ack is a lost probe to the prober; nothing to do here.
		_, _ = r.conn.WriteToUDPAddrPort(ack, from)
	}
}
