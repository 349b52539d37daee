// Package config parses wgcnid's flags and its optional JSON config file
// (keys are the flag names; the command line wins) and validates the result,
// naming the flag in every error.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wgcni/wgcni/daemon/etcdutil"
	"github.com/wgcni/wgcni/daemon/record"
)

// WireGuard modes.
const (
	ModeAuto      = "auto"
	ModeKernel    = "kernel"
	ModeUserspace = "userspace"
)

// Who runs the userspace device (--device-host).
const (
	// HostSpawn: wgcnid starts `wgcnid userspace-device` itself, detached,
	// so that it outlives the daemon (bare metal, systemd).
	HostSpawn = "spawn"
	// HostExternal: something else runs it (a sidecar container, which a
	// wgcnid container restart does not touch); wgcnid only waits for the
	// device, adopts and configures it, also when it comes back after
	// its host restarted.
	HostExternal = "external"
)

// Config is the daemon's validated configuration.
type Config struct {
	EtcdEndpoints   []string
	EtcdPrefix      string
	EtcdCAFile      string
	EtcdCertFile    string
	EtcdKeyFile     string
	EtcdUsername    string
	EtcdPassFile    string // --etcd-password-file; read at start, never logged
	NodeName        string
	ClusterCIDR     string
	NodePrefixLen   int
	NodePrefixLenV6 int    // prefix length of IPv6 node CIDRs (cluster.go)
	EndpointIP      string // empty: auto-detect
	ListenPort      int
	Device          string
	Bridge          string
	StateDir        string
	RunDir          string
	LeaseTTL        time.Duration
	Keepalive       time.Duration
	MTU             int // 0: derive from underlay
	WireGuard       string
	DeviceHost      string // HostSpawn or HostExternal
	ResyncInterval  time.Duration
	LogFormat       string
	LogLevel        string
	MetricsAddr     string // empty: no metrics/health endpoint
	// ProbePort is the UDP port of the liveness and path MTU probe
	// responder on the node's gateway address (0: no active probes).
	ProbePort int
	// CNIConflist is a conflist wgcnid installs into CNIConfDir once the
	// node is ready for pods (empty: it installs none).
	CNIConflist string
	CNIConfDir  string
	// PodCIDRFromNode asks for the Kubernetes Node's spec.podCIDRs as the
	// lease (daemon/agent/kubenode.go).
	PodCIDRFromNode bool
	// SameNodeEncryption turns on WireGuard between pods of this node
	// (also on when the cluster config record in etcd says so).
	SameNodeEncryption bool
	SameNodePort       int    // hub UDP port; 0: ListenPort+1
	HostOnly           bool   // host-only peer: no pods, a /32 out of HostCIDR (docs/hosts.md)
	HostCIDR           string // empty: the cluster's last node-sized block
	// UnderlayEncryption tunnels traffic between this node's and other nodes'
	// underlay addresses when both use it (docs/hosts.md).
	UnderlayEncryption bool
	// Reachable says whether peers can send to this node's published
	// endpoint: yes, no (behind a NAT: it keeps its tunnels open itself
	// and talks to other NATed nodes through relays or punched paths,
	// docs/nat.md) or auto (decided from what reachable peers observe).
	Reachable string
	// PostQuantum: preshared keys from ML-KEM exchanges (postquantum.go).
	PostQuantum PostQuantum
	// Gateways (docs/gateways.md): site CIDRs behind this node it offers
	// to route into the mesh, whether it masquerades cluster traffic
	// towards them, and the TTL of its candidacy in their elections.
	AdvertiseCIDRs    []string
	GatewayMasquerade bool
	GatewayTTL        time.Duration

	// Derived by Validate.
	Cluster   record.Cluster
	Endpoint  netip.Addr // zero when auto-detected later
	Level     slog.Level
	HostRange netip.Prefix   // validated HostCIDR (set when HostOnly)
	Sites     []netip.Prefix // validated AdvertiseCIDRs
}

// FlagSet registers every flag on a new FlagSet bound to c, with defaults.
// The list of flags is the contract in contracts.md.
func FlagSet(name string, c *Config) *flag.FlagSet {
	host, _ := os.Hostname()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Func("etcd-endpoints", "comma-separated etcd client URLs (default http://127.0.0.1:2379)", func(s string) error {
		c.EtcdEndpoints = splitList(s)
		return nil
	})
	c.EtcdEndpoints = []string{"http://127.0.0.1:2379"}
	fs.StringVar(&c.EtcdPrefix, "etcd-prefix", "/wgcni", "etcd key prefix")
	fs.StringVar(&c.EtcdCAFile, "etcd-cafile", "", "etcd CA certificate file")
	fs.StringVar(&c.EtcdCertFile, "etcd-certfile", "", "etcd client certificate file")
	fs.StringVar(&c.EtcdKeyFile, "etcd-keyfile", "", "etcd client key file")
	fs.StringVar(&c.EtcdUsername, "etcd-username", "", "etcd user for password authentication (optional; with client certificates etcd can take the user from the certificate's CommonName)")
	fs.StringVar(&c.EtcdPassFile, "etcd-password-file", "", "file holding the etcd user's password (needs --etcd-username)")
	fs.StringVar(&c.NodeName, "node-name", host, "node name: the identity of this node's lease")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", "10.244.0.0/16", "cluster pod CIDR: one IPv4 or IPv6 CIDR, or an IPv4 and an IPv6 CIDR separated by a comma (dual-stack)")
	fs.IntVar(&c.NodePrefixLen, "node-prefix-len", 24, "prefix length of each node's IPv4 PodCIDR")
	fs.IntVar(&c.NodePrefixLenV6, "node-prefix-len-v6", 64, "prefix length of each node's IPv6 PodCIDR")
	fs.StringVar(&c.EndpointIP, "endpoint-ip", "", "underlay IP peers send WireGuard traffic to (default: address of the default-route interface)")
	fs.IntVar(&c.ListenPort, "listen-port", 51820, "WireGuard UDP listen port")
	fs.StringVar(&c.Device, "device", "wgcni-wg", "WireGuard device name")
	fs.StringVar(&c.Bridge, "bridge", "wgcni0", "pod bridge name")
	fs.StringVar(&c.StateDir, "state-dir", "/var/lib/wgcni", "persistent state (private key, remembered PodCIDR, IPAM)")
	fs.StringVar(&c.RunDir, "run-dir", "/run/wgcni", "runtime dir (node file, userspace device pid files)")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", time.Hour, "etcd lease TTL of this node's PodCIDR record")
	fs.DurationVar(&c.Keepalive, "keepalive", 0, "WireGuard persistent keepalive peers should use towards this node (0 = off)")
	fs.IntVar(&c.MTU, "mtu", 0, "pod and WireGuard MTU (0 = underlay MTU - 60 for IPv4, - 80 for IPv6)")
	fs.StringVar(&c.WireGuard, "wireguard", ModeAuto, "WireGuard implementation: auto, kernel or userspace")
	fs.StringVar(&c.DeviceHost, "device-host", HostSpawn, "who runs the userspace device: spawn (wgcnid starts it, detached) or external (e.g. a sidecar container running `wgcnid userspace-device`; needs --wireguard=userspace)")
	fs.DurationVar(&c.ResyncInterval, "resync-interval", time.Minute, "how often the device and routes are re-checked against the desired state")
	fs.BoolVar(&c.SameNodeEncryption, "same-node-encryption", false, "encrypt pod-to-pod traffic inside this node too (per-pod WireGuard devices and a node hub); also on when the etcd config record has sameNodeEncryption=true")
	fs.IntVar(&c.SameNodePort, "same-node-port", 0, "UDP port of the same-node hub device (0 = listen-port + 1)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "host:port serving Prometheus /metrics, /healthz and /readyz, e.g. 127.0.0.1:9586 (empty = off)")
	fs.IntVar(&c.ProbePort, "probe-port", 51819, "UDP port of the liveness and path MTU probes between nodes, answered on each node's gateway address and sent only through the tunnel (0 = no active probes, no path MTU search)")
	fs.StringVar(&c.CNIConflist, "cni-conflist", "", "conflist file to install into --cni-conf-dir once this node holds its PodCIDR lease and the node file is written: the runtime reports the node's network ready only then (empty = install none)")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "the container runtime's CNI config dir (with --cni-conflist)")
	fs.BoolVar(&c.PodCIDRFromNode, "pod-cidr-from-node", false, "under Kubernetes: ask for this node's spec.podCIDRs (kube-controller-manager --allocate-node-cidrs) as its PodCIDR lease, so pod IPs lie in the CIDR Kubernetes shows (in-cluster API access to get nodes; a CIDR held by another node in etcd is not taken: a warning says so)")
	fs.BoolVar(&c.HostOnly, "host-only", false, "join the mesh as a host-only peer: no pods, one overlay address out of --host-cidr")
	fs.StringVar(&c.HostCIDR, "host-cidr", "", "node-sized block of --cluster-cidr that host-only peers lease their /32 from (default: the last block)")
	pqFlags(fs, &c.PostQuantum)
	fs.BoolVar(&c.UnderlayEncryption, "host-encryption", false, "also encrypt host-to-host traffic between this node's and other nodes' underlay addresses (only towards nodes that use it too; never to etcd endpoints)")
	fs.StringVar(&c.Reachable, "reachable", ReachableYes, "can peers reach this node at its published endpoint: yes, no (behind a NAT: relays and hole punching, docs/nat.md) or auto (no once a reachable peer sees this node's handshakes come from another address; needs --keepalive to be seen at all)")
	fs.Func("advertise-cidrs", "comma-separated site CIDRs behind this node (on its LAN side) it routes into the mesh as a gateway; one gateway per site serves at a time, chosen by an etcd election (docs/gateways.md)", func(s string) error {
		c.AdvertiseCIDRs = splitList(s)
		return nil
	})
	fs.BoolVar(&c.GatewayMasquerade, "gateway-masquerade", false, "masquerade cluster traffic this gateway forwards into its --advertise-cidrs (the site then needs no route back to the cluster CIDR)")
	fs.DurationVar(&c.GatewayTTL, "gateway-ttl", 5*time.Second, "etcd lease TTL of this gateway's candidacy for its sites: a dead gateway's sites move to another within about this time")
	return fs
}

// Values of --reachable.
const (
	ReachableYes  = "yes"
	ReachableNo   = "no"
	ReachableAuto = "auto"
)

// Parse parses args (after the subcommand), applies --config FILE for flags
// not given on the command line, and validates. Errors name the flag.
func Parse(name string, args []string, stderr io.Writer) (*Config, error) {
	return ParseExtra(name, args, stderr, nil)
}

// ParseExtra is Parse for tools that share wgcnid's flags and config file
// (wgcnictl) and add flags of their own: extra registers them.
func ParseExtra(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (*Config, error) {
	c := &Config{}
	fs := FlagSet(name, c)
	if extra != nil {
		extra(fs)
	}
	var file string
	fs.StringVar(&file, "config", "", "JSON config file; keys are flag names, the command line wins")
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if file != "" {
		if err := applyFile(fs, file); err != nil {
			return nil, err
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// applyFile sets every flag named in the JSON file that was not set on the
// command line.
func applyFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("--config %s: not a JSON object: %w", path, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for k, raw := range m {
		f := fs.Lookup(k)
		if f == nil || k == "config" {
			return fmt.Errorf("--config %s: unknown key %q", path, k)
		}
		if set[k] {
			continue
		}
		v, err := rawToFlagString(raw)
		if err != nil {
			return fmt.Errorf("--config %s: key %q: %w", path, k, err)
		}
		if err := fs.Set(k, v); err != nil {
			return fmt.Errorf("--config %s: key %q: %w", path, k, err)
		}
	}
	return nil
}

// rawToFlagString accepts strings, numbers, booleans and (for list flags)
// arrays of strings.
func rawToFlagString(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String(), nil
	}
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return strconv.FormatBool(b), nil
	}
	var l []string
	if json.Unmarshal(raw, &l) == nil {
		return strings.Join(l, ","), nil
	}
	return "", errors.New("want a string, number, boolean or list of strings")
}

// Validate checks every field, naming the flag at fault, and fills the
// derived fields.
func (c *Config) Validate() error {
	if len(c.EtcdEndpoints) == 0 {
		return errors.New("--etcd-endpoints: empty")
	}
	for _, e := range c.EtcdEndpoints {
		if !strings.HasPrefix(e, "http://") && !strings.HasPrefix(e, "https://") && !strings.HasPrefix(e, "unix://") {
			return fmt.Errorf("--etcd-endpoints: %q is not an http://, https:// or unix:// URL", e)
		}
	}
	if !strings.HasPrefix(c.EtcdPrefix, "/") || strings.TrimRight(c.EtcdPrefix, "/") == "" {
		return fmt.Errorf("--etcd-prefix: %q must start with / and not be /", c.EtcdPrefix)
	}
	if (c.EtcdCertFile == "") != (c.EtcdKeyFile == "") {
		return errors.New("--etcd-certfile and --etcd-keyfile must be given together")
	}
	if (c.EtcdUsername == "") != (c.EtcdPassFile == "") {
		return errors.New("--etcd-username and --etcd-password-file must be given together")
	}
	if err := record.ValidNodeName(c.NodeName); err != nil {
		return fmt.Errorf("--node-name: %w", err)
	}
	cl, err := clusterFromFlags(c.ClusterCIDR, map[string]int{"IPv4": c.NodePrefixLen, "IPv6": c.NodePrefixLenV6})
	if err != nil {
		return err
	}
	c.Cluster = cl
	if c.EndpointIP != "" {
		a, err := netip.ParseAddr(c.EndpointIP)
		if err != nil || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
			return fmt.Errorf("--endpoint-ip: %q is not a unicast IP address", c.EndpointIP)
		}
		if cl.Contains(a.Unmap()) {
			return fmt.Errorf("--endpoint-ip: %s lies inside --cluster-cidr %s; the underlay must be outside the pod network", a, c.ClusterCIDR)
		}
		c.Endpoint = a.Unmap()
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		return fmt.Errorf("--listen-port: %d is out of range 1..65535", c.ListenPort)
	}
	if c.SameNodePort == 0 {
		c.SameNodePort = c.ListenPort + 1
	}
	if c.SameNodePort < 1 || c.SameNodePort > 65535 || c.SameNodePort == c.ListenPort {
		return fmt.Errorf("--same-node-port: %d is out of range 1..65535 or equals --listen-port", c.SameNodePort)
	}
	if err := c.validatePQ(); err != nil {
		return err
	}
	if err := validIfName(c.Device); err != nil {
		return fmt.Errorf("--device: %w", err)
	}
	if err := validIfName(c.Bridge); err != nil {
		return fmt.Errorf("--bridge: %w", err)
	}
	if c.Device == c.Bridge {
		return fmt.Errorf("--device and --bridge are both %q", c.Device)
	}
	if c.StateDir == "" {
		return errors.New("--state-dir: empty")
	}
	if c.RunDir == "" {
		return errors.New("--run-dir: empty")
	}
	if c.CNIConflist != "" && c.CNIConfDir == "" {
		return errors.New("--cni-conf-dir: empty (needed by --cni-conflist)")
	}
	if ext := filepath.Ext(c.CNIConflist); c.CNIConflist != "" && ext != ".conflist" {
		return fmt.Errorf("--cni-conflist: %q does not end in .conflist (the runtime would not read it as a list)", c.CNIConflist)
	}
	// etcd's minimum TTL is a few seconds; below that leases churn.
	if c.LeaseTTL < 2*time.Second {
		return fmt.Errorf("--lease-ttl: %s is shorter than 2s", c.LeaseTTL)
	}
	if c.Reachable != ReachableYes && c.Reachable != ReachableNo && c.Reachable != ReachableAuto {
		return fmt.Errorf("--reachable: %q is not yes, no or auto", c.Reachable)
	}
	if c.Keepalive < 0 || c.Keepalive > 65535*time.Second || c.Keepalive%time.Second != 0 {
		return fmt.Errorf("--keepalive: %s must be whole seconds in 0..65535s", c.Keepalive)
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		return fmt.Errorf("--mtu: %d is out of range 1280..65535 (0 = derive from underlay)", c.MTU)
	}
	switch c.WireGuard {
	case ModeAuto, ModeKernel, ModeUserspace:
	default:
		return fmt.Errorf("--wireguard: %q is not auto, kernel or userspace", c.WireGuard)
	}
	switch c.DeviceHost {
	case HostSpawn:
	case HostExternal:
		if c.WireGuard != ModeUserspace {
			return fmt.Errorf("--device-host=external runs a userspace device and needs --wireguard=userspace, not %q", c.WireGuard)
		}
	default:
		return fmt.Errorf("--device-host: %q is not spawn or external", c.DeviceHost)
	}
	if c.ResyncInterval < time.Second {
		return fmt.Errorf("--resync-interval: %s is shorter than 1s", c.ResyncInterval)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format: %q is not text or json", c.LogFormat)
	}
	if err := c.Level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("--log-level: %q is not debug, info, warn or error", c.LogLevel)
	}
	if c.PodCIDRFromNode && c.HostOnly {
		return errors.New("--pod-cidr-from-node: a --host-only peer has no PodCIDR")
	}
	if err := c.validateHosts(); err != nil {
		return err
	}
	if c.ProbePort < 0 || c.ProbePort > 65535 {
		return fmt.Errorf("--probe-port: %d is out of range 0..65535 (0 = off)", c.ProbePort)
	}
	if err := c.validateGateway(); err != nil {
		return err
	}
	if c.MetricsAddr != "" {
		_, port, err := net.SplitHostPort(c.MetricsAddr)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
			return fmt.Errorf("--metrics-addr: %q is not host:port (e.g. 127.0.0.1:9586)", c.MetricsAddr)
		}
	}
	return nil
}

// EtcdOptions returns the etcd client options, reading the password file.
// The password itself never appears in an error.
func (c *Config) EtcdOptions() (etcdutil.ClientOptions, error) {
	o := etcdutil.ClientOptions{Endpoints: c.EtcdEndpoints, CAFile: c.EtcdCAFile, CertFile: c.EtcdCertFile, KeyFile: c.EtcdKeyFile, Username: c.EtcdUsername}
	if c.EtcdPassFile != "" {
		b, err := os.ReadFile(c.EtcdPassFile)
		if err != nil {
			return o, fmt.Errorf("--etcd-password-file: %w", err)
		}
		o.Password = strings.TrimRight(string(b), "\r\n")
		if o.Password == "" {
			return o, fmt.Errorf("--etcd-password-file %s: empty", c.EtcdPassFile)
		}
	}
	return o, nil
}

// NewLogger builds the slog logger the flags ask for.
func (c *Config) NewLogger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.Level, ReplaceAttr: stringers}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// stringers logs values that have a String method (WireGuard keys,
// addresses) as that string in both formats; the JSON handler would
// otherwise print a [32]byte key as an array of numbers.
func stringers(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindAny {
		return a
	}
	switch v := a.Value.Any().(type) {
	case error, json.Marshaler:
		return a
	case fmt.Stringer:
		a.Value = slog.StringValue(v.String())
	}
	return a
}

func validIfName(s string) error {
	if s == "" || len(s) > 15 {
		return fmt.Errorf("%q must be 1..15 characters", s)
	}
	if strings.ContainsAny(s, "/: \t\n") || s == "." || s == ".." {
		return fmt.Errorf("%q is not a valid interface name", s)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
