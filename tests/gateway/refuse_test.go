package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgcni/wgcni/daemon/record"
	"github.com/wgcni/wgcni/tests/harness"
)

// TestAdvertisementRefused: advertisements that collide are refused with
// an error naming both claimants, and the daemon stops before publishing
// them; a stale advertisement goes with its lease (its site first turns
// unreachable when its last gateway's candidacy lapses, then its route
// goes when the record expires).
func TestAdvertisementRefused(t *testing.T) {
	c, site := start(t)
	n1, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, c, site, 11)
	waitHolder(t, c, n1, g.Name, 20*time.Second)

	for _, tc := range []struct {
		name, cidr string
		want       []string // in the daemon's error; NODE is its node
	}{
		{"overlaps another site", "192.168.0.0/16",
			[]string{"site CIDR 192.168.0.0/16 of node NODE overlaps site CIDR 192.168.77.0/24 advertised by node " + g.Name}},
		{"contains a node's endpoint", n1.UnderlayIP.String() + "/32",
			[]string{fmt.Sprintf("site CIDR %s/32 of node NODE contains the endpoint %s of node %s", n1.UnderlayIP, n1.UnderlayIP, n1.Name)}},
		{"inside the cluster CIDR", "10.244.250.0/24",
			[]string{"--advertise-cidrs: site CIDR 10.244.250.0/24 overlaps --cluster-cidr 10.244.0.0/16"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := c.AddBareNode()
			if err != nil {
				t.Fatal(err)
			}
			b.ExtraArgs = []string{"--advertise-cidrs", tc.cidr}
			if err := b.StartDaemon(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-b.Daemon().Exited():
			case <-time.After(30 * time.Second):
				t.Fatalf("wgcnid %s with --advertise-cidrs %s still runs", b.Name, tc.cidr)
			}
			for _, w := range tc.want {
				w = strings.ReplaceAll(w, "NODE", b.Name)
				if lines := b.LogLines(w); len(lines) == 0 {
					t.Fatalf("log of %s does not say %q:\n%s", b.Name, w, strings.Join(b.LogLines(""), "\n"))
				} else {
					t.Logf("%s refused: %s", b.Name, lines[len(lines)-1])
				}
			}
			if l, err := c.LeaseOf(b.Name); err != nil || l != nil {
				t.Fatalf("refused node %s has a record: %+v %v", b.Name, l, err)
			}
			b.Shutdown()
		})
	}
	if r := gateways(t, c, n1); len(r.Sites) != 1 || r.Sites[0].Gateway != g.Name {
		t.Fatalf("after the refusals: %+v, want only %s served by %s", r, siteCIDR, g.Name)
	}

	// A colliding advertisement that got past the start-up check (two
	// nodes starting at once; here written straight into etcd): every
	// node refuses the newer one, naming both, and routes nothing for it.
	k, _ := wgtypes.GeneratePrivateKey()
	racer := record.Lease{Node: "racer", PublicKey: k.PublicKey(), Endpoint: netip.AddrPortFrom(hostIn(c.Underlay.Prefix, 250), 51820),
		Sites: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}}
	key := record.SubnetKey(harness.Prefix, netip.MustParsePrefix("10.244.250.0/24"))
	cli := c.Etcd.MustClient(t)
	if _, err := cli.Put(context.Background(), key, string(racer.Encode())); err != nil {
		t.Fatal(err)
	}
	want := "site CIDR 192.168.0.0/16 of node racer overlaps site CIDR 192.168.77.0/24 advertised by node " + g.Name
	n1.WaitLog(t, 10*time.Second, want)
	if r := gateways(t, c, n1); len(r.Sites) != 1 || r.Sites[0].Gateway != g.Name || len(r.Refused) != 1 || r.Refused[0] != want {
		t.Fatalf("wgcnictl gateways with the racer: %+v, want %s served by %s and the racer refused", r, siteCIDR, g.Name)
	}
	if out, _ := n1.Exec("ip", "route", "show", "proto", "87", "192.168.0.0/16"); strings.TrimSpace(out) != "" {
		t.Fatalf("%s routes the refused site: %s", n1.Name, out)
	}
	if _, err := cli.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}

	// The stale advertisement: its gateway's daemon dies (its device
	// stays, as its peers do until its record expires).
	g.StopDaemon(syscall.SIGKILL)
	died := time.Now()
	waitRoute(t, n1, "unreachable "+siteCIDR.String(), 15*time.Second)
	unreachable := time.Since(died)
	if h, err := holder(c, n1); err != nil || h != "" {
		t.Fatalf("site still on %q's peer without a gateway: %v", h, err)
	}
	r, err := n1.Ping(siteHost, 1, 100*time.Millisecond)
	if err != nil || !r.Unreachable {
		t.Fatalf("ping into the site without a gateway: %+v %v, want refused locally", r, err)
	}
	waitRoute(t, n1, "", 30*time.Second)
	harness.Result(t, "gateway %s gone: site %s unreachable on %s after %v, its route gone with the record after %v",
		g.Name, siteCIDR, n1.Name, unreachable.Round(time.Millisecond), time.Since(died).Round(time.Millisecond))
}

// waitRoute waits until n's routes of ours for the site read want.
func waitRoute(t *testing.T, n *harness.Node, want string, timeout time.Duration) {
	t.Helper()
	err := harness.WaitFor(timeout, fmt.Sprintf("route %q on %s", want, n.Name), func() (bool, error) {
		out, err := n.Exec("ip", "route", "show", "proto", "87", "exact", siteCIDR.String())
		if err != nil {
			return false, err
		}
		got := strings.Join(strings.Fields(out), " ")
		return strings.HasPrefix(got, want) && (want != "" || got == ""), fmt.Errorf("have %q", got)
	})
	if err != nil {
		t.Fatal(err)
	}
}
