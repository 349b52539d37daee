package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
)

// The etcd endpoints' addresses are what host encryption never tunnels:
// literal IPv4/IPv6 in URLs of either scheme, and resolved names.
func TestEtcdAddrs(t *testing.T) {
	got := etcdAddrs(context.Background(), []string{
		"http://10.99.0.1:2379", "https://[fd00::1]:2379", "http://localhost:2379", "not a url\x7f",
	}, slog.New(slog.DiscardHandler))
	for _, want := range []string{"10.99.0.1", "fd00::1", "127.0.0.1"} {
		if !slices.Contains(got, netip.MustParseAddr(want)) {
			t.Errorf("%s missing from %v", want, got)
		}
	}
}
