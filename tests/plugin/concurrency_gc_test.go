package plugin_test

import (
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestConcurrentAdds: 50 ADDs at once on one node get 50 distinct
// addresses; pods on the node reach each other; 50 DELs at once clean up.
func TestConcurrentAdds(t *testing.T) {
	requireRoot(t)
	const n = 50
	node := newNode(t, "10.244.3.0/24", "10.244.3.1")
	conf := node.conf("1.1.0", nil)
	pods := make([]cniArgs, n)
	for i := range pods {
		pods[i] = cniArgs{ContainerID: fmt.Sprintf("conc-%02d", i), Netns: newNetns(t, "pod"), IfName: "eth0"}
	}
	ips := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out, cerr, err := node.cniCallErr("wgcni", "ADD", pods[i], conf)
			switch {
			case err != nil:
				errs[i] = err
			case cerr != nil:
				errs[i] = fmt.Errorf("ADD %s: code %d: %s", pods[i].ContainerID, cerr.Code, cerr.Msg)
			default:
				var r struct {
					IPs []struct{ Address string } `json:"ips"`
				}
				if err := json.Unmarshal(out, &r); err != nil || len(r.IPs) != 1 {
					errs[i] = fmt.Errorf("ADD %s: bad result %s", pods[i].ContainerID, out)
					return
				}
				ip, _, _ := net.ParseCIDR(r.IPs[0].Address)
				ips[i] = ip.String()
			}
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]string{}
	for i, ip := range ips {
		if other, dup := seen[ip]; dup {
			t.Fatalf("duplicate IP %s for %s and %s", ip, other, pods[i].ContainerID)
		}
		seen[ip] = pods[i].ContainerID
	}
	if got := node.allocations(t); len(got) != n {
		t.Fatalf("%d allocations on disk, want %d", len(got), n)
	}
	if got := node.hostVeths(t); len(got) != n {
		t.Fatalf("%d host veths, want %d", len(got), n)
	}
	t.Logf("%d concurrent ADDs: %d distinct IPs", n, len(seen))

	// Same-node pod -> pod and pod -> gateway.
	if err := ping(pods[0].Netns, ips[n-1]); err != nil {
		t.Fatal(err)
	}
	if err := ping(pods[n-1].Netns, ips[0]); err != nil {
		t.Fatal(err)
	}
	if err := ping(pods[7].Netns, "10.244.3.1"); err != nil {
		t.Fatal(err)
	}

	for i := range pods {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, cerr, err := node.cniCallErr("wgcni", "DEL", pods[i], conf)
			if err == nil && cerr != nil {
				err = fmt.Errorf("DEL %s: code %d: %s", pods[i].ContainerID, cerr.Code, cerr.Msg)
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	node.assertClean(t, "after concurrent DELs")
}

// TestGC: GC keeps valid attachments and removes the IPs and host veths
// of every other one, including an untagged veth left by an interrupted
// ADD; links that are not wgcni's are not touched.
func TestGC(t *testing.T) {
	requireRoot(t)
	node := newNode(t, "10.244.3.0/24", "10.244.3.1")
	conf := node.conf("1.1.0", nil)
	var pods []cniArgs
	for i := 0; i < 4; i++ {
		a := cniArgs{ContainerID: fmt.Sprintf("gc-%d", i), Netns: newNetns(t, "pod"), IfName: "eth0"}
		node.mustCNI(t, "ADD", a, conf)
		pods = append(pods, a)
	}
	// A second interface of pod 0 in the same network.
	extra := cniArgs{ContainerID: pods[0].ContainerID, Netns: pods[0].Netns, IfName: "net1"}
	node.mustCNI(t, "ADD", extra, conf)

	// An untagged wgcni-pattern veth (ADD killed between create and tag)
	// and a foreign veth that must survive.
	inNS(t, node.NS, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wgv0123456789ab"}, PeerName: "wgp-orphan-p"}); err != nil {
			return err
		}
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wgp-foreign"}, PeerName: "wgp-foreign-p"})
	})

	valid := []cniArgs{pods[0], pods[2]} // pod 0's net1 is not valid
	node.mustCNI(t, "GC", cniArgs{}, withValid(conf, valid...))

	allocs := node.allocations(t)
	if len(allocs) != 2 {
		t.Fatalf("allocations after GC: %v, want those of %s/eth0 and %s/eth0", allocs, pods[0].ContainerID, pods[2].ContainerID)
	}
	for _, owner := range allocs {
		if owner != pods[0].ContainerID+"/eth0" && owner != pods[2].ContainerID+"/eth0" {
			t.Fatalf("GC kept %s", owner)
		}
	}
	veths := node.hostVeths(t)
	if len(veths) != 2 {
		t.Fatalf("host veths after GC: %v", veths)
	}
	for _, alias := range veths {
		if alias != "wgcni/wgcni/eth0/"+pods[0].ContainerID && alias != "wgcni/wgcni/eth0/"+pods[2].ContainerID {
			t.Fatalf("GC kept veth tagged %q", alias)
		}
	}
	inNS(t, node.NS, func() error {
		if _, err := netlink.LinkByName("wgp-foreign"); err != nil {
			return fmt.Errorf("GC removed a veth that is not wgcni's: %v", err)
		}
		return nil
	})
	if podHasLink(t, pods[0].Netns, "net1") || !podHasLink(t, pods[0].Netns, "eth0") {
		t.Fatal("GC should remove pod 0's net1 and keep its eth0")
	}
	// The kept pods still work.
	if err := ping(pods[2].Netns, "10.244.3.1"); err != nil {
		t.Fatal(err)
	}
	// GC without the list is refused, not treated as "nothing is valid".
	var c map[string]any
	_ = json.Unmarshal(conf, &c)
	node.wantCNIError(t, "GC", cniArgs{}, conf, 7, "cni.dev/valid-attachments")
}
