package record

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// Host-only peers (docs/hosts.md). They live in the subnets key space, so
// every node's existing watch sees them:
//
//   - A host range is one node-sized block of the cluster CIDR, reserved by
//     a record at that block's ordinary subnet key whose value is
//     {"kind":"hosts"}. It has no etcd lease (it outlives its hosts), and
//     because it sits on the PodCIDR grid no node can ever lease the block.
//   - A host's lease is a /32 (/128) key inside a reserved block, e.g.
//     <prefix>/subnets/10.244.255.7-32, value like a node's plus
//     "kind":"host", bound to the host's etcd lease.
//
// Nodes accept a host record only inside a reserved block, so a host can
// never claim an address inside some node's PodCIDR.
const (
	KindHostPeer  = "host"
	KindHostRange = "hosts"
)

// hostRange is the wire form of a host range reservation.
type hostRange struct {
	Kind string `json:"kind"`
}

// EncodeHostRange returns the value of a host range reservation record.
func EncodeHostRange() []byte {
	b, _ := json.Marshal(hostRange{Kind: KindHostRange})
	return b
}

// HostPeerGrid is the view of a host range that lease.Acquirer works on:
// "node CIDRs" of full length inside the block, i.e. single addresses.
func HostPeerGrid(block netip.Prefix) Cluster {
	return Cluster{Grids: []Grid{{CIDR: block, NodePrefixLen: block.Addr().BitLen()}}}
}

// hostView is c with its primary grid cut into single addresses: the grid
// host records are keyed on.
func hostView(c Cluster) Cluster {
	grids := append([]Grid(nil), c.Grids...)
	grids[0].NodePrefixLen = grids[0].CIDR.Addr().BitLen()
	return Cluster{Grids: grids}
}

// DefaultHostRange is the last node-sized block of the primary grid.
func DefaultHostRange(c Cluster) netip.Prefix {
	g := c.Primary()
	b := g.CIDR.Addr().As16()
	// Set every bit between the cluster prefix and the node prefix.
	off := 128 - g.CIDR.Addr().BitLen()
	for i := g.CIDR.Bits(); i < g.NodePrefixLen; i++ {
		b[(off+i)/8] |= 1 << (7 - uint(off+i)%8)
	}
	a := netip.AddrFrom16(b)
	if g.CIDR.Addr().Is4() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, g.NodePrefixLen)
}

// ValidHostRange checks that block is one node-sized, aligned block of the
// primary grid (so the strict route covers it and it is on the grid).
func ValidHostRange(c Cluster, block netip.Prefix) error {
	g := c.Primary()
	if block.Masked() != block {
		return fmt.Errorf("%s has host bits set (did you mean %s?)", block, block.Masked())
	}
	if block.Bits() != g.NodePrefixLen {
		return fmt.Errorf("%s must be /%d, the node prefix length", block, g.NodePrefixLen)
	}
	if !g.CIDR.Contains(block.Addr()) {
		return fmt.Errorf("%s is outside cluster CIDR %s", block, g.CIDR)
	}
	return nil
}

// GridBlock returns the node-sized block of the primary grid holding addr.
func GridBlock(c Cluster, addr netip.Addr) netip.Prefix {
	p, _ := addr.Prefix(c.Primary().NodePrefixLen)
	return p
}

// ParsePeerKey accepts what a node's mesh may find under the subnets
// prefix: a node CIDR key (ParseSubnetKey), or a full-length key of an
// address inside the primary cluster CIDR (a host). It does not check
// reservations.
func ParsePeerKey(prefix, key string, cluster Cluster) (netip.Prefix, error) {
	p, err := ParseSubnetKey(prefix, key, cluster)
	if err == nil {
		return p, nil
	}
	rest, ok := strings.CutPrefix(key, SubnetsPrefix(prefix))
	if !ok || !strings.HasSuffix(rest, fmt.Sprintf("-%d", cluster.Primary().CIDR.Addr().BitLen())) {
		return netip.Prefix{}, err
	}
	return ParseSubnetKey(prefix, key, hostView(cluster))
}

// DecodePeer decodes any record under the subnets prefix: a node lease, a
// host lease (Kind KindHostPeer, CIDRs one single address) or a host range
// reservation (Kind KindHostRange, only CIDRs set).
func DecodePeer(prefix, key string, value []byte, cluster Cluster) (Lease, error) {
	cidr, err := ParsePeerKey(prefix, key, cluster)
	if err != nil {
		return Lease{}, err
	}
	if cidr.IsSingleIP() {
		return DecodeSubnet(prefix, key, value, hostView(cluster))
	}
	if len(value) <= MaxValueSize {
		var hr hostRange
		if strictUnmarshal(value, &hr) == nil && hr.Kind == KindHostRange {
			return Lease{CIDRs: []netip.Prefix{cidr}, Kind: KindHostRange}, nil
		}
	}
	return DecodeSubnet(prefix, key, value, cluster)
}
