package harness

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Tag prefixes every namespace, device and directory the harness makes, so
// concurrent test suites on one machine never collide and a sweep only ever
// touches our own leftovers.
const Tag = "wge"

// Config describes the cluster to build. Zero values take the defaults.
type Config struct {
	// Repo is the repository root (default: found from the working
	// directory, or $WGCNI_REPO). Binaries are taken from Repo/bin.
	Repo string
	// UnderlayMTU is the MTU of the underlay bridge and node uplinks
	// (default 1500; 9000 for jumbo frames).
	UnderlayMTU int
	// ClusterCIDR and NodePrefixLen are passed to every wgcnid.
	ClusterCIDR   string // default 10.244.0.0/16; "v4,v6" for dual-stack, or one IPv6 CIDR
	NodePrefixLen int    // default 24
	// NodePrefixLenV6 is --node-prefix-len-v6 (0: the daemon's default).
	NodePrefixLenV6 int
	// UnderlayIPv6 builds an IPv6-only underlay (ULA fd99:<run>::/64):
	// nodes' eth0, their default routes and etcd are IPv6 (dual.go).
	UnderlayIPv6 bool
	// LeaseTTL is each daemon's etcd lease TTL (default 6s: short so
	// tests can watch a stopped node's lease expire).
	LeaseTTL time.Duration
	// ListenPort is every node's WireGuard port (default 51820).
	ListenPort int
	// WireGuard is the daemon's --wireguard mode (default userspace: this
	// machine has no kernel module).
	WireGuard string
	// Keepalive is the daemon's --keepalive (default 0: off).
	Keepalive time.Duration
	// ResyncInterval is the daemon's --resync-interval (default 30s).
	ResyncInterval time.Duration
	// DaemonArgs are extra wgcnid flags for every node.
	DaemonArgs []string
	// EtcdTLS runs etcd with TLS, client-certificate auth and etcd auth
	// on; daemons get a certificate whose user holds only the wgcni role
	// (Etcd.TLS has the files).
	EtcdTLS bool
	// EtcdPort is the client port inside the underlay namespace (2379).
	EtcdPort int
	// Logf receives progress lines (default: discarded).
	Logf func(format string, args ...any)
	// KeepDir keeps the run directory (logs, state) after Close; so does
	// WGCNI_KEEP_DIR=1 in the environment, for a failure to be studied.
	KeepDir bool
	// Tag prefixes the run's namespaces, devices and temp dir (default
	// Tag, "wge"); suites running side by side use their own.
	Tag string
}

func (c *Config) setDefaults() error {
	if os.Getenv("WGCNI_KEEP_DIR") == "1" {
		c.KeepDir = true
	}
	if c.Repo == "" {
		c.Repo = os.Getenv("WGCNI_REPO")
	}
	if c.Repo == "" {
		r, err := FindRepo()
		if err != nil {
			return err
		}
		c.Repo = r
	}
	if c.UnderlayMTU == 0 {
		c.UnderlayMTU = 1500
	}
	if c.ClusterCIDR == "" {
		c.ClusterCIDR = "10.244.0.0/16"
	}
	if c.NodePrefixLen == 0 {
		c.NodePrefixLen = 24
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 6 * time.Second
	}
	if c.ListenPort == 0 {
		c.ListenPort = 51820
	}
	if c.WireGuard == "" {
		c.WireGuard = "userspace"
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = 30 * time.Second
	}
	if c.EtcdPort == 0 {
		c.EtcdPort = 2379
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if c.Tag == "" {
		c.Tag = Tag
	}
	return nil
}

// FindRepo walks up from the working directory to the wgcni module root.
func FindRepo() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/wgcni/wgcni") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("harness: wgcni repository root (go.mod) not found above the working directory; set WGCNI_REPO")
		}
		dir = parent
	}
}

// Cluster is one namespace cluster: underlay, etcd, nodes and their pods.
type Cluster struct {
	Cfg   Config
	RunID string
	// Dir holds every file of the run: etcd data, node state and run
	// dirs, conflists, logs.
	Dir      string
	Underlay *Underlay
	Etcd     *Etcd

	mu       sync.Mutex
	nodes    []*Node
	nextNode int
	cleanups []func()
	closed   bool
}

// New builds the underlay and starts etcd. It adds no nodes: call AddNode.
// On error everything already made is removed.
func New(cfg Config) (_ *Cluster, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("harness: must run as root (network namespaces)")
	}
	for _, s := range strings.Split(cfg.ClusterCIDR, ",") {
		if _, err := netip.ParsePrefix(strings.TrimSpace(s)); err != nil {
			return nil, fmt.Errorf("harness: ClusterCIDR: %w", err)
		}
	}
	SweepTag(cfg.Tag, cfg.Logf)
	id := make([]byte, 2)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	c := &Cluster{Cfg: cfg, RunID: hex.EncodeToString(id)}
	c.Dir = filepath.Join(os.TempDir(), cfg.Tag+"-"+c.RunID)
	if err := os.Mkdir(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("harness: run dir: %w", err)
	}
	// The owner file lets a later Sweep tell a crashed run from a live one.
	if err := os.WriteFile(filepath.Join(c.Dir, ownerFile), []byte(fmt.Sprint(os.Getpid())), 0o600); err != nil {
		os.RemoveAll(c.Dir)
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	cfg.Logf("harness: run %s in %s", c.RunID, c.Dir)
	if c.Underlay, err = c.newUnderlay(id[0]); err != nil {
		return nil, err
	}
	if c.Etcd, err = c.startEtcd(); err != nil {
		return nil, err
	}
	return c, nil
}

// name makes a namespace or device name carrying our tag and run id.
func (c *Cluster) name(suffix string) string { return c.Cfg.Tag + "-" + c.RunID + "-" + suffix }

// onClose registers cleanup work; Close runs it in reverse order.
func (c *Cluster) onClose(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cleanups = append(c.cleanups, f)
}

// Nodes returns the nodes added so far (including stopped ones).
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Close stops every process, removes every pod, node and the underlay
// namespace, and the run directory. It is idempotent.
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	nodes := append([]*Node(nil), c.nodes...)
	cleanups := c.cleanups
	c.mu.Unlock()
	for i := len(nodes) - 1; i >= 0; i-- {
		nodes[i].remove(true)
	}
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	if !c.Cfg.KeepDir {
		_ = os.RemoveAll(c.Dir)
	}
	c.Cfg.Logf("harness: run %s cleaned up", c.RunID)
}

// DumpLogs returns the last lines of every process log of the run, for a
// failing test's output.
func (c *Cluster) DumpLogs(lines int) string {
	var b strings.Builder
	more, _ := filepath.Glob(filepath.Join(c.Dir, "*.log"))
	logs, _ := filepath.Glob(filepath.Join(c.Dir, "*", "*.log"))
	// The userspace WireGuard devices' logs (handshake events at debug
	// level) explain a stalled handshake; the daemons' logs alone do not.
	devs, _ := filepath.Glob(filepath.Join(c.Dir, "*", "run", "*.log"))
	for _, p := range append(append(more, logs...), devs...) {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(ls) > lines {
			ls = ls[len(ls)-lines:]
		}
		fmt.Fprintf(&b, "----- %s (last %d lines)\n%s\n", p, len(ls), strings.Join(ls, "\n"))
	}
	return b.String()
}
