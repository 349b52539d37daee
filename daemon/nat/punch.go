package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
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
// from a raw socket (the port is WireGuard's, so no socket can bind it).
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

// NewPuncher opens the raw sockets. The table is made on first Sync.
func NewPuncher() (*Puncher, error) {
	p := &Puncher{fd4: -1, fd6: -1}
	var err4, err6 error
	p.fd4, err4 = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	p.fd6, err6 = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err6 == nil {
		// The kernel fills in the UDP checksum (mandatory over IPv6) at
		// offset 6 of what we send.
		err6 = unix.SetsockoptInt(p.fd6, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 6)
	}
	if err4 != nil && err6 != nil {
		p.Close()
		return nil, fmt.Errorf("open raw UDP sockets for hole punching: %w", errors.Join(err4, err6))
	}
	return p, nil
}

// Send sends one punch packet from our WireGuard port to dst.
func (p *Puncher) Send(port uint16, dst netip.AddrPort) error {
	b := punchPacket(port, dst.Port())
	a := dst.Addr().Unmap()
	if a.Is4() {
		if p.fd4 < 0 {
			return fmt.Errorf("punch %s: no raw IPv4 socket", dst)
		}
		return unix.Sendto(p.fd4, b, 0, &unix.SockaddrInet4{Addr: a.As4()})
	}
	if p.fd6 < 0 {
		return fmt.Errorf("punch %s: no raw IPv6 socket", dst)
	}
	return unix.Sendto(p.fd6, b, 0, &unix.SockaddrInet6{Addr: a.As16()})
}

// punchPacket is one punch as the raw socket sends it, from the UDP header
// on. UDP checksum 0: none over IPv4, the kernel's over IPv6.
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
