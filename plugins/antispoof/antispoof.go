// Package antispoof keeps pods from forging their source on the node
// bridge. One nftables table per node (bridge family, "wgcni") holds a
// set of allowed (bridge port index, MAC, IPv4) triples, one of (bridge
// port index, MAC, IPv6) triples, and four fixed rules on the bridge's
// prerouting hook, for frames entering from pod ports (host veths, named
// wgv…):
//
//	IPv4 whose (iif, ether saddr, ip saddr) is not in the set: drop
//	ARP  whose (iif, ether saddr, arp sender ip) is not in the set: drop
//	IPv6 whose (iif, ether saddr, ip6 saddr) is not in the set: drop
//	any other ethertype (VLAN tags, …): drop
//
// so a pod may only send from its own IP and MAC. A pod's neighbour
// solicitation for its gateway carries the pod's own address as source (the
// kernel takes the source of the packet waiting for resolution), so it
// passes; pods need no DAD, RA or MLD (plugins/podnet turns DAD and RA
// off), so frames from link-local or unspecified sources are dropped like
// any other forged source.
//
// Elements are keyed by the host veth's interface index, not its name, and
// that is what lets CNI DEL leave them alone. The kernel hands out
// interface indexes cyclically per network namespace (a 31-bit counter, not
// lowest-free), so once a veth is gone no later port gets its index: a
// leftover element matches no frame at all. It is only memory, and Sweep
// (run by wgcnid on every resync and by CNI GC) removes it. Deleting
// elements is the expensive nftables operation: releasing the socket after
// such a transaction waits for an RCU grace period under nf_tables' commit
// mutex, so concurrent DELs queued on each other (docs/performance.md §4).
// A name key could not be left behind safely: the same attachment re-added
// (podman restarts a container under the same ID) gets the same host veth
// name, and could then send from its old address after IPAM gave that to
// another pod.
//
// A CNI ADD adds one set element per pod IP (one netlink transaction when
// the table exists). Cross-node forgery is stopped by WireGuard itself: a
// receiving node only accepts inner source addresses inside the sending
// peer's AllowedIPs. The drop rules carry counters: `nft list table bridge
// wgcni` shows how many forged frames were dropped.
package antispoof

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
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
	ruleTag = "wgcni-antispoof v3"
)

// Element key layout: nftables pads each concatenated field to 4 bytes.
const (
	indexLen = 4  // interface index, host byte order (as meta iif loads it)
	macOff   = 4  // MAC: 6 bytes + 2 padding
	addrOff  = 12 // the address: 4 or 16 bytes
)

// Registers of the lookup's concatenated key: 32-bit registers from
// NFT_REG32_00 on, one after the other as the key is laid out.
const (
	regIndex = 8  // NFT_REG32_00
	regMAC   = 9  // NFT_REG32_01-02 (the payload load zeroes the padding)
	regAddr  = 11 // NFT_REG32_03 on
)

var table = &nftables.Table{Name: Table, Family: nftables.TableFamilyBridge}

// Port is a pod's host veth: the index the set elements carry, and the
// name errors and listings show.
type Port struct {
	Name  string
	Index int
}

func (p Port) String() string { return fmt.Sprintf("%s (index %d)", p.Name, p.Index) }

// family is what one address family's set of allowed (port, MAC, address)
// triples differs in; the table, chain, port and MAC matching are shared.
type family struct {
	set string // set name
	// nameSet is the set of ruleTag v2, keyed by port name: ensure moves
	// its elements to set when it upgrades a running node.
	nameSet string
	addrLen int // address bytes in the key and in the header
	addr    nftables.SetDatatype
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
		{set: "pod-ports", nameSet: "pods", addrLen: net.IPv4len, addr: nftables.TypeIPAddr,
			// IPv4 source: offset 12. ARP sender protocol address: 8 bytes
			// of header + 6 of sender MAC.
			checks: []check{{unix.ETH_P_IP, 12}, {unix.ETH_P_ARP, 14}}},
		{set: "pod-ports6", nameSet: "pods6", addrLen: net.IPv6len, addr: nftables.TypeIP6Addr,
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
	return &nftables.Set{Table: table, Name: f.set, KeyType: nftables.MustConcatSetType(nftables.TypeIFIndex, nftables.TypeEtherAddr, f.addr), Concatenation: true}
}

// keyLen is the length of this family's element keys.
func (f family) keyLen() int { return addrOff + f.addrLen }

// key encodes one element: interface index, MAC (6 + 2 padding), the
// address (4 or 16).
func key(p Port, mac net.HardwareAddr, ip net.IP) (family, []byte, error) {
	if p.Index <= 0 {
		return family{}, nil, fmt.Errorf("antispoof: port %s: no interface index", p)
	}
	if len(mac) != 6 {
		return family{}, nil, fmt.Errorf("antispoof: port %s: MAC %s is not 6 bytes", p, mac)
	}
	f, addr, ok := familyOf(ip)
	if !ok {
		return family{}, nil, fmt.Errorf("antispoof: port %s: %s is not an IP address", p, ip)
	}
	k := make([]byte, f.keyLen())
	copy(k, binaryutil.NativeEndian.PutUint32(uint32(p.Index)))
	copy(k[macOff:], mac)
	copy(k[addrOff:], addr)
	return f, k, nil
}

func indexOf(k []byte) int {
	if len(k) < indexLen {
		return 0
	}
	return int(binaryutil.NativeEndian.Uint32(k[:indexLen]))
}

// Allow lets the pod behind host port p send from mac and ips. When the
// table is there (every ADD but the node's first) this is one netlink
// transaction; otherwise the table, sets and rules are created (or a node
// of ruleTag v2 upgraded) first.
func Allow(p Port, mac net.HardwareAddr, ips []net.IP) error {
	elems := map[string][]nftables.SetElement{} // by set
	for _, ip := range ips {
		f, k, err := key(p, mac, ip)
		if err != nil {
			return err
		}
		elems[f.set] = append(elems[f.set], nftables.SetElement{Key: k})
	}
	if len(elems) == 0 {
		return fmt.Errorf("antispoof: port %s: no IP address to allow", p)
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
		return fmt.Errorf("antispoof: allow %s %s on %s: %w", ips, mac, p, err)
	}
	if err := ensure(c); err != nil {
		return err
	}
	if err := add(); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("antispoof: allow %s %s on %s: %w", ips, mac, p, err)
	}
	return nil
}

// ensure creates table, sets, chain and rules in one transaction. The chain
// is flushed first, so concurrent first ADDs converge on one copy of the
// rules; the sets are only created if missing, never emptied. A node still
// on the name-keyed sets of ruleTag v2 is upgraded in the same transaction:
// their elements move to the index-keyed sets (ports that no longer exist
// are dropped), the rules switch, and the old sets go, so no pod is ever
// without its element. Two first ADDs may race to delete the old sets: the
// loser's transaction fails as a whole and is tried once more.
func ensure(c *nftables.Conn) error {
	err := ensureOnce(c)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EBUSY) {
		err = ensureOnce(c)
	}
	if err != nil {
		return fmt.Errorf("antispoof: create nftables table bridge %s: %w", Table, err)
	}
	return nil
}

func ensureOnce(c *nftables.Conn) error {
	old, err := nameKeyed(c)
	if err != nil {
		return err
	}
	c.AddTable(table)
	sets := map[string]*nftables.Set{} // as added, with their IDs
	for _, f := range families() {
		s := f.nfSet()
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
		sets[f.set] = s
		if len(old.elems[f.set]) > 0 {
			if err := c.SetAddElements(s, old.elems[f.set]); err != nil {
				return err
			}
		}
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
	for _, s := range old.sets {
		c.DelSet(s)
	}
	return c.Flush()
}

// v2Sets are the name-keyed sets of a node not yet upgraded, with their
// elements re-keyed by the current index of each port (elements of ports
// that are gone are left out).
type v2Sets struct {
	sets  []*nftables.Set
	elems map[string][]nftables.SetElement // by new set name
}

func nameKeyed(c *nftables.Conn) (v2Sets, error) {
	out := v2Sets{elems: map[string][]nftables.SetElement{}}
	for _, f := range families() {
		s, err := c.GetSetByName(table, f.nameSet)
		if err != nil {
			if isNoSuchObject(err) {
				continue
			}
			return out, fmt.Errorf("look up set %s: %w", f.nameSet, err)
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return out, fmt.Errorf("list set %s: %w", f.nameSet, err)
		}
		out.sets = append(out.sets, s)
		const nameLen, oldMACOff, oldAddrOff = 16, 16, 24
		for _, e := range elems {
			if len(e.Key) != oldAddrOff+f.addrLen {
				continue
			}
			name := strings.TrimRight(string(e.Key[:nameLen]), "\x00")
			l, err := netlink.LinkByName(name)
			if err != nil {
				continue // the port is gone: its element goes with the set
			}
			_, k, err := key(Port{Name: name, Index: l.Attrs().Index}, net.HardwareAddr(e.Key[oldMACOff:oldMACOff+6]), net.IP(e.Key[oldAddrOff:]))
			if err != nil {
				continue
			}
			out.elems[f.set] = append(out.elems[f.set], nftables.SetElement{Key: k})
		}
	}
	return out, nil
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
				// (iif . ether saddr . source) not in the set, loaded
				// into contiguous 32-bit registers as the key is laid out.
				&expr.Meta{Key: expr.MetaKeyIIF, Register: regIndex},
				&expr.Payload{DestRegister: regMAC, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
				&expr.Payload{DestRegister: regAddr, Base: expr.PayloadBaseNetworkHeader, Offset: ck.srcOff, Len: uint32(f.addrLen)},
				&expr.Lookup{SourceRegister: regIndex, SetName: s.Name, SetID: s.ID, Invert: true},
			}, drop)
			out = append(out, r)
			other = append(other, etherType(expr.CmpOpNeq, ck.etherType)...)
		}
	}
	// Any other ethertype (VLAN tags, ...).
	return append(out, append(other, drop...))
}

// Revoke removes the elements of the port with this interface index (a
// failed ADD's rollback; DEL leaves them, see the package comment). A
// missing table or element is fine.
func Revoke(index int) error {
	return removeWhere(func(i int) bool { return i == index })
}

// Sweep removes the elements of ports that no longer exist and says how
// many it removed. The sets are read before the links are listed: an
// element read was added after its veth was created, so a port missing
// from the later listing is gone for good, and its index never comes back.
func Sweep() (int, error) {
	var live map[int]bool
	return sweep(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("antispoof: list links: %w", err)
		}
		live = make(map[int]bool, len(links))
		for _, l := range links {
			live[l.Attrs().Index] = true
		}
		return nil
	}, func(i int) bool { return !live[i] })
}

func removeWhere(match func(index int) bool) error {
	_, err := sweep(func() error { return nil }, match)
	return err
}

// sweep deletes the matching elements of both sets in one transaction:
// one dump per set (the sets are described locally, as Allow does, not
// looked up), then afterDump, then at most one commit.
func sweep(afterDump func() error, match func(index int) bool) (int, error) {
	c, err := nftables.New()
	if err != nil {
		return 0, fmt.Errorf("antispoof: open nftables: %w", err)
	}
	var errs []error
	dumped := map[string][]nftables.SetElement{}
	for _, f := range families() {
		elems, err := c.GetSetElements(f.nfSet())
		if err != nil {
			if !isNoSuchObject(err) {
				errs = append(errs, fmt.Errorf("antispoof: list set %s: %w", f.set, err))
			}
			continue
		}
		dumped[f.set] = elems
	}
	if err := afterDump(); err != nil {
		return 0, errors.Join(append(errs, err)...)
	}
	n := 0
	for _, f := range families() {
		var del []nftables.SetElement
		for _, e := range dumped[f.set] {
			if match(indexOf(e.Key)) {
				del = append(del, nftables.SetElement{Key: e.Key})
			}
		}
		if len(del) == 0 {
			continue
		}
		if err := c.SetDeleteElements(f.nfSet(), del); err != nil {
			errs = append(errs, fmt.Errorf("antispoof: %w", err))
			continue
		}
		n += len(del)
	}
	if n > 0 {
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("antispoof: remove %d elements: %w", n, err))
			n = 0
		}
	}
	return n, errors.Join(errs...)
}

// isNoSuchObject reports a missing table or set; the library flattens the
// kernel's ENOENT into the error text.
func isNoSuchObject(err error) bool {
	return errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file")
}

// Allowed lists the (port, MAC, IP) triples in the sets, for tests and
// operators; a port is shown by name, or as #index once it is gone.
func Allowed() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range families() {
		elems, err := c.GetSetElements(f.nfSet())
		if err != nil {
			if isNoSuchObject(err) {
				continue
			}
			return nil, err
		}
		for _, e := range elems {
			if len(e.Key) != f.keyLen() {
				continue
			}
			port := fmt.Sprintf("#%d", indexOf(e.Key))
			if l, err := netlink.LinkByIndex(indexOf(e.Key)); err == nil {
				port = l.Attrs().Name
			}
			out = append(out, fmt.Sprintf("%s %s %s", port, net.HardwareAddr(e.Key[macOff:macOff+6]), net.IP(e.Key[addrOff:])))
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
