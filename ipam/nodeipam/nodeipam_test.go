package nodeipam

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
	"github.com/wgcni/wgcni/daemon/nodefile"
	"github.com/wgcni/wgcni/ipam/ipamconf"
)

func testNode(cidr, gw string) *nodefile.Node {
	return &nodefile.Node{Name: "n", PodCIDR: cidr, Gateway: gw, ClusterCIDR: "10.244.0.0/16", MTU: 1420, Bridge: "wgcni0", IPAMDir: "/x"}
}

// TestRangeSetNeverHandsOutReserved exhausts a /29 through the real
// allocator and disk store: exactly the four host addresses that are not
// the gateway or the relay address come out; network, gateway, relay
// address (record.RelayAddr) and broadcast never do.
func TestRangeSetNeverHandsOutReserved(t *testing.T) {
	for _, gw := range []string{"10.244.9.1", "10.244.9.4"} {
		rs, err := RangeSet(testNode("10.244.9.0/29", gw))
		if err != nil {
			t.Fatal(err)
		}
		store, err := disk.New("net", t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		a := allocator.NewIPAllocator(&rs, store, 0)
		var got []string
		for i := 0; ; i++ {
			ipc, err := a.Get("c"+string(rune('a'+i)), "eth0", nil)
			if err != nil {
				break
			}
			if ipc.Gateway.String() != gw {
				t.Fatalf("gateway %s, want %s", ipc.Gateway, gw)
			}
			got = append(got, ipc.Address.IP.String())
		}
		store.Close()
		sort.Strings(got)
		if len(got) != 4 {
			t.Fatalf("gw %s: allocated %v, want 4 addresses", gw, got)
		}
		for _, ip := range got {
			if ip == gw || ip == "10.244.9.0" || ip == "10.244.9.6" || ip == "10.244.9.7" {
				t.Fatalf("gw %s: handed out reserved address %s", gw, ip)
			}
		}
	}
}

func TestRangeSetTooSmall(t *testing.T) {
	if _, err := RangeSet(testNode("10.244.9.0/31", "10.244.9.0")); err == nil {
		t.Fatal("a /31 PodCIDR was accepted")
	}
}

// TestGCStore runs GC over a store populated by the real allocator.
func TestGCStore(t *testing.T) {
	dir := t.TempDir()
	rs, _ := RangeSet(testNode("10.244.9.0/24", "10.244.9.1"))
	store, err := disk.New("net", dir)
	if err != nil {
		t.Fatal(err)
	}
	a := allocator.NewIPAllocator(&rs, store, 0)
	for _, att := range []struct{ id, ifname string }{{"keep", "eth0"}, {"keep", "net1"}, {"drop", "eth0"}, {"drop2", "eth0"}} {
		if _, err := a.Get(att.id, att.ifname, nil); err != nil {
			t.Fatal(err)
		}
	}
	store.Close()
	// A legacy host-local file (container ID only) of a valid container.
	if err := os.WriteFile(filepath.Join(dir, "net", "10.244.9.200"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	released, err := GCStore(dir, "net", []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 3 {
		t.Fatalf("released %+v, want keep/net1, drop/eth0, drop2/eth0", released)
	}
	left, err := List(filepath.Join(dir, "net"))
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 2 {
		t.Fatalf("left %+v, want keep/eth0 and the legacy keep file", left)
	}
	for _, l := range left {
		if l.ContainerID != "keep" || (l.IfName != "eth0" && l.IfName != "") {
			t.Fatalf("GC kept %+v", l)
		}
	}
	// Empty list: everything goes; the lock and round-robin files stay.
	if _, err := GCStore(dir, "net", nil); err != nil {
		t.Fatal(err)
	}
	if left, _ := List(filepath.Join(dir, "net")); len(left) != 0 {
		t.Fatalf("left after GC with no valid attachments: %+v", left)
	}
	if _, err := os.Stat(filepath.Join(dir, "net", "lock")); err != nil {
		t.Fatalf("lock file removed: %v", err)
	}
}

// TestReleaseRemovesInterruptedReservation: an ADD killed between creating
// an address file and writing its owner leaves an empty file; the next DEL
// (run under the store lock) reclaims it and leaves real allocations alone.
func TestReleaseRemovesInterruptedReservation(t *testing.T) {
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "net")
	if err := os.MkdirAll(storeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"10.244.9.7": "", "10.244.9.8": "c1" + disk.LineBreak + "eth0", "10.244.9.9": "c2" + disk.LineBreak + "eth0"} {
		if err := os.WriteFile(filepath.Join(storeDir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conf := &ipamconf.Conf{Name: "net", DataDir: dir, RunDir: t.TempDir()}
	if err := Release(conf, "c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	var left []string
	ents, _ := os.ReadDir(storeDir)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	sort.Strings(left)
	if len(left) < 1 || left[0] != "10.244.9.9" {
		t.Fatalf("store after DEL of c1: %v; want only 10.244.9.9 (and the lock)", left)
	}
	for _, n := range left {
		if n == "10.244.9.7" || n == "10.244.9.8" {
			t.Fatalf("store after DEL of c1: %v", left)
		}
	}
}

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
