package ipv6

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// cniVersionsWithIPv6 are the spec versions whose result can carry IPv6
// addresses ("ips" replaced "ip4"/"ip6" in 0.3.0).
var cniVersionsWithIPv6 = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// execPlugin runs the wgcni binary the way a runtime does, from the node
// namespace, with conf on stdin.
func execPlugin(n *harness.Node, c *harness.Cluster, cmd, containerID, netns, ifname string, conf []byte) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	x := n.Command(ctx, c.Bin("wgcni"))
	x.Env = append(os.Environ(), "CNI_COMMAND="+cmd, "CNI_CONTAINERID="+containerID, "CNI_NETNS="+netns,
		"CNI_IFNAME="+ifname, "CNI_PATH="+c.CNIPath())
	x.Stdin = bytes.NewReader(conf)
	var stderr strings.Builder
	x.Stderr = &stderr
	out, err := x.Output()
	if err != nil {
		return string(out), fmt.Errorf("wgcni %s: %w: %s %s", cmd, err, out, stderr.String())
	}
	return string(out), nil
}

func netconf(version, runDir string, prev json.RawMessage) []byte {
	m := map[string]any{"cniVersion": version, "name": "wg6net", "type": "wgcni", "runDir": runDir, "ipMasq": true,
		"ipam": map[string]any{"type": "wgcni-ipam"}}
	if prev != nil {
		m["prevResult"] = prev
	}
	b, _ := json.Marshal(m)
	return b
}

// checkResultShape checks one ADD result: the pod interface has exactly
// wantFams addresses (one per family), each inside the node's PodCIDR of its
// family with that family's gateway, "version" set exactly for < 1.0.0,
// and a default route per family.
func checkResultShape(t *testing.T, version, out string, podCIDRs, gateways []string) {
	t.Helper()
	var res struct {
		CNIVersion string `json:"cniVersion"`
		Interfaces []struct {
			Name    string `json:"name"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
		IPs []struct {
			Version   string `json:"version"`
			Interface *int   `json:"interface"`
			Address   string `json:"address"`
			Gateway   string `json:"gateway"`
		} `json:"ips"`
		Routes []struct {
			Dst string `json:"dst"`
			GW  string `json:"gw"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%s: result %q: %v", version, out, err)
	}
	if res.CNIVersion != version {
		t.Fatalf("result cniVersion %q, want %q", res.CNIVersion, version)
	}
	if len(res.IPs) != len(podCIDRs) {
		t.Fatalf("%s: %d ips, want %d (one per family): %s", version, len(res.IPs), len(podCIDRs), out)
	}
	legacy := version < "1.0.0"
	for i, ip := range res.IPs {
		pfx, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			t.Fatalf("%s: ips[%d].address %q", version, i, ip.Address)
		}
		cidr, gw := netip.MustParsePrefix(podCIDRs[i]), gateways[i]
		if !cidr.Contains(pfx.Addr()) || pfx.Bits() != cidr.Bits() || ip.Gateway != gw {
			t.Fatalf("%s: ips[%d] = %s gw %s, want inside %s gw %s", version, i, ip.Address, ip.Gateway, cidr, gw)
		}
		fam := "4"
		if pfx.Addr().Is6() {
			fam = "6"
		}
		if legacy && ip.Version != fam || !legacy && ip.Version != "" {
			t.Fatalf("%s: ips[%d].version = %q (want %q for < 1.0.0, absent after)", version, i, ip.Version, fam)
		}
		if ip.Interface == nil || *ip.Interface >= len(res.Interfaces) || res.Interfaces[*ip.Interface].Sandbox == "" {
			t.Fatalf("%s: ips[%d].interface does not name the pod interface: %s", version, i, out)
		}
	}
	for i, gw := range gateways {
		dst := "0.0.0.0/0"
		if netip.MustParseAddr(gw).Is6() {
			dst = "::/0"
		}
		found := false
		for _, r := range res.Routes {
			if r.Dst == dst && r.GW == gw {
				found = true
			}
		}
		if !found {
			t.Fatalf("%s: no default route %s via %s (family %d): %s", version, dst, gw, i, out)
		}
	}
}

// cniVersions runs ADD, CHECK (0.4.0+), a broken-address CHECK and DEL at
// every version that carries IPv6, on a fresh pod netns of node n.
func cniVersions(t *testing.T, c *harness.Cluster, n *harness.Node, peers ...netip.Addr) {
	nf, err := n.NodeFile()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range cniVersionsWithIPv6 {
		t.Run(v, func(t *testing.T) {
			pod := n.MustAddPod(t)
			// Free the namespace's eth0 (cnitool's attachment) and wire it
			// again directly at version v.
			if _, err := pod.CNI("del"); err != nil {
				t.Fatal(err)
			}
			cid := "wg6-ver-" + strings.ReplaceAll(v, ".", "")
			out, err := execPlugin(n, c, "ADD", cid, pod.Path(), "eth0", netconf(v, n.RunDir, nil))
			if err != nil {
				t.Fatal(err)
			}
			defer execPlugin(n, c, "DEL", cid, pod.Path(), "eth0", netconf(v, n.RunDir, nil))
			checkResultShape(t, v, out, nf.PodCIDRs, nf.Gateways)
			// The addresses work: every family reaches the peer's pod.
			var res struct {
				IPs []struct {
					Address string `json:"address"`
				} `json:"ips"`
			}
			json.Unmarshal([]byte(out), &res)
			for _, peer := range peers {
				r, err := pod.Ping(peer, 1, 200*time.Millisecond)
				if err != nil || r.Received != 1 {
					t.Fatalf("%s: pod cannot reach %s: %v %s", v, peer, err, r.Output)
				}
			}
			if v < "0.4.0" {
				return // CHECK arrived in 0.4.0
			}
			if _, err := execPlugin(n, c, "CHECK", cid, pod.Path(), "eth0", netconf(v, n.RunDir, json.RawMessage(out))); err != nil {
				t.Fatalf("CHECK of a good attachment: %v", err)
			}
			// CHECK checks every family: remove the last address (the
			// IPv6 one of a dual-stack pod) and it must name it.
			last := res.IPs[len(res.IPs)-1].Address
			if _, err := pod.Exec("ip", "addr", "del", last, "dev", "eth0"); err != nil {
				t.Fatal(err)
			}
			_, err = execPlugin(n, c, "CHECK", cid, pod.Path(), "eth0", netconf(v, n.RunDir, json.RawMessage(out)))
			if err == nil || !strings.Contains(err.Error(), last) {
				t.Fatalf("CHECK with %s removed: %v", last, err)
			}
			t.Logf("%s: CHECK with %s removed: %v", v, last, firstLine(err.Error()))
		})
	}
}

// firstLine squeezes a multi-line CNI error into one short line.
func firstLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 240 {
		s = s[:240] + "..."
	}
	return s
}
