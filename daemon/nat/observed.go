package nat

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/wgcni/wgcni/daemon/record"
)

// Observations are the endpoints reachable nodes see NATed nodes' traffic
// come from: node -> observer -> address and port. In etcd each is one key,
// ObservedKey(node, observer), bound to the observer's own lease, so an
// observation dies with its observer.
type Observations map[string]map[string]netip.AddrPort

// ObservedPrefix is the etcd prefix of every observation.
func ObservedPrefix(prefix string) string {
	return strings.TrimRight(prefix, "/") + "/nat/observed/"
}

// ObservedKey is where observer publishes what it sees of node.
func ObservedKey(prefix, node, observer string) string {
	return ObservedPrefix(prefix) + node + "/" + observer
}

// ParseObserved decodes one observation key and value; observations are
// written by other nodes and validated like records.
func ParseObserved(prefix, key string, value []byte) (node, observer string, ap netip.AddrPort, err error) {
	rest, ok := strings.CutPrefix(key, ObservedPrefix(prefix))
	if !ok {
		return "", "", ap, fmt.Errorf("etcd key %s: not under %s", key, ObservedPrefix(prefix))
	}
	node, observer, ok = strings.Cut(rest, "/")
	if !ok || record.ValidNodeName(node) != nil || record.ValidNodeName(observer) != nil {
		return "", "", ap, fmt.Errorf("etcd key %s: want %s<node>/<observer>", key, ObservedPrefix(prefix))
	}
	if value == nil {
		return node, observer, ap, nil
	}
	ap, err = netip.ParseAddrPort(string(value))
	if err != nil || !ap.Addr().IsGlobalUnicast() && !ap.Addr().IsPrivate() || ap.Port() == 0 {
		return "", "", netip.AddrPort{}, fmt.Errorf("etcd key %s: %q is not a unicast address:port", key, value)
	}
	return node, observer, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Mapping is what the observations say about one node's NAT.
type Mapping struct {
	// Public is its observed endpoint, when every observer agrees.
	Public netip.AddrPort
	// Symmetric: observers saw different ports or addresses, so the NAT
	// maps per destination and another NATed node cannot reach it at
	// any endpoint it could learn.
	Symmetric bool
}

// Known reports whether the node's public endpoint is known.
func (m Mapping) Known() bool { return m.Public.IsValid() }

// Mapping sums up the observations of node by the given observers.
func (o Observations) Mapping(node string, observers map[string]bool) Mapping {
	var m Mapping
	for obs, ap := range o[node] {
		if !observers[obs] {
			continue
		}
		switch {
		case !m.Public.IsValid() && !m.Symmetric:
			m.Public = ap
		case ap != m.Public:
			m.Public, m.Symmetric = netip.AddrPort{}, true
		}
	}
	if m.Symmetric {
		// The address is still the NAT's (ports differ): same-NAT
		// detection needs it.
		for obs, ap := range o[node] {
			if observers[obs] {
				m.Public = netip.AddrPortFrom(ap.Addr(), 0)
				break
			}
		}
	}
	return m
}
