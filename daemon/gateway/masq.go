package gateway

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// MasqTable is the nftables table of --gateway-masquerade, one per family
// (the pod nodes' own masquerade table, plugins/masq, is "wgcni").
const MasqTable = "wgcni-gateway"

// masqRule is one "saddr <cluster> daddr <site> masquerade".
type masqRule struct{ from, to netip.Prefix }

func (r masqRule) tag() []byte {
	return []byte("wgcni-gw-masq " + r.from.String() + " " + r.to.String())
}

// masqRules pairs every cluster CIDR with every site of its family.
func masqRules(cluster, sites []netip.Prefix) map[nftables.TableFamily][]masqRule {
	out := map[nftables.TableFamily][]masqRule{}
	for _, c := range cluster {
		for _, s := range sites {
			if c.Addr().Is4() != s.Addr().Is4() {
				continue
			}
			fam := nftables.TableFamilyIPv4
			if s.Addr().Is6() {
				fam = nftables.TableFamilyIPv6
			}
			out[fam] = append(out[fam], masqRule{c, s})
		}
	}
	return out
}

// EnsureMasquerade makes the gateway masquerade what it forwards from the
// cluster into its sites, so a site host answers the gateway's own
// address and needs no route to the cluster CIDR. Each family's table is
// rewritten in one transaction (flush and fill), only when it differs.
func EnsureMasquerade(cluster, sites []netip.Prefix) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("gateway masquerade: open nftables: %w", err)
	}
	for fam, rules := range masqRules(cluster, sites) {
		t := &nftables.Table{Name: MasqTable, Family: fam}
		ch := &nftables.Chain{Name: "postrouting", Table: t}
		if have, err := c.GetRules(t, ch); err == nil && sameRules(have, rules) {
			continue
		}
		c.AddTable(t)
		ch = c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
		c.FlushChain(ch)
		for _, r := range rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, UserData: r.tag(), Exprs: r.exprs()})
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("gateway masquerade %v: write nftables table %s: %w", rules, MasqTable, err)
		}
	}
	return nil
}

func sameRules(have []*nftables.Rule, want []masqRule) bool {
	if len(have) != len(want) {
		return false
	}
	for i, r := range want {
		if !bytes.Equal(have[i].UserData, r.tag()) {
			return false
		}
	}
	return true
}

// RemoveMasquerade deletes the tables of both families; missing is fine.
func RemoveMasquerade() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("gateway masquerade: open nftables: %w", err)
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		c.DelTable(&nftables.Table{Name: MasqTable, Family: fam})
		if err := c.Flush(); err != nil && !strings.Contains(err.Error(), "no such file") {
			return fmt.Errorf("delete nftables table %s: %w", MasqTable, err)
		}
	}
	return nil
}

// exprs: ip saddr & mask == from, ip daddr & mask == to, masquerade.
func (r masqRule) exprs() []expr.Any {
	alen := uint32(r.from.Addr().BitLen() / 8)
	saddr, daddr := uint32(12), uint32(16)
	if alen == 16 {
		saddr, daddr = 8, 24
	}
	match := func(off uint32, p netip.Prefix) []expr.Any {
		mask := make([]byte, alen)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 1 << (7 - uint(i%8))
		}
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: alen},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: alen, Mask: mask, Xor: make([]byte, alen)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
		}
	}
	ex := append(match(saddr, r.from), match(daddr, r.to)...)
	return append(ex, &expr.Masq{})
}
