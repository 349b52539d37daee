package plugin_test

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/wgcni/wgcni/plugins/veth"
)

var versions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// hostVeths lists wgcni host veths in the node namespace, name -> alias.
func (n *testNode) hostVeths(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	inNS(t, n.NS, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, veth.HostPrefix) {
				out[l.Attrs().Name] = l.Attrs().Alias
			}
		}
		return nil
	})
	return out
}

// checkResultShape validates the raw ADD result JSON for version v.
func checkResultShape(t *testing.T, v string, raw []byte, podNS string) (podIP string) {
	t.Helper()
	var r map[string]any
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("result is not JSON: %v: %s", err, raw)
	}
	if r["cniVersion"] != v {
		t.Fatalf("result cniVersion %v, want %s", r["cniVersion"], v)
	}
	ifs, _ := r["interfaces"].([]any)
	if len(ifs) != 3 {
		t.Fatalf("result has %d interfaces, want 3 (bridge, host veth, pod): %s", len(ifs), raw)
	}
	pod := ifs[2].(map[string]any)
	if pod["name"] != "eth0" || pod["sandbox"] != podNS {
		t.Fatalf("interfaces[2] = %v, want eth0 in sandbox %s", pod, podNS)
	}
	if _, err := net.ParseMAC(fmt.Sprint(pod["mac"])); err != nil {
		t.Fatalf("interfaces[2].mac %v: %v", pod["mac"], err)
	}
	for i, x := range ifs[:2] {
		m := x.(map[string]any)
		if _, ok := m["sandbox"]; ok {
			t.Fatalf("interfaces[%d] (host side) has a sandbox: %v", i, m)
		}
	}
	_, hasMTU := pod["mtu"]
	if wantMTU := v == "1.1.0"; hasMTU != wantMTU {
		t.Fatalf("version %s: interfaces[2] has mtu=%v, want present=%v", v, pod["mtu"], wantMTU)
	}
	ips, _ := r["ips"].([]any)
	if len(ips) != 1 {
		t.Fatalf("result has %d ips, want 1: %s", len(ips), raw)
	}
	ip := ips[0].(map[string]any)
	if ip["interface"] != float64(2) {
		t.Fatalf("ips[0].interface = %v, want 2", ip["interface"])
	}
	_, hasVersion := ip["version"]
	if wantVersion := strings.HasPrefix(v, "0."); hasVersion != wantVersion {
		t.Fatalf("version %s: ips[0].version present=%v, want %v", v, hasVersion, wantVersion)
	}
	if hasVersion && ip["version"] != "4" {
		t.Fatalf("ips[0].version = %v, want \"4\"", ip["version"])
	}
	if ip["gateway"] != "10.244.3.1" {
		t.Fatalf("ips[0].gateway = %v, want 10.244.3.1", ip["gateway"])
	}
	routes, _ := r["routes"].([]any)
	if len(routes) != 1 || routes[0].(map[string]any)["dst"] != "0.0.0.0/0" {
		t.Fatalf("routes = %v, want one default route", routes)
	}
	addr, _, err := net.ParseCIDR(fmt.Sprint(ip["address"]))
	if err != nil {
		t.Fatalf("ips[0].address: %v", err)
	}
	return addr.String()
}

// TestLifecycle runs ADD, CHECK, STATUS, GC, DEL, DEL again for every
// supported cniVersion and checks what the kernel actually has.
func TestLifecycle(t *testing.T) {
	requireRoot(t)
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			node := newNode(t, "10.244.3.0/24", "10.244.3.1")
			podNS := newNetns(t, "pod")
			a := cniArgs{ContainerID: "ctr-" + randHex(4), Netns: podNS, IfName: "eth0"}
			conf := node.conf(v, nil)

			raw := node.mustCNI(t, "ADD", a, conf)
			podIP := checkResultShape(t, v, raw, podNS)

			// Kernel state: pod side.
			inNS(t, podNS, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				if l.Attrs().MTU != 1420 {
					return fmt.Errorf("pod eth0 MTU %d, want 1420 from the node file", l.Attrs().MTU)
				}
				addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
				if len(addrs) != 1 || addrs[0].IPNet.String() != podIP+"/24" {
					return fmt.Errorf("pod eth0 addresses %v, want %s/24", addrs, podIP)
				}
				routes, _ := netlink.RouteList(l, netlink.FAMILY_V4)
				for _, r := range routes {
					if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == "10.244.3.1" {
						return nil
					}
				}
				return fmt.Errorf("pod has no default route via 10.244.3.1: %v", routes)
			})
			// Host side: one tagged veth on the bridge, one allocation.
			veths := node.hostVeths(t)
			if len(veths) != 1 {
				t.Fatalf("host veths %v, want 1", veths)
			}
			for name, alias := range veths {
				if want := "wgcni/wgcni/eth0/" + a.ContainerID; alias != want {
					t.Fatalf("host veth %s alias %q, want %q", name, alias, want)
				}
				inNS(t, node.NS, func() error {
					l, _ := netlink.LinkByName(name)
					br, err := netlink.LinkByName("wgcni0")
					if err != nil {
						return err
					}
					if l.Attrs().MasterIndex != br.Attrs().Index {
						return fmt.Errorf("host veth %s not on bridge wgcni0", name)
					}
					return nil
				})
			}
			if got := node.allocations(t); len(got) != 1 || got[podIP] != a.ContainerID+"/eth0" {
				t.Fatalf("allocations %v, want %s -> %s/eth0", got, podIP, a.ContainerID)
			}
			if err := ping(podNS, "10.244.3.1"); err != nil {
				t.Fatal(err)
			}

			// CHECK exists from 0.4.0 on.
			prevConf := withPrev(conf, raw)
			if v == "0.3.0" || v == "0.3.1" {
				node.wantCNIError(t, "CHECK", a, prevConf, types.ErrIncompatibleCNIVersion)
			} else {
				node.mustCNI(t, "CHECK", a, prevConf)
				// Break the pod's MTU: CHECK must name it.
				inNS(t, podNS, func() error {
					l, _ := netlink.LinkByName("eth0")
					return netlink.LinkSetMTU(l, 1300)
				})
				node.wantCNIError(t, "CHECK", a, prevConf, types.ErrInternal, "MTU is 1300")
				inNS(t, podNS, func() error {
					l, _ := netlink.LinkByName("eth0")
					return netlink.LinkSetMTU(l, 1420)
				})
				// Remove the default route: CHECK must name the route.
				inNS(t, podNS, func() error {
					return netlink.RouteDel(&netlink.Route{Dst: nil, Gw: net.ParseIP("10.244.3.1")})
				})
				node.wantCNIError(t, "CHECK", a, prevConf, types.ErrInternal, "route to 0.0.0.0/0 via 10.244.3.1 missing")
			}

			if v == "1.1.0" {
				node.mustCNI(t, "STATUS", a, conf)
				// GC with this attachment valid keeps everything.
				gc := withValid(conf, a)
				node.mustCNI(t, "GC", cniArgs{}, gc)
				if len(node.allocations(t)) != 1 || len(node.hostVeths(t)) != 1 {
					t.Fatal("GC removed a valid attachment")
				}
			} else {
				node.wantCNIError(t, "STATUS", a, conf, types.ErrIncompatibleCNIVersion)
				node.wantCNIError(t, "GC", cniArgs{}, withValid(conf), types.ErrIncompatibleCNIVersion)
			}

			delConf := withPrev(conf, raw)
			node.mustCNI(t, "DEL", a, delConf)
			if got := node.hostVeths(t); len(got) != 0 {
				t.Fatalf("host veths after DEL: %v", got)
			}
			if got := node.allocations(t); len(got) != 0 {
				t.Fatalf("allocations after DEL: %v", got)
			}
			inNS(t, podNS, func() error {
				if _, err := netlink.LinkByName("eth0"); err == nil {
					return fmt.Errorf("pod eth0 still exists after DEL")
				}
				return nil
			})
			// DEL is idempotent: again, and without prevResult.
			node.mustCNI(t, "DEL", a, delConf)
			node.mustCNI(t, "DEL", a, conf)
		})
	}
}

// withValid sets cni.dev/valid-attachments.
func withValid(conf []byte, valid ...cniArgs) []byte {
	var c map[string]any
	_ = json.Unmarshal(conf, &c)
	list := []map[string]string{}
	for _, a := range valid {
		list = append(list, map[string]string{"containerID": a.ContainerID, "ifname": a.IfName})
	}
	c["cni.dev/valid-attachments"] = list
	b, _ := json.Marshal(c)
	return b
}

func TestVersionCommand(t *testing.T) {
	requireRoot(t)
	node := newNode(t, "10.244.3.0/24", "10.244.3.1")
	for _, bin := range []string{"wgcni", "wgcni-ipam"} {
		out, cerr := node.cniCall(t, bin, "VERSION", cniArgs{}, []byte(`{"cniVersion":"1.1.0"}`))
		if cerr != nil {
			t.Fatalf("%s VERSION: %v", bin, cerr)
		}
		info, err := (&version.PluginDecoder{}).Decode(out)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(info.SupportedVersions(), ",")
		for _, v := range versions {
			if !strings.Contains(got, v) {
				t.Fatalf("%s supports %s, missing %s", bin, got, v)
			}
		}
	}
}

// TestDelNetnsGone: the pod's netns disappears before DEL (the runtime
// tore the sandbox down first); DEL still succeeds and releases the IP.
func TestDelNetnsGone(t *testing.T) {
	requireRoot(t)
	node := newNode(t, "10.244.3.0/24", "10.244.3.1")
	podNS := newNetns(t, "pod")
	a := cniArgs{ContainerID: "gone-" + randHex(4), Netns: podNS, IfName: "eth0"}
	conf := node.conf("1.1.0", nil)
	node.mustCNI(t, "ADD", a, conf)
	delNetns(t, podNS)
	node.mustCNI(t, "DEL", a, conf)
	node.mustCNI(t, "DEL", a, conf)
	if got := node.allocations(t); len(got) != 0 {
		t.Fatalf("allocations after DEL with netns gone: %v", got)
	}
	if got := node.hostVeths(t); len(got) != 0 {
		t.Fatalf("host veths after DEL with netns gone: %v", got)
	}
	// Empty CNI_NETNS (allowed for DEL) also works.
	node.mustCNI(t, "DEL", cniArgs{ContainerID: a.ContainerID, IfName: "eth0"}, conf)
}
