// Package nodefile is the contract between wgcnid and the CNI plugins: the
// daemon writes what it leased into one JSON file in its run directory, the
// plugins read it. The plugins never talk to etcd, so a CNI ADD costs no
// network round trip and keeps working while etcd is down.
package nodefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// FileName is the node file's name inside the run directory.
const FileName = "node.json"

// DefaultRunDir is where wgcnid writes the node file unless told otherwise.
const DefaultRunDir = "/run/wgcni"

// ErrNoLease is returned by Read when the daemon has not written a node file
// yet: the node holds no PodCIDR lease, and the plugins must say "try again".
var ErrNoLease = errors.New("wgcnid has no PodCIDR lease on this node yet")

// Node is what the plugins need to know about this node.
type Node struct {
	Name        string `json:"name"`
	PodCIDR     string `json:"podCIDR"`     // e.g. 10.244.3.0/24
	Gateway     string `json:"gateway"`     // first IP of PodCIDR, lives on the bridge
	ClusterCIDR string `json:"clusterCIDR"` // e.g. 10.244.0.0/16
	MTU         int    `json:"mtu"`         // pod MTU: fits inside the WireGuard MTU
	Bridge      string `json:"bridge"`      // node bridge, e.g. wgcni0
	Device      string `json:"device"`      // WireGuard device name
	IPAMDir     string `json:"ipamDir"`     // where wgcni-ipam keeps its allocations
	// SameNodeEncryption tells the plugin to route pod-to-pod traffic inside
	// this node through WireGuard too.
	SameNodeEncryption bool `json:"sameNodeEncryption,omitempty"`
	// SameNodeDevice is the WireGuard of new pods' same-node devices, as
	// the daemon decided it at start: "kernel" (a wireguard link the plugin
	// creates) or "userspace" (hosted by wgcnid samenode-host; also when
	// empty).
	SameNodeDevice string `json:"sameNodeDevice,omitempty"`
	// One entry per address family, primary first (Families): the truth; PodCIDR,
	// Gateway and ClusterCIDR repeat the first entries for older plugins.
	PodCIDRs     []string `json:"podCIDRs,omitempty"`
	Gateways     []string `json:"gateways,omitempty"`
	ClusterCIDRs []string `json:"clusterCIDRs,omitempty"`
}

// Path returns the node file path inside runDir.
func Path(runDir string) string { return filepath.Join(runDir, FileName) }

// PodNet returns the parsed PodCIDR.
func (n *Node) PodNet() (*net.IPNet, error) {
	_, ipn, err := net.ParseCIDR(n.PodCIDR)
	if err != nil {
		return nil, fmt.Errorf("node file field podCIDR %q: %w", n.PodCIDR, err)
	}
	return ipn, nil
}

// ClusterNet returns the parsed ClusterCIDR.
func (n *Node) ClusterNet() (*net.IPNet, error) {
	_, ipn, err := net.ParseCIDR(n.ClusterCIDR)
	if err != nil {
		return nil, fmt.Errorf("node file field clusterCIDR %q: %w", n.ClusterCIDR, err)
	}
	return ipn, nil
}

// GatewayNet returns the gateway address with the PodCIDR's mask, the form
// in which it is assigned to the bridge.
func (n *Node) GatewayNet() (*net.IPNet, error) {
	pod, err := n.PodNet()
	if err != nil {
		return nil, err
	}
	gw := net.ParseIP(n.Gateway)
	if gw == nil || !pod.Contains(gw) {
		return nil, fmt.Errorf("node file field gateway %q: not an address inside podCIDR %s", n.Gateway, n.PodCIDR)
	}
	return &net.IPNet{IP: gw, Mask: pod.Mask}, nil
}

// Validate checks every field a plugin relies on, naming the first bad one.
func (n *Node) Validate() error {
	if n.Name == "" {
		return errors.New("node file field name is empty")
	}
	if _, err := n.GatewayNet(); err != nil {
		return err
	}
	cluster, err := n.ClusterNet()
	if err != nil {
		return err
	}
	pod, _ := n.PodNet()
	if !cluster.Contains(pod.IP) {
		return fmt.Errorf("node file field podCIDR %s is outside clusterCIDR %s", n.PodCIDR, n.ClusterCIDR)
	}
	if n.MTU < 576 || n.MTU > 65535 {
		return fmt.Errorf("node file field mtu %d is out of range 576..65535", n.MTU)
	}
	if n.Bridge == "" || len(n.Bridge) > 15 {
		return fmt.Errorf("node file field bridge %q is not a valid interface name", n.Bridge)
	}
	if n.IPAMDir == "" {
		return errors.New("node file field ipamDir is empty")
	}
	return n.validateFamilies()
}

// Read loads and validates the node file from runDir. A missing file is
// reported as ErrNoLease.
func Read(runDir string) (*Node, error) {
	data, err := os.ReadFile(Path(runDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (%s does not exist)", ErrNoLease, Path(runDir))
	}
	if err != nil {
		return nil, fmt.Errorf("read node file: %w", err)
	}
	return Parse(data)
}

// Parse decodes and validates a node file's contents.
func Parse(data []byte) (*Node, error) {
	var n Node
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, fmt.Errorf("decode node file: %w", err)
	}
	if err := n.Validate(); err != nil {
		return nil, err
	}
	return &n, nil
}

// Write stores n in runDir atomically (temp file + rename), so a plugin
// never reads a half-written file.
func Write(runDir string, n *Node) error {
	if err := n.Validate(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	return WriteFileAtomic(Path(runDir), append(data, '\n'), 0o644)
}

// WriteFileAtomic writes data to path through a temp file in the same
// directory, fsyncs it and renames it into place.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Family is one address family of the node: its PodCIDR, the gateway on
// the bridge (with the PodCIDR's mask) and the cluster CIDR.
type Family struct {
	Pod     *net.IPNet
	Gateway *net.IPNet
	Cluster *net.IPNet
}

// Is6 reports whether f is the IPv6 family.
func (f Family) Is6() bool { return f.Pod.IP.To4() == nil }

// Families returns the node's address families, primary first: the lists
// if the daemon wrote them, else the single fields of older node files.
func (n *Node) Families() ([]Family, error) {
	if len(n.PodCIDRs) == 0 {
		gw, err := n.GatewayNet()
		if err != nil {
			return nil, err
		}
		cl, err := n.ClusterNet()
		if err != nil {
			return nil, err
		}
		pod, _ := n.PodNet()
		return []Family{{Pod: pod, Gateway: gw, Cluster: cl}}, nil
	}
	if len(n.Gateways) != len(n.PodCIDRs) || len(n.ClusterCIDRs) != len(n.PodCIDRs) {
		return nil, fmt.Errorf("node file fields podCIDRs, gateways and clusterCIDRs have %d, %d and %d entries; want one each per family",
			len(n.PodCIDRs), len(n.Gateways), len(n.ClusterCIDRs))
	}
	var out []Family
	seen := map[bool]bool{}
	for i := range n.PodCIDRs {
		_, pod, err := net.ParseCIDR(n.PodCIDRs[i])
		if err != nil {
			return nil, fmt.Errorf("node file field podCIDRs[%d] %q: %w", i, n.PodCIDRs[i], err)
		}
		_, cl, err := net.ParseCIDR(n.ClusterCIDRs[i])
		if err != nil {
			return nil, fmt.Errorf("node file field clusterCIDRs[%d] %q: %w", i, n.ClusterCIDRs[i], err)
		}
		gw := net.ParseIP(n.Gateways[i])
		if gw == nil || !pod.Contains(gw) {
			return nil, fmt.Errorf("node file field gateways[%d] %q: not an address inside podCIDRs[%d] %s", i, n.Gateways[i], i, pod)
		}
		if !cl.Contains(pod.IP) || (cl.IP.To4() == nil) != (pod.IP.To4() == nil) {
			return nil, fmt.Errorf("node file field podCIDRs[%d] %s is outside clusterCIDRs[%d] %s", i, pod, i, cl)
		}
		f := Family{Pod: pod, Gateway: &net.IPNet{IP: gw, Mask: pod.Mask}, Cluster: cl}
		if seen[f.Is6()] {
			return nil, fmt.Errorf("node file field podCIDRs: two CIDRs of one family (%v)", n.PodCIDRs)
		}
		seen[f.Is6()] = true
		out = append(out, f)
	}
	return out, nil
}

// validateFamilies checks the lists and that they agree with the single
// fields.
func (n *Node) validateFamilies() error {
	if len(n.PodCIDRs) == 0 && len(n.Gateways) == 0 && len(n.ClusterCIDRs) == 0 {
		return nil
	}
	fs, err := n.Families()
	if err != nil {
		return err
	}
	if len(fs) == 0 || n.PodCIDRs[0] != n.PodCIDR || n.Gateways[0] != n.Gateway || n.ClusterCIDRs[0] != n.ClusterCIDR {
		return fmt.Errorf("node file fields podCIDRs/gateways/clusterCIDRs must start with podCIDR %s, gateway %s and clusterCIDR %s", n.PodCIDR, n.Gateway, n.ClusterCIDR)
	}
	return nil
}
