package record

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// Guard keys (docs/ipv6.md). A record is keyed by its primary CIDR only
// and carries the node's CIDR of the second grid in a field, so two
// records could name the same one. The node therefore also creates a guard
// key <prefix>/subnets6/<cidr> for it in the same transaction, bound to the
// same etcd lease and created only if absent: no two live nodes can hold
// one. The guards live outside the subnets prefix, so older daemons'
// watches never see them.

// GuardsPrefix is the key prefix of the guard keys.
func GuardsPrefix(prefix string) string { return strings.TrimRight(prefix, "/") + "/subnets6/" }

// GuardKey is the guard key of a node CIDR of the second grid.
func GuardKey(prefix string, cidr netip.Prefix) string { return GuardsPrefix(prefix) + cidrKey(cidr) }

// Guard is the value of a guard key: who holds it, and the primary CIDR
// whose record it belongs to.
type Guard struct {
	Node    string `json:"node"`
	PodCIDR string `json:"podCIDR"`
}

// EncodeGuard returns the guard key's value.
func EncodeGuard(node string, primary netip.Prefix) []byte {
	b, _ := json.Marshal(Guard{Node: node, PodCIDR: primary.String()})
	return b
}

// DecodeGuard decodes a guard value (stored at key, for errors).
func DecodeGuard(key string, value []byte) (Guard, error) {
	var g Guard
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

// ParseGuardKey extracts the node CIDR of the second grid from a guard key.
func ParseGuardKey(prefix, key string, cluster Cluster) (netip.Prefix, error) {
	if len(cluster.Grids) < 2 {
		return netip.Prefix{}, fmt.Errorf("etcd key %s: the cluster has no IPv6 CIDR", key)
	}
	return parseGridKey(GuardsPrefix(prefix), key, cluster.Grids[1])
}
