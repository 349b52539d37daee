package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/wgcni/wgcni/daemon/nodefile"
)

// Node is one node namespace: its eth0 on the underlay, a wgcnid, its own
// state and run directories, and a conflist pointing the plugins at its
// run directory.
type Node struct {
	NS
	Name       string // wgcnid --node-name, e.g. n1
	Index      int
	UnderlayIP netip.Addr
	Device     string // WireGuard device, unique on the machine (shared UAPI socket dir)
	Dir        string
	StateDir   string
	RunDir     string
	ConfDir    string // NETCONFPATH for cnitool
	LogPath    string
	// ExtraArgs are appended to this node's wgcnid flags (after the
	// cluster's DaemonArgs, so they win).
	ExtraArgs []string
	// Wrapper is put before the wgcnid command line inside the namespace
	// (e.g. setpriv to drop capabilities).
	Wrapper []string

	c       *Cluster
	mu      sync.Mutex
	proc    *Process
	pods    []*Pod
	nextPod int
	gone    bool
}

// AddNode creates a node namespace attached to the underlay, starts its
// wgcnid and waits until the daemon has written its node file (lease held,
// device and bridge ready). extraArgs are added to its wgcnid flags.
func (c *Cluster) AddNode(extraArgs ...string) (*Node, error) {
	n, err := c.AddBareNode()
	if err != nil {
		return n, err
	}
	return n, n.start(extraArgs, "underlay")
}

// start starts a bare node's wgcnid with extraArgs and waits until it is
// ready; where says where the node sits, for the progress line.
func (n *Node) start(extraArgs []string, where string) error {
	n.ExtraArgs = extraArgs
	if err := n.StartDaemon(); err != nil {
		return err
	}
	if _, err := n.WaitReady(30 * time.Second); err != nil {
		return err
	}
	n.c.Cfg.Logf("harness: node %s up (%s, %s %s)", n.Name, n.NS.Name, where, n.UnderlayIP)
	return nil
}

// AddBareNode creates a node namespace on the underlay, with its dirs and
// conflist, without starting wgcnid (StartDaemon does that).
func (c *Cluster) AddBareNode() (*Node, error) {
	return c.addBareNode(func(n *Node) error {
		// The underlay end is named after the node; it lives in the
		// underlay namespace, so it cannot collide with other runs.
		return c.Underlay.attach(Tag+"-"+n.Name, n.NS, n.UnderlayIP)
	})
}

// nextIndex reserves the next node index (also an underlay address).
func (c *Cluster) nextIndex() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, errors.New("harness: cluster is closed")
	}
	c.nextNode++
	if c.nextNode > 200 {
		return 0, errors.New("harness: at most 200 nodes per run")
	}
	return c.nextNode, nil
}

// addBareNode is AddBareNode with the node's network attachment given:
// attach wires n.NS (its eth0 with n.UnderlayIP and a default route).
func (c *Cluster) addBareNode(attach func(n *Node) error) (*Node, error) {
	idx, err := c.nextIndex()
	if err != nil {
		return nil, err
	}
	return c.addBareNodeAt(idx, c.Underlay.nodeAddr(idx), attach)
}

func (c *Cluster) addBareNodeAt(idx int, addr netip.Addr, attach func(n *Node) error) (*Node, error) {
	name := "n" + strconv.Itoa(idx)
	n := &Node{
		Name:       name,
		Index:      idx,
		UnderlayIP: addr,
		Device:     c.name(name),
		Dir:        filepath.Join(c.Dir, name),
		c:          c,
	}
	n.StateDir = filepath.Join(n.Dir, "state")
	n.RunDir = filepath.Join(n.Dir, "run")
	n.ConfDir = filepath.Join(n.Dir, "net.d")
	n.LogPath = filepath.Join(n.Dir, "wgcnid.log")
	for _, d := range []string{n.StateDir, n.RunDir, n.ConfDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := writeConflist(c.Cfg.Repo, n.ConfDir, n.RunDir); err != nil {
		return nil, err
	}
	ns, err := createNS(c.name(name))
	if err != nil {
		return nil, err
	}
	n.NS = ns
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	if err := attach(n); err != nil {
		return n, fmt.Errorf("node %s: %w", name, err)
	}
	return n, nil
}

// AddNodes adds count nodes one after the other.
func (c *Cluster) AddNodes(count int) ([]*Node, error) {
	var out []*Node
	for i := 0; i < count; i++ {
		n, err := c.AddNode()
		if err != nil {
			return out, err
		}
		out = append(out, n)
	}
	return out, nil
}

// DaemonArgs returns the full wgcnid command line flags for this node.
func (n *Node) DaemonArgs() []string {
	cfg := n.c.Cfg
	args := []string{
		"--node-name", n.Name,
		"--etcd-endpoints", n.c.Etcd.Endpoint,
		"--cluster-cidr", cfg.ClusterCIDR,
		"--node-prefix-len", strconv.Itoa(cfg.NodePrefixLen),
		"--listen-port", strconv.Itoa(cfg.ListenPort),
		"--device", n.Device,
		"--state-dir", n.StateDir,
		"--run-dir", n.RunDir,
		"--lease-ttl", cfg.LeaseTTL.String(),
		"--keepalive", cfg.Keepalive.String(),
		"--wireguard", cfg.WireGuard,
		"--resync-interval", cfg.ResyncInterval.String(),
	}
	if cfg.NodePrefixLenV6 != 0 {
		args = append(args, "--node-prefix-len-v6", strconv.Itoa(cfg.NodePrefixLenV6))
	}
	if t := n.c.Etcd.TLS; t != nil {
		args = append(args, t.NodeArgs()...)
	}
	args = append(args, cfg.DaemonArgs...)
	return append(args, n.ExtraArgs...)
}

// Bin returns the path of a binary built into the repository's bin/.
func (c *Cluster) Bin(name string) string { return filepath.Join(c.Cfg.Repo, "bin", name) }

// StartDaemon starts wgcnid in the node namespace (no-op if running).
func (n *Node) StartDaemon() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.gone {
		return fmt.Errorf("node %s was shut down", n.Name)
	}
	if n.proc != nil && n.proc.Running() {
		return nil
	}
	argv := append(append(append([]string{}, n.Wrapper...), n.c.Bin("wgcnid")), n.DaemonArgs()...)
	p, err := startProcess("wgcnid "+n.Name, n.Command(context.Background(), argv...), n.LogPath)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.proc = p
	return nil
}

// StartProcess starts argv in the node's namespace as a long-running
// process other than wgcnid (e.g. a device host run the way a sidecar
// container would run it), its output in the node's <name>.log (dumped
// when a test fails). Removing the node stops it.
func (n *Node) StartProcess(name string, argv ...string) (*Process, error) {
	return startProcess(name+" "+n.Name, n.Command(context.Background(), argv...), filepath.Join(n.Dir, name+".log"))
}

// StartCmd starts cmd (already set to run inside the node, e.g. through
// NsenterCommand) as a long-running process with its output in the node's
// <name>.log. Removing the node kills it with the namespace.
func (n *Node) StartCmd(name string, cmd *exec.Cmd) (*Process, error) {
	return startProcess(name+" "+n.Name, cmd, filepath.Join(n.Dir, name+".log"))
}

// Daemon returns the running wgcnid process (nil before the first start).
func (n *Node) Daemon() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// StopDaemon stops wgcnid with sig (SIGTERM: graceful; SIGKILL: crash)
// and waits for it to exit. The WireGuard device and its userspace
// process are left as the daemon leaves them.
func (n *Node) StopDaemon(sig syscall.Signal) {
	p := n.Daemon()
	if p == nil {
		return
	}
	if sig == syscall.SIGKILL {
		p.Kill()
		return
	}
	_ = p.Signal(sig)
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		n.c.Cfg.Logf("harness: wgcnid %s ignored %v for 10s, killing", n.Name, sig)
		p.Kill()
	}
}

// RestartDaemon stops wgcnid with sig and starts it again.
func (n *Node) RestartDaemon(sig syscall.Signal) error {
	n.StopDaemon(sig)
	return n.StartDaemon()
}

// NodeFile reads the node file the daemon wrote.
func (n *Node) NodeFile() (*nodefile.Node, error) { return nodefile.Read(n.RunDir) }

// WaitReady waits until the daemon's node file exists, and fails early
// if the daemon exits.
func (n *Node) WaitReady(timeout time.Duration) (*nodefile.Node, error) {
	var nf *nodefile.Node
	err := WaitFor(timeout, "node file of "+n.Name, func() (bool, error) {
		if p := n.Daemon(); p != nil && !p.Running() {
			return false, fmt.Errorf("wgcnid %s exited: %v (log %s)", n.Name, p.Err(), n.LogPath)
		}
		var err error
		nf, err = n.NodeFile()
		return err == nil, err
	})
	if err != nil {
		return nil, fmt.Errorf("node %s not ready: %w", n.Name, err)
	}
	return nf, nil
}

// Cleanup runs `wgcnid cleanup` with the node's flags, removing what the
// daemon created (device, its userspace process, routes, node file).
func (n *Node) Cleanup() (string, error) {
	argv := append([]string{n.c.Bin("wgcnid"), "cleanup"}, n.DaemonArgs()...)
	return n.ExecTimeout(20*time.Second, argv...)
}

// Shutdown takes the node away as if the machine died: the daemon is
// killed, every process in the namespace too (the userspace WireGuard
// device), the pods' and the node's namespaces are deleted. Its etcd lease
// is left to expire.
func (n *Node) Shutdown() {
	n.remove(false)
}

// Gone reports whether the node was shut down.
func (n *Node) Gone() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.gone
}

// remove deletes the node. graceful runs CNI DEL for every pod and
// `wgcnid cleanup` first.
func (n *Node) remove(graceful bool) {
	n.mu.Lock()
	if n.gone {
		n.mu.Unlock()
		return
	}
	n.gone = true
	pods := append([]*Pod(nil), n.pods...)
	p := n.proc
	n.mu.Unlock()
	logf := n.c.Cfg.Logf
	start := time.Now()
	defer func() { logf("harness: node %s removed in %v", n.Name, time.Since(start).Round(time.Millisecond)) }()
	if p != nil {
		if graceful {
			p.Stop(10 * time.Second)
		} else {
			p.Kill()
		}
	}
	for _, pod := range pods {
		if graceful {
			if out, err := pod.CNI("del"); err != nil {
				logf("harness: CNI DEL %s: %v %s", pod.Name, err, out)
			}
		}
		if err := deleteNS(pod.NS); err != nil {
			logf("harness: %v", err)
		}
	}
	if graceful && p != nil && n.NS.Name != "" {
		t0 := time.Now()
		out, err := n.Cleanup()
		if err != nil {
			logf("harness: wgcnid cleanup %s: %v", n.Name, err)
		} else if d := time.Since(t0); d > 2*time.Second {
			logf("harness: wgcnid cleanup %s took %v:\n%s", n.Name, d.Round(time.Millisecond), out)
		}
	}
	if n.NS.Name != "" {
		if err := deleteNS(n.NS); err != nil {
			logf("harness: %v", err)
		}
	}
	// A userspace device killed with SIGKILL leaves its control socket.
	_ = os.Remove(filepath.Join("/var/run/wireguard", n.Device+".sock"))
}

// defaultConflist is the contract's example conflist, used when the
// repository's conf/examples/10-wgcni.conflist is not there.
const defaultConflist = `{"cniVersion":"1.0.0","cniVersions":["1.0.0","1.1.0"],"name":"wgcni","plugins":[
  {"type":"wgcni","runDir":"/run/wgcni","ipMasq":true,"hairpinMode":false,"ipam":{"type":"wgcni-ipam"}},
  {"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}`

// ConflistPath is the shipped example conflist, relative to the repo.
const ConflistPath = "conf/examples/10-wgcni.conflist"

// ExampleConflist is the shipped conflist (the contract's copy when the
// repository has none) with the wgcni plugin's runDir pointed at runDir,
// which is the only change a runtime on a real node would not need.
func ExampleConflist(repo, runDir string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(repo, ConflistPath))
	if errors.Is(err, os.ErrNotExist) {
		data = []byte(defaultConflist)
	} else if err != nil {
		return nil, err
	}
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		return nil, fmt.Errorf("parse %s: %w", ConflistPath, err)
	}
	plugins, _ := conf["plugins"].([]any)
	found := false
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == "wgcni" {
			m["runDir"] = runDir
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("%s: no plugin of type wgcni", ConflistPath)
	}
	return json.MarshalIndent(conf, "", "  ")
}

// writeConflist writes ExampleConflist into confDir.
func writeConflist(repo, confDir, runDir string) error {
	out, err := ExampleConflist(repo, runDir)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(confDir, ConflistFile), out, 0o644)
}

// ConflistFile is the node's conflist in ConfDir.
const ConflistFile = "10-wgcni.conflist"

// PluginConf reads the node's conflist and returns its network name and
// its wgcni plugin entry: with "cniVersion" and "name" added, what a
// runtime sends wgcni on stdin.
func (n *Node) PluginConf() (name string, conf map[string]any, err error) {
	path := filepath.Join(n.ConfDir, ConflistFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	var list struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return "", nil, fmt.Errorf("%s: %w", path, err)
	}
	if list.Name == "" {
		return "", nil, fmt.Errorf("%s has no name", path)
	}
	for _, p := range list.Plugins {
		if p["type"] == "wgcni" {
			return list.Name, p, nil
		}
	}
	return "", nil, fmt.Errorf("%s: no plugin of type wgcni", path)
}

// NetworkName is the conflist's network name (what cnitool is given).
func (n *Node) NetworkName() (string, error) {
	name, _, err := n.PluginConf()
	return name, err
}
