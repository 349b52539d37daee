// Package masq keeps the node's one masquerade rule: traffic from this
// node's PodCIDR to anything outside the cluster CIDR leaves with the node's
// address. The rule is per node, not per pod, so an ADD only has to confirm
// it is there (one netlink dump) and DEL never touches it.
package masq

import (
	"bytes"
	"errors"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Table and Chain name the nftables objects wgcni owns.
const (
	Table = "wgcni"
	Chain = "postrouting"
)

// tag returns the rule's UserData: it encodes what the rule matches, so a
// rule written for another PodCIDR or cluster CIDR is recognised as stale.
func tag(pod, cluster *net.IPNet) []byte {
	return []byte("wgcni-masq " + pod.String() + " " + cluster.String())
}

func family(n *net.IPNet) (nftables.TableFamily, int, error) {
	if n.IP.To4() != nil {
		return nftables.TableFamilyIPv4, 4, nil
	}
	if n.IP.To16() != nil {
		return nftables.TableFamilyIPv6, 16, nil
	}
	return 0, 0, fmt.Errorf("%s is not an IP network", n)
}

// Ensure makes the rule present in the current network namespace. When it
// is already right this costs one rule dump; otherwise table, chain and
// rule are (re)written in one atomic transaction that flushes the chain
// first, so concurrent ADDs converge on exactly one rule.
func Ensure(pod, cluster *net.IPNet) error {
	fam, alen, err := family(pod)
	if err != nil {
		return fmt.Errorf("masquerade podCIDR: %w", err)
	}
	if cfam, _, err := family(cluster); err != nil || cfam != fam {
		return fmt.Errorf("masquerade: cluster CIDR %s is not the same family as podCIDR %s", cluster, pod)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("masquerade: open nftables: %w", err)
	}
	t := &nftables.Table{Name: Table, Family: fam}
	ch := &nftables.Chain{Name: Chain, Table: t}
	want := tag(pod, cluster)
	if rules, err := c.GetRules(t, ch); err == nil && len(rules) == 1 && bytes.Equal(rules[0].UserData, want) {
		return nil
	}

	c.AddTable(t)
	ch = c.AddChain(&nftables.Chain{
		Name:     Chain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	c.FlushChain(ch)
	c.AddRule(&nftables.Rule{
		Table:    t,
		Chain:    ch,
		UserData: want,
		Exprs:    ruleExprs(pod, cluster, alen),
	})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade %s -> !%s: write nftables table %s: %w", pod, cluster, Table, err)
	}
	return nil
}

// ruleExprs is "<ip> saddr <pod> <ip> daddr != <cluster> masquerade".
func ruleExprs(pod, cluster *net.IPNet, alen int) []expr.Any {
	saddrOff, daddrOff := uint32(12), uint32(16)
	if alen == 16 {
		saddrOff, daddrOff = 8, 24
	}
	ip := func(n *net.IPNet) []byte {
		if alen == 4 {
			return n.IP.To4()
		}
		return n.IP.To16()
	}
	mask := func(n *net.IPNet) []byte {
		m := n.Mask
		if len(m) != alen { // a /x v4 mask in 16-byte form
			m = m[len(m)-alen:]
		}
		return []byte(m)
	}
	match := func(off uint32, n *net.IPNet, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(alen)},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(alen), Mask: mask(n), Xor: make([]byte, alen)},
			&expr.Cmp{Op: op, Register: 1, Data: ip(&net.IPNet{IP: n.IP.Mask(n.Mask), Mask: n.Mask})},
		}
	}
	var ex []expr.Any
	ex = append(ex, match(saddrOff, pod, expr.CmpOpEq)...)
	ex = append(ex, match(daddrOff, cluster, expr.CmpOpNeq)...)
	ex = append(ex, &expr.Masq{})
	return ex
}

// Remove deletes wgcni's nftables table (both families) from the current
// namespace; missing tables are fine. For `wgcnid cleanup`.
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	var errs []error
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		c.DelTable(&nftables.Table{Name: Table, Family: fam})
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete nftables table %s: %w", Table, err))
		}
	}
	return errors.Join(errs...)
}
