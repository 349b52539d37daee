package record

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Dual-stack clusters (docs/ipv6.md). The IPv4 CIDR stays the primary: a
// node's record is keyed by its IPv4 PodCIDR exactly as in a single-family
// cluster and carries the IPv6 PodCIDR in the field podCIDRv6. Because two
// records could name the same IPv6 CIDR in their values, the node also
// creates a guard key <prefix>/subnets6/<v6>-<len> in the same transaction,
// bound to the same etcd lease and created only if absent: no two live
// nodes can hold one IPv6 PodCIDR. The guard lives outside the subnets
// prefix, so older daemons' watches never see it.

// Dual reports whether c is a dual-stack cluster.
func (c Cluster) Dual() bool { return c.CIDR6.IsValid() }

// Prefixes returns the cluster CIDRs, primary first.
func (c Cluster) Prefixes() []netip.Prefix {
	if c.Dual() {
		return []netip.Prefix{c.CIDR, c.CIDR6}
	}
	return []netip.Prefix{c.CIDR}
}

// Contains reports whether addr lies in any of the cluster CIDRs.
func (c Cluster) Contains(addr netip.Addr) bool {
	return c.CIDR.Contains(addr) || c.CIDR6.Contains(addr)
}

// V6Grid is the IPv6 half of a dual-stack cluster as a single-family
// cluster, for enumerating and parsing IPv6 node CIDRs.
func (c Cluster) V6Grid() Cluster { return Cluster{CIDR: c.CIDR6, NodePrefixLen: c.NodePrefixLen6} }

// WithV6 returns c (which must be IPv4) with an IPv6 cluster CIDR added.
// Errors name the field: clusterCIDRv6 or nodePrefixLenV6.
func (c Cluster) WithV6(cidr string, nodePrefixLen int) (Cluster, error) {
	if !c.CIDR.Addr().Is4() {
		return Cluster{}, fmt.Errorf("clusterCIDRv6 %q given but clusterCIDR %s is not IPv4; a dual-stack cluster is one IPv4 and one IPv6 CIDR", cidr, c.CIDR)
	}
	v6, err := NewClusterV6(cidr, nodePrefixLen)
	if err != nil {
		return Cluster{}, err
	}
	c.CIDR6, c.NodePrefixLen6 = v6.CIDR, v6.NodePrefixLen
	return c, nil
}

// NewClusterV6 validates an IPv6 cluster CIDR and its node prefix length
// (the IPv6-only cluster, or the IPv6 half of a dual-stack one).
func NewClusterV6(cidr string, nodePrefixLen int) (Cluster, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Cluster{}, fmt.Errorf("clusterCIDRv6 %q: %w", cidr, err)
	}
	if !p.Addr().Is6() || p.Addr().Is4In6() {
		return Cluster{}, fmt.Errorf("clusterCIDRv6 %q is not an IPv6 CIDR", cidr)
	}
	return newGrid(p, nodePrefixLen, "nodePrefixLenV6")
}

// newGrid is NewCluster's check of one family, naming the length field.
func newGrid(p netip.Prefix, nodePrefixLen int, field string) (Cluster, error) {
	if p.Masked() != p {
		return Cluster{}, fmt.Errorf("cluster CIDR %s has host bits set (did you mean %s?)", p, p.Masked())
	}
	maxBits := p.Addr().BitLen()
	if nodePrefixLen <= p.Bits() || nodePrefixLen > maxBits-2 {
		return Cluster{}, fmt.Errorf("%s %d must be longer than cluster CIDR %s's /%d and at most /%d", field, nodePrefixLen, p, p.Bits(), maxBits-2)
	}
	if nodePrefixLen-p.Bits() > 20 {
		return Cluster{}, fmt.Errorf("%s %d splits cluster CIDR %s into 2^%d node CIDRs, more than 2^20 (use a prefix length of at most /%d, or a larger cluster CIDR)",
			field, nodePrefixLen, p, nodePrefixLen-p.Bits(), p.Bits()+20)
	}
	return Cluster{CIDR: p, NodePrefixLen: nodePrefixLen}, nil
}

// checkCIDR6 validates a record's podCIDRv6 against the cluster. A
// dual-stack cluster accepts a record without one (a node of an older
// daemon: its peers reach it over IPv4 only).
func (c Cluster) checkCIDR6(cidr6, primary netip.Prefix) error {
	if !cidr6.IsValid() {
		return nil
	}
	if !c.Dual() {
		return fmt.Errorf("%s given but the cluster has no IPv6 CIDR", cidr6)
	}
	if primary.IsSingleIP() {
		return fmt.Errorf("%s: host records carry no IPv6 CIDR", cidr6)
	}
	if cidr6.Masked() != cidr6 {
		return fmt.Errorf("%s has host bits set", cidr6)
	}
	if cidr6.Bits() != c.NodePrefixLen6 {
		return fmt.Errorf("%s is not of the cluster's IPv6 node prefix length /%d", cidr6, c.NodePrefixLen6)
	}
	if !c.CIDR6.Contains(cidr6.Addr()) {
		return fmt.Errorf("%s is outside IPv6 cluster CIDR %s", cidr6, c.CIDR6)
	}
	return nil
}

// Subnets6Prefix is the key prefix of the IPv6 guard keys.
func Subnets6Prefix(prefix string) string { return strings.TrimRight(prefix, "/") + "/subnets6/" }

// Subnet6Key is the guard key of an IPv6 node CIDR.
func Subnet6Key(prefix string, cidr6 netip.Prefix) string {
	return Subnets6Prefix(prefix) + cidr6.Addr().String() + "-" + strconv.Itoa(cidr6.Bits())
}

// Guard6 is the value of an IPv6 guard key: who holds it, and the IPv4
// PodCIDR whose record it belongs to.
type Guard6 struct {
	Node    string `json:"node"`
	PodCIDR string `json:"podCIDR"`
}

// EncodeGuard6 returns the guard key's value.
func EncodeGuard6(node string, primary netip.Prefix) []byte {
	b, _ := json.Marshal(Guard6{Node: node, PodCIDR: primary.String()})
	return b
}

// DecodeGuard6 decodes a guard value (stored at key, for errors).
func DecodeGuard6(key string, value []byte) (Guard6, error) {
	var g Guard6
	if len(value) > MaxValueSize {
		return g, fmt.Errorf("etcd key %s: value of %d bytes exceeds %d", key, len(value), MaxValueSize)
	}
	if err := strictUnmarshal(value, &g); err != nil {
		return g, fmt.Errorf("etcd key %s: decode: %w", key, err)
	}
	if err := ValidNodeName(g.Node); err != nil {
		return g, fmt.Errorf("etcd key %s: field node: %w", key, err)
	}
	return g, nil
}

// ParseSubnet6Key extracts the IPv6 node CIDR from a guard key.
func ParseSubnet6Key(prefix, key string, cluster Cluster) (netip.Prefix, error) {
	if !cluster.Dual() {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: the cluster has no IPv6 CIDR", key)
	}
	rest, ok := strings.CutPrefix(key, Subnets6Prefix(prefix))
	if !ok {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: not under %s", key, Subnets6Prefix(prefix))
	}
	return ParseSubnetKey(prefix, SubnetsPrefix(prefix)+rest, cluster.V6Grid())
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}
