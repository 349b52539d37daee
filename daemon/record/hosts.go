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
	KindHost      = "host"
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

// HostCluster is the view of a host range that lease.Acquirer works on:
// "node CIDRs" of full length inside the block, i.e. single addresses.
func HostCluster(block netip.Prefix) Cluster {
	return Cluster{CIDR: block, NodePrefixLen: block.Addr().BitLen()}
}

// DefaultHostRange is the last node-sized block of the cluster CIDR.
func DefaultHostRange(c Cluster) netip.Prefix {
	b := c.CIDR.Addr().As16()
	// Set every bit between the cluster prefix and the node prefix.
	off := 128 - c.CIDR.Addr().BitLen()
	for i := c.CIDR.Bits(); i < c.NodePrefixLen; i++ {
		b[(off+i)/8] |= 1 << (7 - uint(off+i)%8)
	}
	a := netip.AddrFrom16(b)
	if c.CIDR.Addr().Is4() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, c.NodePrefixLen)
}

// ValidHostRange checks that block is one node-sized, aligned block of the
// cluster CIDR (so the strict route covers it and it is on the grid).
func ValidHostRange(c Cluster, block netip.Prefix) error {
	if block.Masked() != block {
		return fmt.Errorf("%s has host bits set (did you mean %s?)", block, block.Masked())
	}
	if block.Bits() != c.NodePrefixLen {
		return fmt.Errorf("%s must be /%d, the node prefix length", block, c.NodePrefixLen)
	}
	if !c.CIDR.Contains(block.Addr()) {
		return fmt.Errorf("%s is outside cluster CIDR %s", block, c.CIDR)
	}
	return nil
}

// GridBlock returns the node-sized block of the cluster grid holding addr.
func GridBlock(c Cluster, addr netip.Addr) netip.Prefix {
	p, _ := addr.Prefix(c.NodePrefixLen)
	return p
}

// ParsePeerKey accepts what a node's mesh may find under the subnets
// prefix: a node CIDR key (ParseSubnetKey), or a full-length key of an
// address inside the cluster CIDR (a host). It does not check reservations.
func ParsePeerKey(prefix, key string, cluster Cluster) (netip.Prefix, error) {
	p, err := ParseSubnetKey(prefix, key, cluster)
	if err == nil {
		return p, nil
	}
	rest, ok := strings.CutPrefix(key, SubnetsPrefix(prefix))
	bits := cluster.CIDR.Addr().BitLen()
	if !ok || !strings.HasSuffix(rest, fmt.Sprintf("-%d", bits)) {
		return netip.Prefix{}, err
	}
	hp, herr := ParseSubnetKey(prefix, key, Cluster{CIDR: cluster.CIDR, NodePrefixLen: bits})
	if herr != nil {
		return netip.Prefix{}, herr
	}
	return hp, nil
}

// DecodePeer decodes any record under the subnets prefix: a node lease, a
// host lease (Kind KindHost, CIDR a single address) or a host range
// reservation (Kind KindHostRange, only CIDR set).
func DecodePeer(prefix, key string, value []byte, cluster Cluster) (Lease, error) {
	cidr, err := ParsePeerKey(prefix, key, cluster)
	if err != nil {
		return Lease{}, err
	}
	if !cidr.IsSingleIP() {
		if len(value) <= MaxValueSize {
			var hr hostRange
			if strictUnmarshal(value, &hr) == nil && hr.Kind == KindHostRange {
				return Lease{CIDR: cidr, Kind: KindHostRange}, nil
			}
		}
		return DecodeSubnet(prefix, key, value, cluster)
	}
	l, err := DecodeSubnet(prefix, key, value, Cluster{CIDR: cluster.CIDR, NodePrefixLen: cidr.Bits()})
	if err != nil {
		return Lease{}, err
	}
	return l, nil
}
