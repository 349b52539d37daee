package gateway

import (
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/wgcni/wgcni/tests/harness"
)

// TestSiteDualStack: a site with an IPv4 and an IPv6 CIDR behind two
// masquerading gateways of a dual-stack cluster: a pod reaches the site
// host over both families through the serving gateway, only WireGuard on
// the underlay, and both CIDRs move together when that gateway dies.
func TestSiteDualStack(t *testing.T) {
	site6 := netip.MustParsePrefix("fd77::/64")
	c := harness.Start(t, harness.Config{Tag: tag, ClusterCIDR: clusterCIDR + ",fd10:244::/56", NodePrefixLenV6: 64, LeaseTTL: 6 * time.Second}, 0)
	site, err := c.AddSite("site", siteCIDR, site6)
	if err != nil {
		t.Fatal(err)
	}
	g1 := startGateway(t, c, site, 11, "--gateway-masquerade")
	n3, err := c.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range site.Prefixes {
		waitHolderOf(t, c, n3, s, g1.Name, 20*time.Second)
	}
	g2 := startGateway(t, c, site, 12, "--gateway-masquerade")
	hosts := []netip.Addr{siteHost, hostIn(site6, 100)}
	if _, err := site.AddHost("host", hosts...); err != nil {
		t.Fatal(err)
	}
	pod := n3.MustAddPod(t)
	if len(pod.IPs) != 2 {
		t.Fatalf("pod %s has %v, want one address per family", pod.Name, pod.IPs)
	}
	reach := func(what string) {
		c.EncryptedOnly(t, classifier(c, site6), what, func() {
			for _, h := range hosts {
				harness.Connect(t, pod.NS, h, what+": "+pod.Name+" -> site host "+h.String(), 5)
			}
		})
	}
	reach("through " + g1.Name)

	dev := g1.MustDeviceHost(t)
	killed := time.Now()
	if err := syscall.Kill(dev, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	g1.StopDaemon(syscall.SIGKILL)
	for _, s := range site.Prefixes {
		waitHolderOf(t, c, n3, s, g2.Name, 15*time.Second)
	}
	harness.Result(t, "both site CIDRs (%v) on %s's peer %v after %s was SIGKILLed", site.Prefixes, g2.Name, time.Since(killed).Round(time.Millisecond), g1.Name)
	reach("through " + g2.Name)
}
