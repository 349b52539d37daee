package nodeipam

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/ipam/ipamconf"
)

// A dual-stack node hands out one address of each family with a default
// route of each family; when one family is exhausted the ADD fails and the
// address of the other family is given back (nothing half-allocated).
func TestAllocateDualStack(t *testing.T) {
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	n := &nodefile.Node{Name: "n", PodCIDR: "10.244.9.0/24", Gateway: "10.244.9.1", ClusterCIDR: "10.244.0.0/16",
		MTU: 1420, Bridge: "wgcni0", IPAMDir: filepath.Join(dir, "ipam"),
		PodCIDRs: []string{"10.244.9.0/24", "fd00:244:0:9::/125"}, Gateways: []string{"10.244.9.1", "fd00:244:0:9::1"},
		ClusterCIDRs: []string{"10.244.0.0/16", "fd00:244::/48"}}
	if err := nodefile.Write(run, n); err != nil {
		t.Fatal(err)
	}
	conf := &ipamconf.Conf{CNIVersion: "1.0.0", Name: "net", RunDir: run}
	res, err := Allocate(conf, "c0", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.IPs) != 2 || res.IPs[0].Address.IP.To4() == nil || res.IPs[1].Address.IP.To4() != nil {
		t.Fatalf("IPs %v", res.IPs)
	}
	if res.IPs[1].Gateway.String() != "fd00:244:0:9::1" || len(res.Routes) != 2 || res.Routes[1].Dst.String() != "::/0" || res.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Fatalf("gateway/routes %v %v", res.IPs[1].Gateway, res.Routes)
	}
	// The /125 holds 6 pod addresses (no gateway, no subnet-router anycast ::0).
	for i := 1; ; i++ {
		_, err := Allocate(conf, fmt.Sprintf("c%d", i), "eth0")
		if err == nil {
			continue
		}
		if i < 5 {
			t.Fatalf("IPv6 range exhausted after %d: %v", i, err)
		}
		t.Logf("ADD %d refused: %v", i, err)
		allocs, lerr := List(filepath.Join(n.IPAMDir, "net"))
		if lerr != nil {
			t.Fatal(lerr)
		}
		for _, a := range allocs {
			if a.ContainerID == fmt.Sprintf("c%d", i) {
				t.Fatalf("refused ADD left %s allocated", a.IP)
			}
		}
		break
	}
	if err := Release(conf, "c0", "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(n.IPAMDir, "net", res.IPs[1].Address.IP.String())); !os.IsNotExist(err) {
		t.Fatalf("IPv6 address not released: %v", err)
	}
}
