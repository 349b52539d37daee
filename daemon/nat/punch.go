package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Hole punching needs two things WireGuard cannot do with one entry per
// peer while that entry carries the pair's session through a relay:
// packets from our WireGuard port to the peer's public endpoint (they
// open our NAT towards it; the peer's NAT lets them in once the peer has
// sent its own the other way), and a sign that the peer's packets reach
// us there. The first are 32-byte WireGuard transport messages with
// receiver index 0, which every WireGuard drops at the index lookup, sent
// from a raw socket with our own IP header (the port is WireGuard's, so
// no socket can bind it).
// The second is an nftables counter per punched endpoint on the input
// hook: it counts every packet from there to our port, punch or session.

// Names of the nftables objects (inet family).
const (
	punchTable = "wgcni-nat"
	punchChain = "heard"
)

// punchLen is the size of a punch: a UDP header and a WireGuard transport
// data message (type 4) with receiver index 0, counter 0 and an empty
// payload, the smallest message WireGuard parses, dropped because no
// session has index 0.
const punchLen = 8 + 32

// Puncher sends punch packets and reads what was heard. Not safe for
// concurrent use (the agent's loop owns it).
type Puncher struct {
	fd4, fd6 int // raw UDP sockets; -1 if the family is unavailable
	rules    map[netip.AddrPort]bool
	port     uint16
}

// NewPuncher opens the raw sockets. They are IPPROTO_RAW, send-only:
// a raw socket of protocol UDP would also get a copy of every UDP packet
// the node receives (all of WireGuard's), cloned for a socket nobody
// reads. The table is made on first Sync.
func NewPuncher() (*Puncher, error) {
	p := &Puncher{fd4: -1, fd6: -1}
	var err4, err6 error
	p.fd4, err4 = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	p.fd6, err6 = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err4 != nil && err6 != nil {
		p.Close()
		return nil, fmt.Errorf("open raw sockets for hole punching: %w", errors.Join(err4, err6))
	}
	return p, nil
}

// Send sends one punch packet from our WireGuard port to dst.
func (p *Puncher) Send(port uint16, dst netip.AddrPort) error {
	a := dst.Addr().Unmap()
	if a.Is4() {
		if p.fd4 < 0 {
			return fmt.Errorf("punch %s: no raw IPv4 socket", dst)
		}
		// The kernel fills in the header's length, ID, checksum and,
		// left 0, the source address the route to dst gives.
		h := make([]byte, 20)
		h[0], h[8], h[9] = 0x45, 64, unix.IPPROTO_UDP
		copy(h[16:], a.AsSlice())
		return unix.Sendto(p.fd4, append(h, punchPacket(port, dst.Port())...), 0, &unix.SockaddrInet4{Addr: a.As4()})
	}
	if p.fd6 < 0 {
		return fmt.Errorf("punch %s: no raw IPv6 socket", dst)
	}
	// IPv6 takes the whole header from us: the source the route to dst
	// gives (a connected UDP socket sends nothing), and the UDP checksum.
	src, err := sourceFor(a)
	if err != nil {
		return fmt.Errorf("punch %s: %w", dst, err)
	}
	u := punchPacket(port, dst.Port())
	binary.BigEndian.PutUint16(u[6:], udp6Checksum(src, a, u))
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(u)))
	h[6], h[7] = unix.IPPROTO_UDP, 64
	copy(h[8:], src.AsSlice())
	copy(h[24:], a.AsSlice())
	return unix.Sendto(p.fd6, append(h, u...), 0, &unix.SockaddrInet6{Addr: a.As16()})
}

// sourceFor is the source address the kernel picks towards dst.
func sourceFor(dst netip.Addr) (netip.Addr, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("source address towards %s: %w", dst, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// udp6Checksum is the UDP checksum of u (its checksum field 0) from src
// to dst: the one's complement sum over the IPv6 pseudo-header and u.
func udp6Checksum(src, dst netip.Addr, u []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src.AsSlice())
	add(dst.AsSlice())
	sum += uint32(len(u)) + unix.IPPROTO_UDP
	add(u)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	if c := ^uint16(sum); c != 0 {
		return c
	}
	return 0xffff
}

// punchPacket is one punch from the UDP header on; checksum 0 (none over
// IPv4; Send fills it in over IPv6).
func punchPacket(from, to uint16) []byte {
	b := make([]byte, punchLen)
	binary.BigEndian.PutUint16(b[0:], from)
	binary.BigEndian.PutUint16(b[2:], to)
	binary.BigEndian.PutUint16(b[4:], punchLen)
	binary.LittleEndian.PutUint32(b[8:], 4) // message type; the rest stays 0
	return b
}

// Sync makes the counters exactly one per endpoint in want, counting
// packets to our port; the counters of endpoints that stay are kept.
func (p *Puncher) Sync(port uint16, want []netip.AddrPort) error {
	wantSet := map[netip.AddrPort]bool{}
	for _, w := range want {
		wantSet[unmapAP(w)] = true
	}
	if p.rules != nil && port == p.port && maps.Equal(p.rules, wantSet) {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: punchTable})
	ch := c.AddChain(&nftables.Chain{Name: punchChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	have := map[netip.AddrPort]bool{}
	if rs, err := c.GetRules(t, ch); err == nil {
		for _, r := range rs {
			ap, err := netip.ParseAddrPort(string(r.UserData))
			if err != nil || !wantSet[ap] || port != p.port || have[ap] {
				if err := c.DelRule(r); err != nil {
					return fmt.Errorf("nftables: delete rule %q: %w", r.UserData, err)
				}
				continue
			}
			have[ap] = true
		}
	}
	for ap := range wantSet {
		if !have[ap] {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, UserData: []byte(ap.String()), Exprs: heardRule(ap, port)})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: table inet %s: %w", punchTable, err)
	}
	p.rules, p.port = wantSet, port
	return nil
}

// Heard returns the packets counted from each endpoint (Sync's).
func (p *Puncher) Heard() (map[netip.AddrPort]uint64, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	rs, err := c.GetRules(&nftables.Table{Family: nftables.TableFamilyINet, Name: punchTable}, &nftables.Chain{Name: punchChain})
	if err != nil {
		return nil, fmt.Errorf("nftables: list chain %s: %w", punchChain, err)
	}
	out := map[netip.AddrPort]uint64{}
	for _, r := range rs {
		ap, err := netip.ParseAddrPort(string(r.UserData))
		if err != nil {
			continue
		}
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				out[ap] = ctr.Packets
			}
		}
	}
	return out, nil
}

// Close deletes the table and closes the sockets.
func (p *Puncher) Close() {
	if p.rules != nil {
		if c, err := nftables.New(); err == nil {
			c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: punchTable})
			_ = c.Flush()
		}
	}
	for _, fd := range []int{p.fd4, p.fd6} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	p.fd4, p.fd6 = -1, -1
}

// heardRule counts UDP packets from ap to our port.
func heardRule(ap netip.AddrPort, port uint16) []expr.Any {
	a := ap.Addr()
	proto, off := byte(unix.NFPROTO_IPV4), uint32(12)
	if a.Is6() {
		proto, off = unix.NFPROTO_IPV6, 8
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(a.BitLen() / 8)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(ap.Port())},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Counter{},
	}
}

func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
