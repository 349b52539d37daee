package mesh

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/wgcni/wgcni/daemon/record"
)

func TestEffectiveKeepalive(t *testing.T) {
	for _, tc := range [][3]int{{0, 0, 0}, {25, 0, 25}, {0, 10, 10}, {25, 10, 10}, {5, 10, 5}} {
		if got := effectiveKeepalive(tc[0], tc[1]); got != tc[2] {
			t.Errorf("effectiveKeepalive(own %d, peer %d) = %d, want %d", tc[0], tc[1], got, tc[2])
		}
	}
}

// A host record is a peer only inside a reserved host range: otherwise a
// host could claim an address inside some node's PodCIDR and, being the
// more specific AllowedIPs and route, steal that pod's traffic.
func TestDecodeHostNeedsReservation(t *testing.T) {
	c, _ := record.NewCluster("10.244.0.0/16", 24)
	r := New(Config{Prefix: "/wgcni", Cluster: c, Log: slog.New(slog.DiscardHandler)})
	r.reset()
	host := []byte(`{"node":"h1","publicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE=","endpoint":"10.99.0.5","port":51820,"keepalive":0,"kind":"host"}`)
	if _, err := r.decode("/wgcni/subnets/10.244.200.7-32", host); err == nil || !strings.Contains(err.Error(), "reserved host range") {
		t.Fatalf("host without reservation: %v", err)
	}
	if _, err := r.decode("/wgcni/subnets/10.244.200.0-24", record.EncodeHostRange()); !errors.Is(err, errHostRange) {
		t.Fatalf("reservation: %v", err)
	}
	l, err := r.decode("/wgcni/subnets/10.244.200.7-32", host)
	if err != nil || l.Primary().String() != "10.244.200.7/32" || l.Kind != record.KindHostPeer {
		t.Fatalf("host inside reservation: %+v %v", l, err)
	}
	if _, err := r.decode("/wgcni/subnets/10.244.201.7-32", host); err == nil {
		t.Fatal("host outside the reserved block accepted")
	}
}
