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
	"strings"
	"testing"
	"time"
)

// Pod is a pod network namespace on a node, wired by cnitool through the
// node's conflist, exactly as a container runtime would.
type Pod struct {
	NS
	Name   string // e.g. n1p1 (the namespace is wge-<run>-n1p1)
	Node   *Node
	IfName string
	// From the CNI ADD result:
	IP      netip.Addr
	Prefix  netip.Prefix
	Gateway netip.Addr
	// IPs are all the pod interface's addresses in the result, in order
	// (one per family on a dual-stack node; IP is the first).
	IPs    []netip.Prefix
	Result string // raw JSON printed by cnitool
	// CapArgs is the CAP_ARGS JSON given to cnitool (e.g. portMappings).
	CapArgs string
}

// AddPod creates a pod namespace on the node and runs CNI ADD for it.
func (n *Node) AddPod() (*Pod, error) { return n.AddPodWith("") }

// MustAddPod is AddPod for tests: a failure ends the test.
func (n *Node) MustAddPod(tb testing.TB) *Pod {
	tb.Helper()
	p, err := n.AddPod()
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// AddPodWith is AddPod with runtime capability args (CAP_ARGS JSON, e.g.
// `{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}`).
func (n *Node) AddPodWith(capArgs string) (*Pod, error) {
	n.mu.Lock()
	if n.gone {
		n.mu.Unlock()
		return nil, fmt.Errorf("node %s was shut down", n.Name)
	}
	n.nextPod++
	name := n.Name + "p" + strconv.Itoa(n.nextPod)
	n.mu.Unlock()
	ns, err := createNS(n.c.name(name))
	if err != nil {
		return nil, err
	}
	p := &Pod{NS: ns, Name: name, Node: n, IfName: "eth0", CapArgs: capArgs}
	n.mu.Lock()
	n.pods = append(n.pods, p)
	n.mu.Unlock()
	out, err := p.CNI("add")
	if err != nil {
		return p, fmt.Errorf("CNI ADD for pod %s: %w", name, err)
	}
	p.Result = out
	if err := p.parseResult(out); err != nil {
		return p, fmt.Errorf("CNI ADD for pod %s: %w", name, err)
	}
	n.c.Cfg.Logf("harness: pod %s on %s has %s", name, n.Name, p.Prefix)
	return p, nil
}

// Pods returns the node's pods (including deleted ones' records).
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Pod(nil), n.pods...)
}

// CNI runs `cnitool <cmd> <network> <netns>` (add, del, check) from the
// node namespace and returns cnitool's stdout (the result for add).
func (p *Pod) CNI(cmd string) (string, error) {
	n := p.Node
	network, err := n.NetworkName()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := n.Command(ctx, n.c.Bin("cnitool"), cmd, network, p.Path())
	c.Env = append(os.Environ(),
		"CNI_PATH="+n.c.CNIPath(),
		"NETCONFPATH="+n.ConfDir,
		"CNI_IFNAME="+p.IfName,
	)
	if p.CapArgs != "" {
		c.Env = append(c.Env, "CAP_ARGS="+p.CapArgs)
	}
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return string(out), fmt.Errorf("cnitool %s %s %s: %w: %s%s", cmd, network, p.Path(), err, stderr.String(), out)
	}
	return string(out), nil
}

// CNIPath is the plugin search path: the repo's bin/ (wgcni, wgcni-ipam)
// and bin/ext (reference plugins such as portmap built from go.mod).
func (c *Cluster) CNIPath() string {
	return filepath.Join(c.Cfg.Repo, "bin") + ":" + filepath.Join(c.Cfg.Repo, "bin", "ext")
}

// parseResult reads the pod address from a CNI result of version 0.3.0 or
// later (the "ips" list). The address on the pod's interface is preferred.
func (p *Pod) parseResult(out string) error {
	var res struct {
		Interfaces []struct {
			Name    string `json:"name"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
		IPs []struct {
			Interface *int   `json:"interface"`
			Address   string `json:"address"`
			Gateway   string `json:"gateway"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return fmt.Errorf("parse CNI result %q: %w", out, err)
	}
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface < len(res.Interfaces) && res.Interfaces[*ip.Interface].Sandbox == "" {
			continue // not the pod's interface
		}
		pfx, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			return fmt.Errorf("CNI result ips address %q: %w", ip.Address, err)
		}
		p.IPs = append(p.IPs, pfx)
		if len(p.IPs) > 1 {
			continue
		}
		p.IP, p.Prefix = pfx.Addr(), pfx
		if ip.Gateway != "" {
			p.Gateway, _ = netip.ParseAddr(ip.Gateway)
		}
	}
	if len(p.IPs) > 0 {
		return nil
	}
	return fmt.Errorf("CNI result has no pod address: %s", out)
}

// Delete runs CNI DEL and removes the pod namespace.
func (p *Pod) Delete() error {
	out, err := p.CNI("del")
	if nerr := deleteNS(p.NS); nerr != nil && err == nil {
		err = nerr
	}
	n := p.Node
	n.mu.Lock()
	for i, q := range n.pods {
		if q == p {
			n.pods = append(n.pods[:i], n.pods[i+1:]...)
			break
		}
	}
	n.mu.Unlock()
	if err != nil {
		return fmt.Errorf("delete pod %s: %w %s", p.Name, err, out)
	}
	return nil
}

// ensureBinary reports a missing binary with a hint at what makes it.
func ensureBinary(path, hint string) error {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s missing (%s)", path, hint)
	}
	if _, err := exec.LookPath(path); err != nil {
		return fmt.Errorf("%s not executable: %w", path, err)
	}
	return nil
}

// MustHostVeth is the host end of the pod's veth, from its CNI result:
// the interface without a sandbox after the bridge (interfaces[0]).
func (p *Pod) MustHostVeth(tb testing.TB) string {
	tb.Helper()
	var r struct {
		Interfaces []struct {
			Name    string `json:"name"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
	}
	if err := json.Unmarshal([]byte(p.Result), &r); err != nil {
		tb.Fatalf("CNI result of %s: %v", p.Name, err)
	}
	for i, ifc := range r.Interfaces {
		if i > 0 && ifc.Sandbox == "" {
			return ifc.Name
		}
	}
	tb.Fatalf("no host veth in the CNI result of %s: %s", p.Name, p.Result)
	return ""
}
