// Package antispoof keeps pods from forging their source on the node
// bridge. One nftables table per node (bridge family, "wgcni") holds a
// set of allowed (bridge port, MAC, IPv4) triples, one of (bridge port,
// MAC, IPv6) triples, and four fixed rules on the bridge's prerouting hook,
// for frames entering from pod ports (host veths, named wgv…):
//
//	IPv4 whose (port, ether saddr, ip saddr) is not in the set: drop
//	ARP  whose (port, ether saddr, arp sender ip) is not in the set: drop
//	IPv6 whose (port, ether saddr, ip6 saddr) is not in the set: drop
//	any other ethertype (VLAN tags, …): drop
//
// A pod's neighbour solicitation for its gateway carries the pod's own
// address as source (the kernel takes the source of the packet waiting for
// resolution), so it passes; pods need no DAD, RA or MLD (plugins/podnet
// turns DAD and RA off), so frames from link-local or unspecified sources
// are dropped like any other forged source.
//
// so a pod may only send from its own IP and MAC. A CNI ADD adds one set
// element per pod IP (one netlink transaction when the table exists), DEL
// removes the pod's elements, GC removes elements of ports that are gone.
// Cross-node forgery is stopped by WireGuard itself: a receiving node only
// accepts inner source addresses inside the sending peer's AllowedIPs.
// The drop rules carry counters: `nft list table bridge wgcni` shows how
// many forged frames were dropped.
package antispoof

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names of the nftables objects (bridge family).
const (
	Table = "wgcni"
	Chain = "antispoof"
	// PortPrefix is the name prefix of every pod's host veth (plugins/veth).
	PortPrefix = "wgv"
	// ruleTag marks our rules (UserData), versioned so a changed rule set
	// is recognised and rewritten.
	ruleTag = "wgcni-antispoof v2"
)

const (
	ifNameSize = 16
	macOff     = 16 // the MAC's place in an element key
	addrOff    = 24 // the address's: nftables pads each field to 4 bytes
)

var table = &nftables.Table{Name: Table, Family: nftables.TableFamilyBridge}

// family is what one address family's set of allowed (port, MAC, address)
// triples differs in; the table, chain, port and MAC matching are shared.
type family struct {
	set     string // set name; these names are on running nodes, keep them
	addrLen int    // address bytes in the key and in the header
	keyType nftables.SetDatatype
	// checks are the frames whose source address this set vouches for.
	checks []check
}

// check: frames of etherType carry their source address at srcOff of the
// network header.
type check struct {
	etherType uint16
	srcOff    uint32
}

// families are the sets, one per address family.
func families() []family {
	return []family{
		{set: "pods", addrLen: net.IPv4len, keyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr),
			// IPv4 source: offset 12. ARP sender protocol address: 8 bytes
			// of header + 6 of sender MAC.
			checks: []check{{unix.ETH_P_IP, 12}, {unix.ETH_P_ARP, 14}}},
		{set: "pods6", addrLen: net.IPv6len, keyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIP6Addr),
			// IPv6 source: offset 8.
			checks: []check{{unix.ETH_P_IPV6, 8}}},
	}
}

// familyOf is the family of ip, by its length in the key (4 or 16 bytes).
func familyOf(ip net.IP) (family, net.IP, bool) {
	if ip4 := ip.To4(); ip4 != nil {
		return families()[0], ip4, true
	}
	if ip16 := ip.To16(); ip16 != nil {
		return families()[1], ip16, true
	}
	return family{}, nil, false
}

func (f family) nfSet() *nftables.Set {
	return &nftables.Set{Table: table, Name: f.set, KeyType: f.keyType, Concatenation: true}
}

// keyLen is the length of this family's element keys.
func (f family) keyLen() int { return addrOff + f.addrLen }

// key encodes one element: ifname (16 bytes, NUL padded), MAC (6 + 2
// padding), the address (4 or 16).
func key(port string, mac net.HardwareAddr, ip net.IP) (family, []byte, error) {
	if len(port) >= ifNameSize || port == "" {
		return family{}, nil, fmt.Errorf("antispoof: bad port name %q", port)
	}
	if len(mac) != 6 {
		return family{}, nil, fmt.Errorf("antispoof: port %s: MAC %s is not 6 bytes", port, mac)
	}
	f, addr, ok := familyOf(ip)
	if !ok {
		return family{}, nil, fmt.Errorf("antispoof: port %s: %s is not an IP address", port, ip)
	}
	k := make([]byte, f.keyLen())
	copy(k, port)
	copy(k[macOff:], mac)
	copy(k[addrOff:], addr)
	return f, k, nil
}

func portOf(k []byte) string {
	if len(k) < ifNameSize {
		return ""
	}
	return string(bytes.TrimRight(k[:ifNameSize], "\x00"))
}

// Allow lets the pod behind host port send from mac and ips. When the
// table is there (every ADD but the node's first) this is one netlink
// transaction; otherwise the table, set and rules are created first.
func Allow(port string, mac net.HardwareAddr, ips []net.IP) error {
	elems := map[string][]nftables.SetElement{} // by set
	for _, ip := range ips {
		f, k, err := key(port, mac, ip)
		if err != nil {
			return err
		}
		elems[f.set] = append(elems[f.set], nftables.SetElement{Key: k})
	}
	if len(elems) == 0 {
		return fmt.Errorf("antispoof: port %s: no IP address to allow", port)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("antispoof: open nftables: %w", err)
	}
	add := func() error {
		for _, f := range families() {
			if len(elems[f.set]) == 0 {
				continue
			}
			if err := c.SetAddElements(f.nfSet(), elems[f.set]); err != nil {
				return fmt.Errorf("antispoof: %w", err)
			}
		}
		return nil
	}
	if err := add(); err != nil {
		return err
	}
	err = c.Flush()
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("antispoof: allow %s %s on %s: %w", ips, mac, port, err)
	}
	if err := ensure(c); err != nil {
		return err
	}
	if err := add(); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("antispoof: allow %s %s on %s: %w", ips, mac, port, err)
	}
	return nil
}

// ensure creates table, set, chain and rules in one transaction. The chain
// is flushed first, so concurrent first ADDs converge on one copy of the
// rules; the set is only created if missing, never emptied.
func ensure(c *nftables.Conn) error {
	c.AddTable(table)
	sets := map[string]*nftables.Set{} // as added, with their IDs
	for _, f := range families() {
		s := f.nfSet()
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("antispoof: %w", err)
		}
		sets[f.set] = s
	}
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name:     Chain,
		Table:    table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	})
	c.FlushChain(ch)
	for _, r := range rules(sets) {
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, UserData: []byte(ruleTag), Exprs: r})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("antispoof: create nftables table bridge %s: %w", Table, err)
	}
	return nil
}

// rules are the chain's rules: per family, one drop rule for each kind of
// frame whose source is not in that family's set (sets: by name, as added
// in this transaction), and one for every other ethertype.
func rules(sets map[string]*nftables.Set) [][]expr.Any {
	fromPod := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(PortPrefix)},
	}
	etherType := func(op expr.CmpOp, t uint16) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: op, Register: 1, Data: []byte{byte(t >> 8), byte(t)}},
		}
	}
	drop := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
	var out [][]expr.Any
	other := slices.Clone(fromPod)
	for _, f := range families() {
		s := sets[f.set]
		for _, ck := range f.checks {
			r := slices.Concat(fromPod, etherType(expr.CmpOpEq, ck.etherType), []expr.Any{
				// (iifname . ether saddr . source) not in the set:
				// registers 1 (16 bytes), 2 (6 bytes, zero padded) and 14
				// on (4 or 16 bytes) are contiguous.
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Payload{DestRegister: 2, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
				&expr.Payload{DestRegister: 14, Base: expr.PayloadBaseNetworkHeader, Offset: ck.srcOff, Len: uint32(f.addrLen)},
				&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, Invert: true},
			}, drop)
			out = append(out, r)
			other = append(other, etherType(expr.CmpOpNeq, ck.etherType)...)
		}
	}
	// Any other ethertype (VLAN tags, ...).
	return append(out, append(other, drop...))
}

// Conn is one nftables connection for the anti-spoofing changes of one
// CNI call.
//
// Closing an nftables socket is not free after a transaction that deleted
// set elements: on the socket's release (NETLINK_URELEASE) the kernel first
// finishes the deferred destruction of committed transactions, and that
// waits for an RCU grace period (10-15 ms on a busy 2-vCPU node), holding
// nf_tables' commit mutex. DEL therefore revokes through a Conn before it
// deletes the veth, whose unregistration waits for grace periods of its
// own, and closes the Conn last: the two waits overlap instead of adding
// up (measured: the close went from 10-15 ms to < 0.1 ms; see
// docs/performance.md §4).
type Conn struct {
	c *nftables.Conn
}

// Open opens a Conn; Close it when the call's other kernel work is done.
func Open() (*Conn, error) {
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("antispoof: open nftables: %w", err)
	}
	return &Conn{c: c}, nil
}

// Close releases the connection (see Conn for what that may wait for).
func (c *Conn) Close() error {
	if err := c.c.CloseLasting(); err != nil {
		return fmt.Errorf("antispoof: close nftables connection: %w", err)
	}
	return nil
}

// Revoke removes every element of port (CNI DEL). A missing table or
// element is fine.
func (c *Conn) Revoke(port string) error {
	return c.removeWhere(func(p string) bool { return p == port })
}

// Revoke is Conn.Revoke on a connection of its own (ADD's rollback).
func Revoke(port string) error {
	return withConn(func(c *Conn) error { return c.Revoke(port) })
}

// GC removes the elements of ports for which keep returns false (e.g. host
// veths that no longer exist).
func GC(keep func(port string) bool) error {
	return withConn(func(c *Conn) error {
		return c.removeWhere(func(p string) bool { return !keep(p) })
	})
}

func withConn(f func(*Conn) error) error {
	c, err := Open()
	if err != nil {
		return err
	}
	return errors.Join(f(c), c.Close())
}

// removeWhere deletes the matching elements of both sets in one
// transaction: one dump per set (the sets are described locally, as Allow
// does, not looked up) and at most one commit.
func (c *Conn) removeWhere(match func(port string) bool) error {
	var errs []error
	n := 0
	for _, f := range families() {
		s := f.nfSet()
		elems, err := c.c.GetSetElements(s)
		if err != nil {
			if !isNoSuchObject(err) {
				errs = append(errs, fmt.Errorf("antispoof: list set %s: %w", s.Name, err))
			}
			continue
		}
		var del []nftables.SetElement
		for _, e := range elems {
			if match(portOf(e.Key)) {
				del = append(del, nftables.SetElement{Key: e.Key})
			}
		}
		if len(del) == 0 {
			continue
		}
		if err := c.c.SetDeleteElements(s, del); err != nil {
			errs = append(errs, fmt.Errorf("antispoof: %w", err))
			continue
		}
		n += len(del)
	}
	if n > 0 {
		if err := c.c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("antispoof: remove %d elements: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// isNoSuchObject reports a missing table or set; the library flattens the
// kernel's ENOENT into the error text.
func isNoSuchObject(err error) bool {
	return errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file")
}

// Allowed lists the (port, MAC, IP) triples in the set, for tests and
// operators.
func Allowed() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range families() {
		s, err := c.GetSetByName(table, f.set)
		if err != nil {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, err
		}
		for _, e := range elems {
			if len(e.Key) == f.keyLen() {
				out = append(out, fmt.Sprintf("%s %s %s", portOf(e.Key), net.HardwareAddr(e.Key[macOff:macOff+6]), net.IP(e.Key[addrOff:])))
			}
		}
	}
	return out, nil
}

// Remove deletes the table (wgcnid cleanup). Missing is fine.
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables table bridge %s: %w", Table, err)
	}
	return nil
}
