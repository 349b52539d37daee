package plugin_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/wgcni/wgcni/tests/harness"
)

// loadExampleConflist is the shipped conflist with runDir pointed at the
// test node, as the harness writes it per node.
func loadExampleConflist(t *testing.T, runDir string) *libcni.NetworkConfigList {
	t.Helper()
	repo, err := harness.FindRepo()
	if err != nil {
		t.Fatal(err)
	}
	data, err := harness.ExampleConflist(repo, runDir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("example conflist: %v", err)
	}
	return list
}

// TestPortmapChain drives the shipped conflist (wgcni + portmap) through
// libcni, the library cnitool and runtimes use: ADD with a port mapping,
// CHECK, STATUS, a TCP connection through the mapped host port, GC, DEL.
func TestPortmapChain(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		harness.Missing(t, "iptables (portmap's default backend; make deps installs it)")
	}
	node := newNode(t, "10.244.3.0/24", "10.244.3.1")
	list := loadExampleConflist(t, node.RunDir)
	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), nil)
	podNS := newNetns(t, "pod")
	rt := &libcni.RuntimeConf{
		ContainerID: "chain-" + randHex(4),
		NetNS:       podNS,
		IfName:      "eth0",
		CapabilityArgs: map[string]any{
			"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}},
		},
	}
	// A second pod that is not in the valid list at GC time.
	stale := &libcni.RuntimeConf{ContainerID: "stale-" + randHex(4), NetNS: newNetns(t, "pod"), IfName: "eth0"}
	ctx := context.Background()
	inNode := func(f func() error) {
		t.Helper()
		if err := ns.WithNetNSPath(node.NS, func(ns.NetNS) error { return f() }); err != nil {
			t.Fatal(err)
		}
	}

	var res *current.Result
	inNode(func() error {
		r, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return fmt.Errorf("ADD chain: %w", err)
		}
		if res, err = current.NewResultFromResult(r); err != nil {
			return err
		}
		if _, err := cni.AddNetworkList(ctx, list, stale); err != nil {
			return fmt.Errorf("ADD stale: %w", err)
		}
		return nil
	})
	if len(res.IPs) != 1 || len(res.Interfaces) != 3 || res.Interfaces[2].Sandbox != podNS {
		t.Fatalf("chained result lost wgcni's data: %+v", res)
	}
	podIP := res.IPs[0].Address.IP

	inNode(func() error {
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("CHECK chain: %w", err)
		}
		return cni.GetStatusNetworkList(ctx, list)
	})

	// portmap's DNAT works: a connection to the gateway's port 18080
	// from the node reaches the pod's listener on 8080.
	var ln net.Listener
	inNS(t, podNS, func() error {
		var err error
		ln, err = net.Listen("tcp", ":8080")
		return err
	})
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.WriteString(c, "hello from pod")
			c.Close()
		}
	}()
	inNode(func() error {
		c, err := net.DialTimeout("tcp", "10.244.3.1:18080", 3*time.Second)
		if err != nil {
			return fmt.Errorf("dial mapped port (pod %s): %w", podIP, err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "hello from pod" {
			return fmt.Errorf("through hostPort got %q, %v", b, err)
		}
		return nil
	})

	// GC: only rt is valid, so the stale pod's IP and veth go.
	inNode(func() error {
		return cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: rt.ContainerID, IfName: "eth0"}}})
	})
	allocs := node.allocations(t)
	if len(allocs) != 1 || allocs[podIP.String()] != rt.ContainerID+"/eth0" {
		t.Fatalf("after GC allocations %v, want only %s", allocs, podIP)
	}
	if len(node.hostVeths(t)) != 1 {
		t.Fatalf("after GC host veths %v, want 1", node.hostVeths(t))
	}

	inNode(func() error {
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("DEL chain: %w", err)
		}
		return cni.DelNetworkList(ctx, list, rt)
	})
	node.assertClean(t, "after chained DEL")
	out, _ := exec.Command("nsenter", "--net="+node.NS, "iptables-save", "-t", "nat").CombinedOutput()
	if strings.Contains(string(out), rt.ContainerID) || strings.Contains(string(out), "18080") {
		t.Fatalf("portmap rules left after DEL:\n%s", out)
	}
}
