// Package metrics serves wgcnid's Prometheus metrics and health endpoints
// from a private registry. Per-peer figures are read from the WireGuard
// device (wgctrl) at scrape time by a Collector, so a scrape always shows
// the device as it is and nothing polls it in between.
package metrics

import (
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/heal"
	"github.com/wgcni/wgcni/daemon/mesh"
	"github.com/wgcni/wgcni/daemon/samenode/reconcile"
	"github.com/wgcni/wgcni/ipam/nodeipam"
)

// HandshakeWindow is how old a peer's last handshake may be for the link
// to count as up. WireGuard re-handshakes REKEY_AFTER_TIME (120 s) after
// a session started, retrying every REKEY_TIMEOUT (5 s); a live session
// therefore never has a handshake older than that plus a retry or two.
// Submariner's WireGuard driver marks a connection "error" past the same
// 2m10s.
const HandshakeWindow = 120*time.Second + 10*time.Second

// DeviceReader is the part of wgctrl.Client the collector uses.
type DeviceReader interface {
	Device(name string) (*wgtypes.Device, error)
}

// Sources are what the collector reads at scrape time. Functions may be
// nil until the part they read exists.
type Sources struct {
	Node    string // this node's name
	Device  string // WireGuard device
	Mode    string // kernel or userspace
	WG      DeviceReader
	PodCIDR netip.Prefix
	IPAMDir string // <state-dir>/ipam: one store dir per CNI network
	// LeaseExpiry returns when the node's etcd lease runs out unless
	// renewed (zero: not known yet).
	LeaseExpiry func() time.Time
	// Peers names the node behind each configured public key.
	Peers func() map[wgtypes.Key]mesh.PeerInfo
	Stats *mesh.Stats
	// SameNode counts the same-node reconciler's failures (nil: off).
	SameNode *reconcile.Stats
	// Retakes counts own-record re-creations (lease.Keeper.Retakes).
	Retakes func() int64
	// Rotations counts key rotations done by this daemon.
	Rotations func() int64
	Now       func() time.Time
	// Health is every peer's liveness, repairs and path MTU (heal.go);
	// DeviceMTU the WireGuard device's MTU.
	Health func() []heal.PeerStatus
	// HandshakeStalls counts peers going sessionless (heal.Healer.Stalls).
	HandshakeStalls func() int64
	DeviceMTU       int
	// Paths says how each peer is reached (NAT traversal; nil: off).
	Paths pathSource
}

// Collector reports wgcnid's metrics. Build it with NewCollector.
type Collector struct {
	src       Sources
	reconcile *prometheus.HistogramVec

	mu          sync.Mutex
	established map[wgtypes.Key]time.Time // start of the current "up" run per peer
}

var (
	peerLabels = []string{"peer_node", "peer_cidr", "public_key"}

	descHandshake = prometheus.NewDesc("wgcni_peer_last_handshake_timestamp_seconds",
		"Unix time of the peer's latest WireGuard handshake (0: never).", peerLabels, nil)
	descRx = prometheus.NewDesc("wgcni_peer_receive_bytes_total",
		"Bytes received from the peer through WireGuard.", peerLabels, nil)
	descTx = prometheus.NewDesc("wgcni_peer_transmit_bytes_total",
		"Bytes sent to the peer through WireGuard.", peerLabels, nil)
	descStatus = prometheus.NewDesc("wgcni_peer_connection_status",
		"1 when the last handshake is younger than the rekey window (2m10s), else 0.", peerLabels, nil)
	descEstablished = prometheus.NewDesc("wgcni_peer_connection_established_timestamp_seconds",
		"Unix time since which the peer has been connected (first handshake of the current up period as seen by wgcnid; 0 while down).", peerLabels, nil)
	descEndpoint = prometheus.NewDesc("wgcni_peer_info",
		"Configured WireGuard peers (always 1) with their current UDP endpoint.", append(peerLabels, "endpoint"), nil)
	descPeers = prometheus.NewDesc("wgcni_peers",
		"Peers configured on the WireGuard device.", nil, nil)
	descDeviceUp = prometheus.NewDesc("wgcni_wireguard_device_up",
		"1 when the WireGuard device could be read at this scrape.", []string{"device"}, nil)
	descMode = prometheus.NewDesc("wgcni_wireguard_mode",
		"WireGuard implementation serving the device (value 1 on the active mode).", []string{"device", "mode"}, nil)
	descLease = prometheus.NewDesc("wgcni_lease_info",
		"This node's PodCIDR lease (always 1).", []string{"node", "cidr"}, nil)
	descLeaseExpiry = prometheus.NewDesc("wgcni_lease_expiry_timestamp_seconds",
		"Unix time the node's etcd lease expires unless renewed.", nil, nil)
	descLeaseTTL = prometheus.NewDesc("wgcni_lease_ttl_seconds",
		"Seconds left before the node's etcd lease expires unless renewed.", nil, nil)
	descIPAMUsed = prometheus.NewDesc("wgcni_ipam_addresses_used",
		"Pod addresses allocated on this node.", []string{"network"}, nil)
	descIPAMFree = prometheus.NewDesc("wgcni_ipam_addresses_free",
		"Pod addresses still free in this node's PodCIDR.", []string{"network"}, nil)
	descIPAMUp = prometheus.NewDesc("wgcni_ipam_store_readable",
		"1 when the IPAM store directory could be read at this scrape.", nil, nil)
	descApplied = prometheus.NewDesc("wgcni_reconcile_changes_total",
		"Per-PodCIDR peer/route changes applied to the device and routing table.", nil, nil)
	descApplyErr = prometheus.NewDesc("wgcni_reconcile_errors_total",
		"Reconciles that failed (retried).", nil, nil)
	descResyncs = prometheus.NewDesc("wgcni_etcd_full_syncs_total",
		"Full listings of etcd (start-up, after watch compaction).", nil, nil)
	descWatch = prometheus.NewDesc("wgcni_etcd_watch_restarts_total",
		"Times the etcd watch ended and was restarted.", nil, nil)
	descBad = prometheus.NewDesc("wgcni_bad_records_total",
		"Node records skipped as invalid or conflicting.", nil, nil)
	descRetakes = prometheus.NewDesc("wgcni_lease_retakes_total",
		"Times this node's record had vanished and was taken back.", nil, nil)
	descNoHandshake = prometheus.NewDesc("wgcni_peers_without_handshake",
		"Peers in liveness state no-handshake or stale (no live session): their traffic is dropped (strict mode), check their key and endpoint.", nil, nil)
	descStalls = prometheus.NewDesc("wgcni_peer_handshake_stalls_total",
		"Times a peer went into liveness state no-handshake or stale from another state.", nil, nil)
	descRekeyRetries = prometheus.NewDesc("wgcni_peer_rekey_retries_total",
		"Times a re-created peer entry (a re-keyed peer, a dropped stale session) was re-created again because its first handshake did not come.", nil, nil)
	descRecreations = prometheus.NewDesc("wgcni_device_recreations_total",
		"Times the WireGuard device was lost (its userspace host process died, or the link was deleted) and re-created with its peers and routes.", nil, nil)
	descSameNodeFailures = prometheus.NewDesc("wgcni_samenode_reconcile_errors_total",
		"Same-node reconcile steps that failed (a pod's device, hub peer or route; the hub; the pod device process); each is retried.", nil, nil)
	descSameNodeRetries = prometheus.NewDesc("wgcni_samenode_reconcile_retries_total",
		"Same-node reconcile steps tried again after failing.", nil, nil)
	descSameNodePending = prometheus.NewDesc("wgcni_samenode_reconcile_pending",
		"Same-node reconcile steps failing right now (waiting for their retry).", nil, nil)
	descRotations = prometheus.NewDesc("wgcni_key_rotations_total",
		"WireGuard key rotations done by this daemon since it started.", nil, nil)
)

// NewCollector returns a collector over src.
func NewCollector(src Sources) *Collector {
	if src.Now == nil {
		src.Now = time.Now
	}
	return &Collector{
		src: src,
		reconcile: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wgcni_reconcile_duration_seconds",
			Help:    "Time to apply one reconcile: kind=event (one PodCIDR changed in etcd) or resync (periodic re-diff against the kernel). The _count is the number of reconciles.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"kind"}),
		established: map[wgtypes.Key]time.Time{},
	}
}

// ObserveReconcile records one reconcile (mesh.Config.Observe).
func (c *Collector) ObserveReconcile(kind string, took time.Duration, _ error) {
	c.reconcile.WithLabelValues(kind).Observe(took.Seconds())
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHandshake, descRx, descTx, descStatus, descEstablished, descEndpoint,
		descPeers, descDeviceUp, descMode, descLease, descLeaseExpiry, descLeaseTTL, descIPAMUsed, descIPAMFree,
		descIPAMUp, descApplied, descApplyErr, descResyncs, descWatch, descBad, descRetakes, descNoHandshake, descStalls,
		descRekeyRetries, descRecreations, descRotations, descSameNodeFailures, descSameNodeRetries, descSameNodePending, descPath} {
		ch <- d
	}
	for _, d := range healDescs {
		ch <- d
	}
	c.reconcile.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	now := c.src.Now()
	c.collectPeers(ch, now)
	c.collectLease(ch, now)
	c.collectIPAM(ch)
	c.collectPaths(ch)
	c.collectHealth(ch)
	if s := c.src.Stats; s != nil {
		ch <- prometheus.MustNewConstMetric(descApplied, prometheus.CounterValue, float64(s.Applied.Load()))
		ch <- prometheus.MustNewConstMetric(descApplyErr, prometheus.CounterValue, float64(s.ApplyErrors.Load()))
		ch <- prometheus.MustNewConstMetric(descResyncs, prometheus.CounterValue, float64(s.FullResyncs.Load()))
		ch <- prometheus.MustNewConstMetric(descWatch, prometheus.CounterValue, float64(s.WatchRestarts.Load()))
		ch <- prometheus.MustNewConstMetric(descBad, prometheus.CounterValue, float64(s.BadRecords.Load()))
		ch <- prometheus.MustNewConstMetric(descRekeyRetries, prometheus.CounterValue, float64(s.RekeyRetries.Load()))
		ch <- prometheus.MustNewConstMetric(descRecreations, prometheus.CounterValue, float64(s.DeviceRecreations.Load()))
	}
	if s := c.src.SameNode; s != nil {
		ch <- prometheus.MustNewConstMetric(descSameNodeFailures, prometheus.CounterValue, float64(s.Failures.Load()))
		ch <- prometheus.MustNewConstMetric(descSameNodeRetries, prometheus.CounterValue, float64(s.Retries.Load()))
		ch <- prometheus.MustNewConstMetric(descSameNodePending, prometheus.GaugeValue, float64(s.Pending.Load()))
	}
	if c.src.Rotations != nil {
		ch <- prometheus.MustNewConstMetric(descRotations, prometheus.CounterValue, float64(c.src.Rotations()))
	}
	if c.src.Retakes != nil {
		ch <- prometheus.MustNewConstMetric(descRetakes, prometheus.CounterValue, float64(c.src.Retakes()))
	}
	c.reconcile.Collect(ch)
}

func (c *Collector) collectPeers(ch chan<- prometheus.Metric, now time.Time) {
	if c.src.Mode != "" {
		ch <- prometheus.MustNewConstMetric(descMode, prometheus.GaugeValue, 1, c.src.Device, c.src.Mode)
	}
	if c.src.WG == nil {
		return
	}
	dev, err := c.src.WG.Device(c.src.Device)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descDeviceUp, prometheus.GaugeValue, 0, c.src.Device)
		return
	}
	ch <- prometheus.MustNewConstMetric(descDeviceUp, prometheus.GaugeValue, 1, c.src.Device)
	ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(len(dev.Peers)))
	var names map[wgtypes.Key]mesh.PeerInfo
	if c.src.Peers != nil {
		names = c.src.Peers()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := make(map[wgtypes.Key]bool, len(dev.Peers))
	for _, p := range dev.Peers {
		seen[p.PublicKey] = true
		info := names[p.PublicKey]
		cidr := ""
		if info.CIDR.IsValid() {
			cidr = info.CIDR.String()
		} else if len(p.AllowedIPs) > 0 {
			cidr = p.AllowedIPs[0].String()
		}
		lv := []string{info.Node, cidr, p.PublicKey.String()}
		hs := 0.0
		if !p.LastHandshakeTime.IsZero() {
			hs = float64(p.LastHandshakeTime.UnixNano()) / 1e9
		}
		up := Up(p.LastHandshakeTime, now)
		est := 0.0
		if up {
			since, ok := c.established[p.PublicKey]
			if !ok {
				since = p.LastHandshakeTime
				c.established[p.PublicKey] = since
			}
			est = float64(since.UnixNano()) / 1e9
		} else {
			delete(c.established, p.PublicKey)
		}
		endpoint := ""
		if p.Endpoint != nil {
			endpoint = p.Endpoint.String()
		}
		ch <- prometheus.MustNewConstMetric(descHandshake, prometheus.GaugeValue, hs, lv...)
		ch <- prometheus.MustNewConstMetric(descRx, prometheus.CounterValue, float64(p.ReceiveBytes), lv...)
		ch <- prometheus.MustNewConstMetric(descTx, prometheus.CounterValue, float64(p.TransmitBytes), lv...)
		ch <- prometheus.MustNewConstMetric(descStatus, prometheus.GaugeValue, b2f(up), lv...)
		ch <- prometheus.MustNewConstMetric(descEstablished, prometheus.GaugeValue, est, lv...)
		ch <- prometheus.MustNewConstMetric(descEndpoint, prometheus.GaugeValue, 1, append(lv, endpoint)...)
	}
	for k := range c.established {
		if !seen[k] {
			delete(c.established, k) // peer removed: forget it
		}
	}
}

// Up reports whether a peer whose last handshake was at hs counts as
// connected at now.
func Up(hs, now time.Time) bool {
	return !hs.IsZero() && now.Sub(hs) < HandshakeWindow
}

func (c *Collector) collectLease(ch chan<- prometheus.Metric, now time.Time) {
	if c.src.PodCIDR.IsValid() {
		ch <- prometheus.MustNewConstMetric(descLease, prometheus.GaugeValue, 1, c.src.Node, c.src.PodCIDR.String())
	}
	if c.src.LeaseExpiry == nil {
		return
	}
	exp := c.src.LeaseExpiry()
	if exp.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(descLeaseExpiry, prometheus.GaugeValue, float64(exp.UnixNano())/1e9)
	ch <- prometheus.MustNewConstMetric(descLeaseTTL, prometheus.GaugeValue, max(0, exp.Sub(now).Seconds()))
}

// collectIPAM counts the allocations of every network's store under the
// IPAM dir (one dir per CNI network name) against the PodCIDR's capacity.
func (c *Collector) collectIPAM(ch chan<- prometheus.Metric) {
	if c.src.IPAMDir == "" || !c.src.PodCIDR.IsValid() {
		return
	}
	capacity := Capacity(c.src.PodCIDR)
	entries, err := os.ReadDir(c.src.IPAMDir)
	if err != nil && !os.IsNotExist(err) {
		ch <- prometheus.MustNewConstMetric(descIPAMUp, prometheus.GaugeValue, 0)
		return
	}
	ok := true
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		allocs, err := nodeipam.List(filepath.Join(c.src.IPAMDir, e.Name()))
		if err != nil {
			ok = false
			continue
		}
		ch <- prometheus.MustNewConstMetric(descIPAMUsed, prometheus.GaugeValue, float64(len(allocs)), e.Name())
		ch <- prometheus.MustNewConstMetric(descIPAMFree, prometheus.GaugeValue, float64(max(0, capacity-len(allocs))), e.Name())
	}
	ch <- prometheus.MustNewConstMetric(descIPAMUp, prometheus.GaugeValue, b2f(ok))
}

// Capacity is how many pod addresses a PodCIDR holds: all addresses but
// the network address, the gateway and (IPv4) the broadcast address, as
// nodeipam.RangeSet hands them out.
func Capacity(p netip.Prefix) int {
	bits := p.Addr().BitLen() - p.Bits()
	if bits >= 31 {
		return 1 << 30 // far beyond any node
	}
	n := 1<<bits - 2 // network, gateway
	if p.Addr().Is4() {
		n-- // broadcast
	}
	return max(0, n)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
