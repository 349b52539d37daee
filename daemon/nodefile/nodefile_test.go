package nodefile

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func valid() *Node {
	return &Node{Name: "n1", PodCIDR: "10.244.3.0/24", Gateway: "10.244.3.1", ClusterCIDR: "10.244.0.0/16",
		MTU: 1440, Bridge: "wgcni0", Device: "wgcni-wg", IPAMDir: "/var/lib/wgcni/ipam"}
}

func TestWriteReadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := Write(dir, valid()); err != nil {
		t.Fatal(err)
	}
	got, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, valid()) {
		t.Fatalf("round trip: got %+v", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func TestReadMissingIsNoLease(t *testing.T) {
	_, err := Read(t.TempDir())
	if !errors.Is(err, ErrNoLease) {
		t.Fatalf("want ErrNoLease, got %v", err)
	}
}

func TestValidateNamesField(t *testing.T) {
	cases := map[string]func(*Node){
		"podCIDR":     func(n *Node) { n.PodCIDR = "10.244.3.0/33" },
		"gateway":     func(n *Node) { n.Gateway = "10.1.1.1" },
		"clusterCIDR": func(n *Node) { n.ClusterCIDR = "10.245.0.0/16" },
		"mtu":         func(n *Node) { n.MTU = 100 },
		"bridge":      func(n *Node) { n.Bridge = "a-very-long-bridge-name" },
		"ipamDir":     func(n *Node) { n.IPAMDir = "" },
		"name":        func(n *Node) { n.Name = "" },
	}
	for field, mutate := range cases {
		n := valid()
		mutate(n)
		err := n.Validate()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: want error naming the field, got %v", field, err)
		}
		if err := Write(t.TempDir(), n); err == nil {
			t.Errorf("%s: Write accepted an invalid node", field)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"name":"n1","podCIDR":"10.244.3.0/24","gateway":"10.244.3.1","clusterCIDR":"10.244.0.0/16","mtu":1440,"bridge":"wgcni0","ipamDir":"/x"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Parse(data)
		if err == nil {
			if verr := n.Validate(); verr != nil {
				t.Fatalf("Parse returned an invalid node: %v", verr)
			}
		}
	})
}
