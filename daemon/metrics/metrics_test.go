package metrics

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/liveness"
	"github.com/wgcni/wgcni/daemon/mesh"
)

type fakeDev struct{ d *wgtypes.Device }

func (f fakeDev) Device(string) (*wgtypes.Device, error) { return f.d, nil }

func TestCollector(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	k1, _ := wgtypes.GeneratePrivateKey()
	k2, _ := wgtypes.GeneratePrivateKey()
	priv, _ := wgtypes.GeneratePrivateKey()
	_, an, _ := net.ParseCIDR("10.244.1.0/24")
	dev := &wgtypes.Device{Name: "wg", PrivateKey: priv, Peers: []wgtypes.Peer{
		{PublicKey: k1.PublicKey(), LastHandshakeTime: now.Add(-30 * time.Second), ReceiveBytes: 100, TransmitBytes: 200,
			Endpoint: &net.UDPAddr{IP: net.IPv4(10, 99, 0, 11), Port: 51820}, AllowedIPs: []net.IPNet{*an}},
		{PublicKey: k2.PublicKey(), LastHandshakeTime: now.Add(-3 * time.Minute)},
	}}
	ipam := t.TempDir()
	os.MkdirAll(filepath.Join(ipam, "wgcni"), 0o700)
	os.WriteFile(filepath.Join(ipam, "wgcni", "10.244.0.2"), []byte("cid\neth0"), 0o600)
	os.WriteFile(filepath.Join(ipam, "wgcni", "lock"), nil, 0o600)
	stats := &mesh.Stats{}
	stats.WatchRestarts.Add(2)
	stats.BadRecords.Add(3)
	c := NewCollector(Sources{
		Node: "n0", Device: "wg", Mode: "userspace", WG: fakeDev{dev}, PodCIDR: netip.MustParsePrefix("10.244.0.0/24"),
		IPAMDir: ipam, LeaseExpiry: func() time.Time { return now.Add(40 * time.Second) }, Stats: stats,
		Peers: func() map[wgtypes.Key]mesh.PeerInfo {
			return map[wgtypes.Key]mesh.PeerInfo{k1.PublicKey(): {Node: "n1", CIDR: netip.MustParsePrefix("10.244.1.0/24")}}
		},
		Now: func() time.Time { return now },
	})
	c.ObserveReconcile("event", 3*time.Millisecond, nil)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	want := `
# HELP wgcni_peer_connection_status 1 when the last handshake is younger than the rekey window (2m10s), else 0.
# TYPE wgcni_peer_connection_status gauge
wgcni_peer_connection_status{peer_cidr="10.244.1.0/24",peer_node="n1",public_key="` + k1.PublicKey().String() + `"} 1
wgcni_peer_connection_status{peer_cidr="",peer_node="",public_key="` + k2.PublicKey().String() + `"} 0
# HELP wgcni_ipam_addresses_free Pod addresses still free in this node's PodCIDR.
# TYPE wgcni_ipam_addresses_free gauge
wgcni_ipam_addresses_free{network="wgcni"} 252
# HELP wgcni_ipam_addresses_used Pod addresses allocated on this node.
# TYPE wgcni_ipam_addresses_used gauge
wgcni_ipam_addresses_used{network="wgcni"} 1
# HELP wgcni_lease_ttl_seconds Seconds left before the node's etcd lease expires unless renewed.
# TYPE wgcni_lease_ttl_seconds gauge
wgcni_lease_ttl_seconds 40
# HELP wgcni_etcd_watch_restarts_total Times the etcd watch ended and was restarted.
# TYPE wgcni_etcd_watch_restarts_total counter
wgcni_etcd_watch_restarts_total 2
# HELP wgcni_bad_records_total Node records skipped as invalid or conflicting.
# TYPE wgcni_bad_records_total counter
wgcni_bad_records_total 3
# HELP wgcni_wireguard_mode WireGuard implementation serving the device (value 1 on the active mode).
# TYPE wgcni_wireguard_mode gauge
wgcni_wireguard_mode{device="wg",mode="userspace"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wgcni_peer_connection_status", "wgcni_ipam_addresses_free",
		"wgcni_ipam_addresses_used", "wgcni_lease_ttl_seconds", "wgcni_etcd_watch_restarts_total", "wgcni_bad_records_total", "wgcni_wireguard_mode"); err != nil {
		t.Fatal(err)
	}
	// Established: set on the first up scrape, kept while up, cleared when down.
	est := func() float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "wgcni_peer_connection_established_timestamp_seconds" {
				for _, m := range mf.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetValue() == "n1" {
							return m.GetGauge().GetValue()
						}
					}
				}
			}
		}
		return -1
	}
	first := float64(now.Add(-30 * time.Second).Unix())
	if got := est(); got != first {
		t.Fatalf("established %v, want %v", got, first)
	}
	dev.Peers[0].LastHandshakeTime = now.Add(-1 * time.Second) // rekeyed
	if got := est(); got != first {
		t.Fatalf("established moved on rekey: %v, want %v", got, first)
	}
	dev.Peers[0].LastHandshakeTime = now.Add(-HandshakeWindow)
	if got := est(); got != 0 {
		t.Fatalf("established while down: %v", got)
	}
	if n := testutil.CollectAndCount(c, "wgcni_reconcile_duration_seconds"); n != 1 {
		t.Fatalf("reconcile histogram series: %d", n)
	}
	// The private key never reaches a metric.
	out, _ := testutil.CollectAndFormat(c, expfmt.TypeTextPlain)
	if strings.Contains(string(out), priv.String()) {
		t.Fatal("private key in metrics output")
	}
}

func TestCapacity(t *testing.T) {
	for p, want := range map[string]int{"10.244.0.0/24": 253, "10.244.0.0/26": 61, "10.0.0.0/30": 1} {
		if got := Capacity(netip.MustParsePrefix(p)); got != want {
			t.Errorf("%s: %d, want %d", p, got, want)
		}
	}
}

// The node-wide handshake figures are derived from the liveness states:
// peers without a live session (no-handshake, stale) and the healer's
// count of peers going so; one-way has a session, pending no verdict yet.
func TestHandshakeFiguresFromStates(t *testing.T) {
	var st []heal.PeerStatus
	for i, s := range []liveness.State{liveness.Up, liveness.NoHandshake, liveness.Stale, liveness.OneWay, liveness.Pending} {
		st = append(st, heal.PeerStatus{Node: fmt.Sprintf("n%d", i), CIDR: fmt.Sprintf("10.244.%d.0/24", i), State: s, Repairs: map[string]int64{}})
	}
	c := NewCollector(Sources{Node: "n0", Device: "wg", Mode: "userspace", WG: fakeDev{&wgtypes.Device{Name: "wg"}},
		Health: func() []heal.PeerStatus { return st }, HandshakeStalls: func() int64 { return 7 },
		Now: func() time.Time { return time.Unix(1_700_000_000, 0) }})
	want := `
# HELP wgcni_peers_without_handshake Peers in liveness state no-handshake or stale (no live session): their traffic is dropped (strict mode), check their key and endpoint.
# TYPE wgcni_peers_without_handshake gauge
wgcni_peers_without_handshake 2
# HELP wgcni_peer_handshake_stalls_total Times a peer went into liveness state no-handshake or stale from another state.
# TYPE wgcni_peer_handshake_stalls_total counter
wgcni_peer_handshake_stalls_total 7
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "wgcni_peers_without_handshake", "wgcni_peer_handshake_stalls_total"); err != nil {
		t.Fatal(err)
	}
}
