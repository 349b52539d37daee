// Package record encodes, decodes and validates wgcnid's etcd records: the
// cluster config record and the per-node subnet (PodCIDR lease) records.
//
// Every record read from etcd is untrusted input written by another node, so
// decoding validates everything the mesh relies on and names the key in its
// error. A record that fails validation is skipped by callers, never fatal.
package record

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// MaxValueSize bounds what we are willing to decode: a real record is ~150
// bytes; anything far larger is garbage or an attack on our memory.
const MaxValueSize = 4096

// ConfigKey returns the cluster config record's key under prefix.
func ConfigKey(prefix string) string { return strings.TrimRight(prefix, "/") + "/config" }

// SubnetsPrefix returns the key prefix under which subnet records live,
// with a trailing slash so a prefix watch never matches "subnetsX".
func SubnetsPrefix(prefix string) string { return strings.TrimRight(prefix, "/") + "/subnets/" }

// ClusterConfig is the cluster-wide config record. The first daemon writes
// it; every later daemon must agree with it.
type ClusterConfig struct {
	ClusterCIDR   string `json:"clusterCIDR"`
	NodePrefixLen int    `json:"nodePrefixLen"`
	// SameNodeEncryption turns same-node encryption on for every node
	// (read by daemon/samenode; not part of the equality check).
	SameNodeEncryption bool `json:"sameNodeEncryption,omitempty"`
	// Dual-stack clusters (dual.go): the IPv6 cluster CIDR and node prefix
	// length. Omitted when empty, so a single-family record stays
	// byte-identical to what older daemons write.
	ClusterCIDRv6   string `json:"clusterCIDRv6,omitempty"`
	NodePrefixLenV6 int    `json:"nodePrefixLenV6,omitempty"`
}

// Cluster is a validated ClusterConfig.
type Cluster struct {
	CIDR          netip.Prefix
	NodePrefixLen int
	// CIDR6 and NodePrefixLen6 are set in a dual-stack cluster only; CIDR
	// is then IPv4 and keys the records (dual.go). A single-family cluster
	// of either family uses CIDR alone.
	CIDR6          netip.Prefix
	NodePrefixLen6 int
}

// Record returns the wire form of c.
func (c Cluster) Record() ClusterConfig {
	cc := ClusterConfig{ClusterCIDR: c.CIDR.String(), NodePrefixLen: c.NodePrefixLen}
	if c.Dual() {
		cc.ClusterCIDRv6, cc.NodePrefixLenV6 = c.CIDR6.String(), c.NodePrefixLen6
	}
	return cc
}

// String renders c the way error messages quote it.
func (c Cluster) String() string {
	if c.Dual() {
		return fmt.Sprintf("clusterCIDR=%s nodePrefixLen=%d clusterCIDRv6=%s nodePrefixLenV6=%d", c.CIDR, c.NodePrefixLen, c.CIDR6, c.NodePrefixLen6)
	}
	return fmt.Sprintf("clusterCIDR=%s nodePrefixLen=%d", c.CIDR, c.NodePrefixLen)
}

// NodeCount is how many node CIDRs fit into the cluster CIDR, saturated at
// 1<<30 (callers refuse such grids anyway).
func (c Cluster) NodeCount() int {
	bits := c.NodePrefixLen - c.CIDR.Bits()
	if bits >= 30 {
		return 1 << 30
	}
	return 1 << bits
}

// NewCluster validates a cluster CIDR and node prefix length. field names
// are used in errors so the caller can say which flag or key was wrong.
func NewCluster(cidr string, nodePrefixLen int) (Cluster, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Cluster{}, fmt.Errorf("clusterCIDR %q: %w", cidr, err)
	}
	if p.Masked() != p {
		return Cluster{}, fmt.Errorf("clusterCIDR %q has host bits set (did you mean %s?)", cidr, p.Masked())
	}
	maxBits := p.Addr().BitLen()
	if nodePrefixLen <= p.Bits() || nodePrefixLen > maxBits {
		return Cluster{}, fmt.Errorf("nodePrefixLen %d must be longer than clusterCIDR %s's /%d and at most /%d", nodePrefixLen, p, p.Bits(), maxBits)
	}
	// A node CIDR must hold at least a gateway and one pod besides the
	// network (and for IPv4 the broadcast) address.
	if maxBits-nodePrefixLen < 2 {
		return Cluster{}, fmt.Errorf("nodePrefixLen %d leaves no room for pods (need at most /%d)", nodePrefixLen, maxBits-2)
	}
	// Acquisition enumerates the grid; keep it bounded.
	if nodePrefixLen-p.Bits() > 20 {
		return Cluster{}, fmt.Errorf("nodePrefixLen %d splits clusterCIDR %s into more than 2^20 node CIDRs", nodePrefixLen, p)
	}
	return Cluster{CIDR: p, NodePrefixLen: nodePrefixLen}, nil
}

// EncodeConfig returns the config record's value.
func EncodeConfig(c Cluster) []byte {
	b, _ := json.Marshal(c.Record()) // cannot fail: plain strings and ints
	return b
}

// DecodeConfig decodes and validates the config record stored at key.
func DecodeConfig(key string, value []byte) (Cluster, error) {
	if len(value) > MaxValueSize {
		return Cluster{}, fmt.Errorf("etcd key %s: value of %d bytes exceeds %d", key, len(value), MaxValueSize)
	}
	var cc ClusterConfig
	if err := strictUnmarshal(value, &cc); err != nil {
		return Cluster{}, fmt.Errorf("etcd key %s: decode: %w", key, err)
	}
	c, err := NewCluster(cc.ClusterCIDR, cc.NodePrefixLen)
	if err != nil {
		return Cluster{}, fmt.Errorf("etcd key %s: %w", key, err)
	}
	if cc.ClusterCIDRv6 != "" || cc.NodePrefixLenV6 != 0 {
		if c, err = c.WithV6(cc.ClusterCIDRv6, cc.NodePrefixLenV6); err != nil {
			return Cluster{}, fmt.Errorf("etcd key %s: %w", key, err)
		}
	}
	return c, nil
}

// Subnet is the wire form of a node's lease record: who holds the CIDR named
// by the key, and how to reach it. The CIDR itself is only in the key, so
// key and content can never disagree.
type Subnet struct {
	Node      string `json:"node"`
	PublicKey string `json:"publicKey"`
	Endpoint  string `json:"endpoint"`
	Port      int    `json:"port"`
	Keepalive int    `json:"keepalive"` // seconds; what this node asks peers to use towards it
	// Kind is empty for a node's PodCIDR lease and "host" for a host-only
	// peer's /32 (see hosts.go); omitted for nodes so their records stay
	// byte-identical to what older daemons write.
	Kind string `json:"kind,omitempty"`
	// PodCIDRv6 is the node's IPv6 PodCIDR in a dual-stack cluster, held
	// together with the key's IPv4 CIDR (dual.go); omitted otherwise.
	PodCIDRv6 string `json:"podCIDRv6,omitempty"`
	// HostEncryption says this node tunnels host-to-host traffic to its
	// underlay address (docs/hosts.md); used towards a peer only when both
	// advertise it. Omitted when off; older daemons ignore it.
	HostEncryption bool `json:"hostEncryption,omitempty"`
}

// Lease is a decoded, validated subnet record.
type Lease struct {
	CIDR      netip.Prefix
	Node      string
	PublicKey [32]byte
	Endpoint  netip.AddrPort
	Keepalive int
	Kind      string       // "" (node) or KindHost
	CIDR6     netip.Prefix // dual-stack: the node's IPv6 PodCIDR
	// HostEncryption: the node accepts host-to-host traffic to its
	// underlay address (the endpoint's) through WireGuard.
	HostEncryption bool
}

// Subnet returns the wire form of l.
func (l Lease) Subnet() Subnet {
	return Subnet{
		Node:      l.Node,
		PublicKey: base64.StdEncoding.EncodeToString(l.PublicKey[:]),
		Endpoint:  l.Endpoint.Addr().String(),
		Port:      int(l.Endpoint.Port()),
		Keepalive: l.Keepalive,
		Kind:      l.Kind,
		PodCIDRv6: prefixString(l.CIDR6),

		HostEncryption: l.HostEncryption,
	}
}

// Encode returns the record's value bytes.
func (l Lease) Encode() []byte {
	b, _ := json.Marshal(l.Subnet()) // cannot fail
	return b
}

// SubnetKey returns the etcd key for cidr, e.g. /wgcni/subnets/10.244.3.0-24.
// IPv6 addresses keep their colons; etcd keys are arbitrary bytes.
func SubnetKey(prefix string, cidr netip.Prefix) string {
	return SubnetsPrefix(prefix) + cidr.Addr().String() + "-" + strconv.Itoa(cidr.Bits())
}

// ParseSubnetKey extracts the CIDR from a subnet key and checks that it is a
// node CIDR of cluster: inside it, of the node prefix length, and aligned.
// Such CIDRs form a grid, so two valid keys can never overlap.
func ParseSubnetKey(prefix, key string, cluster Cluster) (netip.Prefix, error) {
	rest, ok := strings.CutPrefix(key, SubnetsPrefix(prefix))
	if !ok {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: not under %s", key, SubnetsPrefix(prefix))
	}
	ip, bits, ok := strings.Cut(rest, "-")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: want <ip>-<prefixlen>", key)
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil || addr.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: bad address %q", key, ip)
	}
	n, err := strconv.Atoi(bits)
	if err != nil || strconv.Itoa(n) != bits {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: bad prefix length %q", key, bits)
	}
	p, err := addr.Prefix(n)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: %w", key, err)
	}
	if p.Addr() != addr {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: %s has host bits set", key, rest)
	}
	if n != cluster.NodePrefixLen {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: prefix length /%d is not the cluster's node prefix length /%d", key, n, cluster.NodePrefixLen)
	}
	if !cluster.CIDR.Contains(addr) {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: %s is outside cluster CIDR %s", key, p, cluster.CIDR)
	}
	return p, nil
}

// DecodeSubnet decodes and validates the subnet record (key, value).
func DecodeSubnet(prefix, key string, value []byte, cluster Cluster) (Lease, error) {
	cidr, err := ParseSubnetKey(prefix, key, cluster)
	if err != nil {
		return Lease{}, err
	}
	if len(value) > MaxValueSize {
		return Lease{}, fmt.Errorf("etcd key %s: value of %d bytes exceeds %d", key, len(value), MaxValueSize)
	}
	var s Subnet
	if err := strictUnmarshal(value, &s); err != nil {
		return Lease{}, fmt.Errorf("etcd key %s: decode: %w", key, err)
	}
	l, err := s.Validate()
	if err != nil {
		return Lease{}, fmt.Errorf("etcd key %s: %w", key, err)
	}
	if err := cluster.checkCIDR6(l.CIDR6, cidr); err != nil {
		return Lease{}, fmt.Errorf("etcd key %s: field podCIDRv6: %w", key, err)
	}
	if cluster.CIDR.Contains(l.Endpoint.Addr()) || cluster.CIDR6.Contains(l.Endpoint.Addr()) {
		// Tunnel packets addressed into the pod network would loop.
		return Lease{}, fmt.Errorf("etcd key %s: field endpoint: %s lies inside cluster CIDR %s", key, l.Endpoint.Addr(), cluster.CIDR)
	}
	// The kind follows from the key: a full-length prefix is a host's
	// address, anything else a node's PodCIDR. A record whose kind
	// disagrees is refused, so a node lease can never pose as a host.
	want := ""
	if cidr.IsSingleIP() {
		want = KindHost
	}
	if l.Kind != want {
		return Lease{}, fmt.Errorf("etcd key %s: field kind: %q does not fit a /%d key (want %q)", key, l.Kind, cidr.Bits(), want)
	}
	l.CIDR = cidr
	return l, nil
}

// Validate checks every field and returns the decoded form (without CIDR).
func (s Subnet) Validate() (Lease, error) {
	if err := ValidNodeName(s.Node); err != nil {
		return Lease{}, fmt.Errorf("field node: %w", err)
	}
	key, err := ParseKey(s.PublicKey)
	if err != nil {
		return Lease{}, fmt.Errorf("field publicKey: %w", err)
	}
	addr, err := netip.ParseAddr(s.Endpoint)
	if err != nil || addr.Zone() != "" || addr.IsUnspecified() || addr.IsMulticast() {
		return Lease{}, fmt.Errorf("field endpoint: %q is not a unicast IP address", s.Endpoint)
	}
	if s.Port < 1 || s.Port > 65535 {
		return Lease{}, fmt.Errorf("field port: %d is out of range 1..65535", s.Port)
	}
	if s.Keepalive < 0 || s.Keepalive > 65535 {
		return Lease{}, fmt.Errorf("field keepalive: %d is out of range 0..65535", s.Keepalive)
	}
	var cidr6 netip.Prefix
	if s.PodCIDRv6 != "" {
		if cidr6, err = netip.ParsePrefix(s.PodCIDRv6); err != nil || !cidr6.Addr().Is6() || cidr6.Addr().Is4In6() || cidr6.Addr().Zone() != "" {
			return Lease{}, fmt.Errorf("field podCIDRv6: %q is not an IPv6 CIDR", s.PodCIDRv6)
		}
	}
	return Lease{
		Node:      s.Node,
		PublicKey: key,
		Endpoint:  netip.AddrPortFrom(addr.Unmap(), uint16(s.Port)),
		Keepalive: s.Keepalive,
		Kind:      s.Kind,
		CIDR6:     cidr6,

		HostEncryption: s.HostEncryption,
	}, nil
}

// ParseKey decodes a base64 WireGuard key and rejects the all-zero key,
// which WireGuard treats as "no key".
func ParseKey(s string) ([32]byte, error) {
	var k [32]byte
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("not base64: %w", err)
	}
	if len(b) != 32 {
		return k, fmt.Errorf("decodes to %d bytes, want 32", len(b))
	}
	copy(k[:], b)
	if k == ([32]byte{}) {
		return k, errors.New("is the all-zero key")
	}
	return k, nil
}

// ValidNodeName accepts DNS-label-ish names (what hostnames and Kubernetes
// node names are), so names are safe in logs and file names.
func ValidNodeName(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > 253 {
		return fmt.Errorf("%d characters, at most 253", len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return fmt.Errorf("%q contains %q; allowed: letters, digits, '-', '.', '_'", s, c)
		}
	}
	return nil
}

// Gateway is the first address of a node CIDR: it lives on the node bridge
// and is the source of the node's own traffic into the tunnel.
func Gateway(cidr netip.Prefix) netip.Addr { return cidr.Masked().Addr().Next() }

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	// Unknown fields are allowed so newer daemons can add fields without
	// older ones skipping their records during a rolling upgrade.
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after JSON object")
	}
	return nil
}
