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

	"github.com/wgcni/wgcni/daemon/pqkeys"
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
	// The second grid of a dual-stack cluster (always IPv6). Omitted when
	// empty, so a single-family record stays byte-identical to what older
	// daemons write.
	ClusterCIDRv6   string `json:"clusterCIDRv6,omitempty"`
	NodePrefixLenV6 int    `json:"nodePrefixLenV6,omitempty"`
}

// Record returns the wire form of c: the primary grid in the original
// fields, a second one in the dual-stack fields.
func (c Cluster) Record() ClusterConfig {
	var cc ClusterConfig
	for i, g := range c.Grids {
		if i == 0 {
			cc.ClusterCIDR, cc.NodePrefixLen = g.CIDR.String(), g.NodePrefixLen
		} else {
			cc.ClusterCIDRv6, cc.NodePrefixLenV6 = g.CIDR.String(), g.NodePrefixLen
		}
	}
	return cc
}

// cluster validates the wire form, naming the wire field at fault.
func (cc ClusterConfig) cluster() (Cluster, error) {
	grids := []Grid{}
	for _, f := range []struct {
		cidr, cidrField string
		n               int
		lenField        string
	}{
		{cc.ClusterCIDR, "clusterCIDR", cc.NodePrefixLen, "nodePrefixLen"},
		{cc.ClusterCIDRv6, "clusterCIDRv6", cc.NodePrefixLenV6, "nodePrefixLenV6"},
	} {
		if len(grids) > 0 && f.cidr == "" && f.n == 0 {
			continue
		}
		p, err := netip.ParsePrefix(f.cidr)
		if err != nil {
			return Cluster{}, fmt.Errorf("%s %q: %w", f.cidrField, f.cidr, err)
		}
		if len(grids) > 0 && (!p.Addr().Is6() || p.Addr().Is4In6()) {
			return Cluster{}, fmt.Errorf("%s %q is not an IPv6 CIDR", f.cidrField, f.cidr)
		}
		g, err := NewGrid(p, f.n)
		if err != nil {
			return Cluster{}, fmt.Errorf("%s/%s: %w", f.cidrField, f.lenField, err)
		}
		grids = append(grids, g)
	}
	c, err := Join(grids...)
	if err != nil {
		return Cluster{}, fmt.Errorf("clusterCIDR/clusterCIDRv6: %w", err)
	}
	return c, nil
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
	c, err := cc.cluster()
	if err != nil {
		return Cluster{}, fmt.Errorf("etcd key %s: %w", key, err)
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
	// peer's /32 (see hostpeer.go); omitted for nodes so their records
	// stay byte-identical to what older daemons write.
	Kind string `json:"kind,omitempty"`
	// PodCIDRv6 is the node's CIDR of the cluster's second (IPv6) grid in
	// a dual-stack cluster, held together with the key's CIDR (guard.go);
	// omitted otherwise.
	PodCIDRv6 string `json:"podCIDRv6,omitempty"`
	// UnderlayEncryption says this node tunnels host-to-host traffic to its
	// underlay address (docs/hosts.md); used towards a peer only when both
	// advertise it. Omitted when off; older daemons ignore it.
	UnderlayEncryption bool `json:"hostEncryption,omitempty"`
	// Unreachable says peers cannot send to the endpoint (the node is
	// behind a NAT, docs/nat.md): they leave the endpoint to WireGuard's
	// roaming and the node keeps its tunnels open. Omitted when reachable.
	Unreachable bool `json:"unreachable,omitempty"`
	// NoRelay: the node may sit behind a NAT it has not detected yet
	// (--reachable=auto), so NATed nodes never relay through it.
	NoRelay bool `json:"noRelay,omitempty"`
	// PQPublicKey is the node's ML-KEM-768 encapsulation key (base64,
	// daemon/pqkeys) when it runs post-quantum key exchanges
	// (docs/post-quantum.md). Omitted when off; older daemons ignore it.
	PQPublicKey string `json:"pqPublicKey,omitempty"`
	// SiteCIDRs are networks behind this node that it offers to route
	// into the mesh as a gateway (docs/gateways.md). Omitted when none.
	SiteCIDRs []string `json:"siteCIDRs,omitempty"`
}

// Lease is a decoded, validated subnet record.
type Lease struct {
	// CIDRs are the node's CIDRs, one per family of the cluster, the
	// key's (primary) first. A host has its address as a full-length
	// prefix; a host range reservation its block.
	CIDRs     []netip.Prefix
	Node      string
	PublicKey [32]byte
	Endpoint  netip.AddrPort
	Keepalive int
	Kind      string // "" (node), KindHostPeer or KindHostRange
	// UnderlayEncryption: the node accepts host-to-host traffic to its
	// underlay address (the endpoint's) through WireGuard.
	UnderlayEncryption bool
	// Unreachable: the endpoint is not reachable from outside (NAT).
	// NoRelay: not to be used as a relay (reachability not declared).
	Unreachable bool
	NoRelay     bool
	// PQPublicKey is the node's ML-KEM-768 encapsulation key as published
	// (encoding checked by pqkeys.CheckPublic); empty: no post-quantum
	// exchanges.
	PQPublicKey string
	// Sites are the site CIDRs the node advertises as a gateway
	// (docs/gateways.md); package gateway decides who serves each.
	Sites []netip.Prefix
}

// Primary is the CIDR that keys the record (invalid if there is none).
func (l Lease) Primary() netip.Prefix {
	if len(l.CIDRs) == 0 {
		return netip.Prefix{}
	}
	return l.CIDRs[0]
}

// Subnet returns the wire form of l; the primary CIDR is the key's.
func (l Lease) Subnet() Subnet {
	s := Subnet{
		Node:      l.Node,
		PublicKey: base64.StdEncoding.EncodeToString(l.PublicKey[:]),
		Endpoint:  l.Endpoint.Addr().String(),
		Port:      int(l.Endpoint.Port()),
		Keepalive: l.Keepalive,
		Kind:      l.Kind,

		UnderlayEncryption: l.UnderlayEncryption,
		Unreachable:        l.Unreachable,
		NoRelay:            l.NoRelay,
		PQPublicKey:        l.PQPublicKey,
	}
	for _, p := range l.Sites {
		s.SiteCIDRs = append(s.SiteCIDRs, p.String())
	}
	if len(l.CIDRs) > 1 {
		s.PodCIDRv6 = l.CIDRs[1].String()
	}
	return s
}

// Encode returns the record's value bytes.
func (l Lease) Encode() []byte {
	b, _ := json.Marshal(l.Subnet()) // cannot fail
	return b
}

// SubnetKey returns the etcd key for cidr, e.g. /wgcni/subnets/10.244.3.0-24.
// IPv6 addresses keep their colons; etcd keys are arbitrary bytes.
func SubnetKey(prefix string, cidr netip.Prefix) string {
	return SubnetsPrefix(prefix) + cidrKey(cidr)
}

func cidrKey(cidr netip.Prefix) string {
	return cidr.Addr().String() + "-" + strconv.Itoa(cidr.Bits())
}

// ParseSubnetKey extracts the CIDR from a subnet key and checks that it is a
// node CIDR of the cluster's primary grid: inside it, of the node prefix
// length, and aligned. Such CIDRs form a grid, so two valid keys can never
// overlap.
func ParseSubnetKey(prefix, key string, cluster Cluster) (netip.Prefix, error) {
	return parseGridKey(SubnetsPrefix(prefix), key, cluster.Primary())
}

// parseGridKey parses <under><ip>-<len> as a node CIDR of g.
func parseGridKey(under, key string, g Grid) (netip.Prefix, error) {
	rest, ok := strings.CutPrefix(key, under)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: not under %s", key, under)
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
	if n != g.NodePrefixLen {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: prefix length /%d is not the cluster's node prefix length /%d", key, n, g.NodePrefixLen)
	}
	if !g.CIDR.Contains(addr) {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: %s is outside cluster CIDR %s", key, p, g.CIDR)
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
	l, err := s.validate(cidr, cluster)
	if err != nil {
		return Lease{}, fmt.Errorf("etcd key %s: %w", key, err)
	}
	return l, nil
}

// validate checks every field of s, the record at the key of primary.
func (s Subnet) validate(primary netip.Prefix, cluster Cluster) (Lease, error) {
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
	if cluster.Contains(addr.Unmap()) {
		// Tunnel packets addressed into the pod network would loop.
		return Lease{}, fmt.Errorf("field endpoint: %s lies inside cluster CIDR %v", addr, cluster.Prefixes())
	}
	if s.Port < 1 || s.Port > 65535 {
		return Lease{}, fmt.Errorf("field port: %d is out of range 1..65535", s.Port)
	}
	if s.Keepalive < 0 || s.Keepalive > 65535 {
		return Lease{}, fmt.Errorf("field keepalive: %d is out of range 0..65535", s.Keepalive)
	}
	// The kind follows from the key: a full-length prefix is a host's
	// address, anything else a node's PodCIDR. A record whose kind
	// disagrees is refused, so a node lease can never pose as a host.
	want := ""
	if primary.IsSingleIP() {
		want = KindHostPeer
	}
	if s.Kind != want {
		return Lease{}, fmt.Errorf("field kind: %q does not fit a /%d key (want %q)", s.Kind, primary.Bits(), want)
	}
	cidrs := []netip.Prefix{primary}
	if s.PodCIDRv6 != "" {
		p, err := cluster.secondary(s.PodCIDRv6, primary)
		if err != nil {
			return Lease{}, fmt.Errorf("field podCIDRv6: %w", err)
		}
		cidrs = append(cidrs, p)
	}
	if s.PQPublicKey != "" {
		// The encoding only: the full key check costs ~10x more and is
		// done where the key is used (daemon/pqpeer).
		if err := pqkeys.CheckPublic(s.PQPublicKey); err != nil {
			return Lease{}, fmt.Errorf("field pqPublicKey: %w", err)
		}
	}
	sites, err := ParseSites(s.SiteCIDRs)
	if err != nil {
		return Lease{}, fmt.Errorf("field siteCIDRs: %w", err)
	}
	return Lease{
		CIDRs:     cidrs,
		Node:      s.Node,
		PublicKey: key,
		Endpoint:  netip.AddrPortFrom(addr.Unmap(), uint16(s.Port)),
		Keepalive: s.Keepalive,
		Kind:      s.Kind,

		UnderlayEncryption: s.UnderlayEncryption,
		Unreachable:        s.Unreachable,
		NoRelay:            s.NoRelay,
		PQPublicKey:        s.PQPublicKey,
		Sites:              sites,
	}, nil
}

// secondary validates a record's CIDR of the second grid. A dual-stack
// cluster accepts a record without one (a node of an older daemon: its
// peers reach it over the primary family only).
func (c Cluster) secondary(s string, primary netip.Prefix) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is6() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv6 CIDR", s)
	}
	if len(c.Grids) < 2 {
		return netip.Prefix{}, fmt.Errorf("%s given but the cluster has no IPv6 CIDR", p)
	}
	if primary.IsSingleIP() {
		return netip.Prefix{}, fmt.Errorf("%s: host records carry no IPv6 CIDR", p)
	}
	g := c.Grids[1]
	switch {
	case p.Masked() != p:
		return netip.Prefix{}, fmt.Errorf("%s has host bits set", p)
	case p.Bits() != g.NodePrefixLen:
		return netip.Prefix{}, fmt.Errorf("%s is not of the cluster's IPv6 node prefix length /%d", p, g.NodePrefixLen)
	case !g.CIDR.Contains(p.Addr()):
		return netip.Prefix{}, fmt.Errorf("%s is outside IPv6 cluster CIDR %s", p, g.CIDR)
	}
	return p, nil
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

// RelayAddr is the last address of a node CIDR that is not a broadcast
// address (IPv4: the one before it): the IPAM never hands it out, and a
// node behind a NAT puts it on its WireGuard device as the address its
// sessions relayed through another node are aimed at (docs/nat.md). Only
// those sessions use it: the device's first address (the network
// address) stays the source of the node's own traffic. Invalid for a CIDR
// of fewer than 8 addresses (none is spared there; such a node is not
// relayed).
func RelayAddr(cidr netip.Prefix) netip.Addr {
	c := cidr.Masked()
	if c.Bits() > c.Addr().BitLen()-3 {
		return netip.Addr{}
	}
	a := c.Addr().As16()
	bits := c.Bits()
	if c.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		a[i/8] |= 1 << (7 - i%8)
	}
	last := netip.AddrFrom16(a)
	if c.Addr().Is4() {
		return last.Unmap().Prev()
	}
	return last
}

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
