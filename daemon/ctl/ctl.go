// Package ctl implements wgcnictl, the operator's view of a wgcni node:
// status (this node's lease, device and peers), nodes (every lease in
// etcd with its time to live) and ipam (this node's pod addresses). It
// reads the node file, the WireGuard device (wgctrl), etcd and the IPAM
// store; it changes nothing, and it never prints a private key: the
// device's key is dropped as soon as wgctrl returns it.
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/buildinfo"
	"github.com/wgcni/wgcni/daemon/config"
	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/metrics"
	"github.com/wgcni/wgcni/daemon/nat"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/daemon/pqpeer"
	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/ipam/nodeipam"
)

const usage = `usage: wgcnictl <status|peers|nodes|ipam|gateways> [-o table|json] [wgcnid flags...]
       wgcnictl help [COMMAND] | version

  status   this node: lease, WireGuard device, mode, MTU, every peer with
           endpoint, handshake age, bytes, status and post-quantum state
  peers    every peer's liveness state (up, pending, no-handshake, stale,
           one-way) with its reason, path MTU and the repairs wgcnid made
  nodes    every PodCIDR lease in etcd with the time its etcd lease has left
  ipam     this node's pod address allocations
  gateways every site CIDR behind gateways, the gateway serving it and
           the candidates behind it (docs/gateways.md)

wgcnictl takes wgcnid's flags and --config file (etcd endpoints and TLS,
--etcd-prefix, --run-dir), so it sees what the daemon sees.
`

// etcdTimeout bounds every etcd call: a status query must answer even
// when etcd is down.
const etcdTimeout = 5 * time.Second

// Main runs wgcnictl with args (without the program name); it returns the
// exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	switch {
	case buildinfo.IsVersionArg(args):
		fmt.Fprintln(stdout, buildinfo.String("wgcnictl"))
		return 0
	case len(args) == 1 && buildinfo.IsHelpArg(args):
		fmt.Fprint(stdout, usage)
		return 0
	case len(args) == 2 && args[0] == "help":
		args = []string{args[1], "--help"}
	case len(args) == 0 || strings.HasPrefix(args[0], "-"):
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	var output string
	cfg, err := config.ParseExtra("wgcnictl "+cmd, args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&output, "o", "table", "output format: table or json")
	})
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "wgcnictl: %v\n", err)
		return 2
	}
	if output != "table" && output != "json" {
		fmt.Fprintf(stderr, "wgcnictl: -o: %q is not table or json\n", output)
		return 2
	}
	ctx := context.Background()
	var v interface{ table(io.Writer) }
	switch cmd {
	case "status":
		v, err = Status(ctx, cfg, time.Now())
	case "peers":
		v, err = Peers(cfg, time.Now())
	case "nodes":
		v, err = Nodes(ctx, cfg)
	case "ipam":
		v, err = IPAM(cfg)
	case "gateways":
		v, err = Gateways(ctx, cfg)
	default:
		fmt.Fprintf(stderr, "wgcnictl: unknown command %q\n%s", cmd, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "wgcnictl %s: %v\n", cmd, err)
		return 1
	}
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			fmt.Fprintf(stderr, "wgcnictl: %v\n", err)
			return 1
		}
		return 0
	}
	v.table(stdout)
	return 0
}

// StatusReport is `wgcnictl status`.
type StatusReport struct {
	Node        string       `json:"node"`
	PodCIDR     string       `json:"podCIDR"`
	Gateway     string       `json:"gateway"`
	ClusterCIDR string       `json:"clusterCIDR"`
	Bridge      string       `json:"bridge"`
	MTU         int          `json:"mtu"`
	Lease       *LeaseStatus `json:"lease"` // nil: etcd not reachable (see LeaseError)
	LeaseError  string       `json:"leaseError,omitempty"`
	Device      DeviceStatus `json:"device"`
	Peers       []PeerStatus `json:"peers"`
}

// LeaseStatus is this node's record in etcd.
type LeaseStatus struct {
	Key        string `json:"key"`
	LeaseID    string `json:"leaseID"`
	TTLSeconds int64  `json:"ttlSeconds"` // left before expiry unless renewed; -1: expired
}

// DeviceStatus is the WireGuard device (never its private key).
type DeviceStatus struct {
	Name       string `json:"name"`
	Mode       string `json:"mode"` // kernel or userspace
	PublicKey  string `json:"publicKey"`
	ListenPort int    `json:"listenPort"`
	Error      string `json:"error,omitempty"`
}

// PeerStatus is one WireGuard peer.
type PeerStatus struct {
	Node             string   `json:"node"` // from etcd; empty if not known
	PublicKey        string   `json:"publicKey"`
	Endpoint         string   `json:"endpoint"`
	AllowedIPs       []string `json:"allowedIPs"`
	LastHandshake    string   `json:"lastHandshake,omitempty"` // RFC 3339; empty: never
	HandshakeAgeSecs *float64 `json:"handshakeAgeSeconds"`     // null: never
	RxBytes          int64    `json:"rxBytes"`
	TxBytes          int64    `json:"txBytes"`
	Keepalive        int      `json:"keepaliveSeconds"`
	Status           string   `json:"status"` // up (handshake within 2m10s) or down
	// Path is how the peer is reached: direct, relayed (Via names the
	// relay) or punched; PathWhy explains it (docs/nat.md).
	Path    string `json:"path"`
	Via     string `json:"via,omitempty"`
	PathWhy string `json:"pathWhy,omitempty"`
	// PostQuantum is the peer's preshared-key state from the daemon's
	// status file (nil: post-quantum off on this node).
	PostQuantum *pqpeer.PeerStatus `json:"postQuantum,omitempty"`
}

// Status gathers `wgcnictl status`. The node file is required (without
// it the daemon holds no lease); etcd and the device are reported as
// errors in the report when unreachable.
func Status(ctx context.Context, cfg *config.Config, now time.Time) (*StatusReport, error) {
	nf, err := nodefile.Read(cfg.RunDir)
	if err != nil {
		return nil, fmt.Errorf("--run-dir %s: %w (is wgcnid running and holding its lease?)", cfg.RunDir, err)
	}
	r := &StatusReport{Node: nf.Name, PodCIDR: nf.PodCIDR, Gateway: nf.Gateway, ClusterCIDR: nf.ClusterCIDR,
		Bridge: nf.Bridge, MTU: nf.MTU, Device: DeviceStatus{Name: nf.Device}, Peers: []PeerStatus{}}
	names := map[wgtypes.Key]string{}
	if recs, cli, err := listRecords(ctx, cfg); err != nil {
		r.LeaseError = err.Error()
	} else {
		defer cli.Close()
		for _, rec := range recs {
			names[rec.lease.PublicKey] = rec.lease.Node
			if rec.lease.Primary().String() == nf.PodCIDR && rec.lease.Node == nf.Name {
				r.Lease = &LeaseStatus{Key: rec.key, LeaseID: fmt.Sprintf("%x", rec.leaseID), TTLSeconds: ttl(ctx, cli, rec.leaseID)}
			}
		}
		if r.Lease == nil {
			r.LeaseError = fmt.Sprintf("no record for %s held by %s in etcd", nf.PodCIDR, nf.Name)
		}
	}
	wg, err := wgctrl.New()
	if err != nil {
		r.Device.Error = err.Error()
		return r, nil
	}
	defer wg.Close()
	dev, err := wg.Device(nf.Device)
	if err != nil {
		r.Device.Error = err.Error()
		return r, nil
	}
	dev.PrivateKey = wgtypes.Key{} // never kept, never printed
	r.Device.Mode = strings.ToLower(dev.Type.String())
	r.Device.PublicKey = dev.PublicKey.String()
	r.Device.ListenPort = dev.ListenPort
	paths := nat.ReadPaths(cfg.RunDir)
	pq := pqStatus(cfg.RunDir)
	for _, p := range dev.Peers {
		ps := PeerStatus{PostQuantum: pq[p.PublicKey.String()], Node: names[p.PublicKey], PublicKey: p.PublicKey.String(), RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes,
			Keepalive: int(p.PersistentKeepaliveInterval / time.Second), Status: "down", AllowedIPs: []string{}}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		for _, a := range p.AllowedIPs {
			ps.AllowedIPs = append(ps.AllowedIPs, a.String())
		}
		if !p.LastHandshakeTime.IsZero() {
			ps.LastHandshake = p.LastHandshakeTime.UTC().Format(time.RFC3339)
			// The handshake may be newer than now (taken before the read).
			age := max(0, now.Sub(p.LastHandshakeTime).Seconds())
			ps.HandshakeAgeSecs = &age
		}
		if metrics.Up(p.LastHandshakeTime, now) {
			ps.Status = "up"
		}
		ps.Path = nat.Direct
		if np, ok := paths[ps.Node]; ok {
			ps.Path, ps.Via, ps.PathWhy = np.Mode, np.Via, np.Why
		}
		r.Peers = append(r.Peers, ps)
	}
	slices.SortFunc(r.Peers, func(a, b PeerStatus) int { return strings.Compare(a.Node+a.PublicKey, b.Node+b.PublicKey) })
	return r, nil
}

func (r *StatusReport) table(w io.Writer) {
	fmt.Fprintf(w, "node:     %s\n", r.Node)
	fmt.Fprintf(w, "podCIDR:  %s (gateway %s, cluster %s, bridge %s)\n", r.PodCIDR, r.Gateway, r.ClusterCIDR, r.Bridge)
	if r.Lease != nil {
		fmt.Fprintf(w, "lease:    %s lease %s, ttl %s\n", r.Lease.Key, r.Lease.LeaseID, fmtTTL(r.Lease.TTLSeconds))
	} else {
		fmt.Fprintf(w, "lease:    unknown (%s)\n", r.LeaseError)
	}
	if r.Device.Error != "" {
		fmt.Fprintf(w, "device:   %s: %s\n", r.Device.Name, r.Device.Error)
	} else {
		fmt.Fprintf(w, "device:   %s (%s), port %d, public key %s\n", r.Device.Name, r.Device.Mode, r.Device.ListenPort, r.Device.PublicKey)
	}
	fmt.Fprintf(w, "mtu:      %d\n", r.MTU)
	fmt.Fprintf(w, "peers:    %d\n\n", len(r.Peers))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tENDPOINT\tALLOWED IPS\tHANDSHAKE\tRX\tTX\tSTATUS\tPATH\tPQ\tPUBLIC KEY")
	for _, p := range r.Peers {
		hs := handshakeAge(p.HandshakeAgeSecs)
		path := p.Path
		if p.Via != "" {
			path += " via " + p.Via
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(p.Node), dash(p.Endpoint), strings.Join(p.AllowedIPs, ","), hs,
			bytes(p.RxBytes), bytes(p.TxBytes), p.Status, path, pqCell(p.PostQuantum, time.Now()), p.PublicKey)
	}
	tw.Flush()
}

// NodesReport is `wgcnictl nodes`.
type NodesReport struct {
	Nodes []NodeLease `json:"nodes"`
}

// NodeLease is one node's record in etcd.
type NodeLease struct {
	Node       string `json:"node"`
	PodCIDR    string `json:"podCIDR"`
	Endpoint   string `json:"endpoint"`
	PublicKey  string `json:"publicKey"`
	Keepalive  int    `json:"keepaliveSeconds"`
	LeaseID    string `json:"leaseID"`
	TTLSeconds int64  `json:"ttlSeconds"` // left before the record expires unless renewed; -1: no live lease
	Alive      bool   `json:"alive"`
	Self       bool   `json:"self"`
}

// Nodes lists every valid lease record with its etcd lease's time to
// live: a node whose daemon stopped renewing counts down to 0 and then
// disappears.
func Nodes(ctx context.Context, cfg *config.Config) (*NodesReport, error) {
	recs, cli, err := listRecords(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	self := cfg.NodeName
	if nf, err := nodefile.Read(cfg.RunDir); err == nil {
		self = nf.Name
	}
	r := &NodesReport{Nodes: []NodeLease{}}
	for _, rec := range recs {
		t := ttl(ctx, cli, rec.leaseID)
		r.Nodes = append(r.Nodes, NodeLease{
			Node: rec.lease.Node, PodCIDR: rec.lease.Primary().String(), Endpoint: rec.lease.Endpoint.String(),
			PublicKey: wgtypes.Key(rec.lease.PublicKey).String(), Keepalive: rec.lease.Keepalive,
			LeaseID: fmt.Sprintf("%x", rec.leaseID), TTLSeconds: t, Alive: t > 0, Self: rec.lease.Node == self,
		})
	}
	slices.SortFunc(r.Nodes, func(a, b NodeLease) int {
		return netip.MustParsePrefix(a.PodCIDR).Addr().Compare(netip.MustParsePrefix(b.PodCIDR).Addr())
	})
	return r, nil
}

func (r *NodesReport) table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPODCIDR\tENDPOINT\tLEASE\tTTL\tALIVE\tPUBLIC KEY")
	for _, n := range r.Nodes {
		name := n.Node
		if n.Self {
			name += " (self)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, n.PodCIDR, n.Endpoint, n.LeaseID, fmtTTL(n.TTLSeconds), yesNo(n.Alive), n.PublicKey)
	}
	tw.Flush()
}

// IPAMReport is `wgcnictl ipam`.
type IPAMReport struct {
	Node        string       `json:"node"`
	PodCIDR     string       `json:"podCIDR"`
	Dir         string       `json:"dir"`
	Used        int          `json:"used"`
	Free        int          `json:"free"`
	Allocations []Allocation `json:"allocations"`
}

// Allocation is one pod address.
type Allocation struct {
	Network     string `json:"network"`
	IP          string `json:"ip"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// IPAM lists this node's allocations from the store under the node
// file's ipamDir (one directory per CNI network).
func IPAM(cfg *config.Config) (*IPAMReport, error) {
	nf, err := nodefile.Read(cfg.RunDir)
	if err != nil {
		return nil, fmt.Errorf("--run-dir %s: %w (is wgcnid running and holding its lease?)", cfg.RunDir, err)
	}
	r := &IPAMReport{Node: nf.Name, PodCIDR: nf.PodCIDR, Dir: nf.IPAMDir, Allocations: []Allocation{}}
	entries, err := os.ReadDir(nf.IPAMDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read IPAM dir: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		allocs, err := nodeipam.List(filepath.Join(nf.IPAMDir, e.Name()))
		if err != nil {
			return nil, err
		}
		for _, a := range allocs {
			r.Allocations = append(r.Allocations, Allocation{Network: e.Name(), IP: a.IP.String(), ContainerID: a.ContainerID, IfName: a.IfName})
		}
	}
	slices.SortFunc(r.Allocations, func(a, b Allocation) int {
		if c := strings.Compare(a.Network, b.Network); c != 0 {
			return c
		}
		return netip.MustParseAddr(a.IP).Compare(netip.MustParseAddr(b.IP))
	})
	r.Used = len(r.Allocations)
	if p, err := netip.ParsePrefix(nf.PodCIDR); err == nil {
		r.Free = max(0, metrics.Capacity(p)-r.Used)
	}
	return r, nil
}

func (r *IPAMReport) table(w io.Writer) {
	fmt.Fprintf(w, "node %s, podCIDR %s: %d used, %d free (%s)\n\n", r.Node, r.PodCIDR, r.Used, r.Free, r.Dir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IP\tCONTAINER ID\tIFNAME\tNETWORK")
	for _, a := range r.Allocations {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.IP, a.ContainerID, dash(a.IfName), a.Network)
	}
	tw.Flush()
}

type etcdRecord struct {
	key     string
	leaseID clientv3.LeaseID
	lease   record.Lease
	created int64 // create revision
}

// listRecords reads every valid subnet record; the caller closes the
// client. Invalid records are skipped, as the daemon skips them.
func listRecords(ctx context.Context, cfg *config.Config) ([]etcdRecord, *clientv3.Client, error) {
	cli, err := etcdutil.NewClient(etcdutil.ClientOptions{Endpoints: cfg.EtcdEndpoints, CAFile: cfg.EtcdCAFile, CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile})
	if err != nil {
		return nil, nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	kvs, _, err := etcdutil.List(lctx, cli, record.SubnetsPrefix(cfg.EtcdPrefix))
	if err != nil {
		cli.Close()
		return nil, nil, fmt.Errorf("list %s in etcd %v: %w", record.SubnetsPrefix(cfg.EtcdPrefix), cfg.EtcdEndpoints, err)
	}
	var out []etcdRecord
	for _, kv := range kvs {
		// Host-only peers (a /32 "cidr") are listed like nodes; host
		// range reservations are not peers.
		l, err := record.DecodePeer(cfg.EtcdPrefix, string(kv.Key), kv.Value, cfg.Cluster)
		if err != nil || l.Kind == record.KindHostRange {
			continue
		}
		out = append(out, etcdRecord{key: string(kv.Key), leaseID: clientv3.LeaseID(kv.Lease), lease: l, created: kv.CreateRevision})
	}
	return out, cli, nil
}

// ttl returns the seconds the lease has left, -1 if it is gone or none.
func ttl(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) int64 {
	if id == 0 {
		return -1
	}
	tctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	resp, err := cli.TimeToLive(tctx, id)
	if err != nil || resp.TTL < 0 {
		return -1
	}
	return resp.TTL
}

func fmtTTL(s int64) string {
	if s < 0 {
		return "expired"
	}
	return (time.Duration(s) * time.Second).String()
}

func bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// handshakeAge prints a handshake age in seconds (nil: never).
func handshakeAge(secs *float64) string {
	if secs == nil {
		return "never"
	}
	return time.Duration(*secs*float64(time.Second)).Round(time.Second).String() + " ago"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
